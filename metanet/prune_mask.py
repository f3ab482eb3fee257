"""Prune-aware meta-training: mask the channels that the pipeline's pruning would remove.

The sparsity term (:mod:`metanet.sparsity`) is a proxy; what the product measures is the
accuracy of the rewritten network once its weakest channels are gone and BatchNorm is
recalibrated. :class:`ChannelMask` trains on that directly: for a sampled keep ratio it
ranks every channel of every Torch-Pruning group by group-L2 importance of the
*rewritten* weights (squared norms, mean over the group's members, normalised per group
as the pruner's ``normalizer`` does), keeps the globally top ``keep`` share (each group
keeping at least ``floor`` of its channels, as ``progressive_prune``'s
``max_layer_ratio=0.75`` does), and silences the rest by scaling their BatchNorm scale and
shift (or, for a group without a BatchNorm, its layers' output rows) by a mask.

The mask is hard in the forward pass and soft in the backward pass (straight-through):
``m = hard + s - s.detach()`` with ``s = sigmoid((log imp - log threshold) / temperature)``,
so the task loss of the masked network tells the metanetwork which channels to make
important (a pruned channel whose return would lower the loss is pushed above the
threshold, a kept one that hurts is pushed below). Run the masked network with BatchNorm
in training mode: batch statistics stand in for the recalibration the pipeline does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .sparsity import SparsityGroup, _local_importance

__all__ = ["ChannelMask"]

_NORMALIZERS = ("sum", "mean", "max")


class ChannelMask:
    """Masks the globally least important channels of a network's state tensors.

    Args:
        groups: the architecture's pruning groups (:meth:`GroupSparsity.from_model`).
        normalizer: per-group normalisation of importances before the global ranking
            (``"sum"``, ``"mean"`` or ``"max"``, as Torch-Pruning's).
        floor_ratio: every group keeps at least ``ceil(floor_ratio * size)`` channels (and 2).
        temperature: of the soft mask in log-importance units.
    """

    def __init__(
        self,
        groups: Sequence[SparsityGroup],
        *,
        normalizer: str = "sum",
        floor_ratio: float = 0.25,
        temperature: float = 0.5,
    ) -> None:
        if normalizer not in _NORMALIZERS:
            raise ValueError(
                f"ChannelMask: normalizer must be one of {_NORMALIZERS} (found {normalizer!r})"
            )
        if not temperature > 0:
            raise ValueError(f"ChannelMask: temperature must be > 0 (found {temperature})")
        self.groups = [g for g in groups if g.size > 0]
        self.normalizer = normalizer
        self.floors = [min(g.size, max(2, math.ceil(floor_ratio * g.size))) for g in self.groups]
        self.temperature = float(temperature)

    def importance(self, tensors: Mapping[str, Tensor]) -> list[Tensor]:
        """Per group, normalised channel importances, differentiable in the weights."""
        out = []
        for g in self.groups:
            imp = 0.0
            for t in g.terms:
                local = _local_importance(tensors[t.key], t)
                w = tensors[t.key]
                imp = imp + torch.zeros(g.size, dtype=w.dtype, device=w.device).index_add(
                    0, t.root_idxs.to(w.device), local
                )
            imp = imp / len(g.terms)
            scale = {"sum": imp.sum(), "mean": imp.mean(), "max": imp.max()}[self.normalizer]
            out.append(imp / scale.clamp_min(1e-30))
        return out

    def masks(self, tensors: Mapping[str, Tensor], keep: float) -> list[Tensor]:
        """Per group, the straight-through channel mask keeping the top ``keep`` share."""
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"ChannelMask: keep must be in (0, 1] (found {keep})")
        imps = self.importance(tensors)
        logs = [imp.clamp_min(1e-30).log() for imp in imps]
        # channels under their group's floor are always kept: rank only the rest
        free = []
        for log_imp, floor in zip(logs, self.floors):
            top = log_imp.detach().topk(floor).indices
            candidate = log_imp.detach().clone()
            candidate[top] = math.inf
            free.append(candidate)
        ranked = torch.cat(free)
        drop = int(round((1.0 - keep) * ranked.numel()))
        drop = min(drop, int(torch.isfinite(ranked).sum()))
        if drop == 0:
            return [torch.ones_like(x) for x in logs]
        threshold = ranked.kthvalue(drop).values  # the drop-th smallest is the last dropped
        masks = []
        for log_imp, candidate in zip(logs, free):
            hard = (candidate > threshold).to(log_imp.dtype)
            soft = torch.sigmoid((log_imp - threshold) / self.temperature)
            masks.append(hard + soft - soft.detach())
        return masks

    def __call__(self, tensors: Mapping[str, Tensor], keep: float) -> dict[str, Tensor]:
        """A copy of ``tensors`` with the dropped channels silenced (running statistics
        untouched)."""
        scales: dict[str, list[tuple[Tensor, Tensor, int]]] = {}
        for g, mask in zip(self.groups, self.masks(tensors, keep)):
            norms = [t for t in g.terms if t.mode == "norm"]
            for t in norms or [t for t in g.terms if t.mode == "out"]:
                for key in (t.key, t.key.removesuffix("weight") + "bias"):
                    if key in tensors:  # a transposed conv keeps its outputs in dim 1
                        dim = 1 if t.transposed and key == t.key else 0
                        scales.setdefault(key, []).append((t.idxs, mask[t.root_idxs], dim))
        out = dict(tensors)
        for key, parts in scales.items():
            w = out[key]
            for idxs, values, dim in parts:
                factor = torch.ones(w.shape[dim], dtype=w.dtype, device=w.device)
                factor = factor.index_put((idxs.to(w.device),), values.to(w.dtype))
                shape = [1] * w.dim()
                shape[dim] = -1
                w = w * factor.view(shape)
            out[key] = w
        return out
