"""The local backend's worker process: warm imports, one task at a time, cooperative cancel.

Protocol on the worker's duplex pipe (all messages are tuples of plain data):

parent -> worker: ``("run", task_id, fn, args, memory_bytes, threads)``, ``("cancel", task_id)``,
``("stop",)``.
worker -> parent: ``("ready", pid)``, ``("progress", task_id, event)``,
``("result", task_id, status, value, error)``.

A reader thread receives messages while the main thread runs the task, so a cancel reaches
the task's :class:`CancelToken` at once. If the parent dies the pipe reaches end-of-file
and the worker exits: no orphans keep computing.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["worker_main"]


def worker_main(conn: Connection, threads: int) -> None:
    """Entry point of a spawned worker process."""
    # Ctrl-C in a terminal signals the whole process group: the parent decides what to cancel
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    torch.set_num_threads(threads)
    # warm: the imports every pruning or zoo task needs are paid once per worker, not per task
    import metaprune.pruning  # noqa: F401
    from metaprune.executor.api import FAILED, SUCCEEDED, TaskResult, check_plain_data
    from metaprune.executor.registry import resolve_task
    from metaprune.executor.throttle import ProgressThrottle
    from metaprune.pruning.progress import CancelToken, PruneCancelled

    send_lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with send_lock:
            conn.send(message)

    runs: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
    state_lock = threading.Lock()
    current: dict[str, Any] = {"id": None, "token": None}
    early_cancels: set[str] = set()

    def read() -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                os._exit(0)  # the parent is gone
            if message[0] == "run":
                runs.put(message)
            elif message[0] == "cancel":
                with state_lock:
                    if current["id"] == message[1]:
                        current["token"].cancel()
                    else:  # arrived before the task started
                        early_cancels.add(message[1])
            elif message[0] == "stop":
                runs.put(None)
                return

    threading.Thread(target=read, name="metaprune-worker-reader", daemon=True).start()
    send(("ready", os.getpid()))
    while (message := runs.get()) is not None:
        _, task_id, fn_name, args, memory_bytes, task_threads = message
        torch.set_num_threads(task_threads)
        token = CancelToken()
        with state_lock:
            current["id"], current["token"] = task_id, token
            if task_id in early_cancels:
                early_cancels.discard(task_id)
                token.cancel()
        throttle = ProgressThrottle(lambda event, tid=task_id: send(("progress", tid, event)))

        def progress(event: dict[str, Any], throttle: ProgressThrottle = throttle) -> None:
            if not isinstance(event, dict):
                raise TypeError(f"progress takes a dict (found {type(event).__name__})")
            throttle(event)

        value, error = None, None
        restore = _limit_memory(memory_bytes)
        try:
            fn = resolve_task(fn_name, trusted=True)  # the parent has checked the allow-list
            value = fn(args, progress, token)
            if not isinstance(value, dict):
                raise TypeError(f"task {fn_name} returned {type(value).__name__}, expected dict")
            check_plain_data(value, f"the result of task {fn_name}")
            status = SUCCEEDED
        except PruneCancelled as exc:
            status, value, error = "cancelled", None, TaskResult.short_error(exc)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes the task's result
            status, value, error = FAILED, None, TaskResult.short_error(exc)
        finally:
            restore()
            with state_lock:
                current["id"], current["token"] = None, None
        try:
            throttle.flush()
            send(("result", task_id, status, value, error))
        except (OSError, ValueError):
            os._exit(0)
    conn.close()
    sys.exit(0)


def _limit_memory(memory_bytes: int | None):  # -> Callable[[], None]
    """Cap the address space at its current size + ``memory_bytes``; return the undo."""
    try:
        import resource
    except ImportError:  # not POSIX: best effort means no cap
        return lambda: None
    if memory_bytes is None or not os.path.exists("/proc/self/statm"):
        return lambda: None
    with open("/proc/self/statm") as f:
        current = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = current + memory_bytes
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
