"""``create_server(config) -> (server, port)``: the whole service, wired and bound.

The gRPC server carries the pruning service, standard ``grpc.health.v1`` health checking
and server reflection (so ``grpcurl`` works), behind one interceptor (auth, error mapping,
logs, metrics), with explicit message-size limits and optional TLS / mTLS. Binding port 0
picks a free port, which is returned, so tests and the demo never collide.

It is a ``grpc.aio`` server on one event loop, run in a thread of its own
(:class:`LoopThread`), so callers keep a plain blocking API (``start``/``stop``): an open
stream (a watcher, a silent upload) is a suspended coroutine, not a held thread, so the
capacity of the server does not depend on how many streams clients hold open, and the
health service (the aio one, answered on the loop itself) answers whatever the load.
Blocking work (SQLite, file I/O, checks) runs in a bounded thread pool (``rpc_threads``)
through ``asyncio.to_thread``; per-token caps (:mod:`service.slots`) bound what one token
holds open.

Graceful stop (:meth:`PruningServer.stop`, wired to SIGTERM/SIGINT by ``metaprune serve``):
health flips to NOT_SERVING, new jobs are refused (UNAVAILABLE), running jobs are stopped
and re-queued for the next start, watchers of unfinished jobs get UNAVAILABLE, in-flight
RPCs get ``grace_seconds`` to finish.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from service import wire
from service._generated import pruning_service_pb2 as pb
from service.auth import Authenticator
from service.blobs import AsyncHashingWriter, BlobDir
from service.config import ServiceConfig
from service.interceptor import ServiceInterceptor
from service.jobs import JobManager
from service.logs import log_event
from service.metrics import Metrics, MetricsEndpoint, serve_metrics
from service.reflection import enable_reflection
from service.servicer import PruningServicer
from service.store import ACTIVE_STATES, FINAL_STATES, Store

if TYPE_CHECKING:
    from metaprune.executor import Executor

__all__ = ["SERVICE_NAME", "LoopThread", "PruningServer", "create_server"]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PruningService"].full_name
_T = TypeVar("_T")


class LoopThread:
    """An asyncio event loop running in a daemon thread, with a bounded default executor
    (what ``asyncio.to_thread`` uses); :meth:`run` executes a coroutine there and waits."""

    def __init__(self, threads: int, name: str = "grpc-aio") -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(
            concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix=f"{name}-io")
        )
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Finish the executor's work, stop the loop and join its thread (idempotent)."""
        if self.loop.is_closed():
            return
        self.run(self.loop.shutdown_default_executor())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10.0)
        self.loop.close()


class PruningServer:
    """A bound (not yet started) server with its store, job manager and metrics."""

    def __init__(
        self, loop: LoopThread, server: grpc.aio.Server, health_servicer: Any, jobs: JobManager,
        store: Store, config: ServiceConfig, port: int, metrics: Metrics,
    ) -> None:  # fmt: skip
        self._loop, self.grpc_server, self.health, self.jobs = loop, server, health_servicer, jobs
        self.blobs = jobs.blobs
        self.store, self.config, self.port, self.metrics = store, config, port, metrics
        self.metrics_endpoint: MetricsEndpoint | None = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    @property
    def metrics_port(self) -> int | None:
        """The bound ``/metrics`` port (``None`` when the endpoint is off or not started)."""
        return self.metrics_endpoint.port if self.metrics_endpoint else None

    def start(self) -> None:
        self._loop.run(self.grpc_server.start())
        if self.config.metrics_port is not None:
            self.metrics_endpoint = serve_metrics(
                self.metrics, self.config.host, self.config.metrics_port
            )
        log_event("server_started", address=f"{self.config.host}:{self.port}",
                  workers=self.config.workers, tls=self.config.tls is not None,
                  metrics_port=self.metrics_port)  # fmt: skip

    def stop(self, grace: float | None = None) -> None:
        """Graceful stop (idempotent): NOT_SERVING, refuse new jobs, re-queue running ones
        (their watchers get UNAVAILABLE), let in-flight RPCs finish within ``grace`` s."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            grace = self.config.grace_seconds if grace is None else grace
            log_event("server_stopping", grace_seconds=grace)
            # load balancers stop sending first
            self._loop.run(self.health.enter_graceful_shutdown())
            self.jobs.shutdown(grace)
            self._loop.run(self.grpc_server.stop(grace), grace + 5.0)
            self._loop.close()  # waits for blocking work still in the pool
            if self.metrics_endpoint is not None:
                self.metrics_endpoint.close()
            self.store.close()
            self._stopped.set()
            log_event("server_stopped")

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)


def create_server(
    config: ServiceConfig, *, executor: Executor | None = None
) -> tuple[PruningServer, int]:
    """Build the service from ``config`` and bind it; returns ``(server, port)``.

    Raises:
        InvalidInputError: bad TLS files or token configuration.
        RuntimeError: the address cannot be bound.
    """
    data = config.data_path
    data.mkdir(parents=True, exist_ok=True)
    store = Store(data / "metaprune.db")
    blobs = BlobDir(data)
    auth = Authenticator(config.resolved_tokens())
    credentials = _credentials(config) if config.tls is not None else None
    jobs = JobManager(config, store, blobs, executor)
    metrics = Metrics()
    metrics.watch_jobs(lambda state: store.count_jobs((state,)), ACTIVE_STATES + FINAL_STATES)
    loop = LoopThread(config.rpc_threads)
    try:
        server, health_servicer, port = loop.run(
            _build(config, auth, metrics, PruningServicer(config, store, blobs, jobs, metrics),
                   credentials)
        )  # fmt: skip
    except BaseException:
        loop.close()
        jobs.shutdown(0.0)
        store.close()
        raise
    return PruningServer(loop, server, health_servicer, jobs, store, config, port, metrics), port


async def _build(
    config: ServiceConfig, auth: Authenticator, metrics: Metrics, servicer: PruningServicer,
    credentials: grpc.ServerCredentials | None,
) -> tuple[grpc.aio.Server, Any, int]:  # fmt: skip
    """Create and bind the aio server (on the loop that will run it)."""
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
        # no flow-control windows grown from bandwidth-delay probes: with them, gRPC buffered
        # tens of MB per upload ahead of the handler (four concurrent 208 MB uploads: peak RSS
        # +97 to +179 MB; without: +23 MB), and the raw loopback stream is as fast either way
        ("grpc.http2.bdp_probe", 0),
    ]
    server = grpc.aio.server(interceptors=[ServiceInterceptor(auth, metrics)], options=options)
    wire.add_servicer(servicer, server)  # the generated handlers, chunks without copies
    if config.raw_bytes_rpc:
        server.add_generic_rpc_handlers((_raw_bytes_handler(config.chunk_bytes),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    enable_reflection(  # v1 and v1alpha
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), server
    )
    address = f"{config.host}:{config.port}"
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:
        raise RuntimeError(f"cannot listen on {address} (in use?)") from None
    return server, health_servicer, port


def _credentials(config: ServiceConfig) -> grpc.ServerCredentials:
    from metaprune.errors import InvalidInputError

    tls = config.tls
    assert tls is not None
    try:
        key, cert = Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes()
        ca = Path(tls.client_ca_file).read_bytes() if tls.client_ca_file else None
    except OSError as err:
        raise InvalidInputError(f"cannot read a TLS file of the service config: {err}") from None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def _raw_bytes_handler(chunk_bytes: int) -> grpc.GenericRpcHandler:
    """Benchmark baseline: the cheapest byte streams gRPC Python (aio) can do on this server
    (behind the same interceptor, so authentication, logging and metrics cost the same)."""

    async def upload(chunks: AsyncIterator[bytes], context: Any) -> bytes:
        total = 0
        async for chunk in chunks:
            total += len(chunk)
        return str(total).encode()

    async def upload_hashed(chunks: AsyncIterator[bytes], context: Any) -> bytes:
        """The raw stream plus what no content-addressed upload can skip: one sha256 pass,
        on a sink thread as the real upload does (into /dev/null, no checks)."""
        with open(os.devnull, "wb") as sink:
            writer = AsyncHashingWriter(sink)
            try:
                async for chunk in chunks:
                    await writer.write(chunk)
                return (await writer.finish()).encode()
            finally:
                writer.close()

    async def download(request: bytes, context: Any) -> AsyncIterator[bytes]:
        left = int(request.decode())
        block = b"\0" * chunk_bytes
        while left > 0:
            yield block[: min(left, chunk_bytes)]
            left -= chunk_bytes

    return grpc.method_handlers_generic_handler(
        "metaprune.bench.RawBytes",
        {
            "Upload": grpc.stream_unary_rpc_method_handler(upload),
            "UploadHashed": grpc.stream_unary_rpc_method_handler(upload_hashed),
            "Download": grpc.unary_stream_rpc_method_handler(download),
        },
    )
