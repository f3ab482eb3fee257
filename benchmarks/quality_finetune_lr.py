"""The after-pruning fine-tune's learning rate on saved pruned models (issue 20).

    python benchmarks/quality_finetune_lr.py /tmp/pruned/*.safetensors --plans 20@0.01 10@0.01 10@0.05

Each file is a pruned checkpoint written by ``quality_families.py --save-pruned`` and read
with :func:`metaprune.load` (safetensors and a JSON spec: nothing is unpickled). Every plan ``EPOCHS@LR`` (or ``default``: the library's after-pruning budget,
its rate search included) fine-tunes a copy with the default after-pruning
budget (cosine, best validation epoch) changed only in epochs and rate, from the same seed;
the per-epoch validation history, the selected epoch and the test accuracy are written to
``--out``. A rate chosen on validation is read off the ``val`` column, never the test one.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from metaprune.checkpoint import load  # noqa: E402
from metaprune.data import get_dataset, make_loaders  # noqa: E402
from metaprune.pruning import PruneConfig, evaluate, finetune  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", type=Path, nargs="+")
    p.add_argument("--plans", nargs="+", default=["20@0.01", "10@0.01", "10@0.05"])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "quality" / "finetune_lr.json")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    config = PruneConfig()
    splits = get_dataset("digits", seed=0)
    data = json.loads(a.out.read_text()) if a.out.exists() else {}
    for path in a.models:
        pruned, _ = load(path)
        for plan in a.plans:
            key = f"{path.stem}/{plan}"
            if key in data:
                continue
            if plan == "default":  # the library's after-pruning budget (its rate search)
                budget = config.after_pruning
            else:  # one rate, no search
                epochs, lr = plan.split("@")
                budget = dataclasses.replace(config.after_pruning, epochs=int(epochs), lr=float(lr),
                                             lr_alternatives=())  # fmt: skip
            model = copy.deepcopy(pruned)
            # fresh loaders per plan: every plan sees the same data order (the first run of
            # this script shared one loader, so its later plans saw other orders)
            train, val, test = make_loaders(splits, config.batch_size, config.seed)
            torch.manual_seed(config.seed)
            start = time.perf_counter()
            result = finetune(model, train, val, budget, stage="after_pruning")
            data[key] = {"val": result.best_val_accuracy, "best_epoch": result.best_epoch, "lr": result.lr,
                         "history": [round(h["val_accuracy"], 4) for h in result.history],
                         "test": evaluate(model, test), "seconds": time.perf_counter() - start}  # fmt: skip
            print(time.strftime("%H:%M:%S"), key, f"val {100 * data[key]['val']:.1f}",
                  f"test {100 * data[key]['test']:.1f}", f"epoch {result.best_epoch}", flush=True)
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(data, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
