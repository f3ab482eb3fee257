"""The job manager: the queue, the workers (through the executor), watchers, recovery.

Jobs live in the store (:mod:`service.store`); this object moves them through their
states and runs them on a :mod:`metaprune.executor` pool of warm, *spawned* worker
processes (the gRPC process has threads, so it never forks)::

    queued --> running --> succeeded | failed | cancelled
      ^           |
      +-----------+  re-queued by a graceful stop (not counted), or by the next start
                     after a crash (at most ``max_attempts`` crashes, then failed)

A job whose worker raises, segfaults or is killed is *failed* with the executor's reason
(e.g. ``worker process died: killed by signal 9 (SIGKILL)``) and not retried: a job that
kills its worker would likely kill the next one too; the client can submit it again.

Watchers wait on a per-job version counter that every state change and progress event
bumps; they read the latest state and event when they wake, so a slow watcher skips
intermediate events instead of queueing them (the throttle is in the reader).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from metaprune.errors import LimitExceededError, NotFoundError, quote
from metaprune.pruning.config import PruneConfig
from service.auth import Principal
from service.blobs import BlobDir
from service.config import ServiceConfig
from service.errors import AlreadyExistsError, FailedPreconditionError, UnavailableError
from service.logs import log_event
from service.store import (
    ACTIVE_STATES,
    CANCELLED,
    FAILED,
    FINAL_STATES,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    JobRecord,
    Store,
)

if TYPE_CHECKING:
    from metaprune.executor import Executor, TaskHandle

__all__ = ["JobManager"]

TASK_MODULE = "service.job_task"
TASK_NAME = f"{TASK_MODULE}:run_prune_job"
_PERSIST_EVERY = 1.0
_WALL_MARGIN = 60.0  # seconds past max_wall_seconds before the backstop stops a job  # seconds between two writes of a running job's latest event


@dataclasses.dataclass
class _Running:
    handle: TaskHandle
    started: float
    tmp_dir: str
    stop_reason: str | None = None  # "cancel" | "shutdown" | "wall"
    stopped_by: str = ""


class JobManager:
    """Queue and run pruning jobs; thread-safe.

    Args:
        config: the service configuration (workers, limits, attempts).
        store, blobs: persistence.
        executor: an executor to use (default: ``create_executor("local", ...)``).
    """

    def __init__(
        self, config: ServiceConfig, store: Store, blobs: BlobDir,
        executor: Executor | None = None,
    ) -> None:  # fmt: skip
        from metaprune.executor import allow_task_module, create_executor

        self.config, self.store, self.blobs = config, store, blobs
        allow_task_module(TASK_MODULE)
        self.executor = executor or create_executor(
            "local", workers=config.workers, threads_per_worker=config.threads_per_worker
        )
        self._cond = threading.Condition()
        self._running: dict[str, _Running] = {}
        self._versions: dict[str, int] = {}
        self._events: dict[str, dict[str, Any]] = {}
        # (seq, event): the latest event of each job and the last event of each stage it
        # left, so a watcher that was asleep still sees every stage end (a progress bar
        # completes) while intermediate events of a stage coalesce
        self._seq: dict[str, int] = {}
        self._latest: dict[str, tuple[int, dict[str, Any]]] = {}
        self._stage_ends: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        self._persisted: dict[str, float] = {}
        self._waiters: list[threading.Thread] = []
        self._accepting = True
        self._stopped = False
        #: set when a graceful stop begins: a watcher of an unfinished job ends its stream
        #: with UNAVAILABLE (retryable) instead of OK, which would read as "the job ended"
        self.stopping = threading.Event()
        self._recover()
        self._dispatcher = threading.Thread(
            target=self._dispatch, name="job-dispatcher", daemon=True
        )
        self._dispatcher.start()

    # ------------------------------------------------------------------ requests

    def create(
        self, principal: Principal, model_id: str, dataset: str, config: PruneConfig,
        request_id: str, dataset_kwargs: dict[str, Any] | None = None,
    ) -> tuple[JobRecord, bool]:  # fmt: skip
        """Queue a job, or return the job ``request_id`` already created.

        Raises:
            AlreadyExistsError: ``request_id`` was used for a different request.
            LimitExceededError: the queue or the token's job count is full.
            UnavailableError: the server is stopping.
        """
        digest = _request_hash(model_id, dataset, config, dataset_kwargs)
        existing = self.store.find_job_by_request(principal.name, request_id)
        if existing is not None:
            return self._same_request(existing, digest, request_id), False
        if not self._accepting:
            raise UnavailableError("the server is shutting down and accepts no new jobs")
        queued = self.store.count_jobs((QUEUED,))
        if queued >= self.config.max_queued_jobs:
            raise LimitExceededError(
                "max_queued_jobs", self.config.max_queued_jobs, queued + 1, "the job queue"
            )
        mine = self.store.count_jobs(ACTIVE_STATES, principal.name)
        if mine >= self.config.max_jobs_per_token:
            raise LimitExceededError(
                "max_jobs_per_token", self.config.max_jobs_per_token, mine + 1,
                f"unfinished jobs of token {principal.name!r}",
            )  # fmt: skip
        record = JobRecord(
            seq=0, job_id=uuid.uuid4().hex, owner=principal.name, request_id=request_id,
            request_hash=digest, model_id=model_id, dataset=dataset, config=config.to_dict(),
            state=QUEUED, created_at=time.time(), started_at=None, finished_at=None, error="",
            attempts=0, latest_event=None, result_sha256=None, result_size=None, summary=None,
            dataset_kwargs=dict(dataset_kwargs or {}),
        )  # fmt: skip
        job, created = self.store.insert_job(record)
        if not created:  # a concurrent call with the same request_id won the race
            return self._same_request(job, digest, request_id), False
        self._transition(job.job_id, QUEUED, owner=principal.name)
        return job, True

    def _same_request(self, job: JobRecord, digest: str, request_id: str) -> JobRecord:
        if job.request_hash != digest:
            raise AlreadyExistsError(
                f"request_id {quote(request_id)} already created job {job.job_id} with a "
                "different model, dataset or config; use a new request_id"
            )
        return job

    def get(self, principal: Principal, job_id: str) -> JobRecord:
        """The job, if ``principal`` may see it.

        Raises:
            NotFoundError: no such job, or another token's (the same message either way).
        """
        job = (
            self.store.get_job(job_id, principal.owner_filter) if isinstance(job_id, str) else None
        )
        if job is None:
            raise NotFoundError(f"job {quote(job_id)} not found")
        return job

    def events_since(self, job_id: str, seen: int) -> tuple[int, list[dict[str, Any]]]:
        """Events a watcher that has seen up to sequence ``seen`` should get now: the ends
        of stages it missed, then the latest event; returns (new seen, events)."""
        with self._cond:
            latest = self._latest.get(job_id)
            if latest is None or latest[0] <= seen:
                return seen, []
            missed = [e for q, e in self._stage_ends.get(job_id, []) if q > seen]
            return latest[0], [*missed, latest[1]]

    def event_seq(self, job_id: str) -> int:
        with self._cond:
            latest = self._latest.get(job_id)
            return latest[0] if latest else 0

    def latest_event(self, job: JobRecord) -> dict[str, Any] | None:
        with self._cond:
            return self._events.get(job.job_id, job.latest_event)

    def cancel(self, principal: Principal, job_id: str) -> JobRecord:
        """Cancel a queued job at once, or ask a running one to stop (within seconds).
        Cancelling a finished job changes nothing."""
        with self._cond:  # _start holds it too: a job is never between "queued" and "tracked"
            job = self.get(principal, job_id)
            if job.state == QUEUED and self.store.update_job(
                job_id, only_if_state=(QUEUED,), state=CANCELLED, finished_at=time.time(),
                error=f"cancelled by {principal.name!r} while queued",
            ):  # fmt: skip
                self._transition(job_id, CANCELLED, owner=job.owner)
            running = self._running.get(job_id)
            if running is not None and running.stop_reason is None:
                running.stop_reason, running.stopped_by = "cancel", principal.name
                running.handle.cancel()
        return self.get(principal, job_id)

    def delete(self, principal: Principal, job_id: str) -> None:
        """Delete a finished job and its result.

        Raises:
            FailedPreconditionError: the job is still queued or running.
        """
        job = self.get(principal, job_id)
        if not job.done:
            raise FailedPreconditionError(
                f"job {job_id} is {job.state}; cancel it first (only finished jobs are deleted)"
            )
        self.store.delete_job(job_id)
        self.blobs.remove_result(job_id)
        self._drop_model_if_unused(job.model_id)
        with self._cond:
            self._versions.pop(job_id, None)
            self._events.pop(job_id, None)
            self._latest.pop(job_id, None)
            self._stage_ends.pop(job_id, None)
            self._seq.pop(job_id, None)

    def _drop_model_if_unused(self, model_id: str) -> None:
        dropped = self.store.drop_model_if_unused(model_id)
        if dropped is not None:
            self.blobs.remove_blob(dropped.sha256)

    def wait_change(self, job_id: str, seen: int, timeout: float) -> int:
        """Block until job ``job_id`` changes after version ``seen`` (or ``timeout``, or the
        manager stops); return the current version."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._versions.get(job_id, 0) <= seen and not self.stopping.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._versions.get(job_id, 0)

    def version(self, job_id: str) -> int:
        # no lock: one dict read is atomic, and the server's event loop calls this for every
        # watcher, so it must never wait for a thread holding the lock through a SQLite write
        return self._versions.get(job_id, 0)

    def worker_pid(self, job_id: str) -> int | None:
        """The pid of the worker process running ``job_id`` (tests kill it)."""
        with self._cond:
            running = self._running.get(job_id)
            return running.handle.worker_pid if running else None

    @property
    def accepting(self) -> bool:
        return self._accepting

    # ------------------------------------------------------------------ lifecycle

    def _recover(self) -> None:
        """Jobs left ``running`` by a process that died: re-queue, or fail after too many
        starts (a job that crashes the server every time must not crash it forever)."""
        for job in self.store.jobs_in((RUNNING,)):
            if job.crashes >= self.config.max_attempts:  # graceful stops are not crashes
                self.store.update_job(
                    job.job_id, state=FAILED, finished_at=time.time(),
                    error=f"the server died while running this job {job.crashes} times "
                    f"(max_attempts {self.config.max_attempts}; graceful stops not counted); "
                    "not retried",
                )  # fmt: skip
                log_event(
                    "job", job_id=job.job_id, state=FAILED, reason="max_attempts", owner=job.owner
                )
            else:
                self.store.update_job(job.job_id, state=QUEUED)
                log_event(
                    "job", job_id=job.job_id, state=QUEUED, reason="recovered", owner=job.owner
                )

    def shutdown(self, grace: float | None = None) -> None:
        """Stop taking jobs; stop running ones and re-queue them for the next start."""
        grace = self.config.grace_seconds if grace is None else grace
        with self._cond:
            if self._stopped:
                return
            self._accepting = False
            self.stopping.set()
            for running in self._running.values():
                if running.stop_reason is None:
                    running.stop_reason = "shutdown"
                running.handle.cancel()
            self._cond.notify_all()
        deadline = time.monotonic() + grace
        for waiter in list(self._waiters):
            waiter.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._dispatcher.join(5.0)
        self.executor.shutdown(cancel_running=True)
        with self._cond:  # whatever did not report in time goes back to the queue
            leftovers = list(self._running)
        for job_id in leftovers:
            self.store.requeue_after_stop(job_id)

    def _dispatch(self) -> None:
        while True:
            with self._cond:
                if self._stopped or not self._accepting:
                    return
                free = self.config.workers - len(self._running)
                busy = set(self._running)
                self._check_wall_clock()
            if free > 0:
                for job in self.store.jobs_in((QUEUED,))[:free]:
                    if job.job_id not in busy:
                        self._start(job)
            with self._cond:
                self._cond.wait(0.5)

    def _check_wall_clock(self) -> None:
        # the pipeline enforces the budget itself between steps; this is the backstop for a
        # worker stuck inside one step
        limit = self.config.limits.max_wall_seconds + _WALL_MARGIN
        now = time.monotonic()
        for running in self._running.values():
            if running.stop_reason is None and now - running.started > limit:
                running.stop_reason = "wall"
                running.handle.cancel()

    def _start(self, job: JobRecord) -> None:
        with self._cond:  # atomic with respect to cancel(): see there
            if not self._accepting:
                return
            self._start_locked(job)

    def _start_locked(self, job: JobRecord) -> None:
        if not self.store.update_job(
            job.job_id, only_if_state=(QUEUED,), state=RUNNING, started_at=time.time(),
            attempts=job.attempts + 1, error="",
        ):  # fmt: skip
            return  # cancelled meanwhile
        model = self.store.get_model(job.model_id, None)
        if model is None:  # cannot happen through the API (DeleteModel refuses): be safe
            self.store.update_job(job.job_id, state=FAILED, finished_at=time.time(),
                                  error=f"model {job.model_id} is no longer stored")  # fmt: skip
            self._transition(job.job_id, FAILED, owner=job.owner)
            return
        tmp_dir = self.blobs.tmp / f"result-{job.job_id}-{uuid.uuid4().hex[:8]}"
        args = {
            "model_path": str(self.blobs.blob_path(model.sha256)),
            "dataset": job.dataset, "data_root": self.config.data_root, "config": job.config,
            "dataset_kwargs": job.dataset_kwargs,
            "limits": self.config.limits.to_dict(),
            "tmp_dir": str(tmp_dir), "result_dir": str(self.blobs.result_dir(job.job_id)),
        }  # fmt: skip
        from metaprune.executor import TaskSpec

        handle = self.executor.submit(
            TaskSpec(TASK_NAME, args, task_id=f"{job.job_id}-{job.attempts + 1}"),
            on_progress=self._progress_handler(job.job_id),
        )
        self._running[job.job_id] = _Running(handle, time.monotonic(), str(tmp_dir))
        waiter = threading.Thread(
            target=self._await, args=(job, handle), name=f"job-{job.job_id[:8]}", daemon=True
        )
        self._waiters.append(waiter)
        self._transition(job.job_id, RUNNING, owner=job.owner, attempt=job.attempts + 1)
        waiter.start()

    def _progress_handler(self, job_id: str) -> Callable[[dict[str, Any]], None]:
        def on_progress(event: dict[str, Any]) -> None:
            now = time.monotonic()
            with self._cond:
                previous = self._latest.get(job_id)
                seq = self._seq[job_id] = self._seq.get(job_id, 0) + 1
                if previous is not None and previous[1].get("stage") != event.get("stage"):
                    self._stage_ends.setdefault(job_id, []).append(previous)
                self._latest[job_id] = (seq, event)
                self._events[job_id] = event
                self._versions[job_id] = self._versions.get(job_id, 0) + 1
                persist = now - self._persisted.get(job_id, 0.0) >= _PERSIST_EVERY
                if persist:
                    self._persisted[job_id] = now
                self._cond.notify_all()
            if persist:
                self.store.update_job(job_id, only_if_state=(RUNNING,), latest_event=_plain(event))

        return on_progress

    def _await(self, job: JobRecord, handle: TaskHandle) -> None:
        result = handle.result()
        with self._cond:
            running = self._running.pop(job.job_id)
        event = self._events.get(job.job_id)
        common: dict[str, Any] = {"latest_event": _plain(event) if event else None}
        if result.status == SUCCEEDED and result.value is not None:
            value = result.value
            self.store.update_job(
                job.job_id, only_if_state=(RUNNING,), state=SUCCEEDED, finished_at=time.time(),
                result_sha256=value["sha256"], result_size=int(value["size"]),
                summary=value.get("summary"), **common,
            )  # fmt: skip
            self._transition(job.job_id, SUCCEEDED, owner=job.owner)
        elif running.stop_reason == "shutdown":
            self.store.requeue_after_stop(job.job_id, **common)
            self._transition(job.job_id, QUEUED, owner=job.owner, reason="server shutdown")
        elif running.stop_reason == "cancel":
            self.store.update_job(
                job.job_id, only_if_state=(RUNNING,), state=CANCELLED, finished_at=time.time(),
                error=f"cancelled by {running.stopped_by!r} while running", **common,
            )  # fmt: skip
            self._transition(job.job_id, CANCELLED, owner=job.owner)
        else:
            reason = (
                f"exceeded max_wall_seconds ({self.config.limits.max_wall_seconds:g} s)"
                if running.stop_reason == "wall"
                else result.error or f"the task ended as {result.status}"
            )
            self.store.update_job(
                job.job_id, only_if_state=(RUNNING,), state=FAILED, finished_at=time.time(),
                error=reason, **common,
            )  # fmt: skip
            self._transition(job.job_id, FAILED, owner=job.owner, error=reason)
        shutil.rmtree(running.tmp_dir, ignore_errors=True)
        with self._cond:
            self._cond.notify_all()  # a worker is free: wake the dispatcher

    def _transition(self, job_id: str, state: str, **fields: Any) -> None:
        with self._cond:
            self._versions[job_id] = self._versions.get(job_id, 0) + 1
            if state in FINAL_STATES:
                self._persisted.pop(job_id, None)
            self._cond.notify_all()
        log_event("job", job_id=job_id, state=state, **fields)


def _request_hash(
    model_id: str, dataset: str, config: PruneConfig, dataset_kwargs: dict[str, Any] | None = None
) -> str:
    data = {"model_id": model_id, "dataset": dataset, "config": config.to_dict()}
    if dataset_kwargs:  # absent when empty: digests of jobs without options stay as they were
        data["dataset_kwargs"] = dataset_kwargs
    text = json.dumps(data, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _plain(value: Any) -> Any:
    """``value`` as JSON-safe data: non-finite floats become strings, unknown objects too."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
