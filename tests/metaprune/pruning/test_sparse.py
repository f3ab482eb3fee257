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
    sparse.setdefault("search_fraction", 0.2)  # challengers at every target (None: from ~2.8x)
    return dataclasses.replace(
        fast_config, method="group-l2-sl", sparse=SparseTraining(auto_grid=GRID, **sparse),
        before_pruning=FinetuneBudget(epochs=epochs, lr=0.05),
    )  # fmt: skip


def _norm(model) -> float:
    return float(sum(p.detach().abs().sum() for p in model.parameters()))


ROLES = ["as given", "incumbent, matched", "challenger", "challenger", "incumbent"]


@pytest.mark.timeout(120)
def test_the_prior_trains_the_budget_and_its_neighbours_an_epoch_each(model, loaders, example,
                                                                      fast_config):  # fmt: skip
    """Equal scores: nothing beats the incumbent (the grid's middle at 2x), which trained
    the budget but the challengers' epochs; every trial is scored and counted."""
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
    assert [t["reg"] for t in search["trials"]] == [0.0, GRID[1], GRID[0], GRID[2], GRID[1]]
    assert [t["epochs"] for t in search["trials"]] == [0.0, 1.0, 1.0, 1.0, 8.0]
    assert search["grid"] == [GRID[1], GRID[0], GRID[2]] and search["prior"] == GRID[1]
    assert search["kept"] == {**search["trials"][-1], "displaced_incumbent": False}
    assert info["sparse_reg"] == GRID[1] and search["winner_epochs"] == 8.0
    # the whole search is inside the budget: every trial's iterations counted
    assert search["iterations_trained"] == 10 * per_epoch == search["iterations_per_epoch"] * 10
    assert info["epochs_trained"] == search["epochs_trained"] == 10.0 == config.before_pruning.epochs
    assert "64 validation images" in search["noise"]
    # the proxy saw the model as given first, and the prepared model is the last one scored
    assert scored[0][0] is model and scored[0][1] == given == _norm(model)  # never modified
    assert scored[-1][0] is prepared and len({n for _, n in scored[1:]}) == 4  # 4 trained copies
    assert ctx.info["stage_seconds"]["reg_search"] == search["seconds"] > 0
    _, val, _ = loaders
    assert info["val_accuracy"] == evaluate(prepared, val)  # recalibrated, the real figure


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("target", "roles", "epochs"), [
    (2.0, ["as given", "incumbent"], [0.0, 10.0]),  # below ~2.8x: the prior trains alone
    # from ~2.8x: challengers (the prior 0.3 is the grid's end: one neighbour, 0.1)
    (3.0, ["as given", "incumbent, matched", "challenger", "incumbent"], [0.0, 1.0, 1.0, 9.0]),
])  # fmt: skip
def test_by_default_challengers_train_only_where_the_prior_is_the_stronger_strength(
    target, roles, epochs, model, loaders, example, fast_config
):
    config = _sl_config(fast_config, epochs=10, search_fraction=None)
    config = dataclasses.replace(config, target=dataclasses.replace(config.target, value=target))
    assert config.sparse.search_fraction is None
    ctx = _ctx(config, loaders, example, lambda m: 0.5)
    ctx.proxy_images = 64
    get_method("group-l2-sl").prepare(model, ctx)
    search = ctx.info["before_pruning"]["reg_search"]
    assert [t["role"] for t in search["trials"]] == roles
    assert [t["epochs"] for t in search["trials"]] == epochs
    assert search["prior"] == GRID[1 if target < 2.8 else 0]
    assert search["epochs_trained"] == 10.0 == config.before_pruning.epochs


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("scores", "images", "kept"),
    [
        ([0.5, 0.5, 0.9, 0.5, 0.3], None, 2),  # a challenger far ahead: it is the model
        ([0.5, 0.5, 0.9, 0.5, 0.88], 180, 4),  # ahead within noise: the incumbent stays
        ([0.5, 0.95, 0.5, 0.5, 0.6], 180, 1),  # the incumbent's own first epoch
        ([0.9, 0.5, 0.5, 0.5, 0.3], 180, 0),  # the model as given: the 0-epoch path
    ],
)  # fmt: skip
def test_only_a_checkpoint_better_beyond_noise_displaces_the_incumbent(
    scores, images, kept, model, loaders, example, fast_config
):
    """The incumbent's last checkpoint is the model unless another scored one beats it
    beyond one standard error; the kept copy is the model as it was scored."""
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
    assert search["kept"] == {**trial, "displaced_incumbent": kept != 4}
    assert info["sparse_reg"] == trial["reg"] == [0.0, GRID[1], GRID[0], GRID[2], GRID[1]][kept]
    assert search["winner_epochs"] == trial["epochs"] == [0.0, 1.0, 1.0, 1.0, 8.0][kept]
    assert info["epochs_trained"] == 10.0  # every trial counted, whichever model is kept
    assert _norm(prepared) == pytest.approx(seen[kept], rel=1e-5)  # as scored, not trained on
    if kept == 0:  # the caller's model is copied (then BN-recalibrated), not handed back
        weights = [all(torch.equal(p, q) for p, q in zip(m.parameters(), given.parameters()))
                   for m in (prepared, model)]  # fmt: skip
        assert prepared is not model and weights == [True, True] and _same(model, given)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("epochs", "challengers"), [(1, 0), (4, 0), (5, 1)])
def test_short_budgets_have_fewer_challengers(epochs, challengers, model, loaders, example, fast_config):
    """An epoch per challenger, a fifth of the budget at most: none below 5 epochs; the
    incumbent trains the rest, and the model as given is still a candidate."""
    ctx = _ctx(_sl_config(fast_config, epochs=epochs), loaders, example, lambda m: 0.5)
    get_method("group-l2-sl").prepare(model, ctx)
    search = ctx.info["before_pruning"]["reg_search"]
    roles = ["as given"] + ["incumbent, matched"] * bool(challengers) + ["challenger"] * challengers
    assert [t["role"] for t in search["trials"]] == roles + ["incumbent"]
    assert search["grid"] == [GRID[1], GRID[0]][: 1 + challengers]
    assert search["trials"][-1]["epochs"] == epochs - challengers
    assert search["epochs_trained"] == epochs and ctx.info["before_pruning"]["sparse_reg"] == GRID[1]


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


def _stepping(fast_config, epochs, scores, *, fraction=0.0, images=180, z=2.0):
    """A 3x job (prior GRID[0], weaker GRID[1]) whose proxy returns ``scores`` in order."""
    config = dataclasses.replace(_sl_config(fast_config, epochs=epochs, search_fraction=fraction, step_down=z),
                                 target=dataclasses.replace(fast_config.target, value=3.0))  # fmt: skip
    it = iter(scores)
    return config, lambda m: next(it)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("scores", "after"),
    [
        ([0.5, 0.6, 0.9, 0.5, 0.5, 0.6], 3.0),  # 0.9 -> 0.5 on 180 images: > 2 standard errors
        ([0.5, 0.6, 0.9, 0.85, 0.84, 0.5], None),  # 0.9 -> 0.84: within 2 standard errors
        ([0.9, 0.5, 0.6, 0.7, 0.8, 0.8], 2.0),  # the model as given counts as the best so far
        ([0.5, 0.9, 0.5, 0.9, 0.9, 0.9], 2.0),  # first checked after epoch 2, never after 1
        ([0.5, 0.6, 0.7, 0.8, 0.9, 0.1], None),  # a drop at the last epoch: nothing left to step
    ],
)  # fmt: skip
def test_the_step_down_fires_once_on_a_significant_drop(scores, after, model, loaders, example, fast_config):
    """The prior's run scored every epoch; the first drop beyond z standard errors below its
    best so far (from epoch 2) steps it to the next weaker strength for the rest of the same
    schedule; every epoch is still the prior's run, counted once."""
    config, proxy = _stepping(fast_config, 5, scores)
    events = []
    ctx = MethodContext(config, loaders[0], loaders[1], torch.device("cpu"), example, proxy=proxy,
                        progress=events.append, proxy_images=180)  # fmt: skip
    torch.manual_seed(0)
    get_method("group-l2-sl").prepare(model, ctx)
    info = ctx.info["before_pruning"]
    search = info["reg_search"]
    path = search["incumbent_proxy"]
    assert [p["epoch"] for p in path] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert [p["val_accuracy"] for p in path] == scores
    assert search["step_down"] == {"z": 2.0, "to": GRID[1], "after_epoch": after}
    stepped = [GRID[0]] * 6 if after is None else [GRID[0] if e <= after else GRID[1] for e in range(6)]
    assert [p["reg"] for p in path[1:]] == stepped[1:] and path[0]["reg"] == 0.0
    # two trials (the model as given, the incumbent at the end), five proxies in between
    assert [t["role"] for t in search["trials"]] == ["as given", "incumbent"]
    assert search["trials"][-1] == {"reg": stepped[-1], "epochs": 5.0, "role": "incumbent",
                                    "val_accuracy": scores[-1]}  # fmt: skip
    assert search["proxies"] == 6 and search["epochs_trained"] == info["epochs_trained"] == 5.0
    assert search["iterations_trained"] == 5 * search["iterations_per_epoch"]
    # the kept strength is the one the run ended with (the model as given aside)
    assert info["sparse_reg"] == (0.0 if search["kept"]["role"] == "as given" else stepped[-1])
    if after is not None:
        assert f"{GRID[1]:g} after epoch {after:g}" in search["rule"]
    # a progress event per proxy, counted against the planned number, the last one complete
    proxies = [e for e in events if e.stage == "reg_search"]
    assert [e.step for e in proxies] == [1, 2, 3, 4, 5, 6] and {e.total for e in proxies} == {6}
    assert [e.metrics["role"] for e in proxies] == ["as given"] + ["incumbent, watched"] * 4 + ["incumbent"]


@pytest.mark.timeout(120)
def test_the_step_down_beside_challengers_stays_inside_the_budget(model, loaders, example, fast_config):
    """With challengers, the incumbent's matched epoch is its first watched point; the
    budget still counts every trial and the step-down changes no count."""
    scores = [0.5, 0.9, 0.5] + [0.3] * 7 + [0.4]  # given, matched, the rival (0.1), epochs 2..8, end
    config, proxy = _stepping(fast_config, 10, scores, fraction=0.2)
    ctx = MethodContext(config, loaders[0], loaders[1], torch.device("cpu"), example, proxy=proxy,
                        proxy_images=180)  # fmt: skip
    get_method("group-l2-sl").prepare(model, ctx)
    search = ctx.info["before_pruning"]["reg_search"]
    assert [t["role"] for t in search["trials"]] == ["as given", "incumbent, matched", "challenger", "incumbent"]
    assert [t["reg"] for t in search["trials"]] == [0.0, GRID[0], GRID[1], GRID[1]]  # stepped to the rival's
    assert [p["epoch"] for p in search["incumbent_proxy"]] == [float(e) for e in range(10)]
    assert search["step_down"]["after_epoch"] == 2.0  # 0.9 after epoch 1, 0.3 after 2
    assert search["trials"][-1]["epochs"] == 9.0
    assert search["kept"]["role"] == "incumbent, matched"  # 0.9 beats the end (0.4) beyond noise
    assert search["epochs_trained"] == 10.0 and search["proxies"] == len(scores) == 11


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("epochs", "z", "images", "grid"), [(5, 0.0, 180, GRID), (2, 2.0, 180, GRID),
                                                             (5, 2.0, None, GRID), (5, 2.0, 180, (0.1,))])  # fmt: skip
def test_no_watch_where_the_step_down_cannot_fire(epochs, z, images, grid, model, loaders, example, fast_config):
    """Off (z 0), too short a budget (no epoch left after the first check), no image count
    to judge noise, or no weaker strength: no per-epoch proxy, the search as shipped."""
    config = _sl_config(fast_config, epochs=epochs, search_fraction=0.0, step_down=z)
    config = dataclasses.replace(config, target=dataclasses.replace(fast_config.target, value=3.0),
                                 sparse=dataclasses.replace(config.sparse, auto_grid=grid))  # fmt: skip
    ctx = _ctx(config, loaders, example, lambda m: 0.5)
    ctx.proxy_images = images
    get_method("group-l2-sl").prepare(model, ctx)
    search = ctx.info["before_pruning"]["reg_search"]
    assert search["step_down"] is None and search["incumbent_proxy"] == [] and search["proxies"] == 2
    assert search["epochs_trained"] == epochs


def test_dropped_is_beyond_z_standard_errors_below_the_best_before():
    from metaprune.pruning.sparse import dropped

    assert dropped([0.5, 0.9, 0.5], 180, 2.0) and not dropped([0.5, 0.9, 0.85], 180, 2.0)
    assert not dropped([0.5, 0.6, 0.9], 180, 2.0)  # a rise is never a drop
    assert dropped([0.9, 0.8], 1000, 2.0) and not dropped([0.9, 0.8], 1000, 7.0)  # z scales the bar
