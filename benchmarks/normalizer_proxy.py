"""Does the cheap normaliser proxy pick what the full search picked? (issue 18)

    nice python benchmarks/normalizer_proxy.py                       # 2 ResNet-20s + 2 VGG-11s
    nice python benchmarks/normalizer_proxy.py --families cifar_resnet20 --seeds 4

``normalizer="auto"`` used to prune a copy to the target with every candidate (``sum``,
``mean``, ``max``) on the job's full schedule (200 steps), recalibrate BatchNorm exactly
over the whole calibration set (20 batches of 128: all 1,257 ``digits`` training images)
and score on the whole validation split (180 images): three full prunes. The proxy
(``ImportanceOptions.search_steps`` / ``search_images``) prunes on the job's schedule
(``pruning.steps``, 50 by default; ``--proxy-steps``), re-estimates
BatchNorm in one training-mode pass over 64 training images and scores on 64
validation images (``--proxy-images``). On the held-out models of ``benchmarks/quality.py`` (the zoo recipe,
seeds 100+, cached by ``quality_heldout.py``), with no epochs before pruning, at 1.5, 2,
3 and 4x MACs, this script records both choices and the test accuracy each candidate
reaches through the *full* procedure, so a disagreement is priced: the test accuracy of
the full search's choice minus that of the proxy's choice.

The full procedure recalibrates with one training-mode pass + one whole-set refinement
over all 1,257 images instead of the exact per-BatchNorm passes (on these models the
two agree within 0.6 points of test accuracy, 2 images; ``benchmarks/RESULTS.md``,
issue 18), so that the benchmark fits a shared 2-core machine. A progressive run to 4x takes the same steps
as one to 2x up to 2x, so one run per candidate serves every target.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # benchmarks/metanet.py
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(_HERE))

import quality_heldout as heldout_mod  # noqa: E402

from metaprune.data import get_dataset, make_loaders  # noqa: E402
from metaprune.pruning import evaluate, progressive_prune, recalibrate_bn  # noqa: E402
from metaprune.pruning.bn import calibration_subset  # noqa: E402
from metaprune.pruning.normalizer import NORMALIZER_CANDIDATES  # noqa: E402

TARGETS = (1.5, 2.0, 3.0, 4.0)
OUT = ROOT / "benchmarks" / "scale" / "normalizer_proxy.json"


def points(model, normalizer: str, steps: int, measure) -> dict[str, dict[str, Any]]:
    """One progressive run to max(TARGETS); ``measure(copy)`` at the first step past each."""
    pending, out = sorted(TARGETS), {}

    def on_step(info, m) -> None:
        while pending and info.macs_speedup >= pending[0]:
            t = pending.pop(0)
            out[str(t)] = {"step": info.step, "macs_speedup": info.macs_speedup,
                           **measure(copy.deepcopy(m))}  # fmt: skip

    progressive_prune(copy.deepcopy(model), torch.zeros(1, 1, 8, 8), max(TARGETS), steps=steps,
                      normalizer=normalizer, seed=0, on_step=on_step)  # fmt: skip
    return out


def _choice(runs: dict[str, dict[str, Any]], t: str) -> str:
    """The candidate with the best validation score (max keeps the first of equals)."""
    return max(NORMALIZER_CANDIDATES, key=lambda n: runs[n][t]["val"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", default=["cifar_resnet20", "cifar_vgg11_bn"])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--full-steps", type=int, default=200)
    p.add_argument("--proxy-steps", type=int, default=50, help="the default pruning.steps")
    p.add_argument("--proxy-images", type=int, default=64)
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    splits = get_dataset("digits", seed=0)
    _, val, test = make_loaders(splits, 128, 0)
    full_calib = calibration_subset(splits.train, 20 * 128, 128, 0)
    proxy_calib = calibration_subset(splits.train, a.proxy_images, 128, 0)
    proxy_val = calibration_subset(splits.val, a.proxy_images, 128, 0)

    def full(m) -> dict[str, float]:
        recalibrate_bn(m, full_calib, len(full_calib), exact=False, refine=1)
        return {"val": evaluate(m, val), "test": evaluate(m, test)}

    def proxy(m) -> dict[str, float]:
        recalibrate_bn(m, proxy_calib, len(proxy_calib), exact=False)
        return {"val": evaluate(m, proxy_val)}

    results = json.loads(a.out.read_text()) if a.out.exists() else {}
    for family in a.families:
        for h in heldout_mod.heldout_models(family, a.seeds):
            if h.name in results:
                continue
            model, _ = heldout_mod.load(h)
            start = time.perf_counter()
            rec: dict[str, Any] = {"full": {}, "proxy": {}, "seconds": {}}
            for n in NORMALIZER_CANDIDATES:
                t0 = time.perf_counter()
                rec["full"][n] = points(model, n, a.full_steps, full)
                t1 = time.perf_counter()
                rec["proxy"][n] = points(model, n, a.proxy_steps, proxy)
                rec["seconds"][n] = {"full": t1 - t0, "proxy": time.perf_counter() - t1}
            rec["decisions"] = {}
            for t in map(str, TARGETS):
                f, q = (_choice(rec[kind], t) for kind in ("full", "proxy"))
                rec["decisions"][t] = {"full": f, "proxy": q, "agree": f == q,
                                       "test_cost": rec["full"][f][t]["test"] - rec["full"][q][t]["test"]}  # fmt: skip
            rec["total_seconds"] = time.perf_counter() - start
            results[h.name] = rec
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(results, indent=1))
            print(h.name, {t: (d["full"], d["proxy"], round(100 * d["test_cost"], 1))
                           for t, d in rec["decisions"].items()}, flush=True)  # fmt: skip
    decisions = [d for r in results.values() for d in r["decisions"].values()]
    agree = sum(d["agree"] for d in decisions)
    costs = [100 * d["test_cost"] for d in decisions]
    print(f"agree {agree}/{len(decisions)}; test cost of disagreeing: mean {sum(costs) / len(costs):+.2f} "
          f"points over all decisions, worst {max(costs):+.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
