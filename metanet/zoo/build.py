"""``build_zoo``: build every unfinished member, here or through the executor (local
worker processes or Ray), with a progress bar."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from metaprune.errors import InvalidInputError
from metaprune.executor import BACKENDS, CancelToken, Executor, TaskSpec, create_executor, task

from .config import ZooConfig
from .index import Zoo
from .member import build_member

__all__ = ["build_member_task", "build_zoo"]


@task
def build_member_task(
    args: dict[str, Any], progress: Callable[[dict[str, Any]], None], cancel: CancelToken
) -> dict[str, Any]:
    """Executor task: build run ``args["index"]`` of the zoo ``args["config"]`` at ``args["root"]``."""
    config = ZooConfig.from_dict(args["config"])
    name = config.run_names()[args["index"]]
    progress({"stage": "member", "step": 0, "total": 1, "metrics": {"name": name}})
    metrics = build_member(config, args["index"], args["root"])
    progress({"stage": "member", "step": 1, "total": 1, "metrics": {"name": name}})
    return metrics


def build_zoo(
    config: ZooConfig,
    root: str | os.PathLike[str],
    *,
    workers: int = 1,
    progress: bool = True,
    on_member: Callable[[dict[str, Any]], None] | None = None,
    backend: str = "local",
    ray_address: str | None = None,
    executor: Executor | None = None,
) -> Zoo:
    """Build (or finish building) the zoo of ``config`` in directory ``root``.

    Finished training runs (every member's metrics file present) are skipped; a run
    interrupted half-way is rebuilt from scratch. With ``workers == 1`` and the local
    backend runs are built in this process; otherwise each run (its final member and its
    snapshots) is one task of a :mod:`metaprune.executor`:
    ``workers`` spawned processes (one torch thread each) for ``backend="local"``, Ray tasks
    for ``backend="ray"`` (a local Ray with ``workers`` CPUs, or the cluster at
    ``ray_address``), or the given ``executor``. The first failed member stops the build:
    queued members are cancelled, finished ones stay.

    Raises:
        ZooError: ``root`` holds a zoo with another configuration.
        InvalidInputError: an unknown backend, or Ray asked for but not installed.
        RuntimeError: a member failed (the message names it and the reason).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"build_zoo: workers must be an int >= 1 (found {workers!r})")
    if backend not in BACKENDS:
        raise InvalidInputError(
            f"build_zoo: unknown backend {backend!r} (expected one of {list(BACKENDS)})"
        )
    zoo = Zoo.create(root, config)
    done = set(zoo.finished_runs())
    pending = [i for i, n in enumerate(zoo.runs) if n not in done]
    columns = (
        TextColumn("zoo"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress) as bar:
        task_bar = bar.add_task("runs", total=len(zoo.runs), completed=len(done))

        def finished(metrics: dict[str, Any]) -> None:
            bar.advance(task_bar)
            zoo.write_index()
            if on_member is not None:
                on_member(metrics)

        in_process = executor is None and backend == "local" and (workers == 1 or len(pending) <= 1)
        if in_process:
            for i in pending:
                finished(build_member(config, i, zoo.root))
        elif pending:
            _build_with_executor(
                config, zoo, pending, finished, workers, backend, ray_address, executor
            )
    zoo.write_index()
    return zoo


def _build_with_executor(
    config: ZooConfig,
    zoo: Zoo,
    pending: list[int],
    finished: Callable[[dict[str, Any]], None],
    workers: int,
    backend: str,
    ray_address: str | None,
    executor: Executor | None,
) -> None:
    ex = executor or create_executor(
        backend, workers=min(workers, len(pending)) if backend == "local" else workers,
        ray_address=ray_address,
    )  # fmt: skip
    args = {"config": config.to_dict(), "root": str(zoo.root)}
    try:
        handles = {
            ex.submit(TaskSpec(_TASK_FN, {**args, "index": i})): zoo.runs[i] for i in pending
        }
        while handles:
            for handle in [h for h in handles if h.done()]:
                name = handles.pop(handle)
                result = handle.result()
                if not result.ok:
                    for other in handles:  # finished members stay; queued ones are not started
                        other.cancel()
                    raise RuntimeError(f"zoo member {name} failed: {result.error}")
                assert result.value is not None
                finished(result.value)
            time.sleep(0.05)
    finally:
        if executor is None:
            ex.shutdown()


_TASK_FN = f"{__name__}:build_member_task"
