"""Held-out models for the quality benchmark: never seen by the metanetwork's training.

Two sources:

* ``fresh``: new base seeds put through exactly the recipe of the zoo (``zoo.json``'s
  ``ZooConfig``: train from scratch, prune lightly to ``initial_speedup``, recalibrate BN,
  fine-tune) with ``metanet.zoo.member.build_member``. Member ``i`` of the extended zoo
  has seed ``zoo.seed + i``, so seeds ``size, size + 1, ...`` are new. These models were
  used neither for meta-training nor for the metanetwork's checkpoint selection.
* ``meta-val``: the zoo's meta-val members. Not trained on, but the metanetwork's
  checkpoint was *selected* on them (area under their pruning curve), so they are a
  slightly optimistic test set for ``metanet``.

Built members are cached (checkpoint + metrics) and reused on the next run.

    .venv/bin/python benchmarks/quality_heldout.py --n 5     # pre-build the fresh members
"""

from __future__ import annotations

import argparse
import dataclasses
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

from metaprune import checkpoint  # noqa: E402

ZOO = ROOT / "runs" / "zoo-resnet20-digits"
CACHE = Path("/tmp/metaprune-quality-heldout")


@dataclasses.dataclass(frozen=True)
class Heldout:
    name: str  # e.g. "fresh-0020" or "metaval-0004"
    seed: int
    path: Path
    source: str  # "fresh" | "meta-val"


def zoo_config(zoo: Path = ZOO):
    from metanet.zoo.config import ZooConfig

    return ZooConfig.from_dict(json.loads((zoo / "zoo.json").read_text())["config"])


def fresh_members(n: int, zoo: Path = ZOO, cache: Path = CACHE, log=print) -> list[Heldout]:
    """``n`` members with new seeds, built with the zoo's recipe (cached in ``cache``)."""
    from metanet.zoo.member import build_member, member_paths, read_metrics

    config = zoo_config(zoo)
    extended = dataclasses.replace(config, size=config.size + n)
    out = []
    for k in range(n):
        index = config.size + k
        name = extended.member_names()[index]
        ckpt, metrics_path = member_paths(cache, name)
        metrics = read_metrics(metrics_path)
        if metrics is None or not _same_recipe(metrics.get("recipe", {}), config.to_dict()):
            start = time.perf_counter()
            torch.set_num_threads(1)
            metrics = build_member(extended, index, cache)
            log(f"built fresh member {name} (seed {metrics['seed']}): test {metrics['test_accuracy']:.3f}, "
                f"{metrics['macs_speedup']:.2f}x, {time.perf_counter() - start:.0f} s")
        out.append(Heldout(f"fresh-{name}", config.seed + index, ckpt, "fresh"))
    return out


def _same_recipe(a: dict, b: dict) -> bool:
    ignore = {"size"}
    return {k: v for k, v in a.items() if k not in ignore} == {k: v for k, v in b.items() if k not in ignore}


def metaval_members(zoo: Path = ZOO) -> list[Heldout]:
    data = json.loads((zoo / "zoo.json").read_text())
    seeds = {m["name"]: m["seed"] for m in data["members"]}
    return [
        Heldout(f"metaval-{n}", seeds[n], zoo / "members" / f"{n}.safetensors", "meta-val")
        for n in data["split"]["meta_val"]
    ]


def heldout_models(source: str, n: int, zoo: Path = ZOO, cache: Path = CACHE, log=print) -> list[Heldout]:
    """``n`` held-out models: ``fresh``, ``meta-val`` or ``mixed`` (meta-val first, then fresh)."""
    if source == "fresh":
        return fresh_members(n, zoo, cache, log)
    metaval = metaval_members(zoo)
    if source == "meta-val":
        if n > len(metaval):
            raise SystemExit(f"only {len(metaval)} meta-val members; use --heldout fresh or mixed")
        return metaval[:n]
    if source == "mixed":
        take = metaval[:n]
        return take + fresh_members(n - len(take), zoo, cache, log) if n > len(take) else take
    raise SystemExit(f"unknown held-out source {source!r} (fresh, meta-val, mixed)")


def load(h: Heldout):
    model, spec = checkpoint.load(h.path)
    return model.eval(), spec


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=CACHE)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for h in fresh_members(args.n, cache=args.cache):
        print(h)
