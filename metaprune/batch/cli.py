"""``metaprune batch run MANIFEST -o OUT/`` and ``metaprune batch status OUT/``."""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
from typing import Any

__all__ = ["configure", "register", "run"]

HELP = "prune many checkpoints from a manifest, resumably (run, status)"


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="batch_command", metavar="{run,status}")
    sub.required = True
    r = sub.add_parser("run", help="run or resume the batch of a manifest")
    r.add_argument("manifest", help="YAML manifest (see metaprune.batch.manifest)")
    r.add_argument("-o", "--out", required=True, help="output directory (resumed if it exists)")
    r.add_argument(
        "--workers", type=_positive_int, default=2, help="worker processes / Ray CPUs (default 2)"
    )
    r.add_argument("--backend", choices=("local", "ray"), default="local", help="executor backend")
    r.add_argument("--ray-address", default=None, help="Ray cluster address (default: a local Ray)")
    r.add_argument("--max-attempts", type=_positive_int, default=None,
                   help="failed attempts per task before giving up (default: the manifest's, 2)")  # fmt: skip
    r.add_argument(
        "--retry-failed", action="store_true", help="give failed tasks their attempts again"
    )
    r.add_argument("--quiet", action="store_true", help="no progress display")
    s = sub.add_parser("status", help="print the summary of a finished or running batch")
    s.add_argument("out", help="the batch's output directory")
    s.add_argument("--json", action="store_true", help="print summary JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    if args.batch_command == "run":
        return _run(args)
    return _status(args)


def _run(args: argparse.Namespace) -> int:
    from metaprune.errors import InvalidInputError

    from .runner import run_batch

    if args.ray_address is not None and args.backend != "ray":
        raise InvalidInputError("--ray-address needs --backend ray")
    outcome = run_batch(
        args.manifest, args.out, backend=args.backend, workers=args.workers,
        ray_address=args.ray_address, max_attempts=args.max_attempts,
        retry_failed=args.retry_failed, progress=not args.quiet,
    )  # fmt: skip
    _print_table(outcome.rows, running=False)
    c = outcome.counts
    print(
        f"batch {args.out}: {c['succeeded']}/{c['total']} succeeded, {c['failed']} failed "
        f"({outcome.skipped} already finished, {outcome.ran} run now)"
    )
    for kind, path in outcome.paths.items():
        print(f"  {kind:<5} {path}")
    return 0 if c["succeeded"] == c["total"] else 1


def _status(args: argparse.Namespace) -> int:
    from .state import BatchState, counts, is_running

    out = Path(args.out)
    running = is_running(out)
    rows = BatchState.load(out, missing_ok=False).rows()
    if not running:  # the process that marked them running is gone
        for row in rows:
            if row["status"] == "running":
                row["status"] = "pending"
                row["error"] = row.get("error") or "interrupted"
    c = counts(rows)
    if args.json:
        print(json.dumps({"running": running, "counts": c, "rows": rows}, indent=1, sort_keys=True))
        return 0
    _print_table(rows, running=running)
    state = (
        "running"
        if running
        else ("finished" if c["succeeded"] + c["failed"] == c["total"] else "stopped")
    )
    print(
        f"batch {args.out} ({state}): {c['succeeded']} succeeded, {c['failed']} failed, "
        f"{c['running']} running, {c['pending']} pending of {c['total']}"
    )
    return 0


def _print_table(rows: list[dict[str, Any]], running: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in (
        "model",
        "target",
        "status",
        "base acc",
        "final acc",
        "MACs x",
        "params x",
        "latency x",
        "note",
    ):
        table.add_column(col, justify="right" if col.endswith(("acc", " x")) else "left")
    for r in rows:
        num = functools.partial(_num, r)

        note = r.get("error") or ("" if r.get("target_reached", True) else "target not reached")
        color = {"succeeded": "green", "failed": "red"}.get(r["status"], "yellow")
        table.add_row(
            str(r["model"]), str(r["target"]), f"[{color}]{r['status']}[/{color}]",
            num("base_test_accuracy"), num("final_test_accuracy"), num("macs_speedup", ".2f"),
            num("params_speedup", ".2f"), num("latency_speedup", ".2f"), str(note)[:120],
        )  # fmt: skip
    console = Console()
    if not console.is_terminal:  # a pipe or file: do not squeeze the table into 80 columns
        console = Console(width=160)
    console.print(table)


def _num(row: dict[str, Any], key: str, fmt: str = ".3f") -> str:
    v = row.get(key)
    return format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) else ""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer (found {text!r})") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer (found {text!r})")
    return value


def register(subparsers: Any) -> None:
    """Add ``batch`` to the ``metaprune`` command (the CLI's plugin hook)."""
    p = subparsers.add_parser("batch", help=HELP, description=HELP)
    configure(p)
    p.set_defaults(func=run)
