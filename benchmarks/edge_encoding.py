"""Per-forward cost of the two edge encodings on the ResNet-20 ``digits`` graph.

    PYTHONPATH=. .venv/bin/python benchmarks/edge_encoding.py [--repeats 20] [--threads 1]
        [--model cifar_resnet20 --layers 4 --hidden 32]

The graph is by default a ``cifar_resnet20`` (width 1.0, 1 input channel, 8x8 input: the
shipped ``resnet20-digits`` zoo's architecture); both networks have by default the
shipped size (4 layers, hidden 32). ``per-type`` is :class:`metanet.MetaNetwork` with ``edge_types`` of the graph
(what ``resnet20-digits`` is), ``canonical`` the same with ``edge_encoding="canonical"``
(one encoder/decoder over the 7x7 grid). Medians of ``--repeats`` calls after a warm-up,
forward under ``no_grad`` and forward+backward of ``sum(x'^2) + sum(w'^2)``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # not `metanet`
warnings.filterwarnings("ignore")


def _time(fns: dict[str, object], repeats: int) -> dict[str, float]:
    """Median seconds of each function; calls interleaved so that load changes on a
    shared machine hit every variant alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default="cifar_resnet20", help="a CIFAR model (1 channel)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from graph_encoding import encode
    from metanet import MetaNetwork, edge_types_of
    from metaprune.models import create_model

    torch.manual_seed(0)
    graph = encode(create_model(args.model, in_channels=1).eval(), torch.randn(1, 1, 8, 8))
    size = (args.layers, args.hidden)
    nets = {
        "per-type": MetaNetwork(*size, edge_types=edge_types_of([graph])),
        "canonical": MetaNetwork(*size, edge_encoding="canonical"),
    }
    print(f"{args.model} graph ({size[0]} x {size[1]} metanetworks): {graph.num_nodes} nodes, {graph.num_edges} edges, "
          f"{graph.edge_flat.numel()} values; {args.threads} thread(s), median of {args.repeats}")  # fmt: skip

    def forward(net: MetaNetwork) -> None:
        with torch.no_grad():
            net(graph)

    def backward(net: MetaNetwork) -> None:
        net.zero_grad(set_to_none=True)
        x, flat = net(graph)
        (x.square().sum() + flat.square().sum()).backward()

    fwd = _time({n: (lambda net=net: forward(net)) for n, net in nets.items()}, args.repeats)
    bwd = _time({n: (lambda net=net: backward(net)) for n, net in nets.items()}, args.repeats)
    print("| encoding | parameters | forward ms | forward+backward ms |")
    print("| --- | --- | --- | --- |")
    for name, net in nets.items():
        params = sum(p.numel() for p in net.parameters())
        print(f"| {name} | {params:,} | {1000 * fwd[name]:.1f} | {1000 * bwd[name]:.1f} |")


if __name__ == "__main__":
    main()
