"""``create_server(config) -> (server, port)``: the whole service, wired and bound.

The gRPC server carries the pruning service, standard ``grpc.health.v1`` health checking
and server reflection (so ``grpcurl`` works), behind one interceptor (auth, error mapping,
logs), with explicit message-size limits and optional TLS / mTLS. Binding port 0 picks a
free port, which is returned, so tests and the demo never collide.

Graceful stop (:meth:`PruningServer.stop`, wired to SIGTERM/SIGINT by ``metaprune serve``):
health flips to NOT_SERVING, new jobs are refused (UNAVAILABLE), running jobs are stopped
and re-queued for the next start, in-flight RPCs get ``grace_seconds`` to finish.
"""

from __future__ import annotations

import concurrent.futures
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from service._generated import pruning_service_pb2 as pb
from service._generated import pruning_service_pb2_grpc as pb_grpc
from service.auth import Authenticator
from service.blobs import BlobDir
from service.config import ServiceConfig
from service.interceptor import ServiceInterceptor
from service.jobs import JobManager
from service.logs import log_event
from service.reflection import enable_reflection
from service.servicer import PruningServicer
from service.store import Store

if TYPE_CHECKING:
    from metaprune.executor import Executor

__all__ = ["SERVICE_NAME", "PruningServer", "create_server"]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PruningService"].full_name


class PruningServer:
    """A bound (not yet started) server with its store and job manager."""

    def __init__(
        self, server: grpc.Server, health_servicer: health.HealthServicer, jobs: JobManager,
        store: Store, config: ServiceConfig, port: int,
    ) -> None:  # fmt: skip
        self.grpc_server, self.health, self.jobs = server, health_servicer, jobs
        self.blobs = jobs.blobs
        self.store, self.config, self.port = store, config, port
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    def start(self) -> None:
        self.grpc_server.start()
        log_event("server_started", address=f"{self.config.host}:{self.port}",
                  workers=self.config.workers, tls=self.config.tls is not None)  # fmt: skip

    def stop(self, grace: float | None = None) -> None:
        """Graceful stop (idempotent): NOT_SERVING, refuse new jobs, re-queue running ones,
        let in-flight RPCs finish within ``grace`` seconds."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            grace = self.config.grace_seconds if grace is None else grace
            log_event("server_stopping", grace_seconds=grace)
            self.health.enter_graceful_shutdown()  # load balancers stop sending first
            self.jobs.shutdown(grace)
            self.grpc_server.stop(grace).wait(grace + 1.0)
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
    jobs = JobManager(config, store, blobs, executor)
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
    ]
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(config.rpc_threads, thread_name_prefix="rpc"),
        interceptors=[ServiceInterceptor(auth)], options=options,
    )  # fmt: skip
    pb_grpc.add_PruningServiceServicer_to_server(
        PruningServicer(config, store, blobs, jobs), server
    )
    if config.raw_bytes_rpc:
        server.add_generic_rpc_handlers((_raw_bytes_handler(config.chunk_bytes),))
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    enable_reflection(  # v1 and v1alpha
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), server
    )
    address = f"{config.host}:{config.port}"
    try:
        if config.tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, _credentials(config))
    except RuntimeError:
        jobs.shutdown(0.0)
        store.close()
        raise RuntimeError(f"cannot listen on {address} (in use?)") from None
    return PruningServer(server, health_servicer, jobs, store, config, port), port


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
    """Benchmark baseline: the cheapest byte streams gRPC Python can do on this server
    (behind the same interceptor, so authentication and logging cost the same)."""

    def upload(chunks: Any, context: Any) -> bytes:
        total = 0
        for chunk in chunks:
            total += len(chunk)
        return str(total).encode()

    def download(request: bytes, context: Any) -> Any:
        left = int(request.decode())
        block = b"\0" * chunk_bytes
        while left > 0:
            yield block[: min(left, chunk_bytes)]
            left -= chunk_bytes

    return grpc.method_handlers_generic_handler(
        "metaprune.bench.RawBytes",
        {
            "Upload": grpc.stream_unary_rpc_method_handler(upload),
            "Download": grpc.unary_stream_rpc_method_handler(download),
        },
    )
