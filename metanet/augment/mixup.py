"""Weight-space MixUp of two networks after aligning their channels.

Two networks trained from different seeds compute similar features in different channel
orders, so averaging their weights directly averages unrelated channels. :func:`align`
finds, for every pruning group, which channel of network ``B`` matches each channel of
network ``A`` (weight matching, as in Ainsworth et al., "Git Re-Basin", ICLR 2023): group
by group, the matching maximises the summed inner products of the channels' weight slices
(rows, norm entries, reading columns) with every *other* dimension already aligned by the
current matching of the group that owns it; ``scipy.optimize.linear_sum_assignment``
solves each group, and the pass repeats until nothing changes. ``B`` may be wider than
``A`` (a less pruned member of the same architecture): each of ``A``'s channels then gets
a distinct channel of ``B`` and ``B``'s unmatched channels are dropped.

:func:`aligned` gives ``B``'s tensors in ``A``'s layout (a permuted copy of ``A`` comes
back bit for bit) and :func:`mix` interpolates ``lam * A + (1 - lam) * B_aligned``. The
mix is a new network, not a function-preserving edit: running statistics are interpolated
too, which is approximate (training on batch statistics ignores them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from .channels import ChannelGroup, ChannelSlice

__all__ = ["MixupError", "align", "aligned", "mix", "mixable"]


class MixupError(ValueError):
    """Two networks whose channel groups do not correspond."""


def _signature(g: ChannelGroup) -> tuple:
    return tuple((s.key, s.dim, s.role, s.index.shape[1]) for s in g.slices)


def mixable(a: Sequence[ChannelGroup], b: Sequence[ChannelGroup]) -> bool:
    """Whether ``b``'s groups correspond to ``a``'s, each at least as wide."""
    return len(a) == len(b) and all(
        _signature(x) == _signature(y) and y.size >= x.size for x, y in zip(a, b)
    )


def _owners(
    groups: Sequence[ChannelGroup],
) -> dict[tuple[str, int], list[tuple[int, ChannelSlice]]]:
    out: dict[tuple[str, int], list[tuple[int, ChannelSlice]]] = {}
    for i, g in enumerate(groups):
        for s in g.slices:
            out.setdefault((s.key, s.dim), []).append((i, s))
    return out


def _gather(
    t_b: Tensor, key: str, dim: int, size_a: int, own_a: dict, own_b: dict, perms: list[Tensor]
) -> Tensor:
    """``B``'s tensor ``key`` re-indexed along ``dim`` into ``A``'s layout (``size_a`` long)."""
    if (key, dim) not in own_a:
        if t_b.shape[dim] != size_a:
            raise MixupError(
                f"mixup: {key!r} dim {dim} is in no channel group and differs in size "
                f"({size_a} vs {t_b.shape[dim]})"
            )
        return t_b
    src = torch.full((size_a,), -1, dtype=torch.long)
    for (i, sa), (_, sb) in zip(own_a[(key, dim)], own_b[(key, dim)]):
        src[sa.index.reshape(-1)] = sb.index[perms[i]].reshape(-1)
    if bool((src < 0).any()):
        raise MixupError(f"mixup: {key!r} dim {dim} is only partly covered by channel groups")
    return t_b.index_select(dim, src.to(t_b.device))


@torch.no_grad()
def align(
    a: Mapping[str, Tensor], b: Mapping[str, Tensor],
    groups_a: Sequence[ChannelGroup], groups_b: Sequence[ChannelGroup], rounds: int = 10,
) -> list[Tensor]:  # fmt: skip
    """Per group, ``perm[c]`` = the channel of ``B`` matched to channel ``c`` of ``A``.

    Raises:
        MixupError: the groups do not correspond (:func:`mixable`).
    """
    if not mixable(groups_a, groups_b):
        raise MixupError("mixup: the two networks' channel groups do not correspond")
    own_a, own_b = _owners(groups_a), _owners(groups_b)
    perms = [torch.arange(g.size) for g in groups_a]
    keys = list(a)
    # shallow groups first: their matching fixes the input side of the deeper ones
    order = sorted(
        range(len(groups_a)), key=lambda i: min(keys.index(s.key) for s in groups_a[i].slices)
    )
    for _ in range(rounds):
        changed = False
        for i in order:
            ga, gb = groups_a[i], groups_b[i]
            cost = torch.zeros(ga.size, gb.size, dtype=torch.float64)
            for sa, sb in zip(ga.slices, gb.slices):
                ta, tb = a[sa.key], b[sb.key]
                for d in range(tb.dim()):
                    if d != sa.dim:
                        tb = _gather(tb, sa.key, d, ta.shape[d], own_a, own_b, perms)
                rows_a = ta.index_select(sa.dim, sa.index.reshape(-1)).movedim(sa.dim, 0)
                rows_b = tb.index_select(sb.dim, sb.index.reshape(-1)).movedim(sb.dim, 0)
                cost += (
                    rows_a.reshape(ga.size, -1).double() @ rows_b.reshape(gb.size, -1).double().T
                )
            _, cols = linear_sum_assignment(cost.cpu().numpy(), maximize=True)
            perm = torch.from_numpy(np.asarray(cols, dtype=np.int64))
            if not torch.equal(perm, perms[i]):
                perms[i], changed = perm, True
        if not changed:
            break
    return perms


@torch.no_grad()
def aligned(
    a: Mapping[str, Tensor], b: Mapping[str, Tensor],
    groups_a: Sequence[ChannelGroup], groups_b: Sequence[ChannelGroup], perms: Sequence[Tensor],
) -> dict[str, Tensor]:  # fmt: skip
    """``B``'s tensors in ``A``'s layout under the matching ``perms`` (from :func:`align`)."""
    own_a, own_b = _owners(groups_a), _owners(groups_b)
    out = {}
    for key, ta in a.items():
        tb = b[key]
        for d in range(tb.dim()):
            tb = _gather(tb, key, d, ta.shape[d], own_a, own_b, list(perms))
        out[key] = tb
    return out


def mix(a: Mapping[str, Tensor], b: Mapping[str, Tensor], lam: float) -> dict[str, Tensor]:
    """``lam * a + (1 - lam) * b`` for floating tensors; others (step counters) from ``a``."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"mix: lam must be in [0, 1] (found {lam})")
    return {k: lam * v + (1 - lam) * b[k] if v.is_floating_point() else v for k, v in a.items()}
