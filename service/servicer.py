"""``PruningServicer``: the thin gRPC layer. proto -> domain object -> core call -> proto.

Authentication, error mapping and logging happen in :mod:`service.interceptor`; the
caller is :data:`~service.auth.current_principal`. Every method here only converts and
delegates: jobs to :class:`~service.jobs.JobManager`, uploads to :mod:`service.uploads`,
listings to :mod:`metaprune` and :mod:`metanet`.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

from metaprune.errors import InvalidInputError, NotFoundError, quote
from metaprune.models import ArchSpec
from metaprune.pruning.config import METHODS, TARGET_KINDS, PruneConfig
from metaprune.pruning.reachable import check_reachable_spec
from metaprune.version import __version__
from service import convert
from service._generated import pruning_service_pb2 as pb
from service._generated import pruning_service_pb2_grpc as pb_grpc
from service.auth import Principal, current_principal
from service.blobs import BlobDir
from service.config import ServiceConfig
from service.errors import FailedPreconditionError, UnavailableError
from service.jobs import JobManager
from service.policy import check_job, check_name, check_request_id, spec_size
from service.store import FINAL_STATES, SUCCEEDED, Store
from service.uploads import receive_upload

__all__ = ["PruningServicer"]

_MAX_PAGE = 500


class PruningServicer(pb_grpc.PruningServiceServicer):
    def __init__(
        self, config: ServiceConfig, store: Store, blobs: BlobDir, jobs: JobManager
    ) -> None:
        self.config, self.store, self.blobs, self.jobs = config, store, blobs, jobs
        self._datasets: dict[str, tuple[int, int, int]] = {}  # name -> classes, channels, size
        self._datasets_lock = threading.Lock()

    # ------------------------------------------------------------------ models

    def UploadModel(
        self, request_iterator: Iterator[pb.UploadModelRequest], context: Any
    ) -> pb.UploadModelResponse:
        principal = _caller()
        principal.require_write("upload models")
        record, created = receive_upload(
            request_iterator, principal, self.config, self.store, self.blobs
        )
        return pb.UploadModelResponse(model=convert.model_to_proto(record), created=created)

    def DeleteModel(self, request: pb.DeleteModelRequest, context: Any) -> pb.DeleteModelResponse:
        principal = _caller()
        principal.require_write("delete models")
        model = self._model(principal, request.model_id)
        if self.store.active_jobs_of_model(model.model_id, principal.owner_filter):
            raise FailedPreconditionError(
                f"model {model.model_id} is used by queued or running jobs; cancel them first"
            )
        self.store.remove_model_ref(model.model_id, principal.owner_filter)
        self.jobs._drop_model_if_unused(model.model_id)
        return pb.DeleteModelResponse()

    def _model(self, principal: Principal, model_id: str) -> Any:
        record = self.store.get_model(model_id, principal.owner_filter)
        if record is None:
            raise NotFoundError(f"model {quote(model_id)} not found (upload it first)")
        return record

    # ------------------------------------------------------------------ jobs

    def CreatePruneJob(
        self, request: pb.CreatePruneJobRequest, context: Any
    ) -> pb.CreatePruneJobResponse:
        principal = _caller()
        principal.require_write("create jobs")
        request_id = check_request_id(request.request_id)
        model = self._model(principal, request.model_id)
        dataset = check_name("dataset", request.dataset, self.config.datasets)
        config = convert.config_from_proto(request.config)
        check_job(config, self.config.limits, self._metanetworks())
        _, channels, size = self._dataset_shape(dataset)
        spec, shape = ArchSpec.from_json(model.spec_json), (channels, size, size)
        spec_size(spec, self.config.limits, shape)
        check_reachable_spec(spec, shape, config, self.config.limits)  # target past the floor
        job, created = self.jobs.create(principal, model.model_id, dataset, config, request_id)
        return pb.CreatePruneJobResponse(job=self._job(job), created=created)

    def GetJob(self, request: pb.GetJobRequest, context: Any) -> pb.GetJobResponse:
        return pb.GetJobResponse(job=self._job(self.jobs.get(_caller(), request.job_id)))

    def ListJobs(self, request: pb.ListJobsRequest, context: Any) -> pb.ListJobsResponse:
        principal = _caller()
        size = request.page_size or 50
        if not 1 <= size <= _MAX_PAGE:
            raise InvalidInputError(f"page_size must be 0-{_MAX_PAGE} (found {request.page_size})")
        states = tuple(convert.state_from_proto(s) for s in request.states)
        before = _decode_page_token(request.page_token) if request.page_token else None
        jobs = self.store.list_jobs(principal.owner_filter, states, before, size + 1)
        token = _encode_page_token(jobs[size - 1].seq) if len(jobs) > size else ""
        return pb.ListJobsResponse(jobs=[self._job(j) for j in jobs[:size]], next_page_token=token)

    def CancelJob(self, request: pb.CancelJobRequest, context: Any) -> pb.CancelJobResponse:
        principal = _caller()
        principal.require_write("cancel jobs")
        return pb.CancelJobResponse(job=self._job(self.jobs.cancel(principal, request.job_id)))

    def DeleteJob(self, request: pb.DeleteJobRequest, context: Any) -> pb.DeleteJobResponse:
        principal = _caller()
        principal.require_write("delete jobs")
        self.jobs.delete(principal, request.job_id)
        return pb.DeleteJobResponse()

    def WatchJob(self, request: pb.WatchJobRequest, context: Any) -> Iterator[pb.WatchJobResponse]:
        principal = _caller()
        job = self.jobs.get(principal, request.job_id)
        seen = self.jobs.version(job.job_id)
        seen_event = self.jobs.event_seq(job.job_id)
        first = pb.WatchJobResponse(job=self._job(job))
        last_event = self.jobs.latest_event(job)
        if last_event:
            first.event.CopyFrom(convert.event_to_proto(last_event))
        yield first  # a late watcher starts from the current state and the latest event
        interval = self.config.watch_interval
        while job.state not in FINAL_STATES and context.is_active():
            version = self.jobs.wait_change(job.job_id, seen, timeout=1.0)
            if version == seen:
                if self.jobs.stopping.is_set():  # not OK: that would read as "the job ended"
                    raise UnavailableError(
                        f"the server is stopping; job {job.job_id} is still {job.state}: "
                        "watch it again once the server is back (it resumes the job)"
                    )
                continue
            seen = version
            job = self.jobs.get(principal, job.job_id)
            seen_event, events = self.jobs.events_since(job.job_id, seen_event)
            snapshot = self._job(job)
            for event in events or [None]:
                message = pb.WatchJobResponse(job=snapshot)
                if event is not None:
                    message.event.CopyFrom(convert.event_to_proto(event))
                yield message
            time.sleep(interval)  # throttle: events within a stage coalesce into the latest

    def DownloadResult(
        self, request: pb.DownloadResultRequest, context: Any
    ) -> Iterator[pb.DownloadResultResponse]:
        job = self.jobs.get(_caller(), request.job_id)
        if job.state != SUCCEEDED:
            raise FailedPreconditionError(
                f"job {job.job_id} is {job.state}; only a succeeded job has a result"
                + (f" (error: {job.error})" if job.error else "")
            )
        folder = self.blobs.result_dir(job.job_id)
        checkpoint = folder / "model.safetensors"
        plot = folder / "curve.png"
        yield pb.DownloadResultResponse(
            header=pb.DownloadHeader(
                total_size=checkpoint.stat().st_size, sha256=job.result_sha256 or "",
                report_json=(folder / "report.json").read_text(),
                plot_png=plot.read_bytes() if plot.exists() else b"",
            )
        )  # fmt: skip
        with open(checkpoint, "rb") as f:
            while chunk := f.read(self.config.chunk_bytes):
                yield pb.DownloadResultResponse(chunk=chunk)

    def _job(self, job: Any) -> pb.Job:
        return convert.job_to_proto(job, self.jobs.latest_event(job))

    # ------------------------------------------------------------------ server

    def ListMetanetworks(self, request: Any, context: Any) -> pb.ListMetanetworksResponse:
        _caller()
        return pb.ListMetanetworksResponse(
            metanetworks=[
                pb.Metanetwork(name=n, description="shipped with metaprune (metanet/pretrained)")
                for n in self._metanetworks()
            ]
        )

    def ListDatasets(self, request: Any, context: Any) -> pb.ListDatasetsResponse:
        _caller()
        out = []
        for name in self.config.datasets:
            classes, channels, size = self._dataset_shape(name)
            out.append(
                pb.Dataset(name=name, num_classes=classes, in_channels=channels, image_size=size)
            )
        return pb.ListDatasetsResponse(datasets=out)

    def GetServerInfo(self, request: Any, context: Any) -> pb.GetServerInfoResponse:
        principal = _caller()
        return pb.GetServerInfoResponse(
            version=__version__, limits=self.config.public_limits(), methods=list(METHODS),
            target_kinds=list(TARGET_KINDS),
            default_config_json=json.dumps(PruneConfig().to_dict()), token_name=principal.name,
            workers=self.config.workers,
        )  # fmt: skip

    def _metanetworks(self) -> tuple[str, ...]:
        if self.config.metanetworks is not None:
            return self.config.metanetworks
        from metanet.export import list_pretrained

        return tuple(list_pretrained())

    def _dataset_shape(self, name: str) -> tuple[int, int, int]:
        with self._datasets_lock:
            if name not in self._datasets:
                from metaprune.data import get_dataset

                splits = get_dataset(name, self.config.data_root)
                self._datasets[name] = (splits.num_classes, splits.in_channels, splits.image_size)
            return self._datasets[name]


def _caller() -> Principal:
    return current_principal.get()


def _encode_page_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode()


def _decode_page_token(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        if not text.startswith("seq:"):
            raise ValueError
        return int(text[4:])
    except (ValueError, UnicodeDecodeError):
        raise InvalidInputError(
            f"page_token {quote(token)} is not one this server issued"
        ) from None
