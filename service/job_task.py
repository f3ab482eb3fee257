"""The task a worker process runs for one pruning job (registered with the executor).

It gets plain data only (paths the server chose, a dataset name, ``PruneConfig.to_dict()``),
runs :func:`metaprune.prune` exactly as a library user would, streams its
:class:`~metaprune.pruning.ProgressEvent`\\ s back as dicts, and writes the result into a
fresh directory under the server's ``tmp/`` that it renames to ``results/<job id>/`` only
when every file is complete and fsynced: a job that dies midway leaves no result that
looks finished.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metaprune.executor import task
from metaprune.pruning.progress import CancelToken, ProgressEvent
from service.blobs import commit_dir, sha256_file

__all__ = ["TASK_NAME", "run_export", "run_prune_job", "summarize"]

TASK_NAME = "service.job_task:run_prune_job"


@task
def run_prune_job(
    args: dict[str, Any], progress: Callable[[dict[str, Any]], None], cancel: CancelToken
) -> dict[str, Any]:
    """Prune ``args["model_path"]`` on ``args["dataset"]`` with ``args["config"]``.

    Args (plain data): ``model_path``, ``dataset``, ``dataset_kwargs`` (checked by the
    server, optional), ``data_root`` (or None), ``config``
    (``PruneConfig.to_dict()``), ``limits`` (``Limits.to_dict()``: the server's bounds,
    including the wall-clock budget the pipeline enforces between steps), ``tmp_dir`` (a new directory to write into) and
    ``result_dir`` (where the finished result appears).

    Returns:
        ``{"sha256", "size", "summary"}`` of the pruned checkpoint.
    """
    import metanet  # noqa: F401  (registers the "metanet" method the job may ask for)
    import metaprune
    from metaprune.limits import Limits
    from metaprune.pruning import PruneConfig

    config = PruneConfig.from_dict(args["config"])
    limits = Limits.from_dict(args["limits"]) if args.get("limits") else Limits()

    def forward(event: ProgressEvent) -> None:
        progress(dataclasses.asdict(event))

    result = metaprune.prune(
        args["model_path"], args["dataset"], config, forward, cancel=cancel,
        data_root=args.get("data_root"), limits=limits, metanet_paths=False,
        dataset_kwargs=args.get("dataset_kwargs") or None,
    )  # fmt: skip
    tmp = Path(args["tmp_dir"])
    tmp.mkdir(parents=True, exist_ok=True)
    paths = result.save(tmp)
    sha, size = sha256_file(paths["checkpoint"]), paths["checkpoint"].stat().st_size
    commit_dir(tmp, Path(args["result_dir"]))
    return {"sha256": sha, "size": size, "summary": summarize(result.report)}


@task
def run_export(
    args: dict[str, Any], progress: Callable[[dict[str, Any]], None], cancel: CancelToken
) -> dict[str, Any]:
    """Export the result checkpoint ``args["checkpoint"]`` (a file this server wrote) to
    ``args["out"]`` in ``args["format"]`` (:mod:`metaprune.export`: written atomically and
    checked); returns ``{"sha256", "size", "dynamic_batch", "max_abs_diff"}``."""
    from metaprune.export import export_checkpoint
    from metaprune.limits import Limits

    result = export_checkpoint(
        args["checkpoint"], args["out"], args["format"], limits=Limits.from_dict(args["limits"])
    )
    return {
        "sha256": sha256_file(result.path), "size": result.path.stat().st_size,
        "dynamic_batch": result.dynamic_batch, "max_abs_diff": result.max_abs_diff,
    }  # fmt: skip


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """The headline of a report: what a job listing shows."""
    base, final = report.get("base", {}), report.get("final", {})
    return {
        "target_reached": report.get("target_reached"),
        "speedup": report.get("speedup"),
        "base_test_accuracy": base.get("test_accuracy"),
        "final_test_accuracy": final.get("test_accuracy"),
        "final_val_accuracy": final.get("val_accuracy"),
        "macs": [base.get("macs"), final.get("macs")],
        "params": [base.get("params"), final.get("params")],
    }
