"""Small executor tasks for tests and benchmarks (registered with ``@task``).

They exercise the executor's contract: results, exceptions, progress, cancellation, a worker
that dies, memory caps. Every one is bounded: the longest waits at most ``args["seconds"]``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

from metaprune.executor import CancelToken, task
from metaprune.pruning.progress import check_cancel

__all__ = ["allocate", "die", "echo", "fail", "matmul", "sleep", "stubborn"]

Progress = Callable[[dict[str, Any]], None]


@task
def echo(args: dict[str, Any], progress: Progress, cancel: CancelToken) -> dict[str, Any]:
    """Return ``args`` and the worker's pid."""
    return {"args": args, "pid": os.getpid()}


@task
def fail(args: dict[str, Any], progress: Progress, cancel: CancelToken) -> dict[str, Any]:
    """Raise ``ValueError(args["message"])``."""
    raise ValueError(args.get("message", "deliberate failure"))


@task
def sleep(args: dict[str, Any], progress: Progress, cancel: CancelToken) -> dict[str, Any]:
    """Report ``steps`` progress events ``seconds / steps`` apart; honours ``cancel``."""
    steps, seconds = int(args.get("steps", 10)), float(args.get("seconds", 1.0))
    for i in range(steps + 1):
        progress({"stage": args.get("stage", "sleep"), "step": i, "total": steps, "metrics": {}})
        check_cancel(cancel, "sleep")
        if i < steps:
            time.sleep(seconds / steps)
    return {"steps": steps, "pid": os.getpid()}


@task
def stubborn(args: dict[str, Any], progress: Progress, cancel: CancelToken) -> dict[str, Any]:
    """Ignore ``cancel`` and sleep ``seconds``: only a kill stops it."""
    progress({"stage": "stubborn", "step": 0, "total": 1, "metrics": {}})
    time.sleep(float(args.get("seconds", 60.0)))
    return {}


@task
def die(args: dict[str, Any], progress: Progress, cancel: CancelToken) -> dict[str, Any]:
    """Kill the worker process with ``args["signal"]`` (default SIGKILL), or ``os._exit(code)``."""
    progress({"stage": "die", "step": 0, "total": 1, "metrics": {}})
    if "exit_code" in args:
        os._exit(int(args["exit_code"]))
    os.kill(os.getpid(), int(args.get("signal", signal.SIGKILL)))
    time.sleep(10)
    return {}


@task
def allocate(args: dict[str, Any], progress: Progress, cancel: CancelToken) -> dict[str, Any]:
    """Allocate ``bytes`` bytes (to hit a memory cap)."""
    block = bytearray(int(args["bytes"]))
    return {"allocated": len(block)}


@task
def matmul(args: dict[str, Any], progress: Progress, cancel: CancelToken) -> dict[str, Any]:
    """A fixed amount of torch work (benchmarks: ``repeats`` products of ``size`` matrices)."""
    import torch

    size, repeats = int(args.get("size", 256)), int(args.get("repeats", 50))
    g = torch.Generator().manual_seed(int(args.get("seed", 0)))
    a = torch.randn(size, size, generator=g)
    for i in range(repeats):
        a = torch.tanh(a @ a / size)
        progress({"stage": "matmul", "step": i + 1, "total": repeats, "metrics": {}})
        check_cancel(cancel, "matmul")
    return {"checksum": float(a.sum()), "threads": torch.get_num_threads(), "pid": os.getpid()}
