"""Sparse training (DepGraph's group-norm regulariser) and its ``reg="auto"`` search.

``sparse_train`` runs one sparse training of the ``before_pruning`` budget: after every
backward pass, Torch-Pruning's ``GroupNormPruner`` adds the gradient of a group-norm
penalty that drives whole unimportant channel groups towards zero, so that a magnitude
criterion can later remove them cheaply.

``search_reg`` implements ``SparseTraining(reg="auto")``. The strength that works is
model-, budget- and target-dependent, and its working range is narrow (on ``digits``
ResNet-20s, 10 epochs: 5e-4 does nothing, 0.1 is right, 0.2 destroys the network; on
held-out ResNet-56s a fixed 0.1 wins at 3x and loses at 2x), so it is chosen per job by
**what the job delivers**: every candidate strength starts a sparse training from the same
weights, all on the same learning-rate schedule; by successive halving
(:mod:`metaprune.pruning.choose`) each survivor trains a round (an epoch at least), a
proxy prunes a copy to the requested target, recalibrates BatchNorm and scores it on the
validation split, and the better half continues. Scores within noise of the round's best
(one standard error on the proxy's validation images,
:func:`~metaprune.pruning.choose.within_noise`) are ties, decided by a prior: the strength
nearest the middle of the grid (0.03 by default, the hindsight-best at 2x on held-out
ResNet-20, ResNet-56 and VGG-19 models), one step stronger from ~2.8x on, the stronger of
two equally near. The last survivor trains on to the end of the schedule, and the proxy
scores it once more: it is the prepared model unless an earlier checkpoint the search
scored (an arm after a round) beats it beyond noise, in which case that checkpoint is
(prunability need not grow with training: a strong strength can look best after two epochs
and collapse by the seventh). A budget with no room for a search (rounds of an epoch: 1-2
epochs) trains the middle strength alone, and its checkpoint is the model as given: the
0-epoch path is taken when the trained model prunes worse beyond noise (the epochs were
spent and are counted either way). The whole search, losers included, fits in
``before_pruning.epochs`` (``sparse.search_fraction`` of it at most on the losing rounds):
``epochs_trained`` never exceeds the budget the user set. Nothing here can see the test
split: the method context carries only the training and validation loaders.
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

from metaprune.pruning.choose import halving_plan, successive_halving, within_noise
from metaprune.pruning.finetune import FinetuneResult, lr_factor
from metaprune.pruning.progress import notify
from metaprune.pruning.targets import find_classifier

if TYPE_CHECKING:
    from metaprune.pruning.methods import MethodContext

__all__ = ["SparseRun", "search_reg", "sparse_train"]


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
    """Choose ``reg`` by successive halving on the proxy (see the module doc).

    Returns:
        ``(model, reg, record)``: the winner's sparse-trained model, its ``reg``, and a
        record of the plan, every round (each arm's proxy validation accuracy and
        iterations), the epochs trained in all (<= ``before_pruning.epochs``) and seconds.
    """
    if ctx.proxy is None:
        raise ValueError("search_reg needs ctx.proxy (prune a copy to the target and score it)")
    options = ctx.config.sparse
    start = time.perf_counter()
    per_epoch = max(1, len(ctx.train_loader))
    total = ctx.config.before_pruning.epochs * per_epoch
    full = list(options.auto_grid)
    # rounds of a whole epoch at least: shorter ones favour strong strengths, whose damage
    # grows with training (issue 20's benchmark); fewer arms, spread over the grid, then
    plan = halving_plan(len(full), total, options.search_fraction, per_epoch)
    grid = _keep(full, plan.arms)
    runs = [SparseRun(model, ctx, reg, plan.winner_iters) for reg in grid]
    best: dict[str, Any] = {}  # the best-scoring checkpoint so far (a copy: training goes on)

    def keep(m: nn.Module, reg: float, iterations: int) -> float:
        accuracy = ctx.proxy(m)  # type: ignore[misc]
        if not best or accuracy > best["val_accuracy"]:
            best.update(reg=reg, epochs=iterations / per_epoch, val_accuracy=accuracy,
                        model=copy.deepcopy(m))  # fmt: skip
        return accuracy

    if plan.arms == 1:  # no search: the model as given (the 0-epoch path) is the comparison
        keep(model, 0.0, 0)

    def score(run: SparseRun) -> float:
        return keep(run.model, run.reg, run.iterations)

    images = ctx.proxy_images
    tied = None if images is None else lambda top, s: within_noise(top, s, images)
    centre = _prior_index(len(full), ctx.config.target.value)

    def prior(run: SparseRun) -> tuple[int, int]:  # nearest the prior, then the stronger
        return abs(full.index(run.reg) - centre), full.index(run.reg)

    def on_round(r: int, arms: list[dict[str, Any]]) -> None:
        notify(ctx.progress, ctx.cancel, "reg_search", r, plan.rounds,
               scores={str(a["arm"]): a["val_accuracy"] for a in arms})  # fmt: skip

    winner, rounds = successive_halving(
        runs, plan, lambda run, n: run.advance(n), score, name=lambda run: run.reg,
        on_round=on_round, tied=tied, prior=prior,
    )  # fmt: skip
    winner.advance(plan.winner_iters - winner.iterations)
    trained = sum(run.iterations for run in runs)
    assert trained <= total, (trained, total)  # the budget counts every trial
    # prunability need not grow with training (a held-out ResNet-56 at reg 0.1: 66 % after
    # 2 epochs, 41 % after 7), so the job keeps its best checkpoint by the objective, as
    # the fine-tune keeps its best epoch; the winner unless beaten beyond noise
    final = {"reg": winner.reg, "epochs": winner.iterations / per_epoch,
             "val_accuracy": ctx.proxy(winner.model)}  # fmt: skip
    earlier = {k: v for k, v in best.items() if k != "model"}
    taken = bool(best) and best["val_accuracy"] > final["val_accuracy"] and not (
        tied is not None and tied(best["val_accuracy"], final["val_accuracy"]))  # fmt: skip
    record = {
        "rule": "successive halving on validation accuracy after pruning a copy to the "
        "target (BN recalibrated)" if plan.arms > 1 else "the budget has no room for a "
        "search (rounds of an epoch): the middle of the grid",
        "grid": grid,
        "ties": None if images is None else f"within one standard error on {images} validation "
        "images of the round's best: the strength nearest the prior wins "
        f"({full[centre]:g})",
        "plan": {"arms": plan.arms, "rounds": plan.rounds, "round_iterations": plan.round_iters,
                 "winner_iterations": plan.winner_iters, "iterations_per_epoch": per_epoch},
        "rounds": rounds,
        "iterations_trained": trained,
        "epochs_trained": trained / per_epoch,
        "winner_epochs": winner.iterations / per_epoch,
        "seconds": time.perf_counter() - start,
    }  # fmt: skip
    record["checkpoint"] = {"winner": final, "best_earlier": earlier, "taken": taken}
    if taken:
        what = "the model as given (0-epoch path)" if best["epochs"] == 0 else "an earlier checkpoint"
        record["rule"] += f"; the trained winner pruned worse than {what}, which was kept"
        record["winner_epochs"] = best["epochs"]
        return best["model"], best["reg"], record
    return winner.model, winner.reg, record


def _prior_index(n: int, target: float) -> int:
    """The grid index near-ties go to: the middle (0.03 by default, the hindsight-best at 2x
    on held-out ResNet-20, ResNet-56 and VGG-19 models), one step stronger from 2x * sqrt(2)
    (~2.8x) on (0.1 at 3x: the hindsight-best there on ResNet-20 and ResNet-56, not on
    VGG-19; issue 20, benchmarks/RESULTS.md). Never more than one step: measured at 2x and
    3x only."""
    shift = 1 if target >= 2.0 * math.sqrt(2.0) else 0
    return max(0, (n - 1) // 2 - shift)


def _keep(grid: list[float], n: int) -> list[float]:
    """``n`` neighbouring strengths around the middle of the grid (largest first) when the
    budget cannot try them all. Not spread over the whole grid: a short budget that tried
    0.3 / 0.03 / 0.001 always chose 0.03 (the ends never win in 10 epochs: 0.3 destroyed
    every held-out model, 0.001 barely acts) and never tried 0.1, the best strength on
    ResNet-20s (issues 8 and 20, benchmarks/RESULTS.md)."""
    if n >= len(grid):
        return grid
    first = max(0, min((len(grid) - 1) // 2 - (n - 1) // 2, len(grid) - n))
    return grid[first : first + n]
