"""Paired latency measurement for the quality benchmark (run after ``quality.py``).

Latency measured during the main run drifts with the shared machine's load (the same
base model timed 88-185 ms a batch over half an hour), so speed-ups there are unreliable.
Here every pruned architecture recorded in ``results.json`` (its per-layer widths) is
rebuilt (weights do not matter for timing) and timed *back to back* with its base
model, alternating ``--rounds`` times (each a median of ``--repeats`` passes):
speed-up = min over rounds (base) / min over rounds (pruned), since interference from
other processes only ever adds time. One
thread, batch 256, 8x8 inputs, ``cifar_resnet20`` width 1.0.

    .venv/bin/python benchmarks/quality_latency.py [--results benchmarks/quality/results.json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # benchmarks/metanet.py
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from metaprune import checkpoint  # noqa: E402
from metaprune.models import ArchSpec  # noqa: E402
from metaprune.pruning import measure_cost, measure_latency  # noqa: E402

_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.(conv1|conv2|shortcut\.0)$")


def plan_from_widths(widths: dict[str, int], in_channels: int = 1) -> dict[str, dict[str, int]]:
    """The channel plan of a ``cifar_resnet*`` whose conv/linear output widths are ``widths``."""
    plan: dict[str, dict[str, int]] = {}
    blocks = sorted({(int(m[1]), int(m[2])) for k in widths if (m := _BLOCK.match(k))})
    plan["conv1"] = {"in_channels": in_channels, "out_channels": widths["conv1"], "groups": 1}
    plan["bn1"] = {"num_features": widths["conv1"]}
    stream = widths["conv1"]
    for stage, idx in blocks:
        p = f"layer{stage}.{idx}"
        mid, out = widths[f"{p}.conv1"], widths[f"{p}.conv2"]
        plan[f"{p}.conv1"] = {"in_channels": stream, "out_channels": mid, "groups": 1}
        plan[f"{p}.bn1"] = {"num_features": mid}
        plan[f"{p}.conv2"] = {"in_channels": mid, "out_channels": out, "groups": 1}
        plan[f"{p}.bn2"] = {"num_features": out}
        if f"{p}.shortcut.0" in widths:
            plan[f"{p}.shortcut.0"] = {"in_channels": stream, "out_channels": out, "groups": 1}
            plan[f"{p}.shortcut.1"] = {"num_features": out}
        stream = out
    plan["fc"] = {"in_features": stream, "out_features": widths["fc"]}
    return plan


def paired_speedup(base, pruned, shape, rounds: int, repeats: int) -> float:
    def lat(m):
        return measure_latency(m, shape, batch_size=256, threads=1, repeats=repeats, warmup=1)

    b, p = [], []
    for _ in range(rounds):
        b.append(lat(base))
        p.append(lat(pruned))
    return min(b) / min(p)  # the least-disturbed round of each: interference only adds time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "quality" / "results.json")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--force", action="store_true", help="re-time runs an earlier pass timed")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = json.loads(args.results.read_text())
    heldout = {}
    previous = data.get("latency_pass", {})
    out: dict[str, dict[str, float]] = {} if args.force else dict(previous.get("speedup", {}))
    example = torch.zeros(1, 1, 8, 8)
    for key, rec in sorted(data["runs"].items()):
        name = rec["heldout"]
        if key in out:  # timed by an earlier pass
            continue
        if name not in heldout:
            path = Path("/tmp/metaprune-quality-heldout/members") / f"{name.split('-')[1]}.safetensors"
            if name.startswith("metaval-"):
                path = ROOT / "runs" / "zoo-resnet20-digits" / "members" / f"{name.split('-')[1]}.safetensors"
            heldout[name] = checkpoint.load(path)
        base, spec = heldout[name]
        plain = ArchSpec(spec.name, spec.kwargs)
        out[key] = {}
        for t, point in sorted(rec["points"].items()):
            if "widths" not in point:
                continue
            pruned = ArchSpec(spec.name, spec.kwargs, channel_plan=plan_from_widths(point["widths"])).build()
            ratio = measure_cost(base, example).macs / measure_cost(pruned, example).macs
            assert abs(ratio - point["macs_speedup"]) < 1e-6 * ratio + 1e-9, (key, t, ratio, point["macs_speedup"])
            out[key][t] = paired_speedup(base, pruned, (1, 8, 8), args.rounds, args.repeats)
        print(key, {t: round(v, 2) for t, v in out[key].items()}, flush=True)
        del plain
    data["latency_pass"] = {**previous, "speedup": out, "rounds": args.rounds, "repeats": args.repeats,
                            "batch": 256, "threads": 1, "input": "1x8x8"}
    args.results.write_text(json.dumps(data, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
