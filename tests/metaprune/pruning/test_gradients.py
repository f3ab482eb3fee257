"""Tests for metaprune/pruning/gradients.py: exact mean and Fisher gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from metaprune.pruning.bn import calibration_subset
from metaprune.pruning.gradients import GradientCache, gather_gradients


def _data(n: int = 20) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))


def test_mean_and_fisher_match_a_per_sample_loop():
    data, net = _data(), _net().eval()
    cal = calibration_subset(data, images=9, batch_size=4, seed=1)  # 3 batches
    x, y = (torch.cat(t) for t in zip(*cal))
    per_sample = []
    for i in range(len(y)):
        net.zero_grad()
        F.cross_entropy(net(x[i : i + 1]), y[i : i + 1]).backward()
        per_sample.append({n: p.grad.clone() for n, p in net.named_parameters()})
    net.train()  # gathering runs in eval mode and restores the mode
    for p in net[0].parameters():
        p.requires_grad_(False)
    with torch.no_grad():  # as inside a pruner's step
        assert gather_gradients(net, cal, "mean") == 9
    assert torch.is_grad_enabled()
    assert net.training and not net[0].weight.requires_grad
    for n, p in net.named_parameters():
        expected = torch.stack([g[n] for g in per_sample]).mean(0)
        torch.testing.assert_close(p.grad, expected, rtol=1e-5, atol=1e-7)
    gather_gradients(net, cal, "fisher")
    for n, p in net.named_parameters():
        expected = torch.stack([g[n] ** 2 for g in per_sample]).mean(0)
        torch.testing.assert_close(p.grad, expected, rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="gradient kind"):
        gather_gradients(net, cal, "second")
    with pytest.raises(ValueError, match="no images"):
        gather_gradients(net, [], "mean")


def test_fisher_falls_back_to_one_sample_at_a_time(monkeypatch):
    """A model vmap cannot batch gets the same Fisher from a per-sample loop."""
    import torch.func

    data, net = _data(), _net().eval()
    cal = calibration_subset(data, images=6, batch_size=3, seed=0)
    gather_gradients(net, cal, "fisher")
    expected = {n: p.grad.clone() for n, p in net.named_parameters()}

    def refuse(*args, **kwargs):
        raise RuntimeError("vmap: not supported")

    monkeypatch.setattr(torch.func, "vmap", refuse)
    gather_gradients(net, cal, "fisher")
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], rtol=1e-5, atol=1e-8)


def test_cache_gathers_both_kinds_once_for_copies_and_afresh_for_other_weights():
    import copy

    data, net = _data(), _net().eval()
    cal = calibration_subset(data, images=9, batch_size=4, seed=1)
    expected = {}
    for kind in ("mean", "fisher"):
        gather_gradients(net, cal, kind)
        expected[kind] = {n: p.grad.clone() for n, p in net.named_parameters()}
    ticks = []
    cache = GradientCache(cal, ("mean", "fisher"), on_batch=lambda: ticks.append(1))
    assert len(cache) == 3 and len(list(cache)) == 3  # iterates like the loader it wraps
    copies = [copy.deepcopy(net) for _ in range(3)]
    for kind, m in zip(("fisher", "mean", "fisher"), copies):
        assert gather_gradients(m, cache, kind) == 9
        for n, p in m.named_parameters():  # one per-sample pass gives the batched mean too
            torch.testing.assert_close(p.grad, expected[kind][n], rtol=1e-5, atol=1e-7)
    assert cache.passes == 1 and len(ticks) == 3  # one pass (3 batches, one chunk each), for all
    with torch.no_grad():
        copies[0][0].weight.add_(1.0)  # other weights: gathered afresh
    gather_gradients(copies[0], cache, "mean")
    assert cache.passes == 2 and len(ticks) == 6
    assert not torch.allclose(copies[0][0].weight.grad, expected["mean"]["0.weight"])
    # the same weights with other BatchNorm statistics (a recalibrated copy): eval-mode
    # gradients run through them, so gathered afresh too (issue 21)
    gather_gradients(copies[1], cache, "mean")  # the first weights again
    assert cache.passes == 3
    recalibrated = copy.deepcopy(copies[1])
    recalibrated[1].running_var.mul_(4.0)
    gather_gradients(recalibrated, cache, "mean")
    assert cache.passes == 4 and len(ticks) == 12
    assert not torch.allclose(recalibrated[0].weight.grad, expected["mean"]["0.weight"])
    gather_gradients(copy.deepcopy(recalibrated), cache, "mean")  # its copy: reused
    assert cache.passes == 4
    with pytest.raises(ValueError, match="gradient kinds"):
        GradientCache(cal, ("second",))


def test_cache_gathers_ahead_without_touching_grad_and_forgets():
    import copy

    data, net = _data(), _net().eval()
    cal = calibration_subset(data, images=9, batch_size=4, seed=1)
    gather_gradients(net, cal, "fisher")
    expected = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad(set_to_none=True)
    cache = GradientCache(cal, ("mean", "fisher"))
    cache.gather(net)
    assert cache.passes == 1 and all(p.grad is None for p in net.parameters())
    cache.gather(copy.deepcopy(net))  # stored already: no second pass
    clone = copy.deepcopy(net)
    assert gather_gradients(clone, cache, "fisher") == 9 and cache.passes == 1
    for n, p in clone.named_parameters():  # the same tensors as gathered on demand
        torch.testing.assert_close(p.grad, expected[n], rtol=1e-5, atol=1e-7)
    cache.forget()
    assert gather_gradients(copy.deepcopy(net), cache, "mean") == 9 and cache.passes == 2


def test_a_model_too_large_for_per_sample_chunks_gets_micro_batch_squares(monkeypatch):
    """Over MAX_CHUNK_FLOATS / MICRO_BATCH parameters: each micro-batch's summed gradient
    squared (one batched backward), the mean still exact."""
    from metaprune.pruning import gradients

    data, net = _data(), _net().eval()
    cal = calibration_subset(data, images=11, batch_size=11, seed=2)  # micro-batches 4, 4, 3
    x, y = next(iter(cal))
    gather_gradients(net, cal, "mean")
    mean = {n: p.grad.clone() for n, p in net.named_parameters()}
    assert gradients.fisher_estimate(net) == "per-sample"
    numel = sum(p.numel() for p in net.parameters())
    monkeypatch.setattr(gradients, "MICRO_BATCH", 4)
    monkeypatch.setattr(gradients, "MAX_CHUNK_FLOATS", 4 * numel - 1)
    assert gradients.fisher_estimate(net) == "micro-batch"
    summed = []
    for part in (slice(0, 4), slice(4, 8), slice(8, 11)):
        net.zero_grad()
        F.cross_entropy(net(x[part]), y[part], reduction="sum").backward()
        summed.append({n: p.grad.clone() for n, p in net.named_parameters()})
    ticks = []
    cache = GradientCache(cal, ("mean", "fisher"), on_batch=lambda: ticks.append(1))
    assert gather_gradients(net, cache, "fisher") == 11 and len(ticks) == 3
    for n, p in net.named_parameters():
        expected = torch.stack([g[n] ** 2 for g in summed]).sum(0) / 11
        torch.testing.assert_close(p.grad, expected, rtol=1e-5, atol=1e-8)
        assert (p.grad >= 0).all()
    gather_gradients(net, cache, "mean")  # from the same pass: the exact mean
    assert cache.passes == 1
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.grad, mean[n], rtol=1e-5, atol=1e-7)


def test_a_copy_is_recognised_whatever_the_threads_and_a_changed_weight_is_not():
    """Gathered on two threads (a large input) and asked for by a copy on one (a pruning
    step): the same model, no second pass. Sums of many float elements depend on the
    reduction's order; the fingerprint's integer sums do not."""
    import copy

    from metaprune.pruning import gradients

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 3)).eval()  # 131k weights
    with torch.no_grad():
        net[0].weight.mul_(torch.logspace(-6, 6, 512))  # magnitudes far apart: order matters
    cal = [(torch.randn(4, 512), torch.randint(0, 3, (4,)))]
    cache = GradientCache(cal, ("mean",))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        cache.gather(net)
        key = gradients._fingerprint(net)
        torch.set_num_threads(1)
        assert gradients._fingerprint(copy.deepcopy(net)) == key
        assert gather_gradients(copy.deepcopy(net), cache, "mean") == 4 and cache.passes == 1
    finally:
        torch.set_num_threads(before)
    other = copy.deepcopy(net)
    with torch.no_grad():
        other[2].bias[0] = torch.nextafter(other[2].bias[0], torch.tensor(1.0))  # one ulp
    assert gradients._fingerprint(other) != key
    gather_gradients(other, cache, "mean")
    assert cache.passes == 2
    # float32 bits read as int32: 1.0 is 0x3F800000, -1.0 is 0xBF800000 (negative as int32)
    assert gradients._bit_sum(torch.tensor([1.0, -1.0])) == 0x3F800000 + 0xBF800000 - (1 << 32)


def test_zero_kinds_names_the_gradients_that_rank_nothing():
    """A zero-initialised classifier (torchvision's ViT before training) passes no loss
    gradient back: every gathered gradient is exactly zero."""
    data = _data()
    cal = calibration_subset(data, images=8, batch_size=4, seed=0)
    net = _net().eval()
    cache = GradientCache(cal, ("mean", "fisher"))
    cache.gather(net)
    assert cache.zero_kinds() == ()
    with torch.no_grad():
        net[3].weight.zero_()
        net[3].bias.zero_()
    cache.gather(net)
    assert cache.passes == 2 and cache.zero_kinds() == ()  # the classifier's own are not
    assert set(cache.zero_kinds({"3.weight", "3.bias"})) == {"mean", "fisher"}
    cache.forget()
    assert cache.zero_kinds() == ()  # nothing gathered: nothing to judge


def test_the_stored_gradients_of_one_kind_serve_a_copy_and_nothing_else():
    """What a search worker gets: one kind's tensors, shared, no images; it serves a copy
    of the model and fails loudly for any other model or kind."""
    import copy

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    cache = GradientCache([(torch.randn(8, 6), torch.randint(0, 3, (8,)))], ("mean", "fisher"))
    cache.gather(net)
    assert cache.gathered_for(copy.deepcopy(net), "fisher") and not cache.gathered_for(net, "other")
    cache.share_memory()
    light = cache.stored("fisher")
    assert light.kinds == ("fisher",) and len(light) == 0
    twin = copy.deepcopy(net)
    assert gather_gradients(twin, light, "fisher") == 8 and light.passes == 0
    for n, q in twin.named_parameters():
        assert q.grad is cache._grads["fisher"][n] and q.grad.is_shared()
    other = copy.deepcopy(net)
    with torch.no_grad():
        other[0].bias.add_(1.0)
    assert not cache.gathered_for(other, "fisher")
    with pytest.raises(ValueError, match="no images"):
        gather_gradients(other, light, "fisher")
    with pytest.raises(ValueError, match="no images"):
        gather_gradients(copy.deepcopy(net), light, "mean")
