"""Tests for metaprune/pruning/progress.py: stage meters, and progress from every stage of a
job at bounded *work* intervals (images read between two events), never timed."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.data import Dataset

from metaprune.data import DatasetSplits
from metaprune.pruning import (
    CANCEL,
    FinetuneBudget,
    ImportanceOptions,
    PruneCancelled,
    prune,
)
from metaprune.pruning.progress import StageMeter


def test_stage_meter_counts_units_and_only_finish_completes():
    events = []
    meter = StageMeter(events.append, None, "work", 3)
    meter.start()
    for _ in range(5):
        meter.tick()  # more units than planned: capped below the total
    meter.finish(done=True)
    assert [(e.stage, e.step, e.total) for e in events] == (
        [("work", 0, 3)] + [("work", 1, 3)] + [("work", 2, 3)] * 4 + [("work", 3, 3)]
    )
    assert events[-1].metrics == {"done": True}
    assert StageMeter(None, None, "empty", 0).total == 1  # a stage always has a unit


def test_stage_meter_honours_cancel():
    meter = StageMeter(lambda e: CANCEL if e.step == 2 else None, None, "work", 5)
    meter.tick()
    with pytest.raises(PruneCancelled, match="during work"):
        meter.tick()


class _Counted(Dataset):
    """A split that counts the images read from it (the unit of work of every pass)."""

    reads = 0

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        _Counted.reads += 1
        return self.base[i]


@pytest.mark.timeout(300)
def test_every_stage_reports_after_at_most_one_batch_of_work(model, spec, splits, fast_config):
    counted = DatasetSplits(
        _Counted(splits.train), _Counted(splits.val), _Counted(splits.test),
        splits.num_classes, splits.in_channels, splits.image_size, splits.name,
    )  # fmt: skip
    config = dataclasses.replace(
        fast_config, data_workers=0,  # reads are counted in this process
        importance=ImportanceOptions(normalizer="auto", search_steps=10, search_images=48),
        before_pruning=FinetuneBudget(epochs=1), after_pruning=FinetuneBudget(epochs=1),
    )  # fmt: skip
    marks: list[tuple[str, int, dict]] = []

    def progress(event) -> None:
        marks.append((event.stage, _Counted.reads, event.metrics))

    _Counted.reads = 0
    torch.manual_seed(0)
    result = prune(model, counted, config, progress=progress, spec=spec)
    stages = list(dict.fromkeys(stage for stage, _, _ in marks))
    assert stages == ["checks", "evaluate_base", "before_pruning", "criterion_search", "prune",
                      "recalibrate_bn", "after_pruning", "evaluate"]  # fmt: skip
    # the start-up checks report one by one, before any image is read
    checks = [(r, m) for st, r, m in marks if st == "checks"]
    assert [m.get("check") for _, m in checks] == [
        None, "model", "data", "classifier", "reachable", "dry_run"]  # fmt: skip
    assert all(r == 0 for r, _ in checks) and checks[-1][1]["frozen_groups"] == 0
    assert result.report["stage_seconds"]["checks"] > 0
    # work between two events: at most one batch (32 images) of any pass, in every stage
    reads = [0] + [r for _, r, _ in marks] + [_Counted.reads]
    gaps = [b - a for a, b in zip(reads, reads[1:])]
    assert max(gaps) <= config.batch_size and _Counted.reads > 0
    per_stage = {s: sum(r for (st, _, _), r in zip(marks, gaps) if st == s) for s in stages}
    assert all(per_stage[s] > 0 for s in stages if s not in ("checks", "prune"))  # read data
    # the passes that read no data report too: latency (each timed pass), pruning steps
    for stage in ("evaluate_base", "evaluate"):
        latency = [m for st, _, m in marks if st == stage and m.get("task") == "latency"]
        assert len(latency) >= config.latency.warmup + 1
    steps = result.report["chosen_step"]
    # search_steps != pruning.steps: the winner is pruned again, one event per step
    walked = [m["step"] for st, _, m in marks if st == "prune" and "speedup" in m]
    assert walked == list(range(steps + 1))
    assert sum(1 for st, _, m in marks if st == "prune" and "task" not in m) == steps + 3  # + start, finish
    search = [m for st, _, m in marks if st == "criterion_search" and "candidate" in m]
    assert {m["candidate"] for m in search} == {"group-l2[sum]", "group-l2[mean]", "group-l2[max]"}
    small = len(splits.val)  # <= 512 images: the proxy scores the whole split, not 48
    assert small <= 512 and result.report["stages"]["prune"]["criterion_search"]["proxy"] == {
        "steps": 10, "calibration_images": small, "validation_images": small, "rounds": 1,
        "adaptive": False,
    }  # fmt: skip


@pytest.mark.timeout(120)
def test_a_two_round_search_reads_half_the_proxy_per_candidate(
    model, spec, splits, fast_config, monkeypatch
):
    """At a large input (the budget made tiny here) each of the 3 candidates recalibrates
    and scores on 16 + 16 proxy images (after an adaptive prune) and the 2 finalists,
    pruned on the full schedule, on the other 16 + 16: 160 images read by the search
    instead of 3 x 64, with an event after every batch."""
    from metaprune.pruning import pipeline

    monkeypatch.setattr(pipeline, "_LARGE_INPUT_VALUES", 1024)  # 16 images of 1x8x8
    counted = DatasetSplits(
        _Counted(splits.train), _Counted(splits.val), _Counted(splits.test),
        splits.num_classes, splits.in_channels, splits.image_size, splits.name,
    )  # fmt: skip
    config = dataclasses.replace(
        fast_config, data_workers=0,
        importance=ImportanceOptions(normalizer="auto", adaptive_search=True),
        before_pruning=FinetuneBudget(epochs=0), after_pruning=FinetuneBudget(epochs=0),
    )  # fmt: skip
    marks: list[tuple[str, int, int, int]] = []
    _Counted.reads = 0
    torch.manual_seed(0)
    prune(model, counted, config, lambda e: marks.append((e.stage, _Counted.reads, e.step, e.total)),
          spec=spec)  # fmt: skip
    search = [(r, step, total) for st, r, step, total in marks if st == "criterion_search"]
    after = next(r for st, r, _, _ in marks if st == "prune")  # the first event after it
    assert after - search[0][0] == 3 * (16 + 16) + 2 * (16 + 16)
    reads = [r for r, _, _ in search] + [after]
    assert max(b - a for a, b in zip(reads, reads[1:])) <= 16  # one batch of 16 images
    # the plan counts the work: one unit per event, never capped below it before the finish
    steps, total = [step for _, step, _ in search], search[0][2]
    assert steps == [*range(len(steps) - 1), total] and len(steps) - 2 < total
