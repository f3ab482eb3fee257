"""The executor task of one (model, target) pair: prune, then publish the outputs atomically.

Outputs are written into a hidden temporary directory next to ``OUT/<model>/<target>/``
and renamed into place as the last step, ``result.json`` included; so the directory
exists exactly when the task finished, and a killed task leaves only a temporary
directory that the next attempt removes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metaprune.executor import CancelToken, task

__all__ = ["RESULT_NAME", "prune_one", "read_result"]

RESULT_NAME = "result.json"


@task
def prune_one(
    args: dict[str, Any], progress: Callable[[dict[str, Any]], None], cancel: CancelToken
) -> dict[str, Any]:
    """Prune ``args["checkpoint"]`` with ``args["config"]``; write ``args["out_dir"]``.

    Returns the summary row (see :func:`summary_row`), also written as ``result.json``.
    """
    import metanet  # noqa: F401  (registers the "metanet" method the job may ask for)
    import metaprune
    from metaprune.limits import Limits
    from metaprune.pruning import PruneConfig

    start = time.perf_counter()
    config = PruneConfig.from_dict(args["config"])
    ds = args["dataset"]
    splits = metaprune.get_dataset(
        ds["name"], ds.get("root"), config.data_seed, **ds.get("kwargs", {})
    )
    result = metaprune.prune(
        args["checkpoint"], splits, config,
        progress=lambda event: progress(dataclasses.asdict(event)), cancel=cancel,
        limits=Limits.from_dict(args.get("limits") or {}),
    )  # fmt: skip
    final = Path(args["out_dir"])
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    result.save(tmp)
    row = summary_row(args, result.report, time.perf_counter() - start)
    (tmp / RESULT_NAME).write_text(json.dumps(row, indent=2, sort_keys=True) + "\n")
    if final.exists():  # a stale output (its inputs changed): replaced as a whole
        shutil.rmtree(final)
    os.rename(tmp, final)
    return row


def summary_row(args: dict[str, Any], report: dict[str, Any], seconds: float) -> dict[str, Any]:
    """One line of ``summary.csv`` from a pruning report."""
    base, final, speedup = report["base"], report["final"], report["speedup"]
    return {
        "model": args["model"], "target": args["target"],
        "target_kind": report["target"]["kind"], "target_value": report["target"]["value"],
        "method": report["method"], "dataset": report["dataset"],
        "base_val_accuracy": base["val_accuracy"], "base_test_accuracy": base["test_accuracy"],
        "final_val_accuracy": final["val_accuracy"], "final_test_accuracy": final["test_accuracy"],
        "base_macs": base["macs"], "final_macs": final["macs"],
        "base_params": base["params"], "final_params": final["params"],
        "macs_speedup": speedup["macs"], "params_speedup": speedup["params"],
        "latency_speedup": speedup["latency"], "target_reached": report["target_reached"],
        "wall_seconds": seconds, "checkpoint": os.path.join(args["model"], args["target"], "model.safetensors"),
        "digest": args["digest"], "worker_peak_rss_mb": _peak_rss_mb(),
    }  # fmt: skip


def _peak_rss_mb() -> float | None:
    """Peak resident memory of this worker process so far (MiB), where the OS reports it."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def read_result(out_dir: Path, digest: str | None = None) -> dict[str, Any] | None:
    """The row of a finished task in ``out_dir`` (``None`` if unfinished, unreadable or,
    when ``digest`` is given, produced from other inputs)."""
    try:
        row = json.loads((out_dir / RESULT_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(row, dict) or (digest is not None and row.get("digest") != digest):
        return None
    return row
