"""Tests for the normaliser (and criterion) choice the pipeline makes on validation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from metaprune.pruning import FinetuneBudget, ImportanceOptions, measure_cost, prune
from metaprune.pruning.normalizer import NORMALIZER_CANDIDATES


def _auto_at_zero_epochs(config):
    """The job's normaliser chosen on validation, no training before or after pruning."""
    return dataclasses.replace(
        config, importance=ImportanceOptions(normalizer="auto"),
        before_pruning=FinetuneBudget(epochs=0), after_pruning=FinetuneBudget(epochs=0),
    )  # fmt: skip


@pytest.mark.timeout(180)
def test_pipeline_searches_on_validation_and_reports_it(model, spec, splits, fast_config):
    config = _auto_at_zero_epochs(fast_config)
    torch.manual_seed(0)
    result = prune(model, splits, config, spec=spec)
    info = result.report["stages"]["prune"]
    trials = info["criterion_search"]["trials"]
    # an explicit method: its own criterion with every normaliser, no data-aware ones
    assert [(t["criterion"], t["normalizer"]) for t in trials] == [
        ("group-l2", n) for n in NORMALIZER_CANDIDATES
    ]
    best = max(t["val_accuracy"] for t in trials)
    assert info["normalizer"] == next(t["normalizer"] for t in trials if t["val_accuracy"] == best)
    assert info["criterion_search"]["chosen"] == f"group-l2[{info['normalizer']}]"
    assert result.report["method_choice"]["criterion"] == f"group-l2[{info['normalizer']}]"
    assert "criterion_search" in result.report["stage_seconds"]
    # a cheap proxy: search_steps (20 = this schedule) on fixed subsets of the splits
    proxy = info["criterion_search"]["proxy"]
    small = len(splits.val)  # <= 512 images: scored whole (search_images is for large splits)
    assert proxy == {"steps": 20, "calibration_images": small, "validation_images": small,
                     "rounds": 1, "adaptive": False}  # fmt: skip
    assert all("final_accuracy" not in t for t in trials)  # one round at a small input
    assert all(0 <= t["val_accuracy"] <= 1 and t["seconds"] > 0 for t in trials)
    fixed = dataclasses.replace(config, importance=ImportanceOptions(normalizer=info["normalizer"]))
    torch.manual_seed(0)
    again = prune(model, splits, fixed, spec=spec)
    assert again.report["stages"]["prune"] == {"criterion": "group-l2", "normalizer": info["normalizer"]}
    cost = measure_cost(again.model, torch.zeros(1, 1, 8, 8))
    assert cost.macs == result.report["final"]["macs"]  # the same criterion prunes the same way
    # the search kept the winner's pruned copy instead of pruning again: the same model
    assert info["criterion_search"]["reused_winner"] is True
    want, got = again.model.state_dict(), result.model.state_dict()
    assert list(want) == list(got) and all(torch.equal(want[k], got[k]) for k in want)
    assert again.report["curve"] == result.report["curve"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("adaptive", [False, True])
def test_at_a_large_input_two_rounds_keep_the_winner_a_fixed_criterion_prunes_the_same(
    model, spec, splits, fast_config, monkeypatch, adaptive
):
    """Where a proxy pass is over the large-input budget (made tiny here), every candidate
    prunes (on the full schedule, or adaptively: a few steps of it, where asked for) and
    is scored on half the proxy's images; the best two (pruned again on the full schedule
    if adaptive) are scored on the other half; the winner's copy is the job's prune,
    identical to a job with its criterion fixed."""
    from metaprune.pruning import pipeline

    monkeypatch.setattr(pipeline, "_LARGE_INPUT_VALUES", 1024)  # 16 images of 1x8x8
    config = _auto_at_zero_epochs(fast_config)
    config = dataclasses.replace(
        config, importance=dataclasses.replace(config.importance, adaptive_search=adaptive)
    )
    torch.manual_seed(0)
    result = prune(model, splits, config, spec=spec)
    search = result.report["stages"]["prune"]["criterion_search"]
    assert search["proxy"] == {"steps": 20, "calibration_images": 32, "validation_images": 32,
                               "rounds": 2, "adaptive": adaptive}  # fmt: skip
    trials = search["trials"]
    first = [t["val_accuracy"] for t in trials]
    assert all(round(a * 16) == a * 16 for a in first)  # scored on 16 images
    # the best two of the first round (ties: the earlier) go on, the third does not
    order = sorted(range(3), key=lambda i: (-first[i], i))
    assert [("final_accuracy" in trials[i]) for i in order] == [True, True, False]
    finals = {i: trials[i]["final_accuracy"] for i in order[:2]}
    assert all(round(a * 32) == a * 32 and 0 <= a <= 1 for a in finals.values())  # on all 32
    winner = max(sorted(finals), key=finals.__getitem__)
    assert search["chosen"] == f"group-l2[{trials[winner]['normalizer']}]"
    assert search["reused_winner"] is True  # a finalist's full prune
    fixed = dataclasses.replace(config, importance=ImportanceOptions(normalizer=trials[winner]["normalizer"]))
    torch.manual_seed(0)
    again = prune(model, splits, fixed, spec=spec)
    want, got = again.model.state_dict(), result.model.state_dict()
    assert list(want) == list(got) and all(torch.equal(want[k], got[k]) for k in want)
    assert again.report["curve"] == result.report["curve"]
    # the large-input budgets: batches of 16 images, the curve on 16 + 16 of them
    work = result.report["work"]
    assert work["eval_batch_size"] == 16 and work["curve_images"] == [16, 16]


@pytest.mark.timeout(180)
def test_zero_gradients_leave_the_data_aware_candidates_out(
    model, spec, splits, fast_config, tmp_path, monkeypatch
):
    """A zero-initialised classifier (torchvision's ViT before training) passes no loss
    gradient back: taylor and hessian would score every channel 0 / 0 and walk the whole
    schedule without pruning, so the search leaves them out and says why."""
    import importlib

    from metaprune.pruning.targets import find_classifier

    registry = importlib.import_module("metanet.export")  # no metanetwork: the baseline's search
    monkeypatch.setattr(registry, "PRETRAINED_DIR", tmp_path)
    monkeypatch.delenv("METAPRUNE_METANET_PATH", raising=False)
    with torch.no_grad():
        for p in find_classifier(model, torch.zeros(1, 1, 8, 8)).parameters():
            p.zero_()
    config = dataclasses.replace(_auto_at_zero_epochs(fast_config), method="metanet")
    info = prune(model, splits, config, spec=spec).report["stages"]["prune"]
    assert info["gradients"]["zero"] == ["fisher", "mean"]
    labels = [(t["criterion"], t["normalizer"]) for t in info["criterion_search"]["trials"]]
    assert labels == [("group-l2", n) for n in NORMALIZER_CANDIDATES] + [("group-l2-macs", "sum")]
    assert info["criterion"] in ("group-l2", "group-l2-macs")
