"""Tests for metaprune/pruning/normalizer.py: the normaliser chosen on validation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from metaprune.pruning import FinetuneBudget, ImportanceOptions, measure_cost, prune
from metaprune.pruning.normalizer import NORMALIZER_CANDIDATES, choose_normalizer


def test_keeps_the_best_validation_score_first_on_ties(model):
    scores = {"sum": 0.5, "mean": 0.7, "max": 0.7}
    seen = []

    def prune_copy(m, name):
        assert m is not model  # always a copy
        m.tag = name
        seen.append(name)

    chosen, record = choose_normalizer(model, prune_copy, lambda m: scores[m.tag])
    assert chosen == "mean" and seen == list(NORMALIZER_CANDIDATES) == ["sum", "mean", "max"]
    assert [t["val_accuracy"] for t in record["trials"]] == [0.5, 0.7, 0.7]
    assert record["chosen"] == "mean" and record["seconds"] >= 0 and not hasattr(model, "tag")


@pytest.mark.timeout(180)
def test_pipeline_searches_on_validation_and_reports_it(model, spec, splits, fast_config):
    config = dataclasses.replace(
        fast_config, importance=ImportanceOptions(normalizer="auto"),
        before_pruning=FinetuneBudget(epochs=0), after_pruning=FinetuneBudget(epochs=0),
    )  # fmt: skip
    torch.manual_seed(0)
    result = prune(model, splits, config, spec=spec)
    info = result.report["stages"]["prune"]
    trials = info["normalizer_search"]["trials"]
    assert [t["normalizer"] for t in trials] == ["sum", "mean", "max"]
    best = max(t["val_accuracy"] for t in trials)
    assert info["normalizer"] == next(t["normalizer"] for t in trials if t["val_accuracy"] == best)
    assert "normalizer_search" in result.report["stage_seconds"]
    # a cheap proxy: search_steps (20 = this schedule) on fixed subsets of the splits
    proxy = info["normalizer_search"]["proxy"]
    assert proxy == {"steps": 20, "calibration_images": 64, "validation_images": 64}  # pruning.steps
    assert all(0 <= t["val_accuracy"] <= 1 and t["seconds"] > 0 for t in trials)
    fixed = dataclasses.replace(config, importance=ImportanceOptions(normalizer=info["normalizer"]))
    torch.manual_seed(0)
    again = prune(model, splits, fixed, spec=spec)
    assert again.report["stages"]["prune"] == {"normalizer": info["normalizer"]}
    cost = measure_cost(again.model, torch.zeros(1, 1, 8, 8))
    assert cost.macs == result.report["final"]["macs"]
