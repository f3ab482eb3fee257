"""Tests for metaprune/pruning/progressive.py (and the floor in _floor.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from metaprune.pruning import (
    ConfigError,
    StepInfo,
    Target,
    find_classifier,
    layer_widths,
    list_importances,
    make_importance,
    measure_cost,
    progressive_prune,
)
from metaprune.pruning.bn import calibration_subset
from metaprune.pruning.importance import COST_AWARE, DATA_AWARE
from metaprune.pruning.progressive import next_step


@pytest.mark.parametrize("importance", list_importances())
def test_stops_at_first_step_reaching_the_macs_target(model, example, importance, splits):
    base = measure_cost(model, example)
    if importance in DATA_AWARE + COST_AWARE:  # gradients (or shapes) from a few training images
        importance = make_importance(importance, model=model,
                                     calibration=calibration_subset(splits.train, 32, 16, 0))  # fmt: skip
    history = progressive_prune(model, example, 2.0, importance=importance, steps=40)
    assert [h.step for h in history] == list(range(len(history)))
    assert history[0] == StepInfo(0, base.macs, base.params, 1.0, 1.0, None, False)
    assert history[-1].reached and history[-1].macs_speedup >= 2.0
    assert not any(h.reached for h in history[:-1])  # the first step that reaches it
    assert all(a.macs >= b.macs for a, b in zip(history, history[1:]))
    now = measure_cost(model, example)
    assert (now.macs, now.params) == (history[-1].macs, history[-1].params)
    assert model.fc.out_features == 4  # the classifier output is never pruned
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 4)


def test_params_target_and_callbacks(model, example):
    seen: list[tuple[int, int]] = []
    history = progressive_prune(
        model, example, Target("params", 1.5), steps=40,
        on_step=lambda info, m: seen.append((info.step, measure_cost(m, example).params)),
    )  # fmt: skip
    assert history[-1].param_ratio >= 1.5 and history[-1].reached
    assert seen == [(h.step, h.params) for h in history]  # called after every step, step 0 too


def test_should_stop_ends_early(model, example):
    history = progressive_prune(model, example, 10.0, steps=40, should_stop=lambda i: i.step == 3)
    assert len(history) == 4 and not history[-1].reached


@pytest.mark.parametrize(("min_channels", "max_layer_ratio"), [(2, 0.75), (3, 0.5)])
def test_floor_holds_even_when_the_target_is_out_of_reach(
    model, example, min_channels, max_layer_ratio
):
    before = layer_widths(model)
    history = progressive_prune(
        model, example, 1000.0, steps=25, min_channels=min_channels, max_layer_ratio=max_layer_ratio
    )
    assert not history[-1].reached and len(history) < 26  # stopped: every layer at its floor
    after = layer_widths(model)
    for path, width in before.items():
        if path == "fc":
            continue
        floor = min(width, max(min_channels, math.ceil((1 - max_layer_ratio) * width)))
        assert after[path] >= floor, path
    assert any(after[p] == min(w, max(min_channels, math.ceil((1 - max_layer_ratio) * w)))
               for p, w in before.items() if p != "fc")  # fmt: skip
    assert after["fc"] == 4


def test_round_to_keeps_multiples(spec, example):
    model = type(spec)(spec.name, {**spec.kwargs, "width": 0.5}).build()
    progressive_prune(model, example, 2.0, steps=30, round_to=2)
    widths = layer_widths(model)
    assert all(w % 2 == 0 for p, w in widths.items() if p != "fc")


def test_random_importance_is_seeded(spec, example):
    def widths(seed):
        model = spec.build()
        progressive_prune(model, example, 2.0, importance="random", steps=20, seed=seed)
        return layer_widths(model)

    torch.manual_seed(0)
    first = widths(1)
    torch.manual_seed(123)  # the global RNG must not matter
    assert widths(1) == first


def test_latency_target_needs_a_latency_function(model, example):
    with pytest.raises(ConfigError, match="latency_fn"):
        progressive_prune(model, example, Target("latency", 2.0))
    calls = []

    def fake_latency(m):  # proportional to MACs: deterministic
        calls.append(1)
        return measure_cost(m, example).macs * 1e-9

    history = progressive_prune(
        model, example, Target("latency", 1.5), steps=30, latency_fn=fake_latency
    )
    assert history[-1].reached and history[-1].latency_speedup == pytest.approx(
        history[-1].macs_speedup
    )
    assert len(calls) == len(history) + 1  # base + every step


def test_unknown_importance_is_a_clear_error(model, example):
    with pytest.raises(ConfigError, match="unknown importance 'l2'"):
        progressive_prune(model, example, 2.0, importance="l2")


class _TinyTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.attn = nn.MultiheadAttention(16, num_heads=4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        h = h + self.mlp(h)
        return self.head(h.mean(dim=1))


def test_attention_heads_stay_consistent(example):
    torch.manual_seed(0)
    model = _TinyTransformer()
    x = torch.randn(1, 5, 6)
    assert find_classifier(model, x) is model.head
    history = progressive_prune(model, x, 1.5, steps=20, min_channels=1)
    assert history[-1].reached
    attn = model.attn
    assert attn.num_heads == 4 and attn.embed_dim % 4 == 0 and attn.embed_dim < 16
    assert attn.head_dim * 4 == attn.embed_dim
    assert model(torch.randn(2, 5, 6)).shape == (2, 3)


def test_find_classifier_takes_a_pooled_conv_classifier() -> None:
    import torchvision

    from metaprune.pruning.targets import find_classifier

    model = torchvision.models.squeezenet1_1(num_classes=3).eval()
    assert find_classifier(model, torch.randn(1, 3, 32, 32)) is model.classifier[1]


def test_adaptive_schedule_visits_few_steps_of_the_same_grid(spec, example):
    torch.manual_seed(0)
    every, jumping = spec.build().eval(), spec.build().eval()
    jumping.load_state_dict(every.state_dict())
    full = progressive_prune(every, example, 2.0, steps=40)
    fast = progressive_prune(jumping, example, 2.0, steps=40, adaptive=True)
    visited = [h.step for h in fast]
    assert visited[0] == 0 and visited == sorted(set(visited)) and len(fast) < len(full)
    assert fast[-1].reached and not any(h.reached for h in fast[:-1])
    # a step of the grid removes about the same share whichever way it was reached (not
    # exactly: a jump's per-step cap, STEP_CAP x the jump, holds back other channels)
    assert abs(fast[-1].step - full[-1].step) <= 2
    assert fast[-1].macs_speedup == pytest.approx(full[-1].macs_speedup, rel=0.15)


def test_next_step_moves_toward_the_predicted_step_and_never_past_the_grid():
    assert next_step(0, 1.0, 1.2, 50) == 3  # 0.7 of the way to 50 * (1 - 1.2 ** -0.5)
    assert next_step(0, 1.0, 2.0, 50) == 5  # further: at most a tenth of the schedule
    assert next_step(10, 1.7, 2.0, 50) == 11  # close: one step at a time
    assert next_step(48, 1.01, 4.0, 50) == 50  # never past the grid
    for step in range(0, 50):
        for value in (1.0, 1.3, 1.9, 2.5):
            assert step < next_step(step, value, 2.0, 50) <= 50


def _flat_mlp() -> nn.Sequential:
    """One prunable group (fc1's 16 outputs) whose group-l2 scores are all equal."""
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        for layer in (model[0], model[2]):  # fc2's columns belong to the group too
            layer.weight.fill_(0.1)
            layer.bias.zero_()
    return model


def test_one_step_cannot_empty_a_flat_group() -> None:
    """Torch-Pruning prunes every channel scored <= the global threshold: a flat group
    goes all at once. ``max_loss`` caps a step at that share of the initial width."""
    from metaprune.pruning.structure import make_pruner

    x = torch.randn(1, 8)
    widths = {}
    for cap in (None, 0.25):
        model = _flat_mlp()
        pruner = make_pruner(model, x, make_importance("group-l2"), ignored_layers=[model[2]],
                             global_pruning=True, pruning_ratio=1.0, iterative_steps=4)  # fmt: skip
        pruner.current_step = 1  # the step to half of all channels
        assert pruner.prune_step(max_loss=cap) == 1
        widths[cap] = [model[0].out_features]
        pruner.current_step = 2
        pruner.prune_step(max_loss=cap)
        widths[cap].append(model[0].out_features)
        assert model[2].in_features == model[0].out_features and model(x).shape == (1, 4)
    assert widths[None] == [4, 4]  # straight to the floor (a quarter of 16)
    assert widths[0.25] == [12, 8]  # 4 of the 16 per step
    with pytest.raises(ValueError, match="max_loss must be > 0"):
        pruner.prune_step(max_loss=0.0)


def test_torchvision_vit_lands_near_its_target() -> None:
    """The residual stream of a torchvision ViT is one group with flat scores at random
    init; uncapped, 12 steps to 2x went 1.33x -> 7.3x in one step (ViT-B/32: 14.9x)."""
    from torchvision.models import VisionTransformer

    model = VisionTransformer(16, 4, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                              num_classes=4)  # fmt: skip
    x = torch.randn(1, 3, 16, 16)
    history = progressive_prune(model, x, 2.0, steps=12, normalizer="mean")
    assert history[-1].reached and 2.0 <= history[-1].macs_speedup <= 2.6
    gains = [b.macs_speedup / a.macs_speedup for a, b in zip(history, history[1:])]
    assert max(gains) < 1.35  # no step more than a third faster than the one before
    assert 4 < model.hidden_dim < 16 and model.conv_proj.out_channels == model.hidden_dim
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 4)
