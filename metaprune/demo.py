"""``make demo``: the main job end to end on built-in defaults, in a few minutes on a CPU.

1. train a ``cifar_resnet20`` (1 input channel) on scikit-learn's ``digits``;
2. save it as a safe checkpoint, reload it, encode it as a graph and check the round trip;
3. prune it with the shipped metanetwork to a 2x MACs speed-up (metanetwork transform,
   short fine-tune, progressive Torch-Pruning, BatchNorm recalibration, fine-tune);
4. print the report, write checkpoint + report + plot, reload the pruned checkpoint and
   check that it computes what the in-memory model computes.

    python -m metaprune.demo [--out out/demo] [--method metanet] [--speedup 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import graph_encoding
from metaprune import ArchSpec, checkpoint, get_dataset
from metaprune.data import make_loaders
from metaprune.pruning import (
    FinetuneBudget,
    PruneConfig,
    Target,
    evaluate,
    finetune,
    format_report,
    prune,
)

__all__ = ["main"]


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def train_base(splits, seed: int, epochs: int) -> tuple[torch.nn.Module, ArchSpec]:
    spec = ArchSpec("cifar_resnet20", {"in_channels": splits.in_channels, "num_classes": splits.num_classes})
    torch.manual_seed(seed)
    model = spec.build()
    train, val, test = make_loaders(splits, batch_size=64, seed=seed)
    finetune(model, train, val, FinetuneBudget(epochs=epochs, lr=0.1, schedule="cosine"), stage="train")
    _say(f"trained {spec.name}: val {evaluate(model, val):.3f}, test {evaluate(model, test):.3f}")
    return model, spec


def check_round_trip(path: Path, example: torch.Tensor) -> None:
    model, spec = checkpoint.load(path)
    model.eval()
    t = time.perf_counter()
    graph = graph_encoding.encode(model, example)
    encode_s = time.perf_counter() - t
    state = graph_encoding.decode(graph, model)
    exact = all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    kinds = torch.bincount(graph.edge_type, minlength=len(graph_encoding.EdgeKind))
    by_kind = ", ".join(f"{k.name.lower()} {int(kinds[k])}" for k in graph_encoding.EdgeKind if kinds[k])
    _say(
        f"graph of {spec.name}: {graph.num_nodes} nodes, {graph.num_edges} edges ({by_kind}), "
        f"{len(graph.plan.blocks)} blocks, coverage {graph.coverage:.3f}, encoded in {encode_s * 1e3:.1f} ms"
    )
    _say(f"decode(encode(model)) == model.state_dict() for all {len(state)} tensors: {exact}")
    if not exact:
        raise SystemExit("round trip is not exact")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/demo", type=Path)
    parser.add_argument("--method", default="metanet")
    parser.add_argument("--metanet", default="resnet20-digits")
    parser.add_argument("--speedup", default=2.0, type=float)
    parser.add_argument("--train-epochs", default=15, type=int)
    parser.add_argument("--seed", default=0, type=int)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny tensors: one thread beats two on a shared machine
    args.out.mkdir(parents=True, exist_ok=True)

    splits = get_dataset("digits", seed=args.seed)
    model, spec = train_base(splits, args.seed, args.train_epochs)
    base_path = checkpoint.save(model, spec, args.out / "base.safetensors")
    _say(f"saved {base_path} ({base_path.stat().st_size / 1024:.0f} KiB, safetensors + JSON spec)")
    example = splits.train[0][0][None]
    check_round_trip(base_path, example)

    config = PruneConfig(
        method=args.method,
        metanet=args.metanet if args.method == "metanet" else None,
        target=Target("macs", args.speedup),
        before_pruning=FinetuneBudget(epochs=3, lr=0.01),
        after_pruning=FinetuneBudget(epochs=5, lr=0.01),
        seed=args.seed,
    )
    _say(f"pruning with {args.method} to {args.speedup}x MACs speed-up")
    result = prune(base_path, splits, config)
    print(format_report(result.report), flush=True)
    paths = result.save(args.out / "pruned")
    _say("wrote " + ", ".join(str(p) for p in paths.values()))

    reloaded, pruned_spec = checkpoint.load(paths["checkpoint"])
    reloaded.eval()
    result.model.eval()
    batch = torch.stack([splits.test[i][0] for i in range(64)])
    with torch.no_grad():
        same = torch.equal(reloaded(batch), result.model(batch))
    widths = pruned_spec.channel_plan or {}
    _say(f"reloaded pruned checkpoint ({len(widths)} resized layers): outputs identical: {same}")
    if not same:
        raise SystemExit("reloaded checkpoint differs from the pruned model")


if __name__ == "__main__":
    main()
