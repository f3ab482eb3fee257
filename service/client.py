"""``PruningClient``: the Python client of the pruning service.

>>> with PruningClient("127.0.0.1:50051", token) as client:
...     model = client.upload("model.safetensors")
...     job = client.create_job(model.model_id, "digits", {"target": {"value": 2.0}})
...     job = client.watch(job.job_id, lambda job, event: print(job.state, event))
...     paths = client.download(job.job_id, "out/")

Uploads are sent in one pass (1 MiB chunks, hashed on a thread while they are sent, the
sha256 in an ``UploadTrailer``) and retried on transient failures (UNAVAILABLE): they are
idempotent because models are content-addressed. Chunks travel without protobuf copies
(:mod:`service.wire`).
Job creation is retried with the same ``request_id``, so a retry never makes a second job.
Downloads are written to a temp file, checked against the sha256 the server announced, then
renamed into place.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import grpc

from metaprune.pruning.config import PruneConfig
from service import convert, wire
from service._generated import prune_config_pb2 as cpb
from service._generated import pruning_service_pb2 as pb
from service._generated import pruning_service_pb2_grpc as pb_grpc
from service.blobs import HashingReader, HashingWriter, sha256_file

__all__ = ["SPEC_KEY", "DownloadError", "PruningClient", "WatchCallback", "read_spec_json"]

WatchCallback = Callable[[pb.Job, "pb.ProgressEvent | None"], None]
_T = TypeVar("_T")
_RETRY = (grpc.StatusCode.UNAVAILABLE,)
#: the safetensors metadata key of the architecture spec (metaprune.checkpoint.SPEC_KEY)
SPEC_KEY = "metaprune.spec"
_SERVICE = pb.DESCRIPTOR.services_by_name["PruningService"].full_name
_FINAL = (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED)


class DownloadError(RuntimeError):
    """A downloaded file does not match the sha256 or size the server announced."""


class PruningClient:
    """A connection to a pruning server.

    Args:
        target: ``host:port``.
        token: the bearer token (default: ``$METAPRUNE_TOKEN``).
        root_certificates: PEM of the CA that signed the server certificate (enables TLS).
        client_certificate, client_key: PEM for mTLS.
        timeout: seconds for unary calls (streams have none: jobs take long).
        retries: attempts of a retryable call after the first.
        chunk_bytes: upload chunk size.
    """

    def __init__(
        self, target: str, token: str | None = None, *, root_certificates: bytes | None = None,
        client_certificate: bytes | None = None, client_key: bytes | None = None,
        timeout: float = 60.0, retries: int = 3, chunk_bytes: int = 1024 * 1024,
        max_message_bytes: int = 4 * 1024 * 1024, server_name: str | None = None,
    ) -> None:  # fmt: skip
        token = token if token is not None else os.environ.get("METAPRUNE_TOKEN", "")
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if root_certificates is not None or client_certificate is not None:
            creds = grpc.ssl_channel_credentials(root_certificates, client_key, client_certificate)
            self.channel = grpc.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = pb_grpc.PruningServiceStub(self.channel)
        # the two byte streams with service.wire's (de)serializers (same bytes on the wire)
        self._upload_call = self.channel.stream_unary(
            f"/{_SERVICE}/UploadModel", request_serializer=wire.serialize_chunk_or,
            response_deserializer=pb.UploadModelResponse.FromString,
        )  # fmt: skip
        self._download_call = self.channel.unary_stream(
            f"/{_SERVICE}/DownloadResult",
            request_serializer=pb.DownloadResultRequest.SerializeToString,
            response_deserializer=wire.chunk_or(pb.DownloadResultResponse),
        )  # fmt: skip
        self.timeout, self.retries, self.chunk_bytes = timeout, retries, chunk_bytes

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> PruningClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Callable[..., _T], request: Any, **kwargs: Any) -> _T:
        return self._retrying(
            lambda: fn(request, metadata=self._metadata, timeout=self.timeout, **kwargs)
        )

    def _retrying(self, attempt: Callable[[], _T]) -> _T:
        for i in range(self.retries + 1):
            try:
                return attempt()
            except grpc.RpcError as err:
                if err.code() not in _RETRY or i == self.retries:
                    raise
                time.sleep(min(0.2 * 2**i, 2.0))
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ models

    def upload(
        self, path: str | os.PathLike[str], *, spec_json: str | None = None,
        display_name: str = "", sha256: str | None = None,
    ) -> pb.Model:  # fmt: skip
        """Upload a checkpoint; returns the stored model (``model_id`` is content-based).

        The file is read once: its chunks are sent while a thread hashes them, and the
        sha256 follows in an ``UploadTrailer`` (a known ``sha256`` goes in the header
        instead, and nothing is hashed). Refused over the blob quota, it is hashed and asked
        again with the sha256 in the header: a re-upload of the caller's own model is not
        charged, which the server can only tell from the header."""
        path = Path(path)
        if spec_json is None:
            spec_json = read_spec_json(path)
        header = pb.UploadHeader(
            spec_json=spec_json, total_size=path.stat().st_size, sha256=sha256 or "",
            display_name=display_name or path.name,
        )  # fmt: skip
        try:
            response = self._retrying(
                lambda: self._upload_call(
                    self._upload_messages(path, header), metadata=self._metadata,
                    timeout=max(self.timeout, header.total_size / 2e6),
                )
            )  # fmt: skip
        except grpc.RpcError as err:
            over_quota = err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "blob_quota_bytes" in (
                err.details() or ""
            )  # fmt: skip
            if sha256 is not None or not over_quota:
                raise
            # refused from the header, bytes unknown: the caller's own model is not charged
            # again, which the server can only tell from the sha256, so hash first and ask again
            return self.upload(
                path, spec_json=spec_json, display_name=display_name, sha256=sha256_file(path)
            )
        return response.model

    def _upload_messages(self, path: Path, header: pb.UploadHeader) -> Iterator[Any]:
        """The header, the file's chunks (``bytes``, framed by :mod:`service.wire`), then
        the trailer if the header has no sha256."""
        yield pb.UploadModelRequest(header=header)
        if header.sha256:
            with open(path, "rb") as f:
                while chunk := f.read(self.chunk_bytes):
                    yield chunk
            return
        reader = HashingReader(path, self.chunk_bytes)
        yield from reader
        yield pb.UploadModelRequest(trailer=pb.UploadTrailer(sha256=reader.hexdigest()))

    def delete_model(self, model_id: str) -> None:
        self._call(self.stub.DeleteModel, pb.DeleteModelRequest(model_id=model_id))

    # ------------------------------------------------------------------ jobs

    def create_job(
        self, model_id: str, dataset: str, config: PruneConfig | Mapping[str, Any] | None = None,
        *, request_id: str | None = None, dataset_kwargs: Mapping[str, Any] | None = None,
    ) -> pb.Job:  # fmt: skip
        """Queue a job. ``config`` is a :class:`PruneConfig` or a partial dict of its fields
        (the server fills the rest with its defaults); ``dataset_kwargs`` are the dataset's
        options (e.g. ``{"image_size": 64}``)."""
        request = pb.CreatePruneJobRequest(
            model_id=model_id, dataset=dataset, config=config_message(config),
            request_id=request_id or uuid.uuid4().hex,
        )  # fmt: skip
        if dataset_kwargs:
            request.dataset_kwargs.update(dict(dataset_kwargs))
        return self._call(self.stub.CreatePruneJob, request).job

    def get_job(self, job_id: str) -> pb.Job:
        return self._call(self.stub.GetJob, pb.GetJobRequest(job_id=job_id)).job

    def list_jobs(self, states: tuple[int, ...] = (), page_size: int = 100) -> list[pb.Job]:
        """Every job of the token (newest first), fetching all pages."""
        jobs, token = [], ""
        while True:
            response = self._call(
                self.stub.ListJobs,
                pb.ListJobsRequest(page_size=page_size, page_token=token, states=states),
            )
            jobs += list(response.jobs)
            token = response.next_page_token
            if not token:
                return jobs

    def cancel_job(self, job_id: str) -> pb.Job:
        return self._call(self.stub.CancelJob, pb.CancelJobRequest(job_id=job_id)).job

    def delete_job(self, job_id: str) -> None:
        self._call(self.stub.DeleteJob, pb.DeleteJobRequest(job_id=job_id))

    def watch(self, job_id: str, callback: WatchCallback | None = None) -> pb.Job:
        """Follow a job until it ends (reconnecting if the server restarts); returns the
        final job. ``callback(job, event_or_None)`` runs for every message."""
        job = None
        for attempt in range(self.retries + 1):
            try:
                for message in self.stub.WatchJob(
                    pb.WatchJobRequest(job_id=job_id), metadata=self._metadata
                ):
                    job = message.job
                    if callback is not None:
                        callback(job, message.event if message.HasField("event") else None)
                if job is not None and job.state in _FINAL:
                    return job
            except grpc.RpcError as err:
                if err.code() not in _RETRY or attempt == self.retries:
                    raise
            time.sleep(min(0.5 * 2**attempt, 5.0))
        return job if job is not None else self.get_job(job_id)

    def download(
        self, job_id: str, out_dir: str | os.PathLike[str], format: str = "safetensors"
    ) -> dict[str, Path]:
        """Write ``model.safetensors`` (sha256-checked), ``report.json`` and ``curve.png``
        into ``out_dir``; returns their paths (``"checkpoint"``, ``"report"``, ``"plot"``).
        With ``format="onnx"`` or ``"pt2"`` the model comes as ``model.onnx`` /
        ``model.pt2`` instead (converted by the server, see ``metaprune export``).

        Raises:
            DownloadError: the checkpoint's size or sha256 differs from the announced one.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stream = self._download_call(
            pb.DownloadResultRequest(job_id=job_id, format=format), metadata=self._metadata
        )
        first = next(stream)
        if isinstance(first, memoryview) or first.WhichOneof("part") != "header":
            raise DownloadError("the server's download stream did not start with a header")
        header = first.header
        target = out / f"model.{header.format or 'safetensors'}"
        if target.suffix[1:] != format:
            raise DownloadError(
                f"job {job_id}: asked for {format}, the server sent {header.format!r}"
            )
        tmp = out / f".{target.name}.{uuid.uuid4().hex}.part"
        size = 0
        try:
            with open(tmp, "wb") as f:
                writer = HashingWriter(f)  # hash and write while the next chunks arrive
                try:
                    for message in stream:  # a chunk comes as a memoryview (service.wire)
                        chunk = message if isinstance(message, memoryview) else message.chunk
                        size += len(chunk)
                        writer.write(chunk)
                finally:
                    sha = writer.close()
            if size != header.total_size or sha != header.sha256:
                raise DownloadError(
                    f"job {job_id}: downloaded {size} bytes with sha256 {sha}, "
                    f"the server announced {header.total_size} bytes with sha256 {header.sha256}"
                )
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        paths = {"checkpoint": target, "report": out / "report.json"}
        paths["report"].write_text(header.report_json)
        if header.plot_png:
            paths["plot"] = out / "curve.png"
            paths["plot"].write_bytes(header.plot_png)
        return paths

    # ------------------------------------------------------------------ server

    def server_info(self) -> pb.GetServerInfoResponse:
        return self._call(self.stub.GetServerInfo, pb.GetServerInfoRequest())

    def list_datasets(self) -> list[pb.Dataset]:
        return list(self._call(self.stub.ListDatasets, pb.ListDatasetsRequest()).datasets)

    def list_metanetworks(self) -> list[pb.Metanetwork]:
        return list(
            self._call(self.stub.ListMetanetworks, pb.ListMetanetworksRequest()).metanetworks
        )

    def health(self, service: str = "") -> str:
        """``"SERVING"``, ``"NOT_SERVING"``, ... of the standard health service (no token)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def read_spec_json(path: str | os.PathLike[str], max_header_bytes: int = 100 << 20) -> str:
    """The ``metaprune.spec`` metadata of a safetensors checkpoint, read from its header
    without torch (the server checks the spec and the weights).

    Raises:
        InvalidInputError: the file is missing, not safetensors, or has no spec.
    """
    from metaprune.errors import InvalidInputError

    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if head[:1] == b"\x80" or head[:2] == b"PK":
                kind = (
                    "a Python pickle"
                    if head[:1] == b"\x80"
                    else "a zip archive (a torch.save file?)"
                )
                raise InvalidInputError(
                    f"checkpoint {str(path)!r} is {kind}, not safetensors (pickles are never "
                    "loaded; convert it on your own machine with `metaprune import`)"
                )
            size = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 2 <= size <= max_header_bytes:
                raise InvalidInputError(
                    f"checkpoint {str(path)!r} is not a safetensors file "
                    f"(its first 8 bytes announce a {size:,}-byte header)"
                )
            header = json.loads(f.read(size))
    except OSError as err:
        raise InvalidInputError(f"cannot read checkpoint {str(path)!r}: {err.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidInputError(
            f"checkpoint {str(path)!r} is not a safetensors file (its header is not JSON)"
        ) from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    spec = metadata.get(SPEC_KEY) if isinstance(metadata, dict) else None
    if not isinstance(spec, str):
        raise InvalidInputError(
            f"checkpoint {str(path)!r} has no {SPEC_KEY!r} metadata, so it is not a metaprune "
            "checkpoint (write one with metaprune.save or `metaprune import`)"
        )
    return spec


def config_message(config: PruneConfig | Mapping[str, Any] | None) -> cpb.PruneConfig:
    """A ``PruneConfig`` message from a config object or a partial dict (validated locally
    first, so a typo fails before the network)."""
    if config is None:
        return cpb.PruneConfig()
    if isinstance(config, PruneConfig):
        return convert.config_to_proto(config)
    PruneConfig.from_dict(config)  # the same checks the server runs
    return convert.dict_to_config_proto(config)
