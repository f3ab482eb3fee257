"""Targeted growing regularisation: ``method="growing-reg"`` (the idea of GReg-1, Wang et
al., "Neural Pruning via Growing Regularization", ICLR 2021).

DepGraph's sparse training (:mod:`metaprune.pruning.sparse`) penalises every channel group
with one strength, and no strength suits every model: strong enough to empty the channels
the target needs removed, it also damages the ones that will be kept (issue 20). Here the
channels to remove are decided **first**, and only they are penalised:

1. **Which channels.** A dry run: the job's own proxy prune (``ctx.dry_prune``: a copy
   pruned to the target with each group-L2 normaliser, the best on validation kept) says
   how many output channels every layer loses. In each Torch-Pruning group of the model
   (the same group machinery the job prunes with, so residual streams, attention heads,
   depthwise and concatenation couplings are respected) that many root channels of lowest
   group-L2 importance are marked. Within a group the normaliser divides every channel by
   the same number, so it does not change which are lowest.
2. **The penalty.** After every backward pass, ``c(t) * w`` is added to the gradient of
   every weight slice of a marked channel: the producing convolution's or linear layer's
   rows and bias, the normalisation layer's weight and bias (BatchNorm rescales, so the
   conv rows alone would not silence a channel), and the consumers' input columns. Kept
   channels get nothing. ``c`` grows linearly from 0 to ``sparse.growing_ceiling`` over
   ``sparse.growing_ramp`` of the iterations and is then held, so the rest of the network
   learns to do without the marked channels while they fade.
3. **Candidates.** The model as given (scored by the dry run) and the run's end, scored
   by the same proxy; the end is kept unless the model as given prunes better beyond noise
   (:func:`~metaprune.pruning.choose.within_noise`). Training is exactly the
   ``before_pruning`` budget (``epochs_trained`` = ``before_pruning.epochs``).

The job's pruner then removes channels as it always does (criterion chosen on validation):
the marked ones are near zero, so pruning them changes the outputs little.

Torch-Pruning's own ``GrowingRegPruner`` is not used: it penalises by importance rank
rather than a chosen set, and its BatchNorm term adds to an indexed copy of the gradient
(``grad.data[idxs].add_``), so normalisation layers are never penalised.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import TYPE_CHECKING, Any

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from metaprune.pruning.choose import within_noise
from metaprune.pruning.structure import make_pruner
from metaprune.pruning.targets import find_classifier, layer_widths

if TYPE_CHECKING:
    from metaprune.pruning.methods import MethodContext

__all__ = ["GrowingPenalty", "Marked", "growing_reg", "mark_channels", "marked_norm"]

_NORMS = (_BatchNorm, nn.LayerNorm, nn.GroupNorm)
#: the largest ``lr * ceiling``: a penalised weight shrinks by at most half per step
_LR_TIMES_CEILING = 0.5


@dataclasses.dataclass(frozen=True)
class Marked:
    """The channels of one Torch-Pruning group to remove: ``root`` is the path of the
    group's root layer, ``channels`` the marked root channel indices (of ``width``)."""

    root: str
    width: int
    channels: tuple[int, ...]
    #: every weight slice of the marked channels: (parameter, dimension, indices)
    slices: tuple[tuple[nn.Parameter, int, Tensor], ...]


def _out_width(module: nn.Module) -> int | None:
    if isinstance(module, _ConvNd) and not module.transposed:
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    return None


def _slices(group: Any, marked: set[int], graph: Any) -> list[tuple[nn.Parameter, int, Tensor]]:
    """The (parameter, dimension, plain indices) of ``group``'s items whose root channel is
    marked; each parameter's dimension once (the union of its indices)."""
    found: dict[tuple[int, int], tuple[nn.Parameter, int, set[int]]] = {}

    def add(param: nn.Parameter | None, dim: int, idxs: list[int]) -> None:
        if param is None or not idxs or max(idxs) >= param.shape[dim]:
            return  # no such parameter, or a layout this penalty does not know (grouped)
        entry = found.setdefault((id(param), dim), (param, dim, set()))
        entry[2].update(idxs)

    for k, (dep, idxs) in enumerate(group):
        layer = dep.target.module
        plain = [int(i) for i, r in zip(idxs, group[k].root_idxs, strict=True) if int(r) in marked]
        if graph.is_out_channel_pruning_fn(dep.handler) and (
            _out_width(layer) is not None
            or (isinstance(layer, _NORMS) and layer.weight is not None and layer.weight.dim() == 1)
        ):
            add(layer.weight, 0, plain)
            add(layer.bias, 0, plain)
        elif graph.is_in_channel_pruning_fn(dep.handler) and (
            isinstance(layer, nn.Linear)
            or (isinstance(layer, _ConvNd) and not layer.transposed and layer.groups == 1)
        ):
            add(layer.weight, 1, plain)
    return [(p, d, torch.tensor(sorted(i), dtype=torch.long)) for p, d, i in found.values()]


def mark_channels(
    model: nn.Module,
    pruned: nn.Module,
    example_inputs: Tensor,
    *,
    p: int = 2,
    group_reduction: str = "mean",
) -> list[Marked]:
    """In every Torch-Pruning group of ``model``, mark as many root channels of lowest
    group-L2 importance as the group's root layer lost in ``pruned`` (a pruned deep copy
    of ``model``: module paths survive the copy). Groups that lost nothing are left out."""
    pruner = make_pruner(
        model, example_inputs, tp.importance.GroupMagnitudeImportance(p=p, group_reduction=group_reduction,
                                                                      normalizer=None),
        ignored_layers=[find_classifier(model, example_inputs)],
    )  # fmt: skip
    names = {m: n for n, m in model.named_modules()}
    after = layer_widths(pruned)  # by module path: the paths survive the deep copy
    out: list[Marked] = []
    for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                          root_module_types=pruner.root_module_types):  # fmt: skip
        root = group[0].dep.target.module
        path, width = names.get(root), _out_width(root)
        if path is None or width is None or path not in after:
            continue  # not a root this penalty knows, or a layer the pruned copy lost
        roots = len(group[0].idxs)
        lost = min(roots, max(0, width - after[path]) * roots // width)
        if lost == 0:
            continue
        with torch.no_grad():
            importance = pruner.importance(group)
        if importance is None:
            continue
        # channel groups (attention heads, grouped convolutions) lose the same positions in
        # every group, ranked by the mean over groups, as Torch-Pruning prunes them
        ch_groups = pruner._get_channel_groups(group)
        if ch_groups < 1 or len(importance) % ch_groups or lost % ch_groups:
            ch_groups = 1
        size = len(importance) // ch_groups
        scores = importance.detach().cpu().float().view(ch_groups, size).mean(0)
        # ties by index: the same channels on every run (stable sort)
        lowest = torch.argsort(scores, stable=True)[: lost // ch_groups]
        channels = tuple(sorted(int(i) + g * size for g in range(ch_groups) for i in lowest))
        out.append(Marked(path, roots, channels, tuple(_slices(group, set(channels), pruner.DG))))
    return out


class GrowingPenalty:
    """``regularize(model)`` after every backward pass: ``c(t) * w`` on every slice of the
    marked channels, ``c`` growing linearly from 0 to ``ceiling`` over ``ramp``
    iterations, then held (``t`` counts the calls)."""

    def __init__(self, marked: list[Marked], ceiling: float, ramp: int) -> None:
        self.slices = [s for m in marked for s in m.slices]
        self.ceiling, self.ramp, self.iterations = ceiling, max(1, ramp), 0

    def coefficient(self, iteration: int) -> float:
        return self.ceiling * min(1.0, (iteration + 1) / self.ramp)

    def __call__(self, model: nn.Module) -> None:
        c = self.coefficient(self.iterations)
        self.iterations += 1
        with torch.no_grad():
            for param, dim, idx in self.slices:
                if param.grad is not None:
                    param.grad.index_add_(dim, idx, param.index_select(dim, idx), alpha=c)


def marked_norm(marked: list[Marked]) -> float:
    """The L2 norm of every marked slice together (what the penalty drives to zero)."""
    total = sum(float(param.detach().index_select(dim, idx).pow(2).sum()) for m in marked
                for param, dim, idx in m.slices)  # fmt: skip
    return total**0.5


def growing_reg(model: nn.Module, ctx: MethodContext) -> tuple[nn.Module, dict[str, Any]]:
    """Train a copy of ``model`` for the ``before_pruning`` budget with the targeted growing
    penalty (module doc); return the kept candidate (``model`` itself if the model as given
    is kept, the trained copy otherwise) and the record for the report."""
    if ctx.dry_prune is None:
        raise ValueError(
            "growing_reg needs ctx.dry_prune (prune a copy to the target and score it)"
        )
    start = time.perf_counter()
    sparse, budget = ctx.config.sparse, ctx.config.before_pruning
    # SGD shrinks a penalised weight by lr * c per step: past 1 it would overshoot zero
    ceiling = sparse.growing_ceiling if budget.lr <= 0 else min(sparse.growing_ceiling, _LR_TIMES_CEILING / budget.lr)
    given, pruned = ctx.dry_prune(model)
    proxy_seconds = time.perf_counter() - start
    trained = copy.deepcopy(model)  # the model as given stays a candidate
    marked = mark_channels(trained, pruned, ctx.example_inputs, p=ctx.config.importance.p,
                           group_reduction=ctx.config.importance.group_reduction)  # fmt: skip
    del pruned
    total = budget.epochs * max(1, len(ctx.train_loader))
    penalty = GrowingPenalty(marked, ceiling, round(sparse.growing_ramp * total))
    initial_norm = marked_norm(marked)
    ctx.finetune(trained, "before_pruning", regularizer=penalty)
    assert penalty.iterations <= total, (penalty.iterations, total)  # the budget, exactly
    t0 = time.perf_counter()
    final = ctx.proxy(trained)  # type: ignore[misc]
    proxy_seconds += time.perf_counter() - t0
    images = ctx.proxy_images
    displaced = given > final and not (images is not None and within_noise(given, final, images))
    record = {
        "rule": "channels a dry prune to the target removes (per group, lowest group-L2) are "
        "penalised with an L2 coefficient growing linearly to the ceiling, then held; the run's "
        "end is kept unless the model as given prunes better beyond noise (validation accuracy "
        "after pruning a copy to the target, BN recalibrated)",
        "ceiling": ceiling,
        "ceiling_capped": ceiling < sparse.growing_ceiling,
        "ramp": sparse.growing_ramp,
        "ramp_iterations": penalty.ramp,
        "iterations_trained": penalty.iterations,
        "epochs_trained": penalty.iterations / max(1, len(ctx.train_loader)),
        "marked": {"channels": sum(len(m.channels) for m in marked),
                   "of": sum(m.width for m in marked),
                   "groups": [{"root": m.root, "marked": len(m.channels), "of": m.width} for m in marked]},
        "marked_norm": {"before": initial_norm, "after": marked_norm(marked)},
        "noise": None if images is None else f"one standard error on {images} validation images",
        "trials": [{"role": "as given", "epochs": 0.0, "val_accuracy": given},
                   {"role": "end", "epochs": budget.epochs, "val_accuracy": final}],
        "kept": "as given" if displaced else "end",
        "proxy_seconds": proxy_seconds,
        "seconds": time.perf_counter() - start,
    }  # fmt: skip
    return (model if displaced else trained), record
