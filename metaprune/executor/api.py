"""The executor interface: task descriptions, results, handles and the ``Executor`` base.

A task is a *description* of work made of plain data (a registered function's name and a
JSON-compatible ``args`` dict), never code or client bytes, so that it can cross a process
or machine boundary (a spawned worker, a Ray cluster) without pickling anything a client
controls. Backends (``local``, ``ray``) implement :class:`Executor`; callers see the same
:class:`TaskHandle` and :class:`TaskResult` from both.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

from metaprune.errors import InvalidInputError, quote

__all__ = [
    "CANCELLED",
    "FAILED",
    "SUCCEEDED",
    "Executor",
    "ProgressHandler",
    "Resources",
    "TaskHandle",
    "TaskResult",
    "TaskSpec",
    "check_plain_data",
    "task_threads",
]

SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
_STATUSES = (SUCCEEDED, FAILED, CANCELLED)
_FN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
_MAX_DEPTH = 32
_MAX_ERROR_CHARS = 2000

ProgressHandler = Callable[[dict[str, Any]], None]


def check_plain_data(value: Any, what: str, depth: int = 0) -> None:
    """Raise :class:`InvalidInputError` unless ``value`` is JSON-compatible plain data.

    Plain data (dicts with string keys, lists/tuples, str, int, finite float, bool, None)
    is what may cross to a worker: it pickles to nothing that runs code when unpickled.
    """
    if depth > _MAX_DEPTH:
        raise InvalidInputError(f"{what}: nested deeper than {_MAX_DEPTH} levels")
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInputError(f"{what}: must be finite (found {value!r})")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidInputError(f"{what}: keys must be strings (found {quote(key)})")
            check_plain_data(item, f"{what}[{key!r}]", depth + 1)
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_plain_data(item, f"{what}[{i}]", depth + 1)
        return
    raise InvalidInputError(
        f"{what}: must be plain data (dict, list, str, int, float, bool, None); "
        f"found {type(value).__name__}"
    )


@dataclasses.dataclass(frozen=True)
class Resources:
    """What one task asks for.

    Attributes:
        num_cpus: CPUs the task needs. Ray schedules by it; both backends give the task
            ``max(threads_per_worker, int(num_cpus))`` torch threads (the local backend
            runs one task per worker and does not reserve the extra cores).
        num_gpus: GPUs the task needs (Ray schedules by it; the local backend refuses a
            request it cannot meet, i.e. GPUs without CUDA).
        memory_bytes: memory the task may use. Ray reserves it when scheduling; the local
            backend caps the worker's address space at its size at task start plus this
            many bytes (``RLIMIT_AS``, best effort: an allocation over it fails with
            ``MemoryError`` in the task).
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_bytes: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_cpus", "num_gpus"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidInputError(f"Resources.{name} must be a number (found {quote(value)})")
            if not math.isfinite(value) or value < 0:
                raise InvalidInputError(
                    f"Resources.{name} must be finite and >= 0 (found {value!r})"
                )
        if self.num_cpus <= 0:
            raise InvalidInputError(f"Resources.num_cpus must be > 0 (found {self.num_cpus!r})")
        m = self.memory_bytes
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m <= 0):
            raise InvalidInputError(
                f"Resources.memory_bytes must be None or an int > 0 (found {quote(m)})"
            )


def task_threads(resources: Resources, threads_per_worker: int) -> int:
    """Torch threads a task runs with: the executor's ``threads_per_worker``, or more if the
    task asks for more whole CPUs."""
    return max(threads_per_worker, int(resources.num_cpus))


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A picklable description of one task: plain data only, never client bytes.

    Attributes:
        fn: ``"package.module:function"`` of a function registered with
            :func:`metaprune.executor.task`.
        args: JSON-compatible plain data passed to the function.
        resources: what the task asks for.
        task_id: a caller-chosen id (unique among the executor's live tasks), or ``None``
            for a generated one.
    """

    fn: str
    args: dict[str, Any] = dataclasses.field(default_factory=dict)
    resources: Resources = Resources()
    task_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.fn, str) or not _FN_NAME.match(self.fn):
            raise InvalidInputError(
                f"TaskSpec.fn must be 'package.module:function' (found {quote(self.fn)})"
            )
        if not isinstance(self.args, dict):
            raise InvalidInputError(
                f"TaskSpec.args must be a dict (found {type(self.args).__name__})"
            )
        check_plain_data(self.args, "TaskSpec.args")
        if not isinstance(self.resources, Resources):
            raise InvalidInputError(
                f"TaskSpec.resources must be a Resources (found {type(self.resources).__name__})"
            )
        tid = self.task_id
        if tid is not None and (not isinstance(tid, str) or not tid or len(tid) > 200):
            raise InvalidInputError(
                f"TaskSpec.task_id must be None or a non-empty str of <= 200 chars (found {quote(tid)})"
            )


@dataclasses.dataclass(frozen=True)
class TaskResult:
    """How a task ended.

    Attributes:
        status: ``"succeeded"``, ``"failed"`` or ``"cancelled"``.
        value: the task function's return value (plain data) on success, else ``None``.
        error: a short reason when not succeeded (exception type and message, or e.g.
            ``"worker process died: killed by signal 9 (SIGKILL)"``); never a stack trace.
    """

    status: str
    value: dict[str, Any] | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if self.status not in _STATUSES:
            raise ValueError(
                f"TaskResult.status must be one of {_STATUSES} (found {self.status!r})"
            )

    @property
    def ok(self) -> bool:
        return self.status == SUCCEEDED

    @staticmethod
    def short_error(exc: BaseException) -> str:
        """``"Type: message"``, capped, as the ``error`` of a failed task."""
        text = f"{type(exc).__name__}: {exc}".strip()
        if text.endswith(":"):
            text = text[:-1]
        return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + " ..."


class TaskHandle:
    """A submitted task: wait for it, ask whether it is done, cancel it.

    Attributes:
        task_id: the task's id.
        worker_pid: local backend: pid of the worker process running the task (``None``
            while queued and on the Ray backend).
    """

    def __init__(self, task_id: str, canceller: Callable[[TaskHandle], None]) -> None:
        self.task_id = task_id
        self.worker_pid: int | None = None
        self._canceller = canceller
        self._done = threading.Event()
        self._result: TaskResult | None = None
        self.started = threading.Event()  # set once a worker has picked the task up

    def cancel(self) -> None:
        """Ask the task to stop: a queued task is dropped, a running one is told through its
        ``CancelToken`` and killed if it has not stopped after the executor's grace period.
        Cancelling a finished task does nothing."""
        if not self._done.is_set():
            self._canceller(self)

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> TaskResult:
        """Wait for the task's result.

        Raises:
            TimeoutError: the task did not finish within ``timeout`` seconds.
        """
        if not self._done.wait(timeout):
            raise TimeoutError(f"task {self.task_id!r} did not finish within {timeout} s")
        assert self._result is not None
        return self._result

    def _finish(self, result: TaskResult) -> bool:
        """Record the result once; later calls are ignored (returns whether this one won)."""
        if self._done.is_set():
            return False
        self._result = result
        self._done.set()
        return True

    def __repr__(self) -> str:
        state = self._result.status if self._result else "pending"
        return f"TaskHandle({self.task_id!r}, {state})"


class Executor(abc.ABC):
    """Runs :class:`TaskSpec`\\ s on some backend. Use it as a context manager."""

    backend: str = ""

    @abc.abstractmethod
    def submit(self, spec: TaskSpec, on_progress: ProgressHandler | None = None) -> TaskHandle:
        """Queue a task; ``on_progress`` receives its progress dicts on a background thread.

        Raises:
            InvalidInputError: the spec names an unregistered function, asks for resources
                the backend cannot give, reuses a live task id, or the executor is shut down.
        """

    @abc.abstractmethod
    def shutdown(self, cancel_running: bool = True) -> None:
        """Stop the executor: cancel queued and running tasks (or, with
        ``cancel_running=False``, wait for them), then stop the workers. Idempotent."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
