"""Sparse training (DepGraph's group-norm regulariser) and its validation-only ``reg`` search.

``sparse_train`` runs one sparse training of the ``before_pruning`` budget: after every
backward pass, Torch-Pruning's ``GroupNormPruner`` adds the gradient of a group-norm
penalty that drives whole unimportant channel groups towards zero, so that a magnitude
criterion can later remove them cheaply.

``search_reg`` implements ``SparseTraining(reg="auto")``: the strength that works is
model- and budget-dependent and its working range is narrow (on ``digits`` ResNet-20s,
10 epochs: 5e-4 does nothing, 0.1 is right, 0.2 destroys the network), so it is chosen
per job on the **validation split only**: candidates are tried from the largest down,
and the first whose BN-recalibrated validation accuracy stays within a tolerance of the
input model's is kept. The tolerance is the larger of ``auto_tolerance`` and two standard
errors of the reference accuracy on the validation split (``2 * sqrt(p (1 - p) / n)``):
a drop smaller than the split can resolve is no evidence of harm (on ``digits``' 180
validation images at 99 %, one standard error is 0.6 points, and a fixed 1-point
tolerance rejected every useful strength on a ResNet-20 at a 2-epoch budget). Larger strengths polarise more, so the largest one that does not
hurt accuracy is the one that prunes best. Nothing here can see the test split: the
method context carries only the training and validation loaders.
"""

from __future__ import annotations

import copy
import math
import time
from typing import TYPE_CHECKING, Any

import torch_pruning as tp
from torch import nn

from metaprune.pruning.finetune import FinetuneResult
from metaprune.pruning.progress import notify
from metaprune.pruning.targets import find_classifier

if TYPE_CHECKING:
    from metaprune.pruning.methods import MethodContext

__all__ = ["search_reg", "sparse_train"]


def sparse_train(model: nn.Module, ctx: MethodContext, reg: float) -> FinetuneResult:
    """Sparse-train ``model`` in place for the ``before_pruning`` budget at strength ``reg``."""
    regulariser = tp.pruner.GroupNormPruner(
        model, ctx.example_inputs, tp.importance.GroupMagnitudeImportance(p=2),
        reg=reg, global_pruning=True,
        ignored_layers=[find_classifier(model, ctx.example_inputs)],
    )  # fmt: skip
    regulariser.update_regularizer()
    return ctx.finetune(model, "before_pruning", regularizer=regulariser.regularize)


def search_reg(model: nn.Module, ctx: MethodContext) -> tuple[nn.Module, float, dict[str, Any]]:
    """Choose ``reg`` on validation (see the module doc); return the kept trial's model.

    Returns:
        ``(model, reg, record)``: the sparse-trained model of the chosen trial, its
        ``reg``, and a record of every trial (reg, validation accuracy, seconds) with the
        reference accuracy, the tolerance, the epochs trained and the total seconds.
    """
    options = ctx.config.sparse
    start = time.perf_counter()
    reference = copy.deepcopy(model)
    ctx.recalibrate(reference)
    ref_acc = ctx.evaluate(reference)
    del reference
    n_val = len(ctx.val_loader.dataset)  # type: ignore[arg-type]
    tolerance = max(options.auto_tolerance, 2.0 * math.sqrt(ref_acc * (1.0 - ref_acc) / n_val))
    floor = ref_acc - tolerance
    trials: list[dict[str, Any]] = []
    best: tuple[float, int, nn.Module, float] | None = None  # (val acc, -index, model, reg)
    chosen: tuple[nn.Module, float] | None = None
    grid = options.auto_grid
    for i, reg in enumerate(grid):
        t0 = time.perf_counter()
        candidate = copy.deepcopy(model)
        sparse_train(candidate, ctx, reg)
        ctx.recalibrate(candidate)
        acc = ctx.evaluate(candidate)
        trials.append({"reg": reg, "val_accuracy": acc, "seconds": time.perf_counter() - t0})
        notify(ctx.progress, ctx.cancel, "reg_search", i + 1, len(grid), reg=reg, val_accuracy=acc)
        if acc >= floor - 1e-9:  # accuracies are ratios of counts: no rounding verdicts
            chosen = (candidate, reg)
            break
        if best is None or acc > best[0]:  # ties keep the larger reg (tried first)
            best = (acc, -i, candidate, reg)
        del candidate
    if chosen is None:
        assert best is not None  # the grid is never empty (SparseTraining checks)
        chosen = (best[2], best[3])
    epochs = ctx.config.before_pruning.epochs
    record = {
        "reference_val_accuracy": ref_acc,
        "tolerance": tolerance,
        "validation_samples": n_val,
        "rule": "largest reg whose recalibrated val accuracy >= reference - tolerance"
        + ("" if chosen[1] == trials[-1]["reg"] and trials[-1]["val_accuracy"] >= floor - 1e-9
           else "; none passed: best val accuracy"),
        "trials": trials,
        "epochs_trained": epochs * len(trials),
        "seconds": time.perf_counter() - start,
    }  # fmt: skip
    return chosen[0], chosen[1], record
