"""Import and export round trips on real architectures (issue 17): how long ``metaprune
import`` takes on a ``torch.save``d state dict, and whether ``metaprune export`` writes ONNX
and ``.pt2`` files that reproduce the model (dynamic batch, max |diff| against PyTorch).

    python benchmarks/import_export.py                      # the default model list
    python benchmarks/import_export.py --models torchvision/resnet18 --size 64 --pruned

Each model is built with random weights (nothing is downloaded; linear layers re-drawn
with std 1/sqrt(fan_in), since torchvision zero-initialises some classifier heads), ``torch.save``d, imported,
optionally pruned to 2x MACs with 0 epochs on ``synthetic`` at ``--size``, and exported in
both formats; every export is checked by :mod:`metaprune.export` itself (ONNX in
onnxruntime, ``.pt2`` reloaded with ``torch.export.load``). Prints one Markdown row per model
and format.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

DEFAULT_MODELS = [
    "cifar_resnet20", "torchvision/resnet18", "torchvision/mobilenet_v3_small",
    "torchvision/efficientnet_b0", "torchvision/convnext_tiny", "torchvision/vit_b_16",
]  # fmt: skip


def run(name: str, size: int, pruned: bool, out: Path) -> list[str]:
    from metaprune import PruneConfig, prune
    from metaprune.export import export_checkpoint
    from metaprune.importer import import_weights
    from metaprune.models import ArchSpec

    kwargs = {"num_classes": 10}
    if name == "torchvision/vit_b_16":
        kwargs["image_size"] = size
    torch.manual_seed(0)
    spec = ArchSpec(name, kwargs)
    weights = out / f"{name.replace('/', '_')}.pth"
    model = spec.build()
    for module in model.modules():  # torchvision zero-inits some heads: outputs would be 0
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=module.in_features**-0.5)
    torch.save(model.state_dict(), weights)
    start = time.perf_counter()
    imported = import_weights(weights, out / "imported.safetensors", arch=name, arch_kwargs=kwargs)
    import_s = time.perf_counter() - start
    path, prune_note = imported.path, "-"
    if pruned:
        config = PruneConfig.from_dict({
            "target": {"kind": "macs", "value": 2.0}, "method": "group-l2",
            "before_pruning": {"epochs": 0}, "after_pruning": {"epochs": 0},
            "pruning": {"steps": 10}, "latency": {"batch_size": 2, "repeats": 1, "warmup": 0},
            "bn_recalibration_batches": 1, "batch_size": 32,
        })  # fmt: skip
        try:
            result = prune(path, "synthetic", config,
                           dataset_kwargs={"image_size": size, "num_classes": 10})  # fmt: skip
            path = result.save(out / "pruned")["checkpoint"]
            prune_note = f"{result.report['speedup']['macs']:.2f}x"
        except Exception as err:  # noqa: BLE001 (a benchmark row, not a crash)
            return [f"| {name} | {size} | {import_s:.1f} | prune failed: {str(err)[:80]} | | | | |"]
    rows = []
    for fmt in ("onnx", "pt2"):
        start = time.perf_counter()
        try:
            r = export_checkpoint(path, out / f"model.{fmt}", fmt, input_shape=(3, size, size))
            rows.append(
                f"| {name} | {size} | {import_s:.1f} | {prune_note} | {fmt} | "
                f"{time.perf_counter() - start:.1f} | {'yes' if r.dynamic_batch else 'no'} | "
                f"{r.max_abs_diff:.1e} (<= {r.tolerance:.1e}) | {r.max_abs_output:.2g} |"
            )
        except Exception as err:  # noqa: BLE001
            rows.append(f"| {name} | {size} | {import_s:.1f} | {prune_note} | {fmt} | failed: "
                        f"{' '.join(str(err).split())[:100]} | | |")  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--pruned", action="store_true", help="prune to 2x MACs before export")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| model | px | import s | pruned | format | export+check s | dynamic batch | "
          "max abs diff | max abs logit |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            for row in run(name, args.size, args.pruned, Path(tmp)):
                print(row, flush=True)


if __name__ == "__main__":
    main()
