"""Held-out models for the quality benchmark: built fresh, with seeds no zoo here uses.

Each family is put through the zoo recipe of ``metanet/configs/zoo_resnet20_digits.yaml``
(train from scratch, prune lightly to ``initial_speedup`` with the recipe's normaliser,
recalibrate BN, fine-tune) with ``metanet.zoo.member.build_member``, only the
architecture swapped. Seeds start at ``SEED0 = 100``: the shipped zoo used seeds 0-19,
so none of these models was seen by the metanetwork's training or checkpoint selection.
Built members are cached (checkpoint + metrics) and reused.

    python benchmarks/quality_heldout.py --families cifar_resnet20 cifar_vgg11_bn --n 3
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # benchmarks/metanet.py
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from metaprune import checkpoint  # noqa: E402

RECIPE = ROOT / "metanet" / "configs" / "zoo_resnet20_digits.yaml"
CACHE = Path("/tmp/metaprune-quality-heldout-v2")
SEED0 = 100
FAMILY_KWARGS = {
    "cifar_resnet20": {"in_channels": 1, "width": 1.0},
    "cifar_resnet32": {"in_channels": 1, "width": 1.0},
    "cifar_resnet56": {"in_channels": 1, "width": 0.5},  # issue 20's held-out family
    "cifar_vgg11_bn": {"in_channels": 1},
    "cifar_vgg19_bn": {"in_channels": 1, "width": 0.25},  # issue 20's held-out family
}


@dataclasses.dataclass(frozen=True)
class Heldout:
    name: str  # e.g. "cifar_resnet20/s100"
    family: str
    seed: int
    path: Path
    metrics: dict


def recipe(family: str, n: int, seed0: int = SEED0):
    from metanet.zoo.config import ZooConfig

    data = yaml.safe_load(RECIPE.read_text())
    data.update(arch=family, arch_kwargs=FAMILY_KWARGS[family], size=n, seed=seed0)
    return ZooConfig.from_dict(data)


def heldout_models(
    family: str, n: int, cache: Path = CACHE, log=print, seed0: int = SEED0
) -> list[Heldout]:
    """``n`` held-out models of ``family`` (built on first use, then cached); ``seed0``
    other than :data:`SEED0`: another set of the same recipe (e.g. 200: models to fit a
    rule's constants on, apart from the held-out ones), in its own cache folder."""
    from metanet.zoo.member import build_member, member_paths, read_metrics

    config = recipe(family, n, seed0)
    root = cache / family if seed0 == SEED0 else cache / f"seeds{seed0}" / family
    out = []
    for index, name in enumerate(config.member_names()):
        ckpt, metrics_path = member_paths(root, name)
        metrics = read_metrics(metrics_path)
        if metrics is None or not _same_recipe(metrics.get("recipe", {}), config.to_dict()):
            start = time.perf_counter()
            metrics = build_member(config, index, root)
            log(f"built {family} seed {metrics['seed']}: val {metrics['val_accuracy']:.3f} "
                f"(after light prune {metrics['pruned_val_accuracy']:.3f}), "
                f"{metrics['macs_speedup']:.2f}x, {time.perf_counter() - start:.0f} s")  # fmt: skip
        out.append(Heldout(f"{family}/s{metrics['seed']}", family, metrics["seed"], ckpt, metrics))
    return out


def _same_recipe(a: dict, b: dict) -> bool:
    """Whether two recipes build the same member (``size`` aside); a stored recipe is read
    back through today's config first, so a field added since with its default matches."""
    from metanet.zoo.config import ZooConfig

    try:
        a = ZooConfig.from_dict(a).to_dict()
    except Exception:  # noqa: BLE001 - an unreadable old recipe: rebuild
        return False
    return {k: v for k, v in a.items() if k != "size"} == {
        k: v for k, v in b.items() if k != "size"
    }


def load(h: Heldout):
    model, spec = checkpoint.load(h.path)
    return model.eval(), spec


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", nargs="+", default=["cifar_resnet20", "cifar_vgg11_bn"])
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=CACHE)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for fam in args.families:
        for h in heldout_models(fam, args.n, cache=args.cache):
            print(
                h.name,
                {k: h.metrics[k] for k in ("val_accuracy", "test_accuracy", "pruned_val_accuracy")},
            )
