"""``/metrics``: off by default; on a configured port, a real HTTP GET on loopback returns
Prometheus text with RPC counts and latencies by method and code, jobs by state, the
queue length and upload bytes; slot and metric bookkeeping in isolation."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from metaprune.errors import LimitExceededError
from service.client import PruningClient
from service.metrics import Metrics
from service.slots import TokenSlots
from service.testing import TOKENS, running_server, tiny_config

pytestmark = pytest.mark.timeout(120)


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_endpoint_on_loopback(tmp_path: Path, checkpoint: Path) -> None:
    with running_server(tmp_path / "data", metrics_port=0) as server:
        assert server.metrics_port and server.metrics_port != server.port
        with PruningClient(f"127.0.0.1:{server.port}", TOKENS["alice"][0], timeout=20) as c:
            c.server_info()
            c.server_info()
            model = c.upload(checkpoint)
            job = c.create_job(model.model_id, "synthetic", tiny_config())
            c.cancel_job(job.job_id)  # a queued job cancelled at once, or a running one soon
            c.watch(job.job_id)
            with pytest.raises(Exception):  # noqa: B017, PT011 (any RpcError: NOT_FOUND)
                c.get_job("0" * 32)
        samples = _scrape(server.metrics_port)
    info = "/metaprune.v1.PruningService/GetServerInfo"
    key = ("metaprune_rpc_duration_seconds_count", (("code", "OK"), ("method", info)))
    assert samples[key] == 2
    assert samples[("metaprune_rpc_duration_seconds_bucket",
                    (("code", "OK"), ("le", "+Inf"), ("method", info)))] == 2  # fmt: skip
    missing = (("code", "NOT_FOUND"), ("method", "/metaprune.v1.PruningService/GetJob"))
    assert samples[("metaprune_rpc_duration_seconds_count", missing)] == 1
    assert samples[("metaprune_upload_bytes_total", ())] == checkpoint.stat().st_size
    assert samples[("metaprune_jobs", (("state", "cancelled"),))] == 1
    assert samples[("metaprune_jobs", (("state", "queued"),))] == 0
    assert samples[("metaprune_queue_length", ())] == 0
    assert samples[("metaprune_open_streams", (("kind", "upload"),))] == 0


def test_metrics_are_off_by_default(tmp_path: Path) -> None:
    with running_server(tmp_path / "data") as server:
        assert server.config.metrics_port is None and server.metrics_port is None


def test_token_slots_count_per_token_and_kind() -> None:
    metrics = Metrics()
    slots = TokenSlots({"upload": 1, "stream": 2}, metrics)
    gauge: Any = lambda kind: metrics.registry.get_sample_value(  # noqa: E731
        "metaprune_open_streams", {"kind": kind}
    )
    with slots.hold("stream", "a"), slots.hold("stream", "a"), slots.hold("upload", "a"):
        assert slots.open("stream", "a") == 2 and gauge("stream") == 2
        with pytest.raises(LimitExceededError) as info, slots.hold("stream", "a"):
            pass
        assert info.value.limit == "max_streams_per_token" and info.value.requested == 3
        with slots.hold("stream", "b"), slots.hold("upload", "b"):  # another token: own caps
            assert slots.open("stream", "b") == 1
    assert slots.open("stream", "a") == 0 and gauge("stream") == 0 and gauge("upload") == 0
    refused = metrics.registry.get_sample_value("metaprune_slot_refusals_total", {"kind": "stream"})
    assert refused == 1
    with pytest.raises(ValueError, match="unknown slot kinds"):
        TokenSlots({"uploads": 1})
