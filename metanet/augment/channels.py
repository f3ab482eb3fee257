"""Which state-tensor slices belong to each channel of a pruning group, and moving them.

A Torch-Pruning group (:class:`~metanet.sparsity.SparsityGroup`) lists the layers that must
lose the same channels: the conv/linear rows that write them, the norms over them, the
columns that read them; residual-coupled channels share one group. That is exactly the
unit a weight-space symmetry acts on. :func:`channel_groups` turns a member's groups into
:class:`ChannelGroup` s with every tensor slice per channel (biases and running statistics
included); :func:`permute` reorders one group's channels, :func:`owners` says which group
indexes each dimension of each tensor (the alignment of :mod:`.mixup` walks it).

Groups with a grouped or transposed layer, or whose channels own unequal numbers of
indices, are left out: :func:`channel_groups` keeps only groups it can move exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..sparsity import SparsityGroup

__all__ = ["ChannelGroup", "ChannelSlice", "channel_groups", "owners", "permute"]

_NORM_EXTRAS = ("bias", "running_mean", "running_var")


@dataclass(frozen=True)
class ChannelSlice:
    """Indices ``index[c]`` (shape ``(size, m)``) of tensor ``key`` along ``dim`` hold channel ``c``."""

    key: str
    dim: int
    index: Tensor
    role: str  # "out" (rows and biases of a producing layer), "norm" (affine and stats), "in"


@dataclass(frozen=True)
class ChannelGroup:
    """One pruning group's channels and every tensor slice that belongs to them."""

    size: int
    slices: tuple[ChannelSlice, ...]

    def of(self, role: str) -> tuple[ChannelSlice, ...]:
        return tuple(s for s in self.slices if s.role == role)


def channel_groups(
    groups: Sequence[SparsityGroup], state: Mapping[str, Tensor]
) -> list[ChannelGroup]:
    """The movable :class:`ChannelGroup` s of ``groups`` (state keys from ``state``)."""
    out = []
    for g in groups:
        slices: list[ChannelSlice] = []
        ok = g.size > 0
        for t in g.terms:
            if t.transposed or t.repeat != 1 or t.mode == "in" and not t.regularize:
                ok = False  # grouped / transposed layers: channels are not whole slices
                break
            index = _by_channel(t.idxs, t.root_idxs, g.size)
            if index is None:
                ok = False
                break
            prefix = t.key.rsplit(".", 1)[0]
            if t.mode == "in":
                slices.append(ChannelSlice(t.key, 1, index, "in"))
                continue
            role = "out" if t.mode == "out" else "norm"
            slices.append(ChannelSlice(t.key, 0, index, role))
            extras = ("bias",) if role == "out" else _NORM_EXTRAS
            slices += [ChannelSlice(f"{prefix}.{e}", 0, index, role)
                       for e in extras if f"{prefix}.{e}" in state]  # fmt: skip
        keys = [(s.key, s.dim) for s in slices]
        if ok and len(set(keys)) == len(keys):
            out.append(ChannelGroup(g.size, tuple(slices)))
    return out


def _by_channel(idxs: Tensor, root: Tensor, size: int) -> Tensor | None:
    """``(size, m)`` tensor indices per channel, or ``None`` if channels own unequal counts."""
    counts = torch.bincount(root, minlength=size)
    if counts.numel() != size or not bool((counts == counts[0]).all()) or int(counts[0]) == 0:
        return None
    order = torch.sort(root, stable=True).indices
    return idxs[order].view(size, int(counts[0]))


def owners(groups: Sequence[ChannelGroup]) -> dict[tuple[str, int], tuple[int, ChannelSlice]]:
    """``(key, dim) -> (group number, slice)`` for every tensor dimension a group indexes."""
    return {(s.key, s.dim): (i, s) for i, g in enumerate(groups) for s in g.slices}


@torch.no_grad()
def permute(tensors: Mapping[str, Tensor], group: ChannelGroup, perm: Tensor) -> dict[str, Tensor]:
    """``tensors`` with ``group``'s channel ``c`` taken from channel ``perm[c]`` (a new dict;
    untouched tensors are shared)."""
    if sorted(perm.tolist()) != list(range(group.size)):
        raise ValueError(
            f"permute: perm must be a permutation of {group.size} channels (found {perm.tolist()[:8]}...)"
        )
    out = dict(tensors)
    for s in group.slices:
        src = out[s.key]
        dst, take = s.index.reshape(-1), s.index[perm].reshape(-1)
        out[s.key] = src.index_copy(
            s.dim, dst.to(src.device), src.index_select(s.dim, take.to(src.device))
        )
    return out
