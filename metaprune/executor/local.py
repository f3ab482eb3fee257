"""The ``local`` backend: a pool of warm, spawned worker processes on this machine.

One monitor thread owns the pool: it waits on every worker's pipe and process sentinel,
dispatches queued tasks to idle workers, turns a dead worker into a failed task (naming
the signal or exit code) and starts a replacement, and kills a worker whose cancelled task
has not stopped within the grace period. A second thread calls the callers' progress
handlers and finishes handles in the order events arrived, so a task's last progress
event is delivered before its :meth:`TaskHandle.result` returns.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import multiprocessing
import os
import queue
import signal
import threading
import time
import uuid
from multiprocessing.connection import Connection, wait
from typing import Any

from metaprune.errors import InvalidInputError, quote

from .api import (
    CANCELLED,
    FAILED,
    Executor,
    ProgressHandler,
    TaskHandle,
    TaskResult,
    TaskSpec,
    task_threads,
)
from .registry import resolve_task
from .worker import worker_main

__all__ = ["LocalExecutor", "describe_exit"]

_MAX_START_FAILURES = 3  # consecutive workers dying before "ready": stop respawning


def describe_exit(exitcode: int | None) -> str:
    """``"killed by signal 9 (SIGKILL)"`` or ``"exited with code 3"``."""
    if exitcode is None:
        return "exited (code unknown)"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {-exitcode} ({name})"
    return f"exited with code {exitcode}"


@dataclasses.dataclass(eq=False)
class _Task:
    spec: TaskSpec
    handle: TaskHandle
    on_progress: ProgressHandler | None
    cancel_deadline: float | None = None


@dataclasses.dataclass(eq=False)
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    ready: bool = False
    task: _Task | None = None


class LocalExecutor(Executor):
    """Run tasks in ``workers`` spawned processes with ``threads_per_worker`` torch threads each.

    Args:
        workers: worker processes (one task at a time each).
        threads_per_worker: torch intra-op threads in each worker.
        cancel_grace: seconds a cancelled task has to stop before its worker is killed.
    """

    backend = "local"

    def __init__(self, workers: int = 2, threads_per_worker: int = 1, *, cancel_grace: float = 5.0):
        for name, value in (("workers", workers), ("threads_per_worker", threads_per_worker)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(
                    f"local executor: {name} must be an int >= 1 (found {quote(value)})"
                )
        if not cancel_grace > 0:
            raise InvalidInputError(
                f"local executor: cancel_grace must be > 0 (found {cancel_grace!r})"
            )
        self.workers, self.threads_per_worker, self.cancel_grace = (
            workers,
            threads_per_worker,
            cancel_grace,
        )
        # spawn, never fork: the parent may run gRPC or rich threads that fork would copy mid-lock
        self._ctx = multiprocessing.get_context("spawn")
        self._lock = threading.RLock()
        self._pending: collections.deque[_Task] = collections.deque()
        self._live: dict[str, _Task] = {}
        self._pool: list[_Worker] = []
        self._start_failures = 0
        self._closing = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._events: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        for _ in range(workers):
            self._pool.append(self._start_worker())
        self._monitor = threading.Thread(
            target=self._run_monitor, name="metaprune-executor", daemon=True
        )
        self._delivery = threading.Thread(
            target=self._run_delivery, name="metaprune-progress", daemon=True
        )
        self._monitor.start()
        self._delivery.start()

    # -- public API ---------------------------------------------------------------------

    def submit(self, spec: TaskSpec, on_progress: ProgressHandler | None = None) -> TaskHandle:
        if not isinstance(spec, TaskSpec):
            raise InvalidInputError(f"submit takes a TaskSpec (found {type(spec).__name__})")
        resolve_task(spec.fn)  # the allow-list check happens here, in the parent
        if spec.resources.num_gpus > 0:
            import torch

            if not torch.cuda.is_available():
                raise InvalidInputError(
                    f"task {spec.fn}: asks for {spec.resources.num_gpus} GPU(s) but this machine has none"
                )
        task_id = spec.task_id or uuid.uuid4().hex
        with self._lock:
            if self._closing:
                raise RuntimeError("the executor is shut down")
            if task_id in self._live:
                raise InvalidInputError(f"task id {quote(task_id)} is already in use")
            if self._start_failures >= _MAX_START_FAILURES:
                raise RuntimeError("the executor's worker processes fail to start; see the log")
            handle = TaskHandle(task_id, self._cancel)
            task = _Task(spec, handle, on_progress)
            self._live[task_id] = task
            self._pending.append(task)
        self._wake()
        return handle

    def shutdown(self, cancel_running: bool = True) -> None:
        with self._lock:
            first = not self._closing
            self._closing = True
            if first and cancel_running:
                for task in list(self._pending):
                    self._finish_locked(
                        task, TaskResult(CANCELLED, error="cancelled: executor shut down")
                    )
                self._pending.clear()
                for task in list(self._live.values()):
                    self._request_cancel_locked(task)
        self._wake()
        self._monitor.join()
        if threading.current_thread() is not self._delivery:
            self._delivery.join()

    @property
    def worker_pids(self) -> list[int | None]:
        """The pids of the current workers (replacements included)."""
        with self._lock:
            return [w.process.pid for w in self._pool]

    # -- cancellation -------------------------------------------------------------------

    def _cancel(self, handle: TaskHandle) -> None:
        with self._lock:
            task = self._live.get(handle.task_id)
            if task is None or task.handle is not handle:
                return
            if task in self._pending:
                self._pending.remove(task)
                self._finish_locked(
                    task, TaskResult(CANCELLED, error="cancelled before it started")
                )
            else:
                self._request_cancel_locked(task)
        self._wake()

    def _request_cancel_locked(self, task: _Task) -> None:
        if task.cancel_deadline is not None:
            return
        task.cancel_deadline = time.monotonic() + self.cancel_grace
        for worker in self._pool:
            if worker.task is task:
                # a dying worker cannot hear it; its sentinel reports the death
                with contextlib.suppress(OSError):
                    worker.conn.send(("cancel", task.handle.task_id))

    # -- the monitor thread -------------------------------------------------------------

    def _start_worker(self) -> _Worker:
        parent_end, child_end = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=worker_main,
            args=(child_end, self.threads_per_worker),
            name="metaprune-worker",
            daemon=True,
        )
        process.start()
        child_end.close()
        return _Worker(process, parent_end)

    def _wake(self) -> None:
        with self._lock:  # never write to a closed (and maybe reused) descriptor
            if self._wake_w < 0:
                return
            with contextlib.suppress(BlockingIOError):  # full of wake-ups already
                os.write(self._wake_w, b"x")

    def _run_monitor(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._closing and not self._live:
                        break
                    self._dispatch_locked()
                    handles: dict[Any, _Worker] = {}
                    for w in self._pool:
                        handles[w.conn] = w
                        handles[w.process.sentinel] = w
                    deadlines = [
                        t.cancel_deadline for t in self._live.values() if t.cancel_deadline
                    ]
                timeout = 1.0
                if deadlines:
                    timeout = max(0.0, min(min(deadlines) - time.monotonic(), timeout))
                ready = wait([*handles, self._wake_r], timeout)
                if self._wake_r in ready:
                    os.read(self._wake_r, 4096)
                with self._lock:
                    for obj in ready:
                        if isinstance(obj, Connection):
                            self._drain_locked(handles[obj])
                    for obj in ready:
                        if isinstance(obj, int) and obj != self._wake_r:
                            self._on_death_locked(handles[obj])
                    self._kill_overdue_locked()
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            with self._lock:
                self._closing = True
                for task in list(self._live.values()):
                    self._finish_locked(task, TaskResult(FAILED, error=f"executor failed: {exc!r}"))
                self._pending.clear()
            raise
        finally:
            self._stop_pool()
            self._events.put(None)

    def _dispatch_locked(self) -> None:
        for worker in self._pool:
            if not self._pending:
                return
            if worker.ready and worker.task is None and worker.process.is_alive():
                task = self._pending.popleft()
                spec = task.spec
                threads = task_threads(spec.resources, self.threads_per_worker)
                message = (
                    "run",
                    task.handle.task_id,
                    spec.fn,
                    spec.args,
                    spec.resources.memory_bytes,
                    threads,
                )
                try:
                    worker.conn.send(message)
                except OSError:
                    self._pending.appendleft(task)  # dying worker: its sentinel will fire
                    continue
                worker.task = task
                task.handle.worker_pid = worker.process.pid
                task.handle.started.set()

    def _drain_locked(self, worker: _Worker) -> None:
        try:
            while worker.conn.poll():
                self._on_message_locked(worker, worker.conn.recv())
        except (EOFError, OSError):
            pass  # the worker died; its sentinel reports it

    def _on_message_locked(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ready":
            worker.ready = True
            self._start_failures = 0
            return
        task = worker.task
        if task is None or task.handle.task_id != message[1]:
            return  # a late message of a task already finished
        if kind == "progress":
            if task.on_progress is not None:
                self._events.put(("progress", task.on_progress, message[2]))
        elif kind == "result":
            _, _, status, value, error = message
            worker.task = None
            self._finish_locked(task, TaskResult(status, value, error))

    def _on_death_locked(self, worker: _Worker) -> None:
        if worker not in self._pool:
            return
        self._drain_locked(worker)  # a result sent just before dying still counts
        worker.process.join(timeout=1.0)
        reason = describe_exit(worker.process.exitcode)
        worker.conn.close()
        task, worker.task = worker.task, None
        if task is not None:
            if task.cancel_deadline is not None:
                result = TaskResult(
                    CANCELLED, error=f"cancelled; the worker was stopped ({reason})"
                )
            else:
                result = TaskResult(FAILED, error=f"worker process died: {reason}")
            self._finish_locked(task, result)
        if not worker.ready:
            self._start_failures += 1
        index = self._pool.index(worker)
        if self._closing:
            self._pool.pop(index)
        elif self._start_failures >= _MAX_START_FAILURES:
            self._pool.pop(index)
            for t in list(self._pending):
                self._finish_locked(
                    t, TaskResult(FAILED, error=f"worker process failed to start: {reason}")
                )
            self._pending.clear()
        else:
            self._pool[index] = self._start_worker()

    def _kill_overdue_locked(self) -> None:
        now = time.monotonic()
        for worker in self._pool:
            task = worker.task
            if (
                task is not None
                and task.cancel_deadline is not None
                and now >= task.cancel_deadline
            ):
                worker.process.kill()  # the sentinel fires; _on_death_locked finishes the task

    def _finish_locked(self, task: _Task, result: TaskResult) -> None:
        if self._live.get(task.handle.task_id) is task:
            del self._live[task.handle.task_id]
        self._events.put(("finish", task.handle, result))

    def _stop_pool(self) -> None:
        with self._lock:
            pool, self._pool = list(self._pool), []
        for worker in pool:
            if not worker.ready:  # still importing, holds no task: no need to wait for it
                worker.process.kill()
                continue
            with contextlib.suppress(OSError):
                worker.conn.send(("stop",))
        deadline = time.monotonic() + 5.0
        for worker in pool:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(5.0)
            worker.conn.close()
        with self._lock:
            fds, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), -1, -1
        for fd in fds:
            os.close(fd)

    # -- the delivery thread ------------------------------------------------------------

    def _run_delivery(self) -> None:
        while (item := self._events.get()) is not None:
            if item[0] == "progress":
                try:
                    item[1](item[2])
                except Exception:  # noqa: BLE001 - a caller's handler must not stop delivery
                    import logging

                    logging.getLogger(__name__).exception("progress handler failed")
            else:
                item[1]._finish(item[2])
