"""Tests for metaprune/pruning/auto.py: the documented, deterministic ``method="auto"`` rule."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from metaprune.pruning import (
    FinetuneBudget,
    ImportanceOptions,
    PruneConfig,
    SparseTraining,
    auto,
    format_report,
    prune,
)
from metaprune.pruning.auto import MethodChoice, resolve_method
from metaprune.pruning.config import METHODS


def test_rule_follows_the_before_pruning_budget():
    config = PruneConfig()
    assert config.method == "auto"
    choice = resolve_method(config)
    assert (choice.method, choice.requested, choice.data_aware) == ("growing-reg", "auto", True)
    assert "10 epoch(s)" in choice.reason and "dry prune to the target" in choice.reason
    assert "held-out ResNet-20, ResNet-56 and VGG-19" in choice.reason
    zero = resolve_method(dataclasses.replace(config, before_pruning=FinetuneBudget(epochs=0)))
    assert (zero.method, zero.requested) == ("group-l2", "auto")
    assert "0 epochs" in zero.reason and "per MAC, taylor, hessian) chosen by validation" in zero.reason
    fixed_norm = dataclasses.replace(config, before_pruning=FinetuneBudget(epochs=0),
                                     importance=ImportanceOptions(normalizer="max"))  # fmt: skip
    assert "group-L2 with the 'max' normaliser" in resolve_method(fixed_norm).reason
    fixed = resolve_method(dataclasses.replace(config, sparse=SparseTraining(reg=0.05)))
    assert fixed.method == "group-l2-sl" and "reg=0.05" in fixed.reason  # a fixed reg: sparse training


@pytest.mark.parametrize("method", [m for m in METHODS if m != "auto"])
def test_explicit_methods_are_kept(method):
    # a named metanetwork: without one, metanet's advisor may weigh the evidence (its tests)
    named = {"metanet": "resnet20-digits"} if method == "metanet" else {}
    choice = resolve_method(PruneConfig(method=method, **named), "cifar_resnet20")
    assert choice.to_dict() == {
        "method": method,
        "requested": method,
        "reason": "requested explicitly",
        "data_aware": False,
    }


def test_advisors_come_first_in_order_and_can_be_skipped(monkeypatch):
    monkeypatch.setattr(auto, "_ADVISORS", [])
    seen = []

    def abstain(config, family):
        seen.append(("abstain", config.method, family))

    def pick(config, family):
        seen.append(("pick", config.method, family))
        return MethodChoice("random", config.method, f"evidence on {family}")

    assert auto.register_advisor(abstain) is abstain
    auto.register_advisor(pick)
    auto.register_advisor(pick)  # registered once
    config = PruneConfig(before_pruning=FinetuneBudget(epochs=0))
    assert resolve_method(config, "fam") == MethodChoice("random", "auto", "evidence on fam")
    assert seen == [("abstain", "auto", "fam"), ("pick", "auto", "fam")]
    assert resolve_method(config, "fam", advise=False) == auto.baseline_method(config)
    assert resolve_method(config, "fam", advise=False).data_aware and len(seen) == 2


def test_rule_is_deterministic():
    configs = [PruneConfig(before_pruning=FinetuneBudget(epochs=e)) for e in (0, 1, 3)]
    assert [resolve_method(c) for c in configs] == [resolve_method(c) for c in configs]
    assert [resolve_method(c).method for c in configs] == ["group-l2", "growing-reg", "growing-reg"]


@pytest.mark.timeout(120)
def test_report_says_which_method_ran_and_why(model, spec, splits, fast_config):
    config = dataclasses.replace(fast_config, method="auto", before_pruning=FinetuneBudget(epochs=0),
                                 after_pruning=FinetuneBudget(epochs=0))  # fmt: skip
    result = prune(model, splits, config, spec=spec)
    report = result.report
    assert report["method"] == result.config.method == "group-l2"
    assert report["method_choice"] == {**resolve_method(config).to_dict(), "criterion": "group-l2[sum]"}
    assert report["config"]["method"] == "auto"  # as requested: resolves the same way again
    assert "auto -> group-l2: before_pruning has 0 epochs" in format_report(report)


@pytest.mark.timeout(180)
def test_auto_at_zero_epochs_chooses_among_data_aware_criteria(model, spec, splits, fast_config):
    """``auto`` with 0 epochs scores group-L2 (each normaliser), group-L2 per MAC, taylor
    and hessian by the proxy on validation, prunes with the winner and says so."""
    config = dataclasses.replace(
        fast_config, method="auto", importance=ImportanceOptions(normalizer="auto"),
        before_pruning=FinetuneBudget(epochs=0), after_pruning=FinetuneBudget(epochs=0),
    )  # fmt: skip
    torch.manual_seed(0)
    events = []
    result = prune(model, splits, config, events.append, spec=spec)
    report = result.report
    search = report["stages"]["prune"]["criterion_search"]
    labels = [f"{t['criterion']}[{t['normalizer']}]" for t in search["trials"]]
    assert labels == ["group-l2[sum]", "group-l2[mean]", "group-l2[max]", "group-l2-macs[sum]",
                      "taylor[mean]", "hessian[mean]"]  # fmt: skip
    # one gradient pass for taylor and hessian (exact per-sample Fisher for a small model),
    # one event per batch of it, inside the search
    gradients = report["stages"]["prune"]["gradients"]
    assert gradients == {"images": 64, "kinds": ["fisher", "mean"], "fisher": "per-sample"}
    ticks = [e for e in events if e.metrics.get("task") == "gradients"]
    assert {e.stage for e in ticks} == {"criterion_search"} and len(ticks) >= 2
    scores = [t["val_accuracy"] for t in search["trials"]]
    winner = labels[scores.index(max(scores))]
    assert search["chosen"] == winner == report["method_choice"]["criterion"]
    assert report["epochs_trained"]["before_pruning"] == 0 and report["target_reached"]
    assert f"criterion  {winner} chosen by pruned validation accuracy" in format_report(report)
    assert all(p.grad is None for p in result.model.parameters())  # no gradients left behind
