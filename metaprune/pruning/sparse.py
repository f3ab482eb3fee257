"""Sparse training (DepGraph's group-norm regulariser) and its ``reg="auto"`` search.

``sparse_train`` runs one sparse training of the ``before_pruning`` budget: after every
backward pass, Torch-Pruning's ``GroupNormPruner`` adds the gradient of a group-norm
penalty that drives whole unimportant channel groups towards zero, so that a magnitude
criterion can later remove them cheaply.

``search_reg`` implements ``SparseTraining(reg="auto")``. The strength that works is model-,
budget- and target-dependent, and its working range is narrow (on ``digits`` ResNet-20s, 10
epochs: 5e-4 does nothing, 0.1 is right, 0.2 destroys the network; of two held-out
ResNet-56s one wants 0.03, the other 0.1), so it is judged by **what the job delivers**: a
proxy prunes a copy to the requested target, recalibrates BatchNorm and scores it on the
validation split. But prunability after one or two epochs does not rank strengths as the
whole budget does (a held-out ResNet-56: 0.1 led 0.03 by 17 points after two epochs and
ended 55 points behind it after ten; issue 20), and the best strength flips between
models of one family (two held-out ResNet-56s: 0.03 vs 0.1 on validation after ten epochs
86 / 53 % vs 29 / 28 % on one, 89 / 74 % vs 91 / 90 % on the other), so no short trial decides
and no single prior is right. Instead **two strengths train to the end**: the prior's (0.03,
the hindsight-best at 2x on most held-out models; 0.1 from ~2.8x, the hindsight-best at 3x
on ResNet-20s) and its grid neighbour nearer the middle (0.1 / 0.03), each on a complete
learning-rate schedule of its share of the budget (``sparse.search_fraction``, half by
default: 5 + 5 epochs of 10; the prior alone below 2 epochs each) from the same weights.
Each is scored, and so is the model as given (the 0-epoch path); the better trained one is
the prepared model (matched epochs, the objective itself), and the model as given replaces
it only when it beats it beyond noise (one standard error on the proxy's validation images,
:func:`~metaprune.pruning.choose.within_noise`). ``epochs_trained`` counts every trial and
never exceeds the budget the user set. Nothing here can see the test split: the method
context carries only the training and validation loaders.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from metaprune.pruning.choose import within_noise
from metaprune.pruning.finetune import FinetuneResult, lr_factor
from metaprune.pruning.progress import notify
from metaprune.pruning.targets import find_classifier

if TYPE_CHECKING:
    from metaprune.pruning.methods import MethodContext

__all__ = ["SparseRun", "search_reg", "sparse_train"]

MIN_ARM_EPOCHS = 2  # a strength trained for less does not show what it does to prunability


def _regulariser(model: nn.Module, ctx: MethodContext, reg: float) -> tp.pruner.GroupNormPruner:
    regulariser = tp.pruner.GroupNormPruner(
        model, ctx.example_inputs, tp.importance.GroupMagnitudeImportance(p=2),
        reg=reg, global_pruning=True,
        ignored_layers=[find_classifier(model, ctx.example_inputs)],
    )  # fmt: skip
    regulariser.update_regularizer()
    return regulariser


def sparse_train(model: nn.Module, ctx: MethodContext, reg: float) -> FinetuneResult:
    """Sparse-train ``model`` in place for the ``before_pruning`` budget at strength ``reg``."""
    regulariser = _regulariser(model, ctx, reg)
    return ctx.finetune(model, "before_pruning", regularizer=regulariser.regularize)


class SparseRun:
    """One resumable sparse training of ``horizon`` iterations at strength ``reg``.

    :meth:`advance` trains a number of iterations (batches) and can be called again; the
    learning rate follows the ``before_pruning`` schedule stretched over ``horizon``, so
    an arm stopped early saw the same learning rates as the winner at the same point.
    """

    def __init__(self, model: nn.Module, ctx: MethodContext, reg: float, horizon: int) -> None:
        budget = ctx.config.before_pruning
        self.reg, self.ctx, self.model = reg, ctx, copy.deepcopy(model)
        self.regulariser = _regulariser(self.model, ctx, reg)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=budget.lr, momentum=budget.momentum,
            weight_decay=budget.weight_decay,
        )  # fmt: skip
        per_epoch = max(1, len(ctx.train_loader))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(budget, per_epoch, total=horizon)
        )
        self.iterations, self.horizon = 0, horizon
        self._batches: Iterator[tuple[Tensor, Tensor]] = _cycle(ctx.train_loader)

    def advance(self, iterations: int) -> None:
        model, ctx = self.model, self.ctx
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        for _ in range(iterations):
            notify(ctx.progress, ctx.cancel, "before_pruning", self.iterations, self.horizon,
                   task="reg trial", reg=self.reg)  # fmt: skip
            inputs, labels = next(self._batches)
            inputs, labels = inputs.to(ctx.device), labels.to(ctx.device)
            self.optimizer.zero_grad(set_to_none=True)
            loss_fn(model(inputs), labels).backward()
            self.regulariser.regularize(model)
            self.optimizer.step()
            self.scheduler.step()
            self.iterations += 1
        self.optimizer.zero_grad(set_to_none=True)
        model.eval()


def _cycle(loader: Any) -> Iterator[tuple[Tensor, Tensor]]:
    for _ in itertools.count():  # a new epoch: a new shuffle
        yield from loader


def search_reg(model: nn.Module, ctx: MethodContext) -> tuple[nn.Module, float, dict[str, Any]]:
    """Choose ``reg``: the prior's strength and one neighbour each train their share of the
    budget to the end, and the one that prunes better is kept (see the module doc).

    Returns:
        ``(model, reg, record)``: the kept checkpoint, its ``reg`` (0 for the model as
        given), and a record of every trial (strength, epochs, proxy validation accuracy),
        the checkpoint kept and why, the epochs trained in all (<= ``before_pruning.epochs``)
        and seconds.
    """
    if ctx.proxy is None:
        raise ValueError("search_reg needs ctx.proxy (prune a copy to the target and score it)")
    start = time.perf_counter()
    per_epoch = max(1, len(ctx.train_loader))
    total = ctx.config.before_pruning.epochs * per_epoch
    grid = list(ctx.config.sparse.auto_grid)
    prior = _prior_index(len(grid), ctx.config.target.value)
    share = _challenger_share(total, per_epoch, ctx.config.sparse.search_fraction)
    arms = [(prior, total - share, "prior")] + [(i, share, "challenger") for i in
                                                _challengers(len(grid), prior)[: bool(share)]]  # fmt: skip
    trials: list[dict[str, Any]] = []
    models: list[nn.Module] = []

    def measure(m: nn.Module, reg: float, iterations: int, role: str) -> None:
        trials.append({"reg": reg, "epochs": iterations / per_epoch, "role": role,
                       "val_accuracy": ctx.proxy(m)})  # type: ignore[misc]  # fmt: skip
        notify(ctx.progress, ctx.cancel, "reg_search", len(trials), len(arms) + 1, **trials[-1])
        models.append(m)

    measure(model, 0.0, 0, "as given")  # the 0-epoch path: free of training, always a candidate
    for index, iterations, role in arms:
        # from the same weights, each on its own complete schedule: compared where the
        # job will use them, at the end of training (early prunability misranks strengths)
        run = SparseRun(model, ctx, grid[index], iterations)
        run.advance(iterations)
        measure(run.model, run.reg, iterations, role)
    trained = sum(iterations for _, iterations, _ in arms)
    assert trained <= total, (trained, total)  # the budget counts every trial

    # the trained arms compete as equals (the prior wins exact ties); the model as given,
    # which the user asked to train, replaces them only beyond noise
    images = ctx.proxy_images
    best = max(range(1, len(trials)), key=lambda i: trials[i]["val_accuracy"])  # first of equals
    given, top = trials[0]["val_accuracy"], trials[best]["val_accuracy"]
    fallback = given > top and not (images is not None and within_noise(given, top, images))
    kept = 0 if fallback else best
    record = {
        "rule": f"the prior's strength ({grid[prior]:g}) and its neighbour each train their share "
        "of the budget on a complete schedule; the better after pruning a copy to the target "
        "(validation, BN recalibrated) is kept; the model as given only if better beyond noise",
        "grid": [grid[i] for i, _, _ in arms],
        "prior": grid[prior],
        "noise": None if images is None else f"one standard error on {images} validation images",
        "trials": trials,
        "kept": {**trials[kept], "displaced_prior": kept != 1},
        "iterations_per_epoch": per_epoch,
        "iterations_trained": trained,
        "epochs_trained": trained / per_epoch,
        "winner_epochs": trials[kept]["epochs"],
        "seconds": time.perf_counter() - start,
    }  # fmt: skip
    # the model as given is the caller's: the job prunes its own copy
    return copy.deepcopy(models[0]) if kept == 0 else models[kept], trials[kept]["reg"], record


def _challenger_share(total: int, per_epoch: int, fraction: float) -> int:
    """Iterations the challenger trains: ``fraction`` of the budget in whole epochs, 0 when
    either arm would get fewer than ``MIN_ARM_EPOCHS`` (too short to rank strengths)."""
    share = int(fraction * total) // per_epoch * per_epoch
    return share if min(share, total - share) >= MIN_ARM_EPOCHS * per_epoch else 0


def _challengers(n: int, prior: int) -> list[int]:
    """The grid neighbours of the prior (indices), the one nearer the grid's middle first,
    the stronger of two equally near."""
    middle = (n - 1) // 2
    near = [i for i in (prior - 1, prior + 1) if 0 <= i < n]
    return sorted(near, key=lambda i: (abs(i - middle), i))


def _prior_index(n: int, target: float) -> int:
    """The prior's grid index: the middle (0.03 by default), one step stronger from
    2x * sqrt(2) (~2.8x) on. Hindsight-best fixed strengths at 10 epochs (issue 20,
    benchmarks/RESULTS.md): 0.03 at 2x on ResNet-20s, a ResNet-56 and a VGG-19, 0.1 on
    another ResNet-56; at 3x 0.1 on ResNet-20s and that ResNet-56, 0.03 on the other two.
    Never more than one step: measured at 2x and 3x only."""
    shift = 1 if target >= 2.0 * math.sqrt(2.0) else 0
    return max(0, (n - 1) // 2 - shift)
