"""The honest record of a pruning job: ``report.json``, the curve plot and a text summary.

``report.json`` (``report_version`` 1) holds plain JSON::

    {"report_version": 1, "metaprune_version": "...", "dataset": "digits",
     "dataset_kwargs": {"image_size": 64},  # options of the dataset (may be {})
     "input_shape": [3, 64, 64],           # (C, H, W) of the model's input
     "method": "group-l2-sl",            # the method that ran
     "method_choice": {"method", "requested", "reason",   # why (requested "auto" or not)
                       "data_aware", "criterion"},       # data-aware criteria searched; winner
     "target": {"kind": "macs", "value": 2.0}, "target_reached": true,
     "base":  {"val_accuracy", "test_accuracy", "macs", "params", "latency_ms"},
     "pruned": {"val_accuracy"}          # after pruning + BN recalibration, no fine-tune
     "final": {"val_accuracy", "test_accuracy", "macs", "params", "latency_ms"},
     "speedup": {"macs", "latency", "params"},
     "stage_seconds": {"checks": ..., "evaluate_base": ..., "before_pruning": ..., "reg_search": ...,
                       "criterion_search": ..., ...},
     "work": {"calibration_images", "curve_images", "curve_points_evaluated",
              "eval_batch_size", "data_workers",     # what the budgets amounted to
              "latency": {"evaluate_base": {"median", "batch_size", "repeats", "warmup",
                                            "seconds"}, "evaluate": {...}}},
     # reg_search (reg="auto" only) is part of before_pruning, not in addition to it
     "epochs_trained": {"before_pruning": 10.0, "after_pruning": 20},  # trials included
     "stages": {"before_pruning": {...}, "prune": {"criterion", "normalizer",
                "criterion_search": {"trials", "chosen", "seconds"}}, "after_pruning": {...}},
     "layer_widths": {"layer1.0.conv1": [16, 9], ...},   # [before, after]
     "structure": {"prunable_groups": 9, "frozen": [{"modules": [...], "reason": ...}]},
     "curve": [{"step", "macs_speedup", "param_ratio", "latency_speedup", "val_accuracy"}],
     "chosen_step": 42, "stages": {...}, "config": {...}, "spec": {...} | null}

The plot shows validation accuracy against MACs speed-up along the curve, the target as
a vertical line and the chosen (final) step as a marker.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["REPORT_VERSION", "format_report", "plot_curve", "write_report"]

REPORT_VERSION = 1


def write_report(report: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``report`` as indented JSON (non-finite numbers become ``null``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(report), indent=2, sort_keys=False) + "\n")
    return path


def plot_curve(
    curve: list[Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    chosen_step: int | None = None,
    target_speedup: float | None = None,
    title: str = "",
    label: str = "validation accuracy during pruning",
) -> Path:
    """Plot validation accuracy against MACs speed-up and save a PNG (matplotlib Agg)."""
    from matplotlib.figure import Figure  # a bare Figure renders with Agg, no pyplot state

    points = [c for c in curve if c.get("val_accuracy") is not None]
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    if points:
        ax.plot(
            [c["macs_speedup"] for c in points], [100 * c["val_accuracy"] for c in points],
            marker=".", linewidth=1, label=label,
        )  # fmt: skip
    chosen = [c for c in points if c["step"] == chosen_step]
    if chosen:
        c = chosen[0]
        ax.scatter([c["macs_speedup"]], [100 * c["val_accuracy"]], s=80, color="tab:red",
                   zorder=3, label=f"chosen: step {c['step']}, {c['macs_speedup']:.2f}x")  # fmt: skip
    if target_speedup is not None:
        ax.axvline(target_speedup, color="gray", linestyle="--", linewidth=1, label="target")
    ax.set_xlabel("MACs speed-up (base / pruned)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title or "accuracy vs speed-up during pruning")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def format_report(report: Mapping[str, Any]) -> str:
    """A short human-readable summary of a report (used by the CLI)."""
    base, final, speed = report["base"], report["final"], report["speedup"]
    target = report["target"]
    choice = report.get("method_choice") or {}
    lines = [
        f"method {report['method']} on {report['dataset']}: target {target['kind']} "
        f"{target['value']}x {'reached' if report['target_reached'] else 'NOT reached (layer floors hit)'}",
        f"  MACs       {base['macs']:>12,} -> {final['macs']:>12,}  ({speed['macs']:.2f}x)",
        f"  params     {base['params']:>12,} -> {final['params']:>12,}  ({speed['params']:.2f}x)",
        f"  latency ms {_num(base['latency_ms']):>12} -> {_num(final['latency_ms']):>12}  "
        f"({_num(speed['latency'])}x)",
        f"  val acc    {_pct(base['val_accuracy']):>12} -> {_pct(final['val_accuracy']):>12}"
        f"  (right after pruning: {_pct(report['pruned']['val_accuracy'])})",
        f"  test acc   {_pct(base['test_accuracy']):>12} -> {_pct(final['test_accuracy']):>12}",
        "  stages     " + ", ".join(f"{k} {v:.1f}s" for k, v in report["stage_seconds"].items()),
    ]
    if choice.get("requested") == "auto" or choice.get("requested", choice.get("method")) != choice.get("method"):
        lines.insert(1, f"  method     {choice['requested']} -> {choice['method']}: {choice['reason']}")
    metanet = report.get("stages", {}).get("before_pruning", {}).get("metanet") or {}
    if metanet.get("auto"):  # chosen by the model's graph (metanet.choice)
        lines.insert(1, f"  metanet    auto -> {metanet['reason']}")
        if metanet.get("warning"):
            lines.insert(2, f"  WARNING    {metanet['warning']}")
    sparse = report.get("stages", {}).get("before_pruning", {}).get("reg_search")
    if sparse:
        tried = ", ".join(("as given" if t["role"] == "as given" else f"{t['reg']:g} after {t['epochs']:g} ep")
                          + f": {_pct(t['val_accuracy'])}" for t in sparse["trials"])  # fmt: skip
        why = "beat the prior's beyond noise" if sparse["kept"]["displaced_incumbent"] else "the prior's"
        step = sparse.get("step_down") or {}
        if step.get("after_epoch") is not None:  # the prior's run went on weaker
            why += f", stepped down to {step['to']:g} after epoch {step['after_epoch']:g} (proxy drop)"
        lines.insert(2, f"  sparse reg {report['stages']['before_pruning']['sparse_reg']:g} ({why}; "
                        f"{sparse['epochs_trained']:.2f} epochs in all; pruned validation accuracy "
                        f"{tried})")  # fmt: skip
    greg = report.get("stages", {}).get("before_pruning", {}).get("growing_reg")
    if greg:  # targeted growing regularisation: which channels, the schedule, what was kept
        tried = ", ".join(f"{t['role']}: {_pct(t['val_accuracy'])}" for t in greg["trials"])
        lines.insert(2, f"  growing    {greg['marked']['channels']} of {greg['marked']['of']} channels in "
                        f"{len(greg['marked']['groups'])} groups penalised, L2 up to {greg['ceiling']:g} over "
                        f"{greg['ramp_iterations']} of {greg['iterations_trained']} iterations; kept "
                        f"{greg['kept']} (pruned validation accuracy {tried})")  # fmt: skip
    crit = report.get("stages", {}).get("prune", {}).get("criterion_search")
    if crit:
        tried = ", ".join(f"{t['criterion']}[{t['normalizer']}]: {_pct(t['val_accuracy'])}"
                          for t in crit["trials"])  # fmt: skip
        lines.insert(2, f"  criterion  {crit['chosen']} chosen by pruned validation accuracy ({tried})")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def _num(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
