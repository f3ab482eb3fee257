"""Batch throughput: local workers (1 and 2) against Ray (2 CPUs), same 12 prune tasks.

    PYTHONPATH=. .venv/bin/python benchmarks/batch.py [--models 6] [--repeats 1] [--no-ray]

Six tiny ``cifar_resnet20`` s (quarter width, synthetic 8x8 data) x two MACs targets =
12 prune tasks of a few seconds each. Every executor is started and warmed first (its
start-up is reported apart), then the batch runs into a fresh directory through
``run_batch(..., executor=...)``. Reported: tasks per minute, the 2-worker / 1-worker
ratio (2 cores: ideal 2.0, target >= 1.7), Ray's overhead per task (batch wall time
against 2 local workers, and the round trip of a no-op task), and the peak resident
memory of the workers (from ``getrusage`` inside each task).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import metaprune.testing.tasks  # noqa: F401 - the no-op task
from metaprune.batch import run_batch
from metaprune.executor import TaskSpec, create_executor
from metaprune.testing.batch import make_tiny_models, write_manifest


def warm(ex, workers: int) -> None:
    """Make every worker import everything once: the timed runs measure warm pools."""
    spec = {"steps": 2, "seconds": 1.0}
    for h in [ex.submit(TaskSpec("metaprune.testing.tasks:sleep", spec)) for _ in range(workers)]:
        assert h.result(600).ok


def round_trip(ex, n: int) -> float:
    """Median seconds of submit -> result of a no-op task, one at a time."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        assert ex.submit(TaskSpec("metaprune.testing.tasks:echo", {})).result(120).ok
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run(backend: str, workers: int, manifest: Path, tmp: Path, trips: int) -> dict:
    t = time.perf_counter()
    ex = create_executor(backend, workers=workers)
    warm(ex, workers)
    startup = time.perf_counter() - t
    try:
        t = time.perf_counter()
        outcome = run_batch(manifest, tmp / f"{backend}{workers}", executor=ex, progress=False)
        wall = time.perf_counter() - t
        trip = round_trip(ex, trips)
    finally:
        ex.shutdown()
    rows = outcome.rows
    assert outcome.counts["succeeded"] == len(rows), outcome.counts
    return {
        "backend": backend, "workers": workers, "tasks": len(rows), "startup_s": startup,
        "wall_s": wall, "tasks_per_min": 60 * len(rows) / wall,
        "mean_task_s": statistics.mean(r["wall_seconds"] for r in rows), "round_trip_s": trip,
        "peak_rss_mb": max(r["worker_peak_rss_mb"] for r in rows),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=6)
    parser.add_argument("--round-trips", type=int, default=40)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument(
        "--repeats", type=int, default=1, help="interleaved rounds; the fastest run is shown"
    )
    args = parser.parse_args()
    configs = [("local", 1), ("local", 2)] + ([] if args.no_ray else [("ray", 2)])
    runs: dict[tuple[str, int], list[dict]] = {c: [] for c in configs}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        make_tiny_models(tmp / "zoo", n=args.models)
        manifest = write_manifest(tmp / "m.yaml", [{"path": "zoo/*.safetensors"}])
        for i in range(args.repeats):  # interleaved, so a burst of load hits every configuration
            for backend, workers in configs:
                runs[backend, workers].append(
                    run(backend, workers, manifest, tmp / f"r{i}", args.round_trips)
                )
                loads.append(os.getloadavg()[0])
    results = [min(runs[c], key=lambda r: r["wall_s"]) for c in configs]  # the least disturbed run
    print(
        f"load average (1 min) during the runs: {statistics.mean(loads):.1f} (max {max(loads):.1f}) "
        f"on {os.cpu_count()} cores; {args.repeats} round(s), the fastest run of each configuration"
    )
    print("| backend | workers | tasks | start-up s | wall s | tasks/min | mean task s | no-op round trip ms | peak RSS per worker MB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['backend']} | {r['workers']} | {r['tasks']} | {r['startup_s']:.1f} | {r['wall_s']:.1f} | "
              f"{r['tasks_per_min']:.1f} | {r['mean_task_s']:.2f} | {1000 * r['round_trip_s']:.1f} | {r['peak_rss_mb']:.0f} |")  # fmt: skip
    one, two = results[0], results[1]
    print(f"\n2 workers / 1 worker throughput: {two['tasks_per_min'] / one['tasks_per_min']:.2f}x (target >= 1.7)")  # fmt: skip
    if len(results) > 2:
        ray_r = results[2]
        per_task = (ray_r["wall_s"] - two["wall_s"]) / ray_r["tasks"]
        trip = ray_r["round_trip_s"] - two["round_trip_s"]
        print(f"Ray overhead per task vs 2 local workers: {per_task:+.2f} s in the batch, "
              f"{1000 * trip:+.1f} ms per no-op round trip")  # fmt: skip
    print(json.dumps({f"{b}{w}": runs[b, w] for b, w in configs}))


if __name__ == "__main__":
    main()
