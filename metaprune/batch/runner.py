"""``run_batch``: every (model, target) task of a manifest through the executor, resumably.

A re-run of the same manifest into the same directory skips tasks whose outputs exist
(and were produced from the same inputs), reruns interrupted ones, retries failed ones
until ``max_attempts`` failures (counted across runs) and never lets one failure stop
the batch. The summary is rewritten after every finished task.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Any

from metaprune.executor import Executor, Resources, TaskHandle, TaskSpec, create_executor

from .manifest import BatchTask, Manifest, load_manifest
from .state import BatchState, batch_lock, counts, write_summary
from .task import read_result

__all__ = ["TASK_FN", "BatchOutcome", "run_batch"]

TASK_FN = "metaprune.batch.task:prune_one"


@dataclasses.dataclass
class BatchOutcome:
    """What a run did: the summary rows and counts, and how many tasks it skipped / ran."""

    rows: list[dict[str, Any]]
    counts: dict[str, int]
    paths: dict[str, Path]
    skipped: int
    ran: int


def run_batch(
    manifest: str | os.PathLike[str] | Manifest,
    out: str | os.PathLike[str],
    *,
    backend: str = "local",
    workers: int = 2,
    ray_address: str | None = None,
    max_attempts: int | None = None,
    retry_failed: bool = False,
    progress: bool = True,
    executor: Executor | None = None,
) -> BatchOutcome:
    """Run (or resume) the batch of ``manifest`` into directory ``out``.

    Args:
        manifest: a manifest path or a loaded :class:`Manifest`.
        out: the output directory (``OUT/<model>/<target>/``, ``summary.*``, ``batch.json``).
        backend, workers, ray_address: the executor (ignored if ``executor`` is given).
        max_attempts: overrides the manifest's limit on failed attempts per task.
        retry_failed: forget earlier failures, so failed tasks get ``max_attempts`` again.
        progress: show a rich progress display on stderr.

    Raises:
        ManifestError: the manifest has problems (nothing was run).
        InvalidInputError: another run is using ``out``, or the executor cannot start.
    """
    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    limit = max_attempts or m.max_attempts
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with batch_lock(out):
        state = BatchState.load(out)
        state.set_tasks(list(m.tasks), m.source)
        results: dict[str, dict[str, Any]] = {}
        todo: list[BatchTask] = []
        for t in m.tasks:
            entry = state.entry(t.key)
            for stale in (out / t.model).glob(f".{t.target}.tmp-*"):  # left by a killed task
                shutil.rmtree(stale, ignore_errors=True)
            row = read_result(out / t.key, t.digest)
            if row is not None:
                results[t.key] = row
                entry.update(status="succeeded", error=None)
                continue
            if retry_failed:
                entry["attempts"] = 0
            if entry["attempts"] >= limit:
                entry["status"] = "failed"
                continue
            entry["status"] = "pending"
            todo.append(t)
        state.save()
        skipped = len(m.tasks) - len(todo)
        if todo:
            own = executor is None
            ex = executor or create_executor(backend, workers=workers, ray_address=ray_address)
            try:
                _execute(ex, m, todo, out, state, results, limit, progress)
            finally:
                if own:
                    ex.shutdown()
        rows = state.rows(results)
        paths = write_summary(out, rows)
        return BatchOutcome(rows, counts(rows), paths, skipped, len(todo))


def _execute(
    ex: Executor,
    m: Manifest,
    todo: list[BatchTask],
    out: Path,
    state: BatchState,
    results: dict[str, dict[str, Any]],
    limit: int,
    show: bool,
) -> None:
    from .display import BatchDisplay

    resources = Resources(**m.resources)
    live: dict[TaskHandle, BatchTask] = {}
    done_before = sum(1 for e in state.data["tasks"].values() if e["status"] == "succeeded")

    with BatchDisplay(show, total=len(m.tasks), done=done_before) as display:

        def submit(t: BatchTask) -> None:
            entry = state.entry(t.key)
            entry["status"] = "pending"  # "running" once a worker has picked it up
            entry["runs"] = entry.get("runs", 0) + 1
            spec = TaskSpec(TASK_FN, t.args(out), resources, task_id=f"{t.key}#{entry['runs']}")
            live[ex.submit(spec, on_progress=display.handler(t.key))] = t

        try:
            for t in todo:
                submit(t)
            state.save()
            while live:
                started = False
                for handle, t in live.items():
                    entry = state.entry(t.key)
                    if handle.started.is_set() and entry["status"] == "pending":
                        entry.update(status="running", started=time.time())
                        started = True
                if started:
                    state.save()
                for handle in [h for h in live if h.done()]:
                    t = live.pop(handle)
                    result = handle.result()
                    entry = state.entry(t.key)
                    entry["finished"] = time.time()
                    if result.ok:
                        assert result.value is not None
                        results[t.key] = result.value
                        entry.update(status="succeeded", error=None)
                        display.finished(t.key, ok=True)
                    else:
                        entry["attempts"] += 1
                        entry.update(status="failed", error=result.error)
                        retry = entry["attempts"] < limit
                        display.finished(t.key, ok=False, error=result.error, retry=retry)
                        if retry:
                            submit(t)
                    state.save()
                    write_summary(out, state.rows(results), plot=False)
                time.sleep(0.1)
        except BaseException:
            for t in live.values():  # interrupted: rerun next time, not counted as a failure
                state.entry(t.key)["status"] = "pending"
            state.save()
            raise
