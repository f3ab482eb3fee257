"""Tests for metaprune/pruning/report.py."""

from __future__ import annotations

import json
import math

from metaprune.pruning import format_report, plot_curve, write_report

CURVE = [
    {
        "step": 0,
        "macs_speedup": 1.0,
        "param_ratio": 1.0,
        "latency_speedup": None,
        "val_accuracy": 0.9,
    },
    {
        "step": 1,
        "macs_speedup": 1.4,
        "param_ratio": 1.3,
        "latency_speedup": None,
        "val_accuracy": None,
    },
    {
        "step": 2,
        "macs_speedup": 2.1,
        "param_ratio": 1.9,
        "latency_speedup": None,
        "val_accuracy": 0.7,
    },
]


def _report(**overrides):
    report = {
        "method": "group-l2", "dataset": "digits", "target": {"kind": "macs", "value": 2.0},
        "target_reached": True,
        "base": {"val_accuracy": 0.9, "test_accuracy": 0.88, "macs": 1000, "params": 100, "latency_ms": 2.0},
        "final": {"val_accuracy": 0.85, "test_accuracy": 0.84, "macs": 476, "params": 52, "latency_ms": 1.2},
        "speedup": {"macs": 2.1, "params": 1.92, "latency": 1.67},
        "pruned": {"val_accuracy": 0.7, "step": 2},
        "stage_seconds": {"prune": 1.5, "after_pruning": 3.0},
    }  # fmt: skip
    report.update(overrides)
    return report


def test_write_report_is_plain_json_with_non_finite_as_null(tmp_path):
    path = write_report(
        _report(extra={"x": math.inf, "y": [math.nan, 1.0]}), tmp_path / "a" / "r.json"
    )
    data = json.loads(path.read_text())
    assert data["extra"] == {"x": None, "y": [None, 1.0]} and data["base"]["macs"] == 1000


def test_plot_curve_writes_a_png(tmp_path):
    path = plot_curve(CURVE, tmp_path / "curve.png", chosen_step=2, target_speedup=2.0, title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    empty = plot_curve([], tmp_path / "empty.png")  # nothing evaluated still gives a plot
    assert empty.exists()


def test_format_report_summarises_both_speedups():
    text = format_report(_report())
    assert "target macs 2.0x reached" in text
    assert "(2.10x)" in text and "(1.670x)" in text and "90.00 %" in text
    assert "NOT reached" in format_report(_report(target_reached=False))


def test_format_report_lists_the_reg_trials_and_why_one_was_kept():
    trials = [{"reg": 0.0, "epochs": 0.0, "role": "as given", "val_accuracy": 0.5},
              {"reg": 0.1, "epochs": 1.0, "role": "challenger", "val_accuracy": 0.8},
              {"reg": 0.03, "epochs": 8.0, "role": "incumbent", "val_accuracy": 0.9}]  # fmt: skip
    search = {"trials": trials, "kept": {"displaced_incumbent": False}, "epochs_trained": 10.0}
    stages = {"before_pruning": {"sparse_reg": 0.03, "reg_search": search}}
    text = format_report(_report(stages=stages))
    assert "sparse reg 0.03 (the prior's; 10.00 epochs in all;" in text
    assert "as given: 50.00 %, 0.1 after 1 ep: 80.00 %, 0.03 after 8 ep: 90.00 %" in text
    search["kept"]["displaced_incumbent"] = True
    stages["before_pruning"]["sparse_reg"] = 0.1
    text = format_report(_report(stages=stages))
    assert "sparse reg 0.1 (beat the prior's beyond noise; 10.00 epochs in all" in text
    search["kept"]["displaced_incumbent"] = False
    search["step_down"] = {"z": 2.0, "to": 0.03, "after_epoch": 3.0}
    text = format_report(_report(stages=stages))
    assert "(the prior's, stepped down to 0.03 after epoch 3 (proxy drop); 10.00 epochs in all" in text
    search["step_down"]["after_epoch"] = None  # watched, never fired: nothing to say
    assert "stepped down" not in format_report(_report(stages=stages))
