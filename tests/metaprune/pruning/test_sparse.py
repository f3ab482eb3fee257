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


ROLES = ["as given", "prior, ranked", "challenger, ranked", "winner"]


@pytest.mark.timeout(120)
def test_the_prior_and_its_nearest_neighbour_rank_then_the_winner_continues(model, loaders, example,
                                                                           fast_config):  # fmt: skip
    """Equal scores: the prior (the grid's middle at 2x) wins the ranking and continues
    from its own 2-epoch state for the other 6; every trial is scored and counted."""
    scored = []

    def proxy(m):
        scored.append((m, _norm(m)))
        return 0.5

    config = _sl_config(fast_config, epochs=10)
    ctx = _ctx(config, loaders, example, proxy)
    ctx.proxy_images = 64
    given = _norm(model)
    torch.manual_seed(0)
    prepared = get_method("group-l2-sl").prepare(model, ctx)
    info = ctx.info["before_pruning"]
    search = info["reg_search"]
    per_epoch = len(loaders[0])  # 4 batches of 32
    assert [t["role"] for t in search["trials"]] == ROLES
    assert [t["reg"] for t in search["trials"]] == [0.0, GRID[1], GRID[0], GRID[1]]
    assert [t["epochs"] for t in search["trials"]] == [0.0, 2.0, 2.0, 8.0]  # 2 ranked + 6 more
    assert search["grid"] == [GRID[1], GRID[0]] and search["prior"] == search["winner"] == GRID[1]
    assert search["kept"] == {**search["trials"][-1], "displaced_winner": False}
    assert info["sparse_reg"] == GRID[1] and search["winner_epochs"] == 8.0
    # the whole search is inside the budget: every trial's iterations counted
    assert search["iterations_trained"] == 10 * per_epoch == search["iterations_per_epoch"] * 10
    assert info["epochs_trained"] == search["epochs_trained"] == 10.0 == config.before_pruning.epochs
    assert "64 validation images" in search["noise"]
    # the proxy saw the model as given first, and the prepared model is the last one scored
    assert scored[0][0] is model and scored[0][1] == given == _norm(model)  # never modified
    assert scored[-1][0] is prepared and len({n for _, n in scored[1:]}) == 3  # 3 trained states
    assert ctx.info["stage_seconds"]["reg_search"] == search["seconds"] > 0
    _, val, _ = loaders
    assert info["val_accuracy"] == evaluate(prepared, val)  # recalibrated, the real figure


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("scores", "images", "winner", "kept"),
    [
        ([0.5, 0.5, 0.9, 0.95], 180, GRID[0], 3),  # the challenger ranks ahead: it continues
        ([0.5, 0.5, 0.55, 0.6], 180, GRID[1], 3),  # ahead within noise: the prior continues
        ([0.5, 0.5, 0.9, 0.3], None, GRID[0], 2),  # its continuation is worse: the ranked state
        ([0.5, 0.95, 0.5, 0.6], 180, GRID[1], 1),  # the prior's own ranked state
        ([0.9, 0.5, 0.5, 0.3], 180, GRID[1], 0),  # the model as given: the 0-epoch path
    ],
)  # fmt: skip
def test_the_ranking_and_the_final_choice_move_only_beyond_noise(
    scores, images, winner, kept, model, loaders, example, fast_config
):
    """The challenger continues only when it ranks ahead beyond one standard error; the
    winner's last checkpoint is kept unless another scored one beats it beyond noise, and
    the kept copy is the model as it was scored."""
    given = copy.deepcopy(model)
    it, seen = iter(scores), []

    def proxy(m):
        seen.append(_norm(m))
        return next(it)

    ctx = _ctx(_sl_config(fast_config, epochs=10), loaders, example, proxy)
    ctx.proxy_images = images
    prepared = get_method("group-l2-sl").prepare(model, ctx)
    info = ctx.info["before_pruning"]
    search = info["reg_search"]
    trial = search["trials"][kept]
    assert search["winner"] == winner and search["trials"][-1]["reg"] == winner
    assert search["kept"] == {**trial, "displaced_winner": kept != 3}
    assert info["sparse_reg"] == trial["reg"] == [0.0, GRID[1], GRID[0], winner][kept]
    assert search["winner_epochs"] == trial["epochs"] == [0.0, 2.0, 2.0, 8.0][kept]
    assert info["epochs_trained"] == 10.0  # every trial counted, whichever model is kept
    assert _norm(prepared) == pytest.approx(seen[kept], rel=1e-5)  # as scored, not trained on
    if kept == 0:  # the caller's model is copied (then BN-recalibrated), not handed back
        weights = [all(torch.equal(p, q) for p, q in zip(m.parameters(), given.parameters()))
                   for m in (prepared, model)]  # fmt: skip
        assert prepared is not model and weights == [True, True] and _same(model, given)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("epochs", "rank"), [(1, 0), (4, 0), (5, 1), (6, 1)])
def test_short_budgets_rank_shorter_or_not_at_all(epochs, rank, model, loaders, example, fast_config):
    """Each arm ranks on a fifth of the budget in whole epochs, none below 5 epochs; the
    winner continues for the rest, and the model as given is still a candidate."""
    ctx = _ctx(_sl_config(fast_config, epochs=epochs), loaders, example, lambda m: 0.5)
    get_method("group-l2-sl").prepare(model, ctx)
    search = ctx.info["before_pruning"]["reg_search"]
    assert [t["role"] for t in search["trials"]] == (ROLES if rank else ["as given", "winner"])
    assert [t["epochs"] for t in search["trials"]][1:] == [rank, rank] * bool(rank) + [epochs - rank]
    assert search["grid"] == [GRID[1], GRID[0]][: 1 + bool(rank)]
    assert search["epochs_trained"] == epochs and ctx.info["before_pruning"]["sparse_reg"] == GRID[1]


def test_a_warm_restart_continues_the_runs_own_state(model, loaders, example, fast_config):
    """The winner's continuation: the schedule starts again at the full rate, while the
    weights, momentum and iteration count carry on."""
    from metaprune.pruning.sparse import SparseRun

    config = _sl_config(fast_config, epochs=3)
    ctx = _ctx(config, loaders, example)
    run = SparseRun(model, ctx, 0.1, 4)
    assert run.model is not model and run.optimizer.param_groups[0]["lr"] == 0.05
    run.advance(4)
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # annealed
    weights, momentum = _norm(run.model), [s["momentum_buffer"].clone() for s in run.optimizer.state.values()]
    run.restart(6)
    assert run.optimizer.param_groups[0]["lr"] == 0.05 and (run.iterations, run.horizon) == (4, 10)
    assert _norm(run.model) == weights  # nothing trained by the restart itself
    assert all(torch.equal(s["momentum_buffer"], m) for s, m in zip(run.optimizer.state.values(), momentum))
    run.advance(6)
    assert run.iterations == 10 and _norm(run.model) != weights
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


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
    config = dataclasses.replace(_sl_config(fast_config, epochs=5), after_pruning=FinetuneBudget(epochs=0))
    results = []
    for data in (splits, _scrambled(splits)):
        torch.manual_seed(0)
        results.append(prune(model, data, config))
    reports = [r.report for r in results]
    clean, scrambled = (r["stages"]["before_pruning"] for r in reports)
    assert clean["sparse_reg"] == scrambled["sparse_reg"]
    assert clean["reg_search"]["trials"] == scrambled["reg_search"]["trials"]
    assert clean["reg_search"]["grid"] == [GRID[1], GRID[0]]  # the prior, one challenger
    assert reports[0]["final"]["val_accuracy"] == reports[1]["final"]["val_accuracy"]
    states = [r.model.state_dict() for r in results]
    assert all(torch.equal(v, states[1][k]) for k, v in states[0].items())  # same model
    # the test split really differed: no image counts as correct under both labellings
    assert reports[0]["final"]["test_accuracy"] + reports[1]["final"]["test_accuracy"] <= 1.0
    assert "reg_search" in reports[0]["stage_seconds"]


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_the_prior_leans_stronger_at_higher_targets():
    from metaprune.pruning.sparse import _prior_index

    grid = [0.3, 0.1, 0.03, 0.01, 0.003, 0.001]
    assert [grid[_prior_index(6, t)] for t in (1.2, 2.0, 2.5, 2.8, 2.9, 3.0, 4.0, 64.0)] == [
        0.03, 0.03, 0.03, 0.03, 0.1, 0.1, 0.1, 0.1]  # fmt: skip
    assert _prior_index(3, 2.0) == 1 and _prior_index(3, 3.0) == 0 and _prior_index(1, 9.0) == 0


def test_the_challengers_are_the_priors_neighbours_nearer_the_middle_first():
    from metaprune.pruning.sparse import _challengers

    grid = [0.3, 0.1, 0.03, 0.01, 0.003, 0.001]
    assert [grid[i] for i in _challengers(6, 2)] == [0.1, 0.01]  # 2x: equally near, stronger first
    assert [grid[i] for i in _challengers(6, 1)] == [0.03, 0.3]  # 3x: the middle first
    assert _challengers(1, 0) == [] and _challengers(2, 0) == [1] and _challengers(3, 0) == [1]
