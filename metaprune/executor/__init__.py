"""One executor for batches, zoo builds and service jobs: local processes or a Ray cluster.

>>> from metaprune.executor import TaskSpec, create_executor
>>> with create_executor("local", workers=2) as ex:
...     handle = ex.submit(TaskSpec("metaprune.batch.task:prune_one", {...}), on_progress=print)
...     result = handle.result()          # TaskResult(status, value, error)

A task is a registered function (:func:`task`) named by ``"module:function"`` plus plain-data
``args``: nothing a client controls is pickled to a worker or to Ray. Backends:

* ``local``: a pool of warm, spawned worker processes (one torch thread each by default);
  a dead worker fails its task with the signal or exit code and is replaced; cancel is
  cooperative, then a kill after a grace period.
* ``ray``: Ray tasks with declared ``num_cpus``/``num_gpus``/``memory``, on a local
  ``ray.init`` or a cluster. Ray has no authentication of its own: keep the cluster behind
  the service's gRPC front door, never exposed.
"""

from metaprune.pruning.progress import CancelToken, PruneCancelled

from .api import (
    CANCELLED,
    FAILED,
    SUCCEEDED,
    Executor,
    ProgressHandler,
    Resources,
    TaskHandle,
    TaskResult,
    TaskSpec,
    check_plain_data,
)
from .factory import BACKENDS, create_executor, ray_available
from .registry import TASK_MODULES, allow_task_module, list_tasks, resolve_task, task
from .throttle import ProgressThrottle

__all__ = [
    "BACKENDS",
    "CANCELLED",
    "FAILED",
    "SUCCEEDED",
    "TASK_MODULES",
    "CancelToken",
    "Executor",
    "ProgressHandler",
    "ProgressThrottle",
    "PruneCancelled",
    "Resources",
    "TaskHandle",
    "TaskResult",
    "TaskSpec",
    "allow_task_module",
    "check_plain_data",
    "create_executor",
    "list_tasks",
    "ray_available",
    "resolve_task",
    "task",
]
