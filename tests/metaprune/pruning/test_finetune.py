"""Tests for metaprune/pruning/finetune.py."""

from __future__ import annotations

import pytest
import torch

from metaprune.pruning import CANCEL, FinetuneBudget, PruneCancelled, evaluate, finetune
from metaprune.pruning.finetune import lr_factor


def test_trains_and_keeps_the_best_validation_epoch(model, loaders):
    train, val, _ = loaders
    events = []
    start = evaluate(model, val)
    result = finetune(model, train, val, FinetuneBudget(epochs=2, lr=0.05), progress=events.append,
                      stage="before_pruning")  # fmt: skip
    epochs = [e for e in events if "batch" not in e.metrics]
    assert [e.step for e in epochs] == [0, 1, 2] and {e.stage for e in events} == {"before_pruning"}
    # one event per batch in between (train + validation), at the epochs done so far
    per_epoch = len(train) + len(val)
    batches = [(e.step, e.metrics["batch"]) for e in events if "batch" in e.metrics]
    assert batches == [(0, i) for i in range(1, len(val) + 1)] + [
        (epoch, i) for epoch in (0, 1) for i in range(1, per_epoch + 1)
    ]
    assert all(e.metrics["batches"] == per_epoch for e in events if "batch" in e.metrics)
    accs = [h["val_accuracy"] for h in result.history]
    assert result.best_val_accuracy == max([start, *accs])
    assert result.best_epoch == (0 if start >= max(accs) else 1 + accs.index(max(accs)))
    assert evaluate(model, val) == pytest.approx(result.best_val_accuracy)  # best weights restored
    assert not model.training


def test_trained_weights_win_without_select_initial(model, loaders):
    train, val, _ = loaders
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = finetune(model, train, val, FinetuneBudget(epochs=1, lr=1e-6), select_initial=False)
    assert result.best_epoch == 1
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_zero_epochs_changes_nothing(model, loaders):
    train, val, _ = loaders
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = finetune(model, train, val, FinetuneBudget(epochs=0))
    assert result.best_epoch == 0 and result.history == []
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_regularizer_runs_after_every_backward(model, loaders):
    train, val, _ = loaders
    grads = []
    finetune(model, train, val, FinetuneBudget(epochs=1),
             regularizer=lambda m: grads.append(m.fc.weight.grad is not None))  # fmt: skip
    assert grads == [True] * len(train)


def test_cancel_from_the_callback(model, loaders):
    train, val, _ = loaders
    with pytest.raises(PruneCancelled, match="finetune"):
        finetune(model, train, val, FinetuneBudget(epochs=3), progress=lambda e: CANCEL)


@pytest.mark.parametrize(
    ("budget", "expected"),
    [
        (FinetuneBudget(epochs=4, schedule="cosine"), [1.0, 0.5, 0.0]),
        (FinetuneBudget(epochs=4, schedule="step", gamma=0.1), [1.0, 0.1, 0.01]),
        (FinetuneBudget(epochs=4, schedule="step", milestones=(3,)), [1.0, 1.0, 0.1]),
        (FinetuneBudget(epochs=4, schedule="constant"), [1.0, 1.0, 1.0]),
    ],
)
def test_schedules(budget, expected):
    factor = lr_factor(budget, iters_per_epoch=10)  # checked at epochs 0, 2 and 4 (the end)
    assert [factor(0), factor(20), factor(40)] == pytest.approx(expected, abs=1e-12)


def test_schedule_over_a_given_number_of_steps():
    """reg="auto"'s trials stretch the budget's schedule over the winner's iterations."""
    factor = lr_factor(FinetuneBudget(epochs=4), iters_per_epoch=10, total=30)
    assert [factor(0), factor(15), factor(30), factor(99)] == pytest.approx([1.0, 0.5, 0.0, 0.0])


def test_ties_go_to_the_latest_epoch(loaders):
    """lr 0, no BatchNorm: every epoch ties with the start; the latest epoch is kept."""
    train, val, _ = loaders
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    result = finetune(model, train, val, FinetuneBudget(epochs=3, lr=0.0, weight_decay=0.0))
    accs = [h["val_accuracy"] for h in result.history]
    assert len(set(accs)) == 1 and result.best_epoch == 3


def test_a_rate_search_keeps_the_rate_best_on_validation(model, loaders):
    """Each rate fine-tunes a copy of the model as given for its share of the epochs, and
    the better on validation is the model (lr 0 moves only the BN statistics)."""
    train, val, _ = loaders
    events = []
    budget = FinetuneBudget(epochs=5, lr=0.0, lr_alternatives=(0.05, 0.0))  # the repeat is dropped
    result = finetune(model, train, val, budget, progress=events.append, stage="after_pruning")
    assert [(t["lr"], t["epochs"]) for t in result.lr_trials] == [(0.0, 3), (0.05, 2)]  # lr: the rest
    still, moved = result.lr_trials
    kept = still if still["val_accuracy"] >= moved["val_accuracy"] else moved
    assert result.lr == kept["lr"] and result.best_epoch == kept["best_epoch"]
    assert result.best_val_accuracy == kept["val_accuracy"] == evaluate(model, val)  # its weights
    assert len(result.history) == kept["epochs"] and still["val_accuracy"] != moved["val_accuracy"]
    # one stage in the events: epochs counted across the rates, the rate named
    epochs = [(e.step, e.metrics["lr"]) for e in events if "batch" not in e.metrics]
    assert epochs == [(0, 0.0), (1, 0.0), (2, 0.0), (3, 0.0), (3, 0.05), (4, 0.05), (5, 0.05)]
    assert {e.total for e in events} == {5} and not model.training


def test_a_rate_search_keeps_the_first_rate_on_ties_and_fits_the_epochs(model, loaders):
    train, val, _ = loaders
    before = [p.detach().clone() for p in model.parameters()]
    result = finetune(model, train, val, FinetuneBudget(epochs=2, lr=0.0, lr_alternatives=(0.0,)),
                      stage="after_pruning")  # fmt: skip
    assert result.lr == 0.0 and result.lr_trials == ()  # one rate: a plain fine-tune
    tie = finetune(model, train, val, FinetuneBudget(epochs=1, lr=0.0, lr_alternatives=(5.0,)),
                   stage="after_pruning")  # fmt: skip
    assert tie.lr == 0.0 and tie.lr_trials == ()  # one epoch: room for lr only
    # a rate that ruins the model never wins over one that leaves it as it was
    ruin = finetune(model, train, val, FinetuneBudget(epochs=2, lr=0.0, lr_alternatives=(1e4,)),
                    stage="after_pruning")  # fmt: skip
    assert ruin.lr == 0.0 and [t["lr"] for t in ruin.lr_trials] == [0.0, 1e4]
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))  # lr 0's weights
