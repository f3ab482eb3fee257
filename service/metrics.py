"""Prometheus metrics of one server, and the optional ``/metrics`` HTTP endpoint.

Every server has its own :class:`Metrics` (its own registry, so several servers in one
process, as in the tests, do not mix their counts). The interceptor records every RPC
(count and latency by method and status code), uploads add their bytes, the per-token
slots report open streams; jobs by state and the queue length are read from the store
when Prometheus scrapes, so they are never stale and cost nothing between scrapes.

The endpoint is off by default; ``metrics_port`` in the service config turns it on
(plain HTTP on the service's host, ``0`` = any free port, read back from
:attr:`MetricsEndpoint.port`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["Metrics", "MetricsEndpoint", "serve_metrics"]

#: RPC latency buckets (seconds): health checks sit in the first ones, uploads in the last.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)


class _JobStates(Collector):
    """``metaprune_jobs{state}`` and ``metaprune_queue_length`` read at scrape time."""

    def __init__(self, count: Callable[[str], int], states: tuple[str, ...]) -> None:
        self._count, self._states = count, states

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("metaprune_jobs", "Jobs in the store by state", labels=["state"])
        counts = {state: self._count(state) for state in self._states}
        for state, n in counts.items():
            jobs.add_metric([state], n)
        yield jobs
        yield GaugeMetricFamily(
            "metaprune_queue_length", "Jobs waiting for a worker", value=counts.get("queued", 0)
        )


class Metrics:
    """The metrics of one server (a private registry)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rpc_seconds = Histogram(
            "metaprune_rpc_duration_seconds", "RPC latency by method and status code",
            ["method", "code"], buckets=_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.upload_bytes = Counter(
            "metaprune_upload_bytes", "Bytes received by UploadModel (accepted or not)",
            registry=self.registry,
        )  # fmt: skip
        self.download_bytes = Counter(
            "metaprune_download_bytes", "Checkpoint bytes sent by DownloadResult",
            registry=self.registry,
        )  # fmt: skip
        self.open_streams = Gauge(
            "metaprune_open_streams", "Open streams by kind (upload, stream = watch/download)",
            ["kind"], registry=self.registry,
        )  # fmt: skip
        self.refused_slots = Counter(
            "metaprune_slot_refusals", "Calls refused by a per-token cap, by kind",
            ["kind"], registry=self.registry,
        )  # fmt: skip
        self.idle_uploads = Counter(
            "metaprune_upload_idle_timeouts", "Uploads cut for sending nothing",
            registry=self.registry,
        )  # fmt: skip

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        self.rpc_seconds.labels(method, code).observe(seconds)

    def watch_jobs(self, count: Callable[[str], int], states: tuple[str, ...]) -> None:
        """Report ``count(state)`` for every state at each scrape."""
        self.registry.register(_JobStates(count, states))


class MetricsEndpoint:
    """A running ``/metrics`` HTTP server (a daemon thread); :meth:`close` stops it."""

    def __init__(self, server: object, thread: threading.Thread) -> None:
        self._server, self._thread = server, thread
        self.port: int = server.server_port  # type: ignore[attr-defined]

    def close(self) -> None:
        self._server.shutdown()  # type: ignore[attr-defined]
        self._server.server_close()  # type: ignore[attr-defined]
        self._thread.join(5.0)


def serve_metrics(metrics: Metrics, host: str, port: int) -> MetricsEndpoint:
    """Serve ``metrics`` at ``http://host:port/metrics`` (``port`` 0 = any free port).

    Raises:
        RuntimeError: the address cannot be bound.
    """
    try:
        server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as err:
        raise RuntimeError(f"cannot serve /metrics on {host}:{port}: {err}") from None
    return MetricsEndpoint(server, thread)
