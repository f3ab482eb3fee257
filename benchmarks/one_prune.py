"""One search candidate's prune of a torchvision model at 224 px, in CPU seconds (issue 18).

    PYTHONPATH=<checkout> nice python benchmarks/one_prune.py vit_b_16

A group-L2 (``sum``) progressive prune to 2x MACs on the 50-step schedule, torch on one
thread, random weights (seed 0): the one-thread Torch-Pruning work a criterion search
repeats per candidate. Prints one JSON line; run it from two checkouts, alternating, to
compare them on a shared machine (figures in ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import copy
import json
import sys
import time

import torch
import torchvision

from metaprune.pruning import Target, progressive_prune
from metaprune.pruning.importance import make_importance


def main(name: str) -> dict[str, object]:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10).eval()
    example = torch.randn(1, 3, 224, 224)
    pruned = copy.deepcopy(model)
    cpu, wall = time.process_time(), time.perf_counter()
    history = progressive_prune(pruned, example, Target("macs", 2.0), steps=50,
                                importance=make_importance("group-l2", normalizer="sum"))  # fmt: skip
    return {"model": name, "cpu_s": round(time.process_time() - cpu, 2),
            "wall_s": round(time.perf_counter() - wall, 2), "steps": len(history) - 1}  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1] if len(sys.argv) > 1 else "vit_b_16")))
