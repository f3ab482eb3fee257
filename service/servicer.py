"""``PruningServicer``: the thin gRPC layer. proto -> domain object -> core call -> proto.

Authentication, error mapping, logging and metrics happen in :mod:`service.interceptor`;
the caller is :data:`~service.auth.current_principal`. Every method here only converts and
delegates: jobs to :class:`~service.jobs.JobManager`, uploads to :mod:`service.uploads`,
listings to :mod:`metaprune` and :mod:`metanet`.

The methods are coroutines on the server's event loop (``grpc.aio``). Anything that blocks
(SQLite, files, dataset and metanetwork listings) runs in the loop's bounded thread pool
through ``asyncio.to_thread`` (the unary methods are a blocking body ``_name`` run there);
streams (uploads, watchers, downloads) hold no thread while they wait, and each holds one
of its token's slots (:mod:`service.slots`) while it is open.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

from metaprune.data import check_dataset_kwargs
from metaprune.errors import InvalidInputError, NotFoundError, quote
from metaprune.models import ArchSpec, list_sources
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
from service.metrics import Metrics
from service.policy import check_job, check_name, check_request_id, spec_size
from service.result_formats import ResultFiles
from service.slots import TokenSlots
from service.store import FINAL_STATES, SUCCEEDED, Store
from service.uploads import receive_upload
from service.wire import framed_chunks

__all__ = ["PruningServicer"]

_MAX_PAGE = 500


class PruningServicer(pb_grpc.PruningServiceServicer):
    def __init__(
        self, config: ServiceConfig, store: Store, blobs: BlobDir, jobs: JobManager,
        metrics: Metrics | None = None,
    ) -> None:  # fmt: skip
        self.config, self.store, self.blobs, self.jobs = config, store, blobs, jobs
        self.metrics = metrics
        self.slots = TokenSlots(
            {"upload": config.max_uploads_per_token, "stream": config.max_streams_per_token},
            metrics,
        )
        self._datasets: dict[str, tuple[int, int, int]] = {}  # name -> classes, channels, size
        self._datasets_lock = threading.Lock()
        self.results = ResultFiles(jobs.executor, config.limits)
        self._default_config_json = json.dumps(PruneConfig().to_dict())

    # ------------------------------------------------------------------ models

    async def UploadModel(
        self, request_iterator: AsyncIterator[pb.UploadModelRequest], context: Any
    ) -> pb.UploadModelResponse:
        principal = _caller()
        principal.require_write("upload models")
        with self.slots.hold("upload", principal.name):
            record, created = await receive_upload(
                request_iterator, principal, self.config, self.store, self.blobs, self.metrics
            )
        return pb.UploadModelResponse(model=convert.model_to_proto(record), created=created)

    async def DeleteModel(
        self, request: pb.DeleteModelRequest, context: Any
    ) -> pb.DeleteModelResponse:
        return await asyncio.to_thread(self._delete_model, request)

    def _delete_model(self, request: pb.DeleteModelRequest) -> pb.DeleteModelResponse:
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

    async def CreatePruneJob(
        self, request: pb.CreatePruneJobRequest, context: Any
    ) -> pb.CreatePruneJobResponse:
        return await asyncio.to_thread(self._create_prune_job, request)

    def _create_prune_job(self, request: pb.CreatePruneJobRequest) -> pb.CreatePruneJobResponse:
        principal = _caller()
        principal.require_write("create jobs")
        request_id = check_request_id(request.request_id)
        model = self._model(principal, request.model_id)
        dataset = check_name("dataset", request.dataset, self.config.datasets)
        config = convert.config_from_proto(request.config)
        check_job(config, self.config.limits, self._metanetworks())
        options = convert.dataset_kwargs_from_proto(request.dataset_kwargs)
        options = check_dataset_kwargs(dataset, options, self.config.limits)
        _, channels, size = self._dataset_shape(dataset)
        channels, size = options.get("in_channels", channels), options.get("image_size", size)
        spec, shape = ArchSpec.from_json(model.spec_json), (channels, size, size)
        spec_size(spec, self.config.limits, shape)
        check_reachable_spec(spec, shape, config, self.config.limits)  # target past the floor
        job, created = self.jobs.create(
            principal, model.model_id, dataset, config, request_id, options
        )
        return pb.CreatePruneJobResponse(job=self._job(job), created=created)

    async def GetJob(self, request: pb.GetJobRequest, context: Any) -> pb.GetJobResponse:
        return await asyncio.to_thread(self._get_job, request)

    def _get_job(self, request: pb.GetJobRequest) -> pb.GetJobResponse:
        return pb.GetJobResponse(job=self._job(self.jobs.get(_caller(), request.job_id)))

    async def ListJobs(self, request: pb.ListJobsRequest, context: Any) -> pb.ListJobsResponse:
        return await asyncio.to_thread(self._list_jobs, request)

    def _list_jobs(self, request: pb.ListJobsRequest) -> pb.ListJobsResponse:
        principal = _caller()
        size = request.page_size or 50
        if not 1 <= size <= _MAX_PAGE:
            raise InvalidInputError(f"page_size must be 0-{_MAX_PAGE} (found {request.page_size})")
        states = tuple(convert.state_from_proto(s) for s in request.states)
        before = _decode_page_token(request.page_token) if request.page_token else None
        jobs = self.store.list_jobs(principal.owner_filter, states, before, size + 1)
        token = _encode_page_token(jobs[size - 1].seq) if len(jobs) > size else ""
        return pb.ListJobsResponse(jobs=[self._job(j) for j in jobs[:size]], next_page_token=token)

    async def CancelJob(self, request: pb.CancelJobRequest, context: Any) -> pb.CancelJobResponse:
        return await asyncio.to_thread(self._cancel_job, request)

    def _cancel_job(self, request: pb.CancelJobRequest) -> pb.CancelJobResponse:
        principal = _caller()
        principal.require_write("cancel jobs")
        return pb.CancelJobResponse(job=self._job(self.jobs.cancel(principal, request.job_id)))

    async def DeleteJob(self, request: pb.DeleteJobRequest, context: Any) -> pb.DeleteJobResponse:
        return await asyncio.to_thread(self._delete_job, request)

    def _delete_job(self, request: pb.DeleteJobRequest) -> pb.DeleteJobResponse:
        principal = _caller()
        principal.require_write("delete jobs")
        self.jobs.delete(principal, request.job_id)
        return pb.DeleteJobResponse()

    async def WatchJob(
        self, request: pb.WatchJobRequest, context: Any
    ) -> AsyncIterator[pb.WatchJobResponse]:
        principal = _caller()
        with self.slots.hold("stream", principal.name):
            job, first, seen, seen_event = await asyncio.to_thread(
                self._watch_start, principal, request.job_id
            )
            yield first  # a late watcher starts from the current state and the latest event
            # polls the job's version counter (a dict read): no thread is held while waiting,
            # and events within one interval coalesce into the latest (a throttle)
            while job.state not in FINAL_STATES:
                await asyncio.sleep(self.config.watch_interval)
                version = self.jobs.version(job.job_id)
                if version != seen:
                    seen = version
                    job, seen_event, messages = await asyncio.to_thread(
                        self._watch_messages, principal, job.job_id, seen_event
                    )
                    for message in messages:
                        yield message
                if not self.jobs.accepting and job.state not in FINAL_STATES:
                    raise UnavailableError(
                        f"the server is stopping; job {job.job_id} is still {job.state} and will "
                        "resume on the next start: watch it again there"
                    )

    def _watch_start(
        self, principal: Principal, job_id: str
    ) -> tuple[Any, pb.WatchJobResponse, int, int]:
        """The job's first message, and its version and event sequence read *before* the job
        (a change in between is then seen by the first poll, never lost)."""
        seen, seen_event = self.jobs.version(job_id), self.jobs.event_seq(job_id)
        job = self.jobs.get(principal, job_id)
        first = pb.WatchJobResponse(job=self._job(job))
        last_event = self.jobs.latest_event(job)
        if last_event:
            first.event.CopyFrom(convert.event_to_proto(last_event))
        return job, first, seen, seen_event

    def _watch_messages(
        self, principal: Principal, job_id: str, seen_event: int
    ) -> tuple[Any, int, list[pb.WatchJobResponse]]:
        """The job now, and one message per event a watcher at ``seen_event`` missed."""
        job = self.jobs.get(principal, job_id)
        seen_event, events = self.jobs.events_since(job_id, seen_event)
        snapshot = self._job(job)
        messages = []
        for event in events or [None]:
            message = pb.WatchJobResponse(job=snapshot)
            if event is not None:
                message.event.CopyFrom(convert.event_to_proto(event))
            messages.append(message)
        return job, seen_event, messages

    async def DownloadResult(
        self, request: pb.DownloadResultRequest, context: Any
    ) -> AsyncIterator[pb.DownloadResultResponse | bytes]:
        principal = _caller()
        with self.slots.hold("stream", principal.name):
            checkpoint, header = await asyncio.to_thread(self._download_header, principal, request)
            yield pb.DownloadResultResponse(header=header)
            async for message, size in framed_chunks(checkpoint, self.config.chunk_bytes):
                if self.metrics is not None:
                    self.metrics.download_bytes.inc(size)
                yield message  # an encoded chunk message (service.wire: one copy, no protobuf)

    def _download_header(
        self, principal: Principal, request: pb.DownloadResultRequest
    ) -> tuple[Any, pb.DownloadHeader]:
        job = self.jobs.get(principal, request.job_id)
        if job.state != SUCCEEDED:
            raise FailedPreconditionError(
                f"job {job.job_id} is {job.state}; only a succeeded job has a result"
                + (f" (error: {job.error})" if job.error else "")
            )
        folder = self.blobs.result_dir(job.job_id)
        checkpoint, sha = self.results.get(folder, request.format, job.result_sha256 or "")
        plot = folder / "curve.png"
        return checkpoint, pb.DownloadHeader(
            total_size=checkpoint.stat().st_size, sha256=sha,
            report_json=(folder / "report.json").read_text(),
            plot_png=plot.read_bytes() if plot.exists() else b"",
            format=request.format or "safetensors",
        )  # fmt: skip

    def _job(self, job: Any) -> pb.Job:
        return convert.job_to_proto(job, self.jobs.latest_event(job))

    # ------------------------------------------------------------------ server

    async def ListMetanetworks(self, request: Any, context: Any) -> pb.ListMetanetworksResponse:
        return await asyncio.to_thread(self._list_metanetworks)

    def _list_metanetworks(self) -> pb.ListMetanetworksResponse:
        _caller()
        return pb.ListMetanetworksResponse(
            metanetworks=[
                pb.Metanetwork(name=n, description="shipped with metaprune (metanet/pretrained)")
                for n in self._metanetworks()
            ]
        )

    async def ListDatasets(self, request: Any, context: Any) -> pb.ListDatasetsResponse:
        return await asyncio.to_thread(self._list_datasets)

    def _list_datasets(self) -> pb.ListDatasetsResponse:
        _caller()
        out = []
        for name in self.config.datasets:
            classes, channels, size = self._dataset_shape(name)
            out.append(
                pb.Dataset(name=name, num_classes=classes, in_channels=channels, image_size=size)
            )
        return pb.ListDatasetsResponse(datasets=out)

    async def GetServerInfo(self, request: Any, context: Any) -> pb.GetServerInfoResponse:
        principal = _caller()  # in memory only: answered on the loop, never queued for a thread
        return pb.GetServerInfoResponse(
            version=__version__, limits=self.config.public_limits(), methods=list(METHODS),
            target_kinds=list(TARGET_KINDS),
            default_config_json=self._default_config_json, token_name=principal.name,
            workers=self.config.workers, architecture_sources=list_sources(),
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
