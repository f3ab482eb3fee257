"""The default job on held-out ``digits`` models: prunability before and after a change.

    nice python benchmarks/default_job.py --tag new                       # this checkout
    PYTHONPATH=/path/to/old/checkout nice python benchmarks/default_job.py --tag old

``prune(model, "digits", PruneConfig(target, 0 epochs before and after pruning))`` with
every other setting at the library's defaults, on the held-out models of
``benchmarks/quality.py`` (``quality_heldout.py``, seeds 100+), at each MACs target: the
pruned model's validation and test accuracy right after pruning and BatchNorm
recalibration (no fine-tune), the chosen normaliser and the wall time. Only keys every
config version has are set, so an older checkout runs the same jobs (``--tag`` names the
rows); results go to ``benchmarks/scale/default_job_<tag>.json``. ``--quick-search`` sets
``importance.adaptive_search`` (adaptive candidates, the best two pruned again on the full
schedule): how often its choice differs from the default search's, and what it costs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # benchmarks/metanet.py
sys.path.insert(len(sys.path), str(_HERE))

import quality_heldout as heldout_mod  # noqa: E402

from metaprune.pruning import FinetuneBudget, PruneConfig, Target, prune  # noqa: E402

OUT = _HERE / "scale"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tag", required=True)
    p.add_argument("--families", nargs="+", default=["cifar_resnet20", "cifar_vgg11_bn"])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--targets", type=float, nargs="+", default=[2.0, 3.0])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--calibration-images", type=int, default=None,
                   help="importance.calibration_images (taylor / hessian gradients); default: the library's")  # fmt: skip
    p.add_argument("--quick-search", action="store_true",
                   help="importance.adaptive_search (adaptive candidates, the best two "
                        "pruned again): how often its choice differs")  # fmt: skip
    a = p.parse_args(argv)
    a.out = a.out / f"default_job_{a.tag}.json"
    torch.set_num_threads(1)
    import metaprune

    for family in a.families:
        for h in heldout_mod.heldout_models(family, a.seeds):
            for t in a.targets:
                key = f"{a.tag}/{h.name}/{t}"
                results = json.loads(a.out.read_text()) if a.out.exists() else {}
                if key in results:
                    continue
                config = PruneConfig(target=Target("macs", t), before_pruning=FinetuneBudget(epochs=0),
                                     after_pruning=FinetuneBudget(epochs=0))  # fmt: skip
                if a.calibration_images is not None or a.quick_search:  # older configs lack the keys
                    from metaprune.pruning import ImportanceOptions

                    extra = {"calibration_images": a.calibration_images} if a.calibration_images else {}
                    extra |= {"adaptive_search": True} if a.quick_search else {}
                    config = dataclasses.replace(config, importance=ImportanceOptions(**extra))
                start = time.perf_counter()
                report = prune(h.path, "digits", config).report
                results = json.loads(a.out.read_text()) if a.out.exists() else {}
                results[key] = {
                    "code": str(Path(metaprune.__file__).parent.parent),
                    "val": report["final"]["val_accuracy"], "test": report["final"]["test_accuracy"],
                    "macs_speedup": report["speedup"]["macs"],
                    "normalizer": report["stages"]["prune"]["normalizer"],
                    "seconds": time.perf_counter() - start, "stage_seconds": report["stage_seconds"],
                    "criterion": report.get("method_choice", {}).get("criterion"),
                    "trials": report["stages"]["prune"].get("criterion_search", {}).get("trials"),
                }  # fmt: skip
                a.out.parent.mkdir(parents=True, exist_ok=True)
                a.out.write_text(json.dumps(results, indent=1))
                r = results[key]
                print(key, f"test {100 * r['test']:.1f} val {100 * r['val']:.1f} {r['normalizer']} "
                      f"{r['seconds']:.0f}s", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
