"""Tests for metaprune/pruning/bn.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from metaprune.pruning import ConfigError, recalibrate_bn
from metaprune.pruning.bn import calibration_loader


def _norms(model):
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def _stats(model):
    return [(bn.running_mean.clone(), bn.running_var.clone()) for bn in _norms(model)]


def _perturb_stats(model):
    for bn in _norms(model):
        bn.running_mean.fill_(3.0)
        bn.running_var.fill_(7.0)


def test_reestimates_statistics_and_restores_modes(model, loaders):
    train, _, _ = loaders
    model.eval()
    model.layer1[0].train()  # a mixed state must come back exactly
    modes = {name: m.training for name, m in model.named_modules()}
    before = _stats(model)
    assert recalibrate_bn(model, train, batches=2) == 2
    assert {name: m.training for name, m in model.named_modules()} == modes
    for bn, (mean, var) in zip(_norms(model), before):
        assert not torch.equal(bn.running_mean, mean) and not torch.equal(bn.running_var, var)
        assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 2


def test_statistics_are_exact_over_the_whole_pass(loaders):
    """Mean and unbiased variance of all samples, not an average of per-batch variances."""
    train, _, _ = loaders
    conv = nn.Conv2d(1, 3, 3)
    first, second = nn.BatchNorm2d(3), nn.BatchNorm2d(3)
    model = nn.Sequential(conv, first, nn.ReLU(), second)
    fixed = calibration_loader(train.dataset, batches=3, batch_size=32, seed=0)
    assert recalibrate_bn(model, fixed, batches=3) == 3
    x = torch.cat([xb for xb, _ in fixed])
    with torch.no_grad():
        h = conv(x)
        torch.testing.assert_close(first.running_mean, h.mean(dim=(0, 2, 3)))
        torch.testing.assert_close(first.running_var, h.var(dim=(0, 2, 3), unbiased=True))
        # the second BN sees the first one's *recalibrated* eval-mode output
        h2 = torch.relu(nn.functional.batch_norm(h, first.running_mean, first.running_var,
                                                 first.weight, first.bias, False))  # fmt: skip
        torch.testing.assert_close(second.running_mean, h2.mean(dim=(0, 2, 3)))
        torch.testing.assert_close(second.running_var, h2.var(dim=(0, 2, 3), unbiased=True))


def test_identical_statistics_for_two_shuffles(model, splits):
    """The same images in another order (and other batch cuts) give the same statistics."""
    with torch.no_grad():  # give every BN a non-trivial affine so later layers matter
        for bn in _norms(model):
            bn.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(1))
    stats = []
    for seed, batch_size in ((0, 32), (1, 32), (2, 20)):
        loader = DataLoader(splits.train, batch_size=batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))  # fmt: skip
        _perturb_stats(model)
        recalibrate_bn(model, loader, batches=100)  # reshuffled per BN: same set
        stats.append(_stats(model))
    orders = [torch.cat([xb for xb, _ in DataLoader(splits.train, 32, shuffle=True,
                         generator=torch.Generator().manual_seed(s))])[:4] for s in (0, 1)]  # fmt: skip
    assert not torch.equal(*orders)  # the shuffles really differ
    for other in stats[1:]:
        for (m0, v0), (m1, v1) in zip(stats[0], other):
            torch.testing.assert_close(m1, m0, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(v1, v0, rtol=1e-6, atol=1e-7)


def test_is_idempotent_and_predictions_follow(model, splits, loaders):
    """Recalibrating recalibrated weights changes nothing: evaluation is reproducible."""
    _, val, _ = loaders
    fixed = calibration_loader(splits.train, batches=2, batch_size=32, seed=3)
    recalibrate_bn(model, fixed, batches=2)
    once = _stats(model)
    model.eval()
    logits = torch.cat([model(x) for x, _ in val]).detach()
    recalibrate_bn(model, fixed, batches=2)
    for (m0, v0), (m1, v1) in zip(once, _stats(model)):
        torch.testing.assert_close(m1, m0, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(v1, v0, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(torch.cat([model(x) for x, _ in val]).detach(), logits)


def test_calibration_loader_is_a_fixed_seeded_subset(splits):
    a = calibration_loader(splits.train, batches=2, batch_size=16, seed=0)
    b = calibration_loader(splits.train, batches=2, batch_size=16, seed=0)
    c = calibration_loader(splits.train, batches=2, batch_size=16, seed=1)
    xa = torch.cat([x for x, _ in a])
    assert xa.shape[0] == 32 and len(a) == 2
    assert torch.equal(xa, torch.cat([x for x, _ in a]))  # not reshuffled between passes
    assert torch.equal(xa, torch.cat([x for x, _ in b]))
    assert not torch.equal(xa, torch.cat([x for x, _ in c]))
    whole = calibration_loader(splits.train, batches=100, batch_size=16, seed=0)
    assert sum(len(y) for _, y in whole) == len(splits.train)


def test_no_gradients_and_dropout_off(loaders):
    train, _, _ = loaders
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Dropout(p=1.0))
    seen = []
    model[2].register_forward_hook(
        lambda m, i, o: seen.append((m.training, torch.is_grad_enabled()))
    )
    recalibrate_bn(model, train, batches=1)
    assert seen == [(False, False)]  # the order probe; the BN's own pass stops before dropout
    assert all(p.grad is None for p in model.parameters())


def test_zero_batches_and_models_without_bn_are_noops(model, loaders):
    train, _, _ = loaders
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert recalibrate_bn(model, train, batches=0) == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert recalibrate_bn(nn.Linear(2, 2), train, batches=3) == 0
    with pytest.raises(ConfigError, match="batches must be an int >= 0"):
        recalibrate_bn(model, train, batches=-1)


def test_single_pass_mode_is_the_cumulative_average_and_deterministic(loaders, splits, model):
    """exact=False: momentum None over one training-mode pass; same fixed set, same stats."""
    train, _, _ = loaders
    bn = nn.BatchNorm2d(1)
    batches = [x for x, _ in list(train)[:3]]
    recalibrate_bn(nn.Sequential(bn), [(x, None) for x in batches], batches=3, exact=False)
    expected = torch.stack([x.mean(dim=(0, 2, 3)) for x in batches]).mean(0)
    torch.testing.assert_close(bn.running_mean, expected)
    assert bn.momentum == 0.1  # restored
    fixed = calibration_loader(splits.train, batches=2, batch_size=32, seed=0)
    stats = []
    for _ in range(2):
        _perturb_stats(model)
        recalibrate_bn(model, fixed, batches=2, exact=False)
        stats.append(_stats(model))
    for (m0, v0), (m1, v1) in zip(*stats):
        assert torch.equal(m0, m1) and torch.equal(v0, v1)


def test_refinement_passes_converge_to_the_exact_statistics(loaders):
    """refine=k sets every BN at once from the previous estimate: a chain of k BatchNorms
    is exact after k refinements (each pass fixes one more level), whatever the batches."""
    train, _, _ = loaders
    torch.manual_seed(0)
    chain = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(),
                          nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))  # fmt: skip
    uneven = [(x[: 5 + 7 * i], None) for i, (x, _) in enumerate(list(train)[:3])]  # 5, 12, 19
    exact = _copy_with(chain, lambda m: recalibrate_bn(m, uneven, batches=3))
    calls = []
    one = _copy_with(chain, lambda m: recalibrate_bn(m, uneven, 3, exact=False, refine=1,
                                                     on_batch=lambda: calls.append(1)))  # fmt: skip
    two = _copy_with(chain, lambda m: recalibrate_bn(m, uneven, 3, exact=False, refine=2))
    assert len(calls) == 6  # one training-mode pass + one refinement, 3 batches each
    (m1, v1), (m2, v2) = _stats(exact)
    torch.testing.assert_close(_stats(one)[0], (m1, v1), rtol=1e-5, atol=1e-6)  # level 1: exact
    assert not torch.allclose(_stats(one)[1][1], v2, rtol=1e-5)  # level 2: not yet
    torch.testing.assert_close(_stats(two)[1], (m2, v2), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="refine must be an int >= 0"):
        recalibrate_bn(chain, uneven, 3, exact=False, refine=-1)


def _copy_with(model, fn):
    import copy

    model = copy.deepcopy(model)
    fn(model)
    return model
