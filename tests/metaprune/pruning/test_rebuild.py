"""Tests for metaprune.pruning.rebuild: the saved spec must rebuild the pruned model."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from metaprune.models import ArchSpec
from metaprune.pruning.progressive import progressive_prune
from metaprune.pruning.rebuild import PlanRebuildError, check_rebuild


@pytest.fixture(scope="module")
def pruned() -> tuple[ArchSpec, torch.nn.Module, torch.Tensor]:
    spec = ArchSpec("cifar_resnet20", {"width": 0.25, "in_channels": 1, "num_classes": 4})
    torch.manual_seed(0)
    model = spec.build().eval()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    progressive_prune(model, x[:1], 1.5, steps=10, normalizer="sum")
    return spec.with_plan_of(model), model, x


def test_the_plan_rebuilds_the_pruned_model_bit_for_bit(pruned) -> None:
    spec, model, x = pruned
    assert spec.channel_plan
    rng = torch.get_rng_state()
    assert check_rebuild(spec, model, x) == 0.0
    assert torch.equal(torch.get_rng_state(), rng)  # building did not consume the job's RNG


def test_a_spec_without_the_plan_is_caught_naming_a_tensor(pruned) -> None:
    spec, model, x = pruned
    with pytest.raises(PlanRebuildError, match="does not rebuild it: '.*' is .* in the rebuild"):
        check_rebuild(dataclasses.replace(spec, channel_plan=None), model, x)


def test_different_weights_semantics_are_caught(pruned, monkeypatch) -> None:
    spec, model, x = pruned

    original = ArchSpec.build

    def build_other(self, *args, **kwargs):  # a rebuild whose forward differs
        built = original(self, *args, **kwargs)
        forward = built.forward
        built.forward = lambda inputs: forward(inputs) + 1.0
        return built

    monkeypatch.setattr(ArchSpec, "build", build_other)
    with pytest.raises(PlanRebuildError, match="outputs differ from the pruned model's by 1"):
        check_rebuild(spec, model, x)
