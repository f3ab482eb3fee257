"""``build_zoo``: build every unfinished member, in local worker processes, with a progress bar."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import Any

import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .config import ZooConfig
from .index import Zoo
from .member import build_member

__all__ = ["build_zoo"]


def _init_worker() -> None:
    # one thread per process: N workers on N cores beat N x N oversubscribed threads
    torch.set_num_threads(1)


def build_zoo(
    config: ZooConfig,
    root: str | os.PathLike[str],
    *,
    workers: int = 1,
    progress: bool = True,
    on_member: Callable[[dict[str, Any]], None] | None = None,
) -> Zoo:
    """Build (or finish building) the zoo of ``config`` in directory ``root``.

    Finished members (metrics file present) are skipped; a member interrupted half-way is
    rebuilt from scratch. ``workers > 1`` builds members in that many spawned processes
    (one torch thread each); ``workers == 1`` builds in this process.

    Raises:
        ZooError: ``root`` holds a zoo with another configuration.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"build_zoo: workers must be an int >= 1 (found {workers!r})")
    zoo = Zoo.create(root, config)
    done = set(zoo.finished())
    pending = [i for i, n in enumerate(zoo.members) if n not in done]
    columns = (
        TextColumn("zoo"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("members", total=len(zoo.members), completed=len(done))

        def finished(metrics: dict[str, Any]) -> None:
            bar.advance(task)
            zoo.write_index()
            if on_member is not None:
                on_member(metrics)

        if workers == 1 or len(pending) <= 1:
            for i in pending:
                finished(build_member(config, i, zoo.root))
        else:
            context = multiprocessing.get_context("spawn")  # fork + torch threads can deadlock
            with ProcessPoolExecutor(
                min(workers, len(pending)), mp_context=context, initializer=_init_worker
            ) as pool:
                futures = {pool.submit(build_member, config, i, zoo.root) for i in pending}
                try:
                    while futures:
                        ready, futures = wait(futures, return_when=FIRST_EXCEPTION)
                        for f in ready:
                            finished(f.result())  # re-raises a member's error
                except BaseException:
                    for f in futures:  # finished members stay; queued ones are not started
                        f.cancel()
                    raise
    zoo.write_index()
    return zoo
