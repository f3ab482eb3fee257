"""A batch's state on disk: ``OUT/batch.json`` (per-task status and attempts) and the summary.

``batch.json`` is rewritten atomically after every change, so a killed batch leaves a
readable file; tasks it shows as ``running`` were interrupted unless a batch process
still holds ``OUT/.lock``. Finished tasks are recognised by their outputs
(``OUT/<model>/<target>/result.json``), not by this file.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from metaprune.errors import InvalidInputError, NotFoundError, quote

from .manifest import BatchTask

__all__ = [
    "STATE_NAME",
    "SUMMARY_COLUMNS",
    "BatchState",
    "batch_lock",
    "is_running",
    "write_atomic",
    "write_summary",
]

STATE_NAME = "batch.json"
LOCK_NAME = ".lock"
STATE_VERSION = 1
SUMMARY_COLUMNS = (
    "model", "target", "status", "method", "dataset", "target_kind", "target_value",
    "base_val_accuracy", "base_test_accuracy", "final_val_accuracy", "final_test_accuracy",
    "macs_speedup", "params_speedup", "latency_speedup", "target_reached",
    "base_macs", "final_macs", "base_params", "final_params",
    "wall_seconds", "attempts", "error", "checkpoint", "worker_peak_rss_mb",
)  # fmt: skip
STATUSES = ("succeeded", "failed", "running", "pending", "cancelled")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file, then rename: readers see all of it or nothing."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def batch_lock(out: Path) -> Iterator[None]:
    """Hold ``OUT/.lock`` for the duration of a run (released by the OS if the process dies).

    Raises:
        InvalidInputError: another batch process is using ``out``.
    """
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InvalidInputError(
                f"output directory {quote(str(out))} is in use by another batch run"
            ) from None
        yield
    finally:
        os.close(fd)


def is_running(out: Path) -> bool:
    """Whether a batch process currently holds ``OUT/.lock``."""
    try:
        fd = os.open(out / LOCK_NAME, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class BatchState:
    """Per-task status, failed attempts and run counts of the batch in ``out``."""

    def __init__(self, out: Path, data: dict[str, Any] | None = None) -> None:
        self.out = out
        self.data = data or {"format_version": STATE_VERSION, "tasks": {}}

    @classmethod
    def load(cls, out: Path, *, missing_ok: bool = True) -> BatchState:
        """The state in ``out``; a new empty one if there is none and ``missing_ok``.

        Raises:
            NotFoundError: no state and not ``missing_ok``.
            InvalidInputError: the state file is unreadable or of another format.
        """
        path = out / STATE_NAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            if missing_ok:
                return cls(out)
            raise NotFoundError(f"{quote(str(out))} holds no batch (no {STATE_NAME})") from None
        except (OSError, ValueError) as exc:
            raise InvalidInputError(
                f"batch state {quote(str(path))} is unreadable: {exc}"
            ) from None
        if not isinstance(data, dict) or data.get("format_version") != STATE_VERSION:
            raise InvalidInputError(
                f"batch state {quote(str(path))} has format {quote(data.get('format_version') if isinstance(data, dict) else data)}, "
                f"expected {STATE_VERSION}"
            )
        return cls(out, data)

    def entry(self, key: str) -> dict[str, Any]:
        return self.data["tasks"].setdefault(
            key, {"status": "pending", "attempts": 0, "runs": 0, "error": None}
        )

    def set_tasks(self, tasks: list[BatchTask], source: str) -> None:
        """Record the manifest's tasks (in order); entries of other tasks are kept."""
        self.data["manifest"] = source
        self.data["order"] = [t.key for t in tasks]
        for t in tasks:
            e = self.entry(t.key)
            e.update(model=t.model, target=t.target, method=t.config["method"], digest=t.digest,
                     target_kind=t.config["target"]["kind"], target_value=t.config["target"]["value"])  # fmt: skip

    def save(self) -> None:
        self.data["updated"] = time.time()
        write_atomic(self.out / STATE_NAME, json.dumps(self.data, indent=1, sort_keys=True) + "\n")

    def rows(self, results: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Summary rows of the manifest's tasks: the result of finished ones (from
        ``results`` by task key, else read from disk), the state of the others."""
        from .task import read_result

        results = {} if results is None else results
        rows = []
        for key in self.data.get("order", []):
            e = self.entry(key)
            row = {"model": e.get("model"), "target": e.get("target"), "method": e.get("method"),
                   "target_kind": e.get("target_kind"), "target_value": e.get("target_value")}  # fmt: skip
            status, error = e["status"], e.get("error")
            # the outputs are the truth: a task killed with its parent may have published
            # them after the state file was last written
            result = results.get(key) or read_result(self.out / key, e.get("digest"))
            if result is not None:
                row.update(result)
                status, error = "succeeded", None
            elif status == "succeeded":  # outputs removed or from other inputs
                status = "pending"
            row.update(status=status, attempts=e["attempts"], error=error)
            rows.append(row)
        return rows


def counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    out = {s: 0 for s in STATUSES}
    for row in rows:
        out[row["status"]] = out.get(row["status"], 0) + 1
    out["total"] = len(rows)
    return out


def write_summary(out: Path, rows: list[dict[str, Any]], *, plot: bool = True) -> dict[str, Path]:
    """Write ``summary.json``, ``summary.csv`` and (if ``plot``) ``pareto.png`` atomically."""
    paths = {"json": out / "summary.json", "csv": out / "summary.csv"}
    summary = {"counts": counts(rows), "rows": rows}
    write_atomic(paths["json"], json.dumps(summary, indent=1, sort_keys=True) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in SUMMARY_COLUMNS})
    write_atomic(paths["csv"], buffer.getvalue())
    if plot:
        from .plot import plot_pareto

        paths["plot"] = plot_pareto(rows, out / "pareto.png")
    return paths
