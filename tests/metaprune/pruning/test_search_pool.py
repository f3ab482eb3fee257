"""Tests for the criterion search's candidates pruned at once (search_pool.py)."""

from __future__ import annotations

import dataclasses
import multiprocessing

import pytest
import torch

from metaprune.limits import Limits
from metaprune.pruning import (
    CANCEL,
    ConfigError,
    FinetuneBudget,
    ImportanceOptions,
    PruneCancelled,
    PruneConfig,
    prune,
)
from metaprune.pruning.search_pool import SearchPool


def _search_config(config: PruneConfig, workers: int) -> PruneConfig:
    """``auto`` at 0 epochs: the six candidates (group-L2 x 3 normalisers, per MAC,
    taylor, hessian), their copies pruned ``workers`` at a time."""
    return dataclasses.replace(
        config, method="auto", before_pruning=FinetuneBudget(epochs=0),
        after_pruning=FinetuneBudget(epochs=0),
        importance=ImportanceOptions(normalizer="auto", search_workers=workers),
    )  # fmt: skip


def _without_seconds(search: dict) -> dict:
    out = {k: v for k, v in search.items() if k not in ("seconds", "workers", "pruned_in_workers")}
    out["trials"] = [{k: v for k, v in t.items() if k != "seconds"} for t in search["trials"]]
    return out


@pytest.mark.timeout(300)
def test_candidates_pruned_at_once_give_the_sequential_search(model, spec, splits, fast_config):
    """Two copies at a time (one in a spawned worker) choose as one at a time: the same
    candidates and scores, the same winner, the same reused prune, curve and weights."""
    events: list[tuple[str, dict]] = []
    results = {}
    for workers in (1, 2):
        torch.manual_seed(0)
        results[workers] = prune(model, splits, _search_config(fast_config, workers), spec=spec,
                                 progress=lambda e: events.append((e.stage, e.metrics)))  # fmt: skip
    one, two = (results[w].report for w in (1, 2))
    s1, s2 = (r["stages"]["prune"]["criterion_search"] for r in (one, two))
    assert (s1["workers"], s2["workers"]) == (1, 2)
    # the worker pruned at least the 2nd and 4th copies (started during the gradient pass;
    # per MAC: a cost-aware criterion's input crosses too); the job's process the 1st
    assert "pruned_in_workers" not in s1
    in_workers = s2.pop("pruned_in_workers")
    assert {"group-l2[mean]", "group-l2-macs[sum]"} <= set(in_workers)
    assert "group-l2[sum]" not in in_workers and len(in_workers) == len(set(in_workers))
    labels = [f"{t['criterion']}[{t['normalizer']}]" for t in s2["trials"]]
    assert labels == ["group-l2[sum]", "group-l2[mean]", "group-l2[max]", "group-l2-macs[sum]",
                      "taylor[mean]", "hessian[mean]"]  # fmt: skip
    assert _without_seconds(s1) == _without_seconds(s2)
    assert s2["reused_winner"] is True
    assert one["curve"] == two["curve"] and one["final"]["macs"] == two["final"]["macs"]
    want, got = results[1].model.state_dict(), results[2].model.state_dict()
    assert list(want) == list(got) and all(torch.equal(want[k], got[k]) for k in want)
    # every candidate's steps were reported, those pruned in the worker too, in both runs
    stepped = [m["candidate"] for st, m in events if st == "criterion_search" and "step" in m]
    assert {label: stepped.count(label) % 2 for label in labels} == dict.fromkeys(labels, 0)
    assert set(stepped) == set(labels)
    assert not multiprocessing.active_children()  # the worker is gone


@pytest.mark.timeout(180)
def test_a_cancelled_concurrent_search_stops_its_workers(model, spec, splits, fast_config):
    """Cancelled while a worker prunes: the job raises PruneCancelled and no worker is left."""
    seen: list[str] = []

    def progress(event):
        if event.stage == "criterion_search" and event.metrics.get("candidate") == "group-l2[mean]":
            seen.append(event.metrics["candidate"])  # pruned in the worker
            return CANCEL
        return None

    torch.manual_seed(0)
    with pytest.raises(PruneCancelled, match="criterion_search"):
        prune(model, splits, _search_config(fast_config, 2), progress, spec=spec)
    assert seen == ["group-l2[mean]"]
    assert not multiprocessing.active_children()


@pytest.mark.parametrize("bad", [-1, True, 1.5, "2", None])
def test_bad_search_workers_are_refused(bad):
    with pytest.raises(ConfigError, match=r"importance\.search_workers must be an int"):
        ImportanceOptions(search_workers=bad)


def test_search_workers_are_bounded_by_the_thread_limit():
    config = PruneConfig(importance=ImportanceOptions(search_workers=9))
    config.check_limits(Limits(max_threads=9))
    with pytest.raises(Exception, match=r"importance\.search_workers"):
        config.check_limits(Limits(max_threads=8))
    assert PruneConfig.from_dict(config.to_dict()).importance.search_workers == 9


@pytest.mark.parametrize("bad", [0, 1, True])
def test_a_pool_needs_two_workers(bad):
    with pytest.raises(ValueError, match="workers >= 2"):
        SearchPool(bad)


def test_the_default_prunes_on_the_jobs_threads_at_a_large_input():
    """One at a time by default; 0: as many copies at once as the job has torch threads, where one proxy pass is over
    the large-input budget (3x224x224); one at a time below it, on a GPU and for a latency
    target; a number asked for is used as given."""
    from metaprune.pruning import Target, pipeline

    cpu, macs, large = torch.device("cpu"), Target("macs", 2.0), pipeline._LARGE_INPUT_VALUES
    assert ImportanceOptions().search_workers == 1  # opt-in: memory and ResNet-50's wall
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert pipeline._search_workers(0, large + 1, cpu, macs) == 3
        assert pipeline._search_workers(0, large, cpu, macs) == 1
        assert pipeline._search_workers(2, 64, cpu, macs) == 2
        assert pipeline._search_workers(1, large + 1, cpu, macs) == 1
        assert pipeline._search_workers(0, large + 1, cpu, Target("latency", 2.0)) == 1
        assert pipeline._search_workers(4, large + 1, torch.device("cuda"), macs) == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.timeout(120)
def test_a_worker_that_dies_is_an_error_not_a_hang(model, example):
    """A worker killed mid-prune (e.g. out of memory): the job's process raises."""
    import os
    import signal

    from metaprune.pruning import Target
    from metaprune.pruning.search_pool import PruneTask

    options = {"p": 2, "group_reduction": "mean", "seed": 0, "round_to": None,
               "max_layer_ratio": 0.75, "min_channels": 2}  # fmt: skip
    tasks = [PruneTask(f"t{i}", model, example, Target("macs", 2.0), "group-l2", "sum", 200, None, options)
             for i in range(2)]  # fmt: skip
    with SearchPool(2) as pool:
        for pid in pool._pids:
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(RuntimeError, match="worker process ended unexpectedly"):
            list(pool.results(tasks, lambda label, info: None))
    assert not multiprocessing.active_children()
