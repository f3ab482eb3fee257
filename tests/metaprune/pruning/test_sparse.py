"""Tests for metaprune/pruning/sparse.py: sparse training and the reg search by the proxy."""

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


def _ctx(config, loaders, example, proxy=None):
    train, val, _ = loaders
    return MethodContext(config, train, val, torch.device("cpu"), example, proxy=proxy)


def _sl_config(fast_config, epochs=2, **sparse):
    return dataclasses.replace(
        fast_config, method="group-l2-sl", sparse=SparseTraining(auto_grid=GRID, **sparse),
        before_pruning=FinetuneBudget(epochs=epochs, lr=0.05),
    )  # fmt: skip


def _norm(model) -> float:
    return float(sum(p.detach().abs().sum() for p in model.parameters()))


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("sign", "expected"), [(-1.0, GRID[0]), (1.0, GRID[-1])])
def test_auto_reg_follows_the_proxy_inside_the_budget(sign, expected, model, loaders, example,
                                                      fast_config):  # fmt: skip
    """A proxy that rewards shrinkage picks the strongest reg, one that punishes it the weakest."""
    scored = []

    def proxy(m):
        assert m is not model
        scored.append(m)
        return sign * _norm(m)

    config = _sl_config(fast_config, epochs=10, search_fraction=0.5)
    ctx = _ctx(config, loaders, example, proxy)
    torch.manual_seed(0)
    prepared = get_method("group-l2-sl").prepare(model, ctx)
    info = ctx.info["before_pruning"]
    search = info["reg_search"]
    assert info["sparse_reg"] == expected and search["grid"] == list(GRID)
    per_epoch = len(loaders[0])  # 4 batches of 32
    plan = search["plan"]
    assert plan["arms"] == 3 and plan["rounds"] == 2 == len(search["rounds"]) == len(scored) - 4  # + the final
    assert [len(r["arms"]) for r in search["rounds"]] == [3, 2]
    assert [a["arm"] for a in search["rounds"][0]["arms"]] == list(GRID)  # largest first
    finalists = search["rounds"][1]["arms"]
    assert expected in [a["arm"] for a in finalists]
    assert [a["survived"] for a in finalists if a["arm"] == expected] == [True]
    # the whole search is inside the budget: every trial's iterations counted
    assert plan["round_iterations"] >= per_epoch  # rounds of an epoch at least
    assert search["iterations_trained"] == 10 * per_epoch
    assert info["epochs_trained"] == search["epochs_trained"] == search["iterations_trained"] / per_epoch
    assert info["epochs_trained"] <= config.before_pruning.epochs
    # no noise model (images unknown): an earlier checkpoint that scored higher is kept
    check = search["checkpoint"]
    assert check["taken"] == (check["best_earlier"]["val_accuracy"] > check["winner"]["val_accuracy"])
    assert check["winner"]["epochs"] * per_epoch == plan["winner_iterations"]
    kept = check["best_earlier"] if check["taken"] else check["winner"]
    assert search["winner_epochs"] == kept["epochs"] and info["sparse_reg"] == kept["reg"] == expected
    assert ctx.info["stage_seconds"]["reg_search"] == search["seconds"] > 0
    _, val, _ = loaders
    assert info["val_accuracy"] == evaluate(prepared, val)  # recalibrated, the real figure


def test_auto_reg_needs_the_proxy(model, loaders, example, fast_config):
    ctx = _ctx(_sl_config(fast_config), loaders, example)
    with pytest.raises(ValueError, match="needs ctx.proxy"):
        get_method("group-l2-sl").prepare(model, ctx)


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
    config = dataclasses.replace(_sl_config(fast_config, epochs=4), after_pruning=FinetuneBudget(epochs=0))
    results = []
    for data in (splits, _scrambled(splits)):
        torch.manual_seed(0)
        results.append(prune(model, data, config))
    reports = [r.report for r in results]
    clean, scrambled = (r["stages"]["before_pruning"] for r in reports)
    assert clean["sparse_reg"] == scrambled["sparse_reg"]
    assert clean["reg_search"]["rounds"] == scrambled["reg_search"]["rounds"]
    assert clean["reg_search"]["grid"] == [GRID[1], GRID[2]]  # 2 arms fit: the grid's middle
    assert clean["reg_search"]["rounds"][0]["arms"][0]["arm"] == GRID[1]
    assert reports[0]["final"]["val_accuracy"] == reports[1]["final"]["val_accuracy"]
    states = [r.model.state_dict() for r in results]
    assert all(torch.equal(v, states[1][k]) for k, v in states[0].items())  # same model
    # the test split really differed: no image counts as correct under both labellings
    assert reports[0]["final"]["test_accuracy"] + reports[1]["final"]["test_accuracy"] <= 1.0
    assert "reg_search" in reports[0]["stage_seconds"]


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("untrained_better", [False, True])
def test_a_budget_without_room_for_a_search_falls_back_when_training_does_not_help(
    untrained_better, model, loaders, example, fast_config
):
    """Rounds last an epoch: one epoch leaves no search, the grid's middle trains alone and
    is kept only if it prunes at least as well as the model as given (the 0-epoch path)."""
    given = copy.deepcopy(model)
    calls = []

    def proxy(m):
        untrained = _same(m, given)
        calls.append(untrained)
        return 0.6 if untrained == untrained_better else 0.4

    ctx = _ctx(_sl_config(fast_config, epochs=1), loaders, example, proxy)
    prepared = get_method("group-l2-sl").prepare(model, ctx)
    info = ctx.info["before_pruning"]
    search = info["reg_search"]
    assert calls == [True, False]  # the model as given, then the trained strength
    assert search["grid"] == [GRID[1]] and search["rounds"] == []
    assert "no room for a search" in search["rule"]
    low, high = (0.4, 0.6) if untrained_better else (0.6, 0.4)
    assert search["checkpoint"] == {
        "winner": {"reg": GRID[1], "epochs": 1.0, "val_accuracy": low},
        "best_earlier": {"reg": 0.0, "epochs": 0.0, "val_accuracy": high},
        "taken": untrained_better,
    }  # fmt: skip
    # the epoch was spent either way: the budget counts it
    assert info["epochs_trained"] == search["epochs_trained"] == 1.0
    unchanged = all(torch.equal(p, q) for p, q in zip(prepared.parameters(), given.parameters()))
    if untrained_better:
        assert info["sparse_reg"] == 0.0 and "0-epoch path" in search["rule"] and unchanged
        assert search["winner_epochs"] == 0.0
    else:
        assert info["sparse_reg"] == GRID[1] and not unchanged and search["winner_epochs"] == 1.0


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("final", "images", "taken"), [(0.3, None, True), (0.88, 180, False)])
def test_the_search_keeps_an_earlier_checkpoint_that_prunes_better(
    final, images, taken, model, loaders, example, fast_config
):
    """The winner's last score (0.3) far below its own round-2 score (0.9): the round-2
    copy is the prepared model; within noise of it (0.88 on 180 images), the winner is."""
    scores = iter([0.5, 0.6, 0.4, 0.9, 0.55, final])  # round 1 (3 arms), round 2 (2), final
    seen = []

    def proxy(m):
        seen.append(_norm(m))
        return next(scores)

    ctx = _ctx(_sl_config(fast_config, epochs=10), loaders, example, proxy)
    ctx.proxy_images = images
    prepared = get_method("group-l2-sl").prepare(model, ctx)
    info = ctx.info["before_pruning"]
    search = info["reg_search"]
    assert [a["survived"] for r in search["rounds"] for a in r["arms"]] == [True, True, False, True, False]
    assert search["checkpoint"]["winner"] == {"reg": GRID[0], "epochs": 7.0, "val_accuracy": final}
    assert search["checkpoint"]["best_earlier"] == {"reg": GRID[0], "epochs": 2.0, "val_accuracy": 0.9}
    assert search["checkpoint"]["taken"] is taken and info["sparse_reg"] == GRID[0]
    assert info["epochs_trained"] == 10.0  # every trial counted, whichever model is kept
    assert search["winner_epochs"] == (2.0 if taken else 7.0)
    assert ("earlier checkpoint" in search["rule"]) is taken
    # the kept copy is the model as scored in round 2, not the one trained on
    assert (_norm(prepared) == pytest.approx(seen[3], rel=1e-5)) is taken


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("images", "expected"), [(None, GRID[0]), (100, GRID[1])])
def test_near_ties_go_to_the_middle_of_the_grid(images, expected, model, loaders, example, fast_config):
    """Equal scores are noise: with the proxy's image count known the middle strength wins
    (without it, the earlier arm), and the rounds say which arms were tied."""
    ctx = _ctx(_sl_config(fast_config, epochs=10), loaders, example, lambda m: 0.5)
    ctx.proxy_images = images
    get_method("group-l2-sl").prepare(model, ctx)
    search = ctx.info["before_pruning"]["reg_search"]
    assert ctx.info["before_pruning"]["sparse_reg"] == expected
    assert search["plan"]["arms"] == 3 and "fallback" not in search
    assert [a["within_noise_of_best"] for r in search["rounds"] for a in r["arms"]] == [images is not None] * 5
    assert (search["ties"] is None) == (images is None)


def test_the_prior_leans_stronger_at_higher_targets():
    from metaprune.pruning.sparse import _prior_index

    grid = [0.3, 0.1, 0.03, 0.01, 0.003, 0.001]
    assert [grid[_prior_index(6, t)] for t in (1.2, 2.0, 2.5, 2.8, 2.9, 3.0, 4.0, 64.0)] == [
        0.03, 0.03, 0.03, 0.03, 0.1, 0.1, 0.1, 0.1]  # fmt: skip
    assert _prior_index(3, 2.0) == 1 and _prior_index(3, 3.0) == 0 and _prior_index(1, 9.0) == 0


def test_a_short_budget_tries_neighbours_around_the_middle_of_the_grid():
    from metaprune.pruning.sparse import _keep

    grid = [0.3, 0.1, 0.03, 0.01, 0.003, 0.001]
    assert _keep(grid, 1) == [0.03] and _keep(grid, 2) == [0.03, 0.01]
    assert _keep(grid, 3) == [0.1, 0.03, 0.01] and _keep(grid, 4) == [0.1, 0.03, 0.01, 0.003]
    assert _keep(grid, 6) == grid == _keep(grid, 9)
    assert _keep([0.1, 0.01], 1) == [0.1] and _keep([0.2], 1) == [0.2]
