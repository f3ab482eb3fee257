"""Tests for metaprune.pruning._score_cache: reused scores change no pruned model."""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from torch import nn
from torchvision.models import VisionTransformer

import metaprune.pruning._floor as floor
from metaprune.models import ArchSpec
from metaprune.pruning._score_cache import ScoreCache, cacheable
from metaprune.pruning.importance import SeededRandomImportance, make_importance
from metaprune.pruning.macs_importance import MacsAwareImportance
from metaprune.pruning.progressive import progressive_prune
from metaprune.pruning.structure import make_pruner


def _vit() -> nn.Module:
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2,
                              hidden_dim=16, mlp_dim=32, num_classes=3)  # fmt: skip
    with torch.no_grad():  # torchvision zero-initialises the head: no gradient would pass
        model.heads.head.weight.normal_(0, 0.1)
    return model.eval()


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return ArchSpec("cifar_resnet20", {"num_classes": 3, "width": 0.5, "in_channels": 3}).build().eval()


def _prune(model: nn.Module, criterion: str, reuse: bool, monkeypatch: pytest.MonkeyPatch) -> tuple:
    """A copy of ``model`` pruned to 1.8x MACs; its steps, weights and the caches used."""
    caches: list[ScoreCache] = []

    class Counted(ScoreCache):
        def __init__(self) -> None:
            super().__init__()
            caches.append(self)

    monkeypatch.setattr(floor, "ScoreCache", Counted)
    monkeypatch.setattr(floor, "cacheable", cacheable if reuse else (lambda _imp: False))
    model = copy.deepcopy(model)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    data = [(torch.randn(6, 3, 32, 32, generator=g), torch.randint(0, 3, (6,), generator=g))]
    importance = make_importance(criterion, normalizer="sum", model=model, calibration=data)
    history = progressive_prune(model, x, 1.8, importance=importance, steps=20)
    return history, model.state_dict(), caches


@pytest.mark.parametrize("criterion", ["group-l2", "taylor", "hessian", "group-l2-macs"])
@pytest.mark.parametrize("build", [_vit, _resnet], ids=["vit", "resnet20"])
def test_reused_scores_prune_the_same_model(criterion, build, monkeypatch):
    model = build()
    want, want_state, none = _prune(model, criterion, False, monkeypatch)
    got, got_state, caches = _prune(model, criterion, True, monkeypatch)
    assert none == [] and len(caches) == 1
    assert got == want and len(got) > 2 and got[-1].reached
    assert got_state.keys() == want_state.keys()
    assert all(torch.equal(got_state[k], want_state[k]) for k in want_state)
    assert caches[0].misses > 0
    if build is _vit and criterion == "group-l2":  # an MLP group left alone by a step: reused
        assert caches[0].hits > 0


def test_which_criteria_are_cached():
    l2 = tp.importance.GroupMagnitudeImportance(p=2)
    assert cacheable(l2) and cacheable(tp.importance.GroupTaylorImportance())
    assert cacheable(MacsAwareImportance(l2, nn.Linear(2, 2), torch.randn(1, 2)))
    hessian = tp.importance.GroupHessianImportance()
    assert cacheable(hessian)
    hessian._accu_grad[nn.Parameter(torch.ones(1))] = torch.ones(1)  # it accumulated its own
    assert not cacheable(hessian)
    assert not cacheable(SeededRandomImportance(0)) and not cacheable(tp.importance.RandomImportance())
    assert not cacheable(tp.importance.LAMPImportance())  # a subclass: may keep state
    assert not cacheable(MacsAwareImportance(SeededRandomImportance(0), nn.Linear(2, 2), torch.randn(1, 2)))


def test_a_weight_changed_in_place_is_scored_again():
    model = _vit()
    pruner = make_pruner(model, torch.randn(1, 3, 32, 32), tp.importance.GroupMagnitudeImportance(p=2),
                         ignored_layers=[model.heads.head])  # fmt: skip
    group = next(iter(pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                               root_module_types=pruner.root_module_types)))  # fmt: skip
    first = pruner.estimate_importance(group)
    assert torch.equal(pruner.estimate_importance(group), first)
    assert (pruner.scores.hits, pruner.scores.misses) == (1, 1)
    with torch.no_grad():
        group[0].dep.target.module.weight.mul_(3.0)  # bumps its version counter
    again = pruner.estimate_importance(group)
    assert pruner.scores.misses == 2 and not torch.equal(again, first)
    fresh = make_pruner(model, torch.randn(1, 3, 32, 32), tp.importance.GroupMagnitudeImportance(p=2),
                        ignored_layers=[model.heads.head], reuse_scores=False)  # fmt: skip
    assert fresh.scores is None
    assert torch.equal(fresh.estimate_importance(group), again)
