"""A metanetwork's measured held-out record, kept with its export (issue 21).

The benchmark (``benchmarks/metanet_curve.py heldout``) prunes held-out models of a family
at 0 epochs with the guarded ``metanet`` path and with the strongest 0-epoch baseline (the
default ``auto`` job, criterion chosen on validation) and scores them on test.
:func:`heldout_record` turns those paired results into a per-family, per-target summary
and a verdict by the issue's decision rule; :func:`attach_record` stores it in the
export's JSON (``document["heldout"]``), where :func:`record_verdict` reads it back.

Decision rule (issue 21): at every target, the metanetwork's mean test accuracy beats the
baseline's by at least ``min_gain`` (2 points) with paired wins on at least ``min_wins``
(three quarters) of the models. Anything less is ``"loses"``: such a network is not to be
shipped or chosen for that family.

:func:`extrapolate_runs` fits the learning curve of such records (gain against the number of
distinct training runs, log-linear) and says where it would reach the rule's gain.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["attach_record", "extrapolate_runs", "heldout_record", "record_verdict"]

MIN_GAIN = 0.02
MIN_WINS = 0.75


def heldout_record(
    rows: Mapping[str, Mapping[str, Any]], tag: str, baseline: str = "default",
    min_gain: float = MIN_GAIN, min_wins: float = MIN_WINS,
) -> dict[str, Any]:  # fmt: skip
    """Per family: per target the paired means, wins and the verdict.

    Args:
        rows: ``"<tag>/<family>/<model>/<target>" -> {"test": accuracy, ...}`` (the
            benchmark's JSON); only models with both a ``tag`` and a ``baseline`` row count.
    """
    paired: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for key, row in rows.items():
        parts = key.split("/")
        if len(parts) != 4 or parts[0] != tag:
            continue
        _, family, model, target = parts
        base = rows.get(f"{baseline}/{family}/{model}/{target}")
        if base is None:
            continue
        paired.setdefault(family, {}).setdefault(target, []).append(
            (float(row["test"]), float(base["test"]))
        )
    out: dict[str, Any] = {}
    for family, targets in sorted(paired.items()):
        summary = {}
        for target, pairs in sorted(targets.items()):
            n = len(pairs)
            gain = sum(m - b for m, b in pairs) / n
            wins = sum(m > b for m, b in pairs)
            # the paired standard error: one model's swing is the curve's noise, not its slope
            var = sum((m - b - gain) ** 2 for m, b in pairs) / (n - 1) if n > 1 else 0.0
            summary[target] = {
                "models": n, "metanet": sum(m for m, _ in pairs) / n,
                "baseline": sum(b for _, b in pairs) / n, "gain": gain, "wins": wins,
                "gain_se": math.sqrt(var / n),
                "meets_rule": gain >= min_gain and wins >= min_wins * n,
            }  # fmt: skip
        verdict = "wins" if all(s["meets_rule"] for s in summary.values()) else "loses"
        out[family] = {"baseline": baseline, "targets": summary, "verdict": verdict}
    return out


def attach_record(export: str | os.PathLike[str], record: Mapping[str, Any]) -> Path:
    """Store ``record`` as ``"heldout"`` in the JSON of the export at ``export`` (base path
    or ``.json``); families already recorded are replaced, others kept."""
    path = Path(os.fspath(export))
    path = path if path.suffix == ".json" else path.with_name(path.name + ".json")
    document = json.loads(path.read_text())
    document["heldout"] = {**document.get("heldout", {}), **record}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def record_verdict(document: Mapping[str, Any], family: str) -> str | None:
    """``"wins"`` / ``"loses"`` from an export's record for ``family``; ``None``: no evidence."""
    entry = (document.get("heldout") or {}).get(family)
    return entry.get("verdict") if isinstance(entry, Mapping) else None


def extrapolate_runs(
    points: Sequence[tuple[float, float]], goal: float = MIN_GAIN
) -> dict[str, Any]:
    """Least-squares line of held-out gain against log2(distinct training runs), and the
    number of runs where that line reaches ``goal``.

    An assumption made explicit, not a measurement: weight-space learning curves are often
    near log-linear over a decade; two or three points cannot show that this one is.

    Args:
        points: ``(distinct runs, gain)`` pairs, e.g. ``(24, 0.001)``; at least two run counts.

    Returns:
        ``slope`` (gain per doubling), ``intercept`` (gain at 1 run) and ``runs_for_goal``
        (``None`` when the line does not rise).
    """
    if any(runs <= 0 for runs, _ in points):
        raise ValueError(f"extrapolate_runs: run counts must be positive (found {points})")
    xs = [math.log2(runs) for runs, _ in points]
    if len(set(xs)) < 2:
        raise ValueError(
            f"extrapolate_runs: needs at least two different run counts (found {points})"
        )
    ys = [gain for _, gain in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    intercept = my - slope * mx
    doublings = (goal - intercept) / slope if slope > 0 else None
    runs = None if doublings is None else math.inf if doublings > 1000 else 2**doublings
    return {"slope": slope, "intercept": intercept, "goal": goal, "runs_for_goal": runs}
