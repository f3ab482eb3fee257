"""The group-sparsity term of meta-training (DepGraph's ``GroupNormPruner``), as a loss.

For every Torch-Pruning group ``g`` (all layers that must lose the same channels) and
channel ``c`` of it::

    loss = sum_g sum_c (reg / 2) * gamma_gc * ||w_gc||^2
    gamma_gc = alpha ** ((max_g - imp_gc) / (max_g - min_g))      (held constant)

where ``w_gc`` are the weight slices of channel ``c`` in every member of the group
(output rows of conv/linear layers, input columns of the layers that read the channel,
BatchNorm scales) and ``imp_gc`` is the group's L2 importance
(``GroupMagnitudeImportance(p=2)``: squared norms summed per member, mean over members,
normalised by the mean, square root).

**Why a loss and not Torch-Pruning's gradient injection.** ``GroupNormPruner.regularize``
adds ``reg * gamma * w`` to ``.grad`` of a live module's parameters after ``backward``.
In meta-training the weights are not parameters: they are decoded tensors produced by the
metanetwork, and the sparsity gradient must flow *through* them into the metanetwork. The
loss above has exactly that gradient with respect to the weights (``d/dw (reg/2) gamma
w^2 = reg gamma w``), so writing it explicitly lets autograd carry it on;
``tests/metanet/test_sparsity.py`` checks the two agree on a small model. We follow
``regularize`` to the letter: the importance and gamma come from the same formulas (and
the same default ``alpha = 16`` of its ``alpha`` argument; the pruner's constructor
``alpha`` is unused there), biases are not regularised, a layer that appears in a group
twice is counted twice. Two deliberate differences: a group whose importances are all
equal gets ``gamma = 1`` (Torch-Pruning divides 0 by 0 and writes NaN gradients), and the
input-channel terms of grouped (non-depthwise) convolutions are left out (Torch-Pruning
truncates ``gamma`` for them in a way that does not line up with the group's channels).

The groups depend only on the architecture, so they are traced once per architecture
(:meth:`GroupSparsity.from_model`) and then applied to any state tensors of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch_pruning.pruner import function

__all__ = ["GroupSparsity", "SparsityGroup", "SparsityTerm", "output_layers"]

_OUT_FNS = (function.prune_conv_out_channels, function.prune_linear_out_channels)
_IN_FNS = (function.prune_conv_in_channels, function.prune_linear_in_channels)
_NORM_FNS = (function.prune_batchnorm_out_channels, function.prune_layernorm_out_channels)
_IMPORTANCE_TYPES = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
)


@dataclass(frozen=True)
class SparsityTerm:
    """One member of a group: which slices of which state tensor belong to its channels.

    ``mode`` is ``"out"`` (rows of a conv/linear weight), ``"in"`` (columns) or ``"norm"``
    (entries of a norm's scale). ``idxs`` index the tensor, ``root_idxs`` the group's channels.
    """

    key: str
    mode: str
    idxs: Tensor
    root_idxs: Tensor
    transposed: bool = False
    repeat: int = 1  # grouped convs: the input importance is tiled over the groups
    regularize: bool = (
        True  # False: counts for importance only (e.g. LayerNorm, grouped-conv inputs)
    )


@dataclass(frozen=True)
class SparsityGroup:
    """The members of one pruning group and its number of channels."""

    size: int
    terms: tuple[SparsityTerm, ...]


def output_layers(model: nn.Module, example_inputs: Tensor | tuple[Tensor, ...]) -> list[str]:
    """Module paths of the layers that write the network's outputs (never pruned)."""
    from graph_encoding import NodeKind, plan_for

    plan = plan_for(model, example_inputs)
    outputs = [(s.offset, s.offset + s.size) for s in plan.node_sets if s.kind == NodeKind.OUTPUT]
    names = []
    for b in plan.blocks:
        if any(lo <= b.out_offset < hi for lo, hi in outputs):
            names.append(b.name.split(":")[0])
    return sorted(set(names))


class GroupSparsity:
    """``(reg / 2) * gamma * ||w||^2`` over Torch-Pruning groups, on plain state tensors.

    Args:
        groups: the architecture's groups, from :meth:`from_model`.
        reg: regularisation coefficient (METHOD.md: 10).
        alpha: gamma ranges over ``[1, alpha]``; the weakest channel gets ``alpha`` (16).

    Call it with a mapping ``state key -> tensor`` (e.g. the output of
    :func:`graph_encoding.decode_tensors`); it returns a scalar that is differentiable
    with respect to the weights, with gamma held constant.
    """

    def __init__(
        self, groups: Sequence[SparsityGroup], reg: float = 10.0, alpha: float = 16.0
    ) -> None:
        if reg < 0:
            raise ValueError(f"GroupSparsity: reg must be >= 0 (found {reg})")
        if alpha < 1:
            raise ValueError(f"GroupSparsity: alpha must be >= 1 (found {alpha})")
        self.groups = list(groups)
        self.reg = float(reg)
        self.alpha = float(alpha)

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        example_inputs: Tensor | tuple[Tensor, ...],
        *,
        ignored_layers: Sequence[str] | None = None,
        reg: float = 10.0,
        alpha: float = 16.0,
    ) -> GroupSparsity:
        """Trace ``model``'s pruning groups with Torch-Pruning.

        Args:
            ignored_layers: module paths whose output channels are never pruned (their
                input channels still take part in other groups); default: the layers
                writing the network outputs (:func:`output_layers`).
        """
        if ignored_layers is None:
            ignored_layers = output_layers(model, example_inputs)
        modules = dict(model.named_modules())
        missing = [n for n in ignored_layers if n not in modules]
        if missing:
            raise ValueError(
                f"GroupSparsity: ignored_layers {missing} are not modules of {type(model).__name__}"
            )
        names = {m: n for n, m in modules.items()}
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
        roots = [tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR, tp.ops.TORCH_LSTM]
        ignored = [modules[n] for n in ignored_layers]
        groups = []
        for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=roots):
            terms = [t for i, (dep, idxs) in enumerate(group)
                     if (t := _term(dep, idxs, group[i].root_idxs, names)) is not None]  # fmt: skip
            size = max(
                (int(t.root_idxs.max()) + 1 for t in terms if t.root_idxs.numel()), default=0
            )
            if terms:
                groups.append(SparsityGroup(size=size, terms=tuple(terms)))
        return cls(groups, reg=reg, alpha=alpha)

    @torch.no_grad()
    def importance(self, tensors: Mapping[str, Tensor]) -> list[Tensor]:
        """Per group, the channel importances Torch-Pruning's ``regularize`` uses (float32)."""
        out = []
        for g in self.groups:
            device = next(iter(tensors.values())).device
            imp = torch.zeros(g.size, dtype=torch.float32, device=device)
            n = 0
            for t in g.terms:
                local = _local_importance(tensors[t.key].detach(), t)
                imp.scatter_add_(0, t.root_idxs.to(device), local.to(torch.float32))
                n += 1
            imp /= n
            out.append((imp / imp.mean()).sqrt())
        return out

    @torch.no_grad()
    def gammas(self, tensors: Mapping[str, Tensor]) -> list[Tensor]:
        """Per group, ``alpha ** ((max - imp) / (max - min))`` (1 where the group is flat)."""
        out = []
        for imp in self.importance(tensors):
            spread = imp.max() - imp.min()
            if torch.isnan(imp).any() or not spread > 0:
                out.append(torch.ones_like(imp))
            else:
                out.append(self.alpha ** ((imp.max() - imp) / spread))
        return out

    def __call__(self, tensors: Mapping[str, Tensor]) -> Tensor:
        total: Tensor | None = None
        for g, gamma in zip(self.groups, self.gammas(tensors)):
            for t in g.terms:
                if not t.regularize:
                    continue
                w = tensors[t.key]
                dim = 1 if t.mode == "in" else 0
                sel = w.index_select(dim, t.idxs.to(w.device))
                shape = [1] * w.dim()
                shape[dim] = -1
                scale = gamma.index_select(0, t.root_idxs.to(gamma.device)).to(w.dtype).view(shape)
                term = (scale * sel.pow(2)).sum()
                total = term if total is None else total + term
        if total is None:
            return torch.zeros((), dtype=torch.float32)
        return 0.5 * self.reg * total


def _term(
    dep: object, idxs: Sequence[int], root_idxs: Sequence[int | None], names: dict
) -> SparsityTerm | None:
    layer, fn = dep.target.module, dep.handler
    if not isinstance(layer, _IMPORTANCE_TYPES) or any(r is None for r in root_idxs):
        return None
    key = f"{names[layer]}.weight"
    index = torch.tensor([int(i) for i in idxs], dtype=torch.long)
    root = torch.tensor([int(r) for r in root_idxs], dtype=torch.long)
    transposed = bool(getattr(layer, "transposed", False))
    if fn in _OUT_FNS:
        return SparsityTerm(key, "out", index, root, transposed=transposed)
    if fn in _IN_FNS:
        groups = getattr(layer, "groups", 1)
        grouped = fn == function.prune_conv_in_channels and groups != 1
        tiled = grouped and groups != layer.in_channels
        return SparsityTerm(key, "in", index, root, transposed=transposed,
                            repeat=groups if tiled else 1, regularize=not grouped)  # fmt: skip
    if fn in _NORM_FNS:
        affine = getattr(layer, "affine", getattr(layer, "elementwise_affine", False))
        if not affine or layer.weight is None:
            return None
        return SparsityTerm(
            key, "norm", index, root, regularize=isinstance(layer, nn.modules.batchnorm._BatchNorm)
        )
    return None


def _local_importance(w: Tensor, t: SparsityTerm) -> Tensor:
    # the same operations as GroupMagnitudeImportance(p=2), so the numbers agree bit for bit
    if t.mode == "out":
        w = w.transpose(1, 0) if t.transposed else w
        return w[t.idxs.to(w.device)].flatten(1).abs().pow(2).sum(1)
    if t.mode == "in":
        w = w.flatten(1) if t.transposed else w.transpose(0, 1).flatten(1)
        local = w.abs().pow(2).sum(1)
        if t.repeat > 1:
            local = local.repeat(t.repeat)
        return local[t.idxs.to(w.device)]
    return w[t.idxs.to(w.device)].abs().pow(2)
