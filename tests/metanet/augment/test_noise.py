"""Weight noise and edge dropout: seeded, bounded, and only on weights."""

from __future__ import annotations

import pytest
import torch

from metanet.augment import edge_dropout, weight_noise
from metaprune.models import ArchSpec


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return dict(
        ArchSpec("cifar_resnet20", {"in_channels": 1, "num_classes": 10}).build().state_dict()
    )


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_weight_noise_is_seeded_and_relative(state) -> None:
    a, b, c = (weight_noise(state, 0.05, _gen(s)) for s in (1, 1, 2))
    weights = [k for k, v in state.items() if k.endswith("weight") and v.dim() >= 2]
    assert len(weights) == 22  # 19 convs, 2 projections, fc
    for k, v in state.items():
        assert torch.equal(a[k], b[k])  # same seed, same result
        if k not in weights:
            assert a[k] is v  # biases, norms, statistics untouched
            continue
        assert not torch.equal(a[k], c[k])
        ratio = float((a[k] - v).std() / v.std())
        assert 0.03 < ratio < 0.07, (k, ratio)  # sigma = 0.05 of the weight's own spread
        assert float((a[k] - v).abs().max()) < 0.05 * 7 * float(v.std())
    assert weight_noise(state, 0.0, _gen(1))["conv1.weight"].equal(state["conv1.weight"])
    with pytest.raises(ValueError, match=r"sigma must be in \[0, 0.5\]"):
        weight_noise(state, 0.6, _gen(0))


def test_edge_dropout_zeroes_whole_edges_at_the_rate(state) -> None:
    a, b, c = (edge_dropout(state, 0.1, _gen(s)) for s in (1, 1, 2))
    total = dropped = 0
    for k, v in state.items():
        assert torch.equal(a[k], b[k])
        if not (k.endswith("weight") and v.dim() >= 2):
            assert a[k] is v
            continue
        zero = (a[k] != v).flatten(2).any(2) if v.dim() > 2 else a[k] != v
        if v.dim() > 2:  # a dropped edge is a whole kernel slice
            assert bool((a[k].flatten(2)[zero] == 0).all())
        kept = ~zero
        assert torch.equal(a[k].flatten(2)[kept] if v.dim() > 2 else a[k][kept],
                           v.flatten(2)[kept] if v.dim() > 2 else v[kept])  # fmt: skip
        total += zero.numel()
        dropped += int(zero.sum())
        assert not torch.equal(a[k], c[k])
    assert 0.08 < dropped / total < 0.12  # 268 k weights, ~27 k edges
    with pytest.raises(ValueError, match=r"p must be in \[0, 0.5\]"):
        edge_dropout(state, -0.1, _gen(0))
