"""Tests for metaprune/pruning/sparse.py: sparse training and the validation-only reg search."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch.utils.data import TensorDataset

from metaprune.data import DatasetSplits
from metaprune.pruning import FinetuneBudget, SparseTraining, evaluate, get_method, prune
from metaprune.pruning.bn import calibration_subset, recalibrate_bn
from metaprune.pruning.methods import MethodContext

GRID = (0.3, 0.1, 0.01)


def _ctx(config, loaders, example):
    train, val, _ = loaders
    return MethodContext(config, train, val, torch.device("cpu"), example)


def _sl_config(fast_config, **sparse):
    return dataclasses.replace(
        fast_config, method="group-l2-sl", sparse=SparseTraining(auto_grid=GRID, **sparse),
        before_pruning=FinetuneBudget(epochs=2, lr=0.05),
    )  # fmt: skip


@pytest.mark.timeout(120)
def test_auto_reg_keeps_the_largest_reg_within_tolerance(model, loaders, example, fast_config):
    ctx = _ctx(_sl_config(fast_config, auto_tolerance=0.05), loaders, example)
    torch.manual_seed(0)
    prepared = get_method("group-l2-sl").prepare(model, ctx)
    info = ctx.info["before_pruning"]
    search = info["reg_search"]
    trials = search["trials"]
    ref, n = search["reference_val_accuracy"], search["validation_samples"]
    assert n == 64 and search["tolerance"] == max(0.05, 2 * (ref * (1 - ref) / n) ** 0.5)
    floor = ref - search["tolerance"] - 1e-9
    assert [t["reg"] for t in trials] == list(GRID[: len(trials)])  # largest first
    assert all(t["val_accuracy"] < floor for t in trials[:-1])  # every larger reg failed
    if trials[-1]["val_accuracy"] >= floor:
        assert info["sparse_reg"] == trials[-1]["reg"]
    else:  # none passed: the best validation accuracy, larger reg on ties
        best = max(t["val_accuracy"] for t in trials)
        assert info["sparse_reg"] == next(t["reg"] for t in trials if t["val_accuracy"] == best)
    # the search's cost is reported: every trial is a full budget
    assert info["epochs_trained"] == search["epochs_trained"] == 2 * len(trials)
    assert ctx.info["stage_seconds"]["reg_search"] == search["seconds"] > 0
    # the kept trial is the prepared model, its figure is real (recalibrated) accuracy
    _, val, _ = loaders
    assert info["val_accuracy"] == evaluate(prepared, val)
    if info["sparse_reg"] == trials[-1]["reg"]:
        assert info["val_accuracy"] == trials[-1]["val_accuracy"]


@pytest.mark.timeout(120)
def test_before_pruning_accuracy_is_the_recalibrated_one(model, loaders, example, fast_config):
    """Sparse training leaves BN statistics stale; the reported figure is after recalibration."""
    config = dataclasses.replace(_sl_config(fast_config), sparse=SparseTraining(reg=0.3))
    ctx = _ctx(config, loaders, example)
    torch.manual_seed(0)
    prepared = get_method("group-l2-sl").prepare(model, ctx)
    info = ctx.info["before_pruning"]
    assert info["sparse_reg"] == 0.3 and info["epochs_trained"] == info["kept_epoch"] == 2
    _, val, _ = loaders
    direct = copy.deepcopy(prepared)
    calib = calibration_subset(ctx.train_loader.dataset, config.bn_recalibration_images,
                               config.batch_size, config.seed)  # fmt: skip
    recalibrate_bn(direct, calib, len(calib), exact=False)  # what the pipeline does
    assert info["val_accuracy"] == evaluate(direct, val) == evaluate(prepared, val)
    assert isinstance(info["val_accuracy_stale_bn"], float) and info["seconds"] > 0


def _scrambled(splits: DatasetSplits) -> DatasetSplits:
    x, y = splits.test.tensors
    wrong = (y + 1 + torch.randint(0, splits.num_classes - 1, y.shape,
                                   generator=torch.Generator().manual_seed(5))) % splits.num_classes  # fmt: skip
    assert bool((wrong != y).all())
    return dataclasses.replace(splits, test=TensorDataset(x, wrong))


@pytest.mark.timeout(300)
def test_auto_reg_never_reads_the_test_split(model, splits, fast_config):
    """Every test label wrong: the same trials, the same choice, the same prepared model."""
    config = dataclasses.replace(_sl_config(fast_config), after_pruning=FinetuneBudget(epochs=0))
    results = []
    for data in (splits, _scrambled(splits)):
        torch.manual_seed(0)
        results.append(prune(model, data, config))
    reports = [r.report for r in results]
    clean, scrambled = (r["stages"]["before_pruning"] for r in reports)
    assert clean["sparse_reg"] == scrambled["sparse_reg"]
    assert clean["reg_search"]["trials"][0]["reg"] == GRID[0]
    for a, b in zip(clean["reg_search"]["trials"], scrambled["reg_search"]["trials"], strict=True):
        assert (a["reg"], a["val_accuracy"]) == (b["reg"], b["val_accuracy"])
    assert reports[0]["final"]["val_accuracy"] == reports[1]["final"]["val_accuracy"]
    states = [r.model.state_dict() for r in results]
    assert all(torch.equal(v, states[1][k]) for k, v in states[0].items())  # same model
    # the test split really differed: no image counts as correct under both labellings
    assert reports[0]["final"]["test_accuracy"] + reports[1]["final"]["test_accuracy"] <= 1.0
    assert "reg_search" in reports[0]["stage_seconds"]
