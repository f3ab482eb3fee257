"""The task registry: the allow-list of functions an executor may run.

A :class:`~metaprune.executor.TaskSpec` names its function as ``"package.module:function"``.
Only functions decorated with :func:`task` can run, and a worker imports a module only
when the parent has already checked the name against this registry (or against the
modules of :data:`TASK_MODULES`, which are safe to import to find their tasks). So a name
from a config or a request can never make a worker import or call anything else.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

from metaprune.errors import NotFoundError, quote

__all__ = [
    "TASK_MODULES",
    "TaskFunction",
    "allow_task_module",
    "list_tasks",
    "resolve_task",
    "task",
]

TaskFunction = Callable[..., dict[str, Any]]

#: Modules that define tasks; :func:`resolve_task` imports them on demand.
TASK_MODULES: set[str] = {
    "metaprune.batch.task",
    "metaprune.testing.tasks",
}
_REGISTRY: dict[str, TaskFunction] = {}
_LOCK = threading.Lock()


def task(fn: TaskFunction) -> TaskFunction:
    """Register ``fn`` as a task under ``"its.module:its_name"``.

    A task has the signature ``fn(args: dict, progress: Callable[[dict], None],
    cancel: CancelToken) -> dict``: ``args`` and the returned dict are plain data,
    ``progress`` takes plain dicts (e.g. ``dataclasses.asdict(ProgressEvent)``), and a
    long task checks ``cancel`` between steps (raising ``PruneCancelled``).
    """
    name = f"{fn.__module__}:{fn.__qualname__}"
    if "." in fn.__qualname__ or "<" in fn.__qualname__:
        raise ValueError(f"task {name!r}: only module-level functions can be tasks")
    with _LOCK:
        _REGISTRY[name] = fn
    fn.__metaprune_task__ = name  # type: ignore[attr-defined]
    return fn


def allow_task_module(module: str) -> None:
    """Add ``module`` to :data:`TASK_MODULES` (e.g. the service registers its job module)."""
    with _LOCK:
        TASK_MODULES.add(module)


def list_tasks() -> list[str]:
    """Names of the tasks registered so far in this process."""
    with _LOCK:
        return sorted(_REGISTRY)


def resolve_task(name: str, *, trusted: bool = False) -> TaskFunction:
    """The registered function called ``name``.

    The module of ``name`` is imported only if it is in :data:`TASK_MODULES`, or if
    ``trusted`` (a worker running a name its parent has already resolved).

    Raises:
        NotFoundError: ``name`` is not a registered task.
    """
    with _LOCK:
        fn = _REGISTRY.get(name)
    if fn is not None:
        return fn
    module = name.partition(":")[0]
    if trusted or module in TASK_MODULES:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise NotFoundError(
                f"task {quote(name)}: module {module!r} cannot be imported ({exc})"
            ) from None
        with _LOCK:
            fn = _REGISTRY.get(name)
    if fn is None:
        raise NotFoundError(
            f"task {quote(name)} is not registered (expected a function decorated with "
            f"@metaprune.executor.task in one of {sorted(TASK_MODULES)}; registered: {list_tasks()})"
        )
    return fn
