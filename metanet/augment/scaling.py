"""Positive per-channel scaling: a re-parametrisation that keeps the network's function.

For ``relu(a * z) = a * relu(z)`` with ``a > 0``: multiplying channel ``c``'s BatchNorm
scale and shift by ``s_c`` (or, in a group without a norm, the producing layers' rows and
biases) and every reading layer's input column ``c`` by ``1 / s_c`` computes the same
function, in eval mode and on batch statistics alike (running statistics are untouched),
while every group-L2 importance, and so the pruning ranking, changes.

It is exact only where nothing between the scaled affine and the readers breaks
positive homogeneity (ReLU, max/avg pooling and residual sums of equally scaled terms do
not; SiLU, GELU, LayerNorm or an unscaled residual term do). :func:`scalable_groups`
therefore keeps a group only after checking it on the network itself: each group is
scaled alone by random factors and the outputs compared, in eval and training mode.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .channels import ChannelGroup, permute

__all__ = ["outputs", "permutable_groups", "same_function", "scalable_groups", "scale"]


@torch.no_grad()
def scale(tensors: Mapping[str, Tensor], group: ChannelGroup, factors: Tensor) -> dict[str, Tensor]:
    """``tensors`` with ``group``'s channels scaled by ``factors`` (``> 0``, one per channel)
    at their producer and by ``1 / factors`` at their readers (a new dict)."""
    if factors.shape != (group.size,) or not bool((factors > 0).all()):
        raise ValueError(
            f"scale: factors must be {group.size} positive values (found shape {tuple(factors.shape)})"
        )
    producers = group.of("norm") or group.of("out")
    # running statistics stay: they normalise before the affine that is scaled
    producers = tuple(s for s in producers if not s.key.endswith(("running_mean", "running_var")))
    out = dict(tensors)
    for slices, f in ((producers, factors), (group.of("in"), 1.0 / factors)):
        for s in slices:
            t = out[s.key]
            vec = torch.ones(t.shape[s.dim], dtype=t.dtype, device=t.device)
            vec[s.index.reshape(-1).to(t.device)] = (
                f.to(t.dtype).to(t.device).repeat_interleave(s.index.shape[1])
            )
            shape = [1] * t.dim()
            shape[s.dim] = -1
            out[s.key] = t * vec.view(shape)
    return out


def outputs(model: nn.Module, state: Mapping[str, Tensor], inputs: Tensor) -> tuple[Tensor, Tensor]:
    """``model``'s outputs on ``state`` in eval mode and on batch statistics (running
    statistics updates land on clones)."""
    was = model.training
    out = []
    try:
        for train in (False, True):
            model.train(train)
            s = {
                k: v.clone() if "running" in k or "num_batches" in k else v
                for k, v in state.items()
            }
            with torch.no_grad():
                out.append(functional_call(model, s, (inputs,)))
    finally:
        model.train(was)
    return out[0], out[1]


def same_function(
    model: nn.Module, a: Mapping[str, Tensor] | tuple[Tensor, Tensor], b: Mapping[str, Tensor],
    inputs: Tensor, rtol: float = 1e-4, atol: float = 1e-5,
) -> bool:  # fmt: skip
    """Whether ``model`` computes the same outputs on states ``a`` and ``b`` (``a`` may be
    :func:`outputs` already computed), in eval mode and on batch statistics."""
    ref = a if isinstance(a, tuple) else outputs(model, a, inputs)
    for x, y in zip(ref, outputs(model, b, inputs)):
        if not torch.allclose(x, y, rtol=rtol, atol=atol * float(x.abs().max().clamp_min(1.0))):
            return False
    return True


def _checked(
    model: nn.Module, groups: Sequence[ChannelGroup], inputs: Tensor, move, seed: int
) -> list[ChannelGroup]:
    state = dict(model.state_dict())
    ref = outputs(model, state, inputs)
    gen = torch.Generator().manual_seed(seed)
    return [g for g in groups if same_function(model, ref, move(state, g, gen), inputs)]


def scalable_groups(
    model: nn.Module, groups: Sequence[ChannelGroup], inputs: Tensor, seed: int = 0
) -> list[ChannelGroup]:
    """The groups of ``model`` whose positive scaling provably (on ``inputs``) keeps its function."""

    def move(state, g, gen):
        return scale(state, g, torch.exp(torch.empty(g.size).uniform_(-1.0, 1.0, generator=gen)))

    return _checked(model, groups, inputs, move, seed)


def permutable_groups(
    model: nn.Module, groups: Sequence[ChannelGroup], inputs: Tensor, seed: int = 0
) -> list[ChannelGroup]:
    """The groups of ``model`` whose channel permutation keeps its function (on ``inputs``)."""

    def move(state, g, gen):
        return permute(state, g, torch.randperm(g.size, generator=gen))

    return _checked(model, groups, inputs, move, seed)
