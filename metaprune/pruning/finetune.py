"""Fine-tuning with model selection on the validation split, and accuracy evaluation.

``finetune`` trains with SGD (momentum, weight decay) under a cosine, step or constant
schedule, evaluates validation accuracy after every epoch and leaves the model with the
weights of its best epoch (ties go to the *latest* such epoch: on a small, saturated
validation split, "earliest" kept epoch 1-2 of 10, i.e. threw most of the budget away): the validation split selects, the test split is only ever
evaluated once, by the caller, at the very end. An optional ``regularizer`` runs after
every backward pass (``group-l2-sl`` adds its group-sparsity gradient there).

A budget with ``lr_alternatives`` chooses its learning rate on validation inside its own
epochs: every rate (``lr`` first) fine-tunes a copy of the model as given for an equal share
of the epochs on a complete schedule, and the copy with the best validation accuracy is
kept (``lr`` on ties). The rate that recovers a pruned model depends on how much pruning
disturbed it: after the default prune at 2x, 0.05 recovered held-out ResNet-56 and VGG-19
models better than 0.01 on validation and, on average, on test, while a ResNet-20 tied
(issue 20); no single rate is right for every model, so each job measures it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader

from metaprune.pruning.config import FinetuneBudget
from metaprune.pruning.progress import CancelToken, ProgressCallback, check_cancel, notify

__all__ = ["FinetuneResult", "evaluate", "finetune", "lr_factor"]


@dataclasses.dataclass(frozen=True)
class FinetuneResult:
    """What a fine-tune did: the selected epoch and the per-epoch history.

    ``best_epoch`` is ``0`` and ``best_val_accuracy`` the starting accuracy if no epoch
    improved on the model as given (its weights are then kept; see ``select_initial``).
    With a rate search, these describe the kept rate's run (``lr``; its epochs counted from
    its own start), and ``lr_trials`` lists every rate's epochs and best validation accuracy.
    """

    best_epoch: int
    best_val_accuracy: float
    history: list[dict[str, float]]
    lr: float | None = None
    lr_trials: tuple[dict[str, float], ...] = ()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: torch.device | str = "cpu",
    on_batch: Callable[[], object] | None = None,
) -> float:
    """Top-1 accuracy of ``model`` over ``loader`` (eval mode; the mode is restored);
    ``on_batch`` is called after every batch (progress; it may raise to abort)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for inputs, labels in loader:
            logits = model(inputs.to(device))
            correct += int((logits.argmax(dim=1) == labels.to(device)).sum())
            total += int(labels.numel())
            if on_batch is not None:
                on_batch()
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return correct / total


def finetune(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    budget: FinetuneBudget,
    device: torch.device | str = "cpu",
    progress: ProgressCallback | None = None,
    *,
    stage: str = "finetune",
    cancel: CancelToken | None = None,
    regularizer: Callable[[nn.Module], object] | None = None,
    select_initial: bool = True,
    keep_last: bool = False,
    initial_val_accuracy: float | None = None,
) -> FinetuneResult:
    """Train ``model`` in place for ``budget.epochs`` epochs, then restore its best epoch.

    Args:
        model: trained in place; left in eval mode with the best validation weights.
        train_loader, val_loader: batches of ``(inputs, labels)``.
        budget: epochs, learning rate, schedule, momentum, weight decay.
        device: where to train (the model must already be there).
        progress: receives one :class:`ProgressEvent` per epoch (``stage`` as given), and
            one per training or validation batch in between (same step, with ``batch``
            and ``batches`` metrics), so a long epoch is not silent.
        cancel: checked between batches.
        regularizer: called with the model after each ``backward()``, before the step.
        select_initial: whether the weights as given compete in the selection. True after
            pruning (a fine-tune must not make the model worse on validation); False before
            pruning, where training exists to change the weights: with it, sparse training
            was silently discarded whenever no sparse epoch beat the dense model.
        keep_last: keep the weights of the last epoch instead of the best validation
            epoch (``best_epoch`` is then the last epoch). For sparse training: validation
            accuracy selects *against* the sparsity being trained, and on a small,
            saturated validation split ties go to the earliest epoch, so with selection
            ``group-l2-sl`` kept its first epoch in 4 of 5 benchmark runs (the other
            epochs of sparse training were thrown away).
        initial_val_accuracy: the validation accuracy of the model as given, if the
            caller measured it already (it is not measured again).

    Raises:
        PruneCancelled: on cancellation (the model then holds the last weights trained).
    """
    rates = _rates(budget)
    if len(rates) > 1:
        return _choose_rate(rates, model, train_loader, val_loader, budget, device, progress,
                            stage=stage, cancel=cancel, regularizer=regularizer,
                            select_initial=select_initial, keep_last=keep_last,
                            initial_val_accuracy=initial_val_accuracy)  # fmt: skip
    device = torch.device(device)
    # between epoch events: one event per batch, at the epochs done so far
    at = {"epochs": 0, "batch": 0}
    batches = len(train_loader) + len(val_loader)  # type: ignore[arg-type]

    def on_batch() -> None:
        at["batch"] += 1
        notify(progress, cancel, stage, at["epochs"], budget.epochs, batch=at["batch"],
               batches=batches)  # fmt: skip

    start_acc = (
        evaluate(model, val_loader, device, on_batch)
        if initial_val_accuracy is None else initial_val_accuracy
    )  # fmt: skip
    notify(progress, cancel, stage, 0, budget.epochs, val_accuracy=start_acc)
    if budget.epochs == 0:
        model.eval()
        return FinetuneResult(best_epoch=0, best_val_accuracy=start_acc, history=[])
    best_acc = start_acc if select_initial else -1.0
    optimizer = torch.optim.SGD(
        model.parameters(), lr=budget.lr, momentum=budget.momentum,
        weight_decay=budget.weight_decay,
    )  # fmt: skip
    iters_per_epoch = max(1, len(train_loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(budget, iters_per_epoch))
    best_state = copy.deepcopy(model.state_dict())
    best_epoch, history = 0, []
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(1, budget.epochs + 1):
        model.train()
        total_loss, seen = 0.0, 0
        at.update(epochs=epoch - 1, batch=0)
        for inputs, labels in train_loader:
            check_cancel(cancel, stage)
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(inputs), labels)
            loss.backward()
            if regularizer is not None:
                regularizer(model)
            optimizer.step()
            scheduler.step()
            total_loss += float(loss.detach()) * len(labels)
            seen += len(labels)
            on_batch()
        val_acc = evaluate(model, val_loader, device, on_batch)
        record = {"epoch": epoch, "train_loss": total_loss / max(seen, 1), "val_accuracy": val_acc}
        history.append(record)
        if val_acc >= best_acc:  # ties go to the later epoch: it trained longer
            best_acc, best_epoch = val_acc, epoch
            best_state = copy.deepcopy(model.state_dict())
        notify(progress, cancel, stage, epoch, budget.epochs, **record, best_val_accuracy=best_acc)
    if keep_last:
        best_acc, best_epoch = history[-1]["val_accuracy"], budget.epochs
    else:
        model.load_state_dict(best_state)
    model.eval()
    return FinetuneResult(best_epoch=best_epoch, best_val_accuracy=best_acc, history=history,
                          lr=budget.lr)  # fmt: skip


def _rates(budget: FinetuneBudget) -> list[float]:
    """The rates a budget tries: ``lr`` first, then its alternatives, while every rate still
    gets a whole epoch (the first ones win when the epochs are few)."""
    rates = list(dict.fromkeys((budget.lr, *budget.lr_alternatives)))
    return rates[: max(1, budget.epochs)]


def _choose_rate(rates: list[float], model: nn.Module, train_loader: DataLoader,
                 val_loader: DataLoader, budget: FinetuneBudget, device: torch.device | str,
                 progress: ProgressCallback | None, *, stage: str, **options) -> FinetuneResult:  # fmt: skip
    """Fine-tune a copy per rate, each for an equal share of ``budget.epochs`` (the first
    rate takes the remainder), and keep the best on validation (the first on ties)."""
    share, extra = divmod(budget.epochs, len(rates))
    start = copy.deepcopy(model.state_dict())
    if options["initial_val_accuracy"] is None:  # measured once for every rate
        options["initial_val_accuracy"] = evaluate(model, val_loader, device)
    done, runs = 0, []
    for i, rate in enumerate(rates):
        epochs = share + (extra if i == 0 else 0)
        arm = dataclasses.replace(budget, lr=rate, epochs=epochs, lr_alternatives=())
        model.load_state_dict(start)
        result = finetune(model, train_loader, val_loader, arm, device,
                          _shifted(progress, done, budget.epochs, rate), stage=stage, **options)  # fmt: skip
        runs.append((result, copy.deepcopy(model.state_dict()), epochs))
        done += epochs
    kept = max(range(len(runs)), key=lambda i: runs[i][0].best_val_accuracy)  # first of equals
    model.load_state_dict(runs[kept][1])
    model.eval()
    trials = tuple({"lr": r.lr, "epochs": e, "best_epoch": r.best_epoch,
                    "val_accuracy": r.best_val_accuracy} for r, _, e in runs)  # fmt: skip
    return dataclasses.replace(runs[kept][0], lr_trials=trials)


def _shifted(progress: ProgressCallback | None, offset: int, total: int,
             rate: float) -> ProgressCallback | None:  # fmt: skip
    """One rate's events as steps of the whole stage (``offset`` epochs done before it)."""
    if progress is None:
        return None
    return lambda e: progress(dataclasses.replace(e, step=e.step + offset, total=total,
                                                  metrics={**e.metrics, "lr": rate}))  # fmt: skip


def lr_factor(
    budget: FinetuneBudget, iters_per_epoch: int, total: int | None = None
) -> Callable[[int], float]:
    """The multiplier of the initial learning rate after ``it`` optimizer steps, for a run
    of ``total`` steps (default: ``budget.epochs`` epochs)."""
    total = max(1, budget.epochs * iters_per_epoch if total is None else total)
    if budget.schedule == "cosine":
        return lambda it: 0.5 * (1.0 + math.cos(math.pi * min(it, total) / total))
    if budget.schedule == "step":
        milestones = budget.milestones or tuple(
            sorted({max(1, round(budget.epochs * f)) for f in (0.5, 0.75)})
        )
        return lambda it: budget.gamma ** sum(it // iters_per_epoch >= m for m in milestones)
    return lambda it: 1.0
