"""Encode / decode speed against a plain ``torch.cat`` of the same parameters.

    .venv/bin/python benchmarks/encode.py [--repeats 7] [--threads 1]

Prints one table: cold encode (trace + plan + values), warm encode (plan cached, as for
every further model of one architecture), decode, graph sizes, and the ``torch.cat`` time
of every state tensor of the model, side by side in one run. The published converters
take 0.053 s + 0.014 s (CIFAR ResNet-56) and 1.86 s + 0.037 s (ResNet-50) on this class of
machine (METHOD.md). With ``timm`` installed (the ``dev`` extra) it adds a timm ViT-B/16
and EfficientNet-B0 (issue 13: fused qkv attention, functional BatchNorm).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torchvision

from graph_encoding import clear_plan_cache, decode, encode
from metaprune.models import create_model

warnings.filterwarnings("ignore")
PUBLISHED = {"cifar_resnet56": (0.053, 0.014), "resnet50": (1.86, 0.037)}


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench(name: str, model: torch.nn.Module, x: torch.Tensor, repeats: int) -> dict:
    model.eval()
    clear_plan_cache()
    t = time.perf_counter()
    graph = encode(model, x)
    cold = time.perf_counter() - t
    warm = _median(lambda: encode(model, x), repeats)
    dec = _median(lambda: decode(graph, model), repeats)
    tensors = [v.detach() for v in model.state_dict().values() if v.is_floating_point()]
    cat = _median(lambda: torch.cat([v.reshape(-1) for v in tensors]), repeats)
    state = decode(graph, model)
    exact = all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    return dict(
        name=name,
        nodes=graph.num_nodes,
        edges=graph.num_edges,
        cold=cold,
        warm=warm,
        dec=dec,
        cat=cat,
        exact=exact,
        mb=sum(v.numel() * v.element_size() for v in tensors) / 2**20,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--threads", type=int, default=1, help="intra-op threads (1: stable on a shared machine)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = [
        bench(
            "cifar_resnet56",
            create_model("cifar_resnet56"),
            torch.randn(1, 3, 32, 32),
            args.repeats,
        ),
        bench("resnet50", torchvision.models.resnet50(), torch.randn(1, 3, 224, 224), args.repeats),
    ]
    try:
        import timm
    except ImportError:
        timm = None
    if timm is not None:
        for name in ("vit_base_patch16_224", "efficientnet_b0"):
            model = timm.create_model(name, pretrained=False)
            rows.append(bench(f"timm {name}", model, torch.randn(1, 3, 224, 224), args.repeats))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        "| model | nodes | edges | state MB | encode cold s | encode warm s | decode s | "
        "torch.cat s | (enc+dec)/cat | speed-up vs published enc+dec | exact |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ours = r["warm"] + r["dec"]
        if r["name"] in PUBLISHED:
            pub = sum(PUBLISHED[r["name"]])
            versus = f"{pub / ours:.1f}x (cold: {pub / (r['cold'] + r['dec']):.1f}x)"
        else:
            versus = "-"
        print(
            f"| {r['name']} | {r['nodes']:,} | {r['edges']:,} | {r['mb']:.1f} | {r['cold']:.3f} | "
            f"{r['warm']:.4f} | {r['dec']:.4f} | {r['cat']:.4f} | {ours / r['cat']:.1f}x | "
            f"{versus} | {r['exact']} |"
        )


if __name__ == "__main__":
    main()
