"""Search candidates pruned at once: the job's process and spawned workers (issue 18).

The criterion search prunes one copy of the model per candidate (``group-l2[sum]``,
``taylor[mean]``, ...). A prune is a run of Torch-Pruning steps on one torch thread, mostly
Python, so on a job that owns two cores the second one idles: a ViT-B/16 at 224 spent
~70 % of its wall time there. Two candidates on two Python threads were *slower* than one
after the other (the GIL; ``benchmarks/scale_parts.py --parts concurrent``), so the other
candidates run in worker processes, **spawned** (never forked: a service process has gRPC
threads that a fork would copy mid-lock).

The result does not depend on where a copy was pruned: every copy is pruned by
:func:`prune_copy` on one torch thread (bit for bit the same model and steps in a worker
as in the job's process), and the job's process scores the copies in candidate order.

What crosses the process line is the job's own objects, never a client's bytes: the
model (built by metaprune from an allow-listed spec), the example input, the gathered
gradients and plain options; tensors travel in shared memory (``torch.multiprocessing``).
A worker watches its parent and exits when it is gone (a cancelled service job's process
may be killed).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.reduction import ForkingPickler
from typing import Any

import torch
import torch.multiprocessing  # noqa: F401 (tensors pickle into shared memory)
from torch import Tensor, nn

from metaprune.pruning.config import Target
from metaprune.pruning.gradients import GradientCache
from metaprune.pruning.importance import COST_AWARE, GRADIENT_KIND, make_importance
from metaprune.pruning.progressive import StepInfo, progressive_prune

__all__ = ["PruneTask", "PrunedCopy", "SearchPool", "prune_copy"]


@dataclasses.dataclass(frozen=True)
class PruneTask:
    """One copy to prune: ``model`` (copied, never modified) with ``criterion`` and
    ``normalizer`` to ``target`` on a ``steps`` schedule; ``milestones``: the values of
    the target's kind past which a copy of the pruned model is kept (the curve's points).
    ``calibration``: what :func:`~metaprune.pruning.importance.make_importance` reads
    (gathered gradients, an image for ``group-l2-macs``); ``options``: its other keywords
    and those of :func:`~metaprune.pruning.progressive.progressive_prune`."""

    label: str
    model: nn.Module
    example: Tensor
    target: Target
    criterion: str
    normalizer: str
    steps: int
    calibration: Any
    options: dict[str, Any]
    frozen: tuple[str, ...] = ()
    adaptive: bool = False
    milestones: tuple[float, ...] = ()


@dataclasses.dataclass
class PrunedCopy:
    """A pruned copy, its steps (step 0 first), and its copies at the curve's points."""

    model: nn.Module
    history: list[StepInfo]
    snapshots: dict[int, nn.Module]


def prune_copy(
    task: PruneTask,
    on_step: Callable[[StepInfo], None] | None = None,
    latency_fn: Callable[[nn.Module], float] | None = None,
) -> PrunedCopy:
    """Prune a copy of ``task.model`` on one torch thread (``on_step`` after every step;
    it may raise to stop)."""
    model, snapshots, due = copy.deepcopy(task.model), {}, list(task.milestones)

    def step(info: StepInfo, pruned: nn.Module) -> None:
        if on_step is not None:
            on_step(info)
        if due and info.value(task.target.kind) >= due[0] and not info.reached:
            snapshots[info.step] = copy.deepcopy(pruned)
        while due and info.value(task.target.kind) >= due[0]:
            due.pop(0)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small ops between Python calls: a second thread spins
    try:
        opts = task.options
        importance = make_importance(
            task.criterion, p=opts["p"], group_reduction=opts["group_reduction"],
            normalizer=task.normalizer, seed=opts["seed"], model=model, calibration=task.calibration,
        )  # fmt: skip
        history = progressive_prune(
            model, task.example, task.target, importance=importance, steps=task.steps,
            round_to=opts["round_to"], max_layer_ratio=opts["max_layer_ratio"],
            min_channels=opts["min_channels"], latency_fn=latency_fn, on_step=step,
            frozen=task.frozen, adaptive=task.adaptive,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    model.zero_grad(set_to_none=True)  # a data-aware criterion's gradients rode along
    return PrunedCopy(model, history, snapshots)


def _portable(task: PruneTask) -> PruneTask | None:
    """``task`` as a worker gets it: of the job's calibration set, only what its criterion
    reads (the gathered gradients: a :class:`GradientCache` without images or callback;
    ``group-l2-macs``: the shape of one image); ``None`` for a data-aware task whose
    gradients are not gathered on its model yet (the job's process gathers them, as a
    sequential search does)."""
    calibration, kind = task.calibration, GRADIENT_KIND.get(task.criterion)
    if kind is not None:
        if not (isinstance(calibration, GradientCache) and calibration.gathered_for(task.model, kind)):
            return None
        return dataclasses.replace(task, calibration=calibration.stored(kind))
    if task.criterion in COST_AWARE:
        images, labels = next(iter(calibration))
        return dataclasses.replace(task, calibration=[(images[:1].clone(), labels[:1].clone())])
    return dataclasses.replace(task, calibration=None)


class SearchPool:
    """``workers - 1`` spawned processes that prune :class:`PruneTask`\\ s beside the
    job's process (``workers`` copies at once).

    :meth:`results` yields the pruned copies in task order: a copy a worker has (or is
    pruning) is waited for; any other the job's process prunes itself, first handing the
    next tasks to its idle workers. :meth:`prefetch` starts tasks early (the candidates
    that need no gradients, while the job's process gathers them). Steps done in a worker
    are reported through ``on_step`` in the job's process (between its own steps, and
    every ``poll`` seconds while it waits), so progress and cancellation work as in a
    sequential search. At most ``3 * (workers - 1)`` copies wait in or for the workers
    (memory: a ViT-B/16 copy is ~0.35 GB, with its curve's snapshot ~0.45 GB).
    """

    def __init__(self, workers: int, poll: float = 0.5) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 2:
            raise ValueError(f"SearchPool needs workers >= 2 (found {workers!r})")
        ctx = multiprocessing.get_context("spawn")
        self.workers, self.poll = workers, poll
        self._events: Any = ctx.Queue()
        with _children_allowed():
            self._pool = ctx.Pool(workers - 1, initializer=_start_worker,
                                  initargs=(self._events, os.getpid()))  # fmt: skip
        self._early: list[tuple[PruneTask, Any]] = []  # prefetched: (task, AsyncResult)
        self._pids = {p.pid for p in self._pool._pool}  # type: ignore[attr-defined]
        self.pruned_in_workers: list[str] = []  # labels of the tasks a worker pruned

    def prefetch(self, tasks: Sequence[PruneTask]) -> None:
        """Start ``tasks`` in the workers now, up to ``2 * (workers - 1)`` of them;
        :meth:`results` takes them up (a task it is not asked for is dropped unused)."""
        for task in tasks[: 2 * (self.workers - 1)]:
            portable = _portable(task)
            if portable is not None:
                self._early.append((task, self._submit(portable)))

    def results(
        self,
        tasks: Sequence[PruneTask],
        on_step: Callable[[str, StepInfo], None],
        latency_fn: Callable[[nn.Module], float] | None = None,
    ) -> Iterator[PrunedCopy]:
        """The pruned copies of ``tasks``, in order (see the class doc)."""
        started: dict[int, Any] = {}  # task index -> AsyncResult, in a worker
        for i, task in enumerate(tasks):
            early = next((k for k, (t, _) in enumerate(self._early) if _same(t, task)), None)
            if early is not None:
                started[i] = self._early.pop(early)[1]
        for i, task in enumerate(tasks):
            if i not in started:
                self._top_up(tasks, started, i)
                own = prune_copy(task, lambda info, t=task: self._step(on_step, t.label, info),
                                 latency_fn)  # fmt: skip
                self._drain(on_step)
                yield own
                continue
            pending = started.pop(i)
            while not pending.ready():
                self._drain(on_step, self.poll)
                self._check_workers()
            self._check_workers()  # replaced after it died: its task may have been lost
            self._drain(on_step)
            self.pruned_in_workers.append(task.label)
            yield pending.get()  # a worker's error is raised here, in the job's process

    def _check_workers(self) -> None:
        """Raise if a worker died (killed, out of memory): the pool would replace it and
        its copy would never come."""
        gone = self._pids - {p.pid for p in self._pool._pool}  # type: ignore[attr-defined]
        if gone:
            raise RuntimeError(f"a criterion-search worker process ended unexpectedly (pid {min(gone)})")

    def _submit(self, task: PruneTask) -> Any:
        # pickled now, in this thread: the pool's sender thread would pickle it later,
        # while this process may be using the model (the gradient pass swaps its weights)
        return self._pool.apply_async(_run_task, (bytes(ForkingPickler.dumps(task)),))

    def _top_up(self, tasks: Sequence[PruneTask], started: dict[int, Any], i: int) -> None:
        """Hand idle workers the first tasks after ``i`` that none has."""
        busy = sum(not r.ready() for r in started.values())
        for j in range(i + 1, len(tasks)):
            if busy >= self.workers - 1 or len(started) >= 3 * (self.workers - 1):
                return
            portable = None if j in started else _portable(tasks[j])
            if portable is not None:
                started[j] = self._submit(portable)
                busy += 1

    def share(self, *holders: nn.Module | GradientCache) -> None:
        """Move models' weights or gathered gradients to shared memory now, while the
        memory they leave behind can serve what comes next (moved when a task is first
        sent, ViT-B/16's job held both copies: a peak of 6.2 GB instead of 5.1)."""
        for holder in holders:
            holder.share_memory()

    def _step(self, on_step: Callable[[str, StepInfo], None], label: str, info: StepInfo) -> None:
        on_step(label, info)
        self._drain(on_step)

    def _drain(self, on_step: Callable[[str, StepInfo], None], wait: float = 0.0) -> None:
        """Report the workers' steps so far (waiting up to ``wait`` s for the first)."""
        try:
            label, info = self._events.get(timeout=wait) if wait else self._events.get_nowait()
            while True:
                on_step(label, info)
                label, info = self._events.get_nowait()
        except queue.Empty:
            return

    def close(self) -> None:
        """Stop the workers now (a prune in progress is abandoned)."""
        self._pool.terminate()
        self._pool.join()
        self._events.close()

    def __enter__(self) -> SearchPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _same(a: PruneTask, b: PruneTask) -> bool:
    """Whether ``a`` and ``b`` prune the same model the same way (a prefetched task)."""
    return a.model is b.model and a.label == b.label and a.calibration is b.calibration and (
        a.steps, a.target, a.adaptive, a.milestones) == (b.steps, b.target, b.adaptive, b.milestones)


_EVENTS: Any = None  # the worker's queue of step reports


def _start_worker(events: Any, parent: int) -> None:
    global _EVENTS
    _EVENTS = events
    torch.set_num_threads(1)

    def watch() -> None:  # a killed job process must not leave its workers behind
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="metaprune-search-watch", daemon=True).start()


def _run_task(payload: bytes) -> PrunedCopy:
    task = ForkingPickler.loads(payload)  # the job process's own PruneTask (see _submit)
    return prune_copy(task, lambda info: _EVENTS.put((task.label, info)))


@contextlib.contextmanager
def _children_allowed() -> Iterator[None]:
    """Let a daemon process (a service job runs in an executor's daemon worker) start the
    pool. The rule exists because a daemon's children outlive it when it is killed;
    these watch their parent and exit (:func:`_start_worker`)."""
    config = multiprocessing.current_process()._config  # type: ignore[attr-defined]
    daemon = config.get("daemon")
    config["daemon"] = False
    try:
        yield
    finally:
        if daemon is not None:
            config["daemon"] = daemon
        else:
            config.pop("daemon", None)
