"""Every criterion x normaliser, pruned in full, on held-out models at 0 epochs (issue 20).

    python benchmarks/quality_criteria.py --family cifar_vgg19_bn --seeds 2 \
        --candidates auto:auto group-l2:sum group-l2-macs:sum taylor:mean

Each candidate ``method:normalizer`` is a ``metaprune.prune`` job with that method and a
fixed normaliser (``auto:auto`` is the default job, whose report also carries its proxy's
scores of every candidate), no preparation and no fine-tune: the full schedule, the full
BatchNorm recalibration and the whole validation split, i.e. what the proxy of the
criterion search estimates. Test accuracy is reported, never used for a choice.
Results go to ``benchmarks/quality/criteria.json`` (resumable).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # benchmarks/metanet.py
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_spec = importlib.util.spec_from_file_location("quality_heldout", _HERE / "quality_heldout.py")
heldout_mod = importlib.util.module_from_spec(_spec)
sys.modules["quality_heldout"] = heldout_mod
_spec.loader.exec_module(heldout_mod)

from metaprune.pruning import FinetuneBudget, ImportanceOptions, PruneConfig, Target, prune  # noqa: E402

NO_FT = FinetuneBudget(epochs=0)


def run(path: Path, method: str, normalizer: str, target: float) -> dict:
    config = PruneConfig(method=method, importance=ImportanceOptions(normalizer=normalizer),
                         target=Target("macs", target), before_pruning=NO_FT, after_pruning=NO_FT)  # fmt: skip
    start = time.perf_counter()
    r = prune(path, "digits", config).report
    search = r["stages"]["prune"].get("criterion_search") or {}
    return {"val": r["final"]["val_accuracy"], "test": r["final"]["test_accuracy"],
            "macs_speedup": r["speedup"]["macs"], "criterion": r["method_choice"].get("criterion"),
            "proxy": {f"{t['criterion']}[{t['normalizer']}]": t["val_accuracy"] for t in search.get("trials", [])},
            "layer_widths": r.get("layer_widths"), "seconds": time.perf_counter() - start}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", default="cifar_vgg19_bn")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--targets", type=float, nargs="+", default=[2.0, 3.0])
    p.add_argument("--candidates", nargs="+", default=["auto:auto", "group-l2:sum", "group-l2-macs:sum"])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "quality" / "criteria.json")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    data = json.loads(a.out.read_text()) if a.out.exists() else {}
    for h in heldout_mod.heldout_models(a.family, a.seeds):
        for t in a.targets:
            for cand in a.candidates:
                key = f"{h.name}|{t}|{cand}"
                if key not in data:
                    data[key] = run(h.path, *cand.split(":"), t)
                    a.out.parent.mkdir(parents=True, exist_ok=True)
                    a.out.write_text(json.dumps(data, indent=1, sort_keys=True))
                rec = data[key]
                print(f"{key}: val {100 * rec['val']:.1f} test {100 * rec['test']:.1f} "
                      f"({rec['macs_speedup']:.2f}x, {rec['criterion']})", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
