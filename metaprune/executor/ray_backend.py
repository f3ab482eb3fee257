"""The ``ray`` backend: every task is a Ray task with its declared resources.

Only this module imports Ray (an optional extra). What crosses to Ray is the task's
*description*: the registered function's name, plain-data ``args`` and the thread count.
The remote function itself is metaprune's own code, resolved through the same allow-list
as the local backend. Ray has no authentication of its own: a cluster must sit behind the
service's gRPC front door and never be reachable by clients.

Progress travels through a small actor (``_ProgressSink``): the task pushes throttled
events, a thread of the executor drains them and calls the callers' handlers. Each task
waits for its last push before returning, so its final progress event is delivered
before its handle finishes. Cancel is ``ray.cancel`` (a ``KeyboardInterrupt`` in the
task, reported as cancelled), then ``ray.cancel(force=True)`` after the grace period.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from typing import Any

import ray

from metaprune.errors import InvalidInputError, quote

from .api import (
    CANCELLED,
    FAILED,
    SUCCEEDED,
    Executor,
    ProgressHandler,
    TaskHandle,
    TaskResult,
    TaskSpec,
    task_threads,
)
from .registry import resolve_task

__all__ = ["RayExecutor"]

_POLL_SECONDS = 0.1


@ray.remote(num_cpus=0)
class _ProgressSink:
    """Collects progress events of every task of one executor until the driver drains them."""

    def __init__(self) -> None:
        self._events: list[tuple[str, dict[str, Any]]] = []

    def push(self, task_id: str, event: dict[str, Any]) -> None:
        self._events.append((task_id, event))

    def drain(self) -> list[tuple[str, dict[str, Any]]]:
        events, self._events = self._events, []
        return events


def _execute(fn_name: str, args: dict[str, Any], threads: int, sink: Any, task_id: str) -> tuple:
    """Run one registered task in a Ray worker; every outcome is returned as plain data."""
    import torch

    from metaprune.pruning.progress import CancelToken, PruneCancelled

    from .api import check_plain_data
    from .throttle import ProgressThrottle

    torch.set_num_threads(threads)
    last: list[Any] = []

    def push(event: dict[str, Any]) -> None:
        last[:] = [sink.push.remote(task_id, event)]

    throttle = ProgressThrottle(push)

    def progress(event: dict[str, Any]) -> None:
        if not isinstance(event, dict):
            raise TypeError(f"progress takes a dict (found {type(event).__name__})")
        throttle(event)

    try:
        fn = resolve_task(fn_name, trusted=True)  # the driver has checked the allow-list
        value = fn(args, progress, CancelToken())
        if not isinstance(value, dict):
            raise TypeError(f"task {fn_name} returned {type(value).__name__}, expected dict")
        check_plain_data(value, f"the result of task {fn_name}")
        outcome: tuple = (SUCCEEDED, value, None)
    except (PruneCancelled, KeyboardInterrupt) as exc:  # ray.cancel raises KeyboardInterrupt
        outcome = (CANCELLED, None, str(exc) or "cancelled by ray.cancel")
    except BaseException as exc:  # noqa: BLE001 - every failure becomes the task's result
        outcome = (FAILED, None, TaskResult.short_error(exc))
    throttle.flush()
    if last:
        ray.get(last[0])  # the last event reaches the sink before the result is ready
    return outcome


_remote_execute = ray.remote(max_retries=0)(_execute)


@dataclasses.dataclass(eq=False)
class _Task:
    handle: TaskHandle
    ref: Any
    on_progress: ProgressHandler | None
    cancel_deadline: float | None = None
    forced: bool = False


class RayExecutor(Executor):
    """Run tasks as Ray tasks, on a cluster at ``address`` or on a local Ray instance.

    Args:
        workers: CPUs of the local Ray instance started when ``address`` is ``None`` and
            Ray is not initialised in this process yet.
        threads_per_worker: torch threads per task.
        address: a cluster address (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``).
        cancel_grace: seconds a cancelled task has to stop before it is force-cancelled.
    """

    backend = "ray"

    def __init__(
        self,
        workers: int = 2,
        threads_per_worker: int = 1,
        *,
        address: str | None = None,
        cancel_grace: float = 5.0,
    ) -> None:
        for name, value in (("workers", workers), ("threads_per_worker", threads_per_worker)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(
                    f"ray executor: {name} must be an int >= 1 (found {quote(value)})"
                )
        self.threads_per_worker, self.cancel_grace = threads_per_worker, cancel_grace
        self._owns_ray = False
        if not ray.is_initialized():
            if address is None:
                ray.init(
                    num_cpus=workers, include_dashboard=False, log_to_driver=False,
                    object_store_memory=128 * 1024**2,
                )  # fmt: skip
            else:
                try:
                    ray.init(address=address, log_to_driver=False)
                except ConnectionError as exc:
                    raise InvalidInputError(
                        f"cannot connect to the Ray cluster at {quote(address)}: {exc}"
                    ) from None
            self._owns_ray = True
        self._sink = _ProgressSink.remote()
        self._lock = threading.Lock()
        self._live: dict[str, _Task] = {}
        self._closing = False
        self._collector = threading.Thread(
            target=self._run, name="metaprune-ray-executor", daemon=True
        )
        self._collector.start()

    def submit(self, spec: TaskSpec, on_progress: ProgressHandler | None = None) -> TaskHandle:
        if not isinstance(spec, TaskSpec):
            raise InvalidInputError(f"submit takes a TaskSpec (found {type(spec).__name__})")
        resolve_task(spec.fn)  # the allow-list check happens here, in the driver
        task_id = spec.task_id or uuid.uuid4().hex
        res = spec.resources
        options: dict[str, Any] = {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus}
        if res.memory_bytes is not None:
            options["memory"] = res.memory_bytes
        with self._lock:
            if self._closing:
                raise RuntimeError("the executor is shut down")
            if task_id in self._live:
                raise InvalidInputError(f"task id {quote(task_id)} is already in use")
            threads = task_threads(res, self.threads_per_worker)
            ref = _remote_execute.options(**options).remote(
                spec.fn, spec.args, threads, self._sink, task_id
            )
            handle = TaskHandle(task_id, self._cancel)
            self._live[task_id] = _Task(handle, ref, on_progress)
        return handle

    def shutdown(self, cancel_running: bool = True) -> None:
        with self._lock:
            first = not self._closing
            self._closing = True
            if first and cancel_running:
                for task in self._live.values():
                    self._request_cancel_locked(task)
        self._collector.join()
        if first:
            ray.kill(self._sink)
            if self._owns_ray:
                ray.shutdown()

    def _cancel(self, handle: TaskHandle) -> None:
        with self._lock:
            task = self._live.get(handle.task_id)
            if task is not None and task.handle is handle:
                self._request_cancel_locked(task)

    def _request_cancel_locked(self, task: _Task) -> None:
        if task.cancel_deadline is None:
            task.cancel_deadline = time.monotonic() + self.cancel_grace
            ray.cancel(task.ref, force=False)  # queued: dropped; running: KeyboardInterrupt

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closing and not self._live:
                    return
                tasks = {t.ref: t for t in self._live.values()}
                now = time.monotonic()
                for t in tasks.values():
                    if t.cancel_deadline is not None and now >= t.cancel_deadline and not t.forced:
                        t.forced = True
                        ray.cancel(t.ref, force=True)
            ready: list[Any] = []
            if tasks:
                ready, _ = ray.wait(list(tasks), num_returns=len(tasks), timeout=_POLL_SECONDS)
            else:
                time.sleep(_POLL_SECONDS)
            by_id = {t.handle.task_id: t for t in tasks.values()}
            for task_id, event in ray.get(self._sink.drain.remote()):
                task = by_id.get(task_id)
                if task is not None:
                    task.handle.started.set()
                    if task.on_progress is not None:
                        try:
                            task.on_progress(event)
                        except Exception:  # noqa: BLE001 - a handler must not stop the executor
                            import logging

                            logging.getLogger(__name__).exception("progress handler failed")
            for ref in ready:
                task = tasks[ref]
                result = self._outcome(task)
                with self._lock:
                    self._live.pop(task.handle.task_id, None)
                task.handle.started.set()
                task.handle._finish(result)

    @staticmethod
    def _outcome(task: _Task) -> TaskResult:
        try:
            status, value, error = ray.get(task.ref)
            return TaskResult(status, value, error)
        except ray.exceptions.TaskCancelledError:
            started = task.handle.started.is_set()
            return TaskResult(
                CANCELLED, error="cancelled; the Ray task was stopped" if started else "cancelled"
            )
        except ray.exceptions.WorkerCrashedError as exc:
            if task.cancel_deadline is not None:
                return TaskResult(CANCELLED, error="cancelled; the Ray worker was stopped")
            return TaskResult(FAILED, error=f"worker process died: {_first_line(exc)}")
        except ray.exceptions.RayError as exc:
            return TaskResult(FAILED, error=f"{type(exc).__name__}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:500] if text else type(exc).__name__
