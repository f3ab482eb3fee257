"""How far past its target one progressive step takes a torchvision ViT (issue 17).

    nice python benchmarks/step_cap.py                          # ViT-B/32 at 64 px, capped
    nice python benchmarks/step_cap.py --uncapped               # the same without the cap
    nice python benchmarks/step_cap.py --model vit_b_16 --side 224

At random init a ViT's residual stream is one coupled group whose scores tie, and
Torch-Pruning's global step prunes every channel scored ``<=`` the threshold: without a
cap, the step that reaches the group takes all of it to its floor (ViT-B/32 at 64 px:
1.77x -> 14.9x for a 2x target). ``progressive_prune`` caps a step at
``STEP_CAP`` x its share of the schedule per layer. Prints the MACs speed-up after every
step (12 steps to 2x, ``normalizer="mean"``, frozen groups from the dry run), then a
forward pass of the pruned model at batch 4.
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision

from metaprune.pruning import progressive, progressive_prune
from metaprune.pruning.structure import check_prunable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_b_32", help="a torchvision ViT builder")
    parser.add_argument("--side", type=int, default=64, help="input size (a patch multiple)")
    parser.add_argument("--target", type=float, default=2.0, help="MACs speed-up")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--uncapped", action="store_true", help="no cap (STEP_CAP = 1e9)")
    args = parser.parse_args()
    if args.uncapped:
        progressive.STEP_CAP = 1e9  # no step is capped
    torch.manual_seed(0)
    torch.set_num_threads(1)
    build = getattr(torchvision.models, args.model)
    model = build(num_classes=10, image_size=args.side).eval()
    x = torch.randn(1, 3, args.side, args.side)
    start = time.perf_counter()
    frozen = check_prunable(model, x).frozen_modules
    print(f"dry run {time.perf_counter() - start:.0f} s, frozen: {list(frozen)}")
    history = progressive_prune(
        model, x, args.target, steps=args.steps, normalizer="mean", frozen=frozen,
        on_step=lambda info, _m: print(f"step {info.step:2d}  {info.macs_speedup:.2f}x", flush=True),
    )  # fmt: skip
    with torch.no_grad():
        out = model(torch.randn(4, 3, args.side, args.side))
    print(f"final {history[-1].macs_speedup:.2f}x for {args.target}x (STEP_CAP "
          f"{progressive.STEP_CAP}), hidden_dim {model.hidden_dim}, output {tuple(out.shape)}, "
          f"{time.perf_counter() - start:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
