"""Metanetwork forward / backward: dense blocks against straightforward PyG, in one run.

    .venv/bin/python benchmarks/metanet.py [--repeats 3] [--threads N] [--reference] [--no-check]

On the CIFAR ResNet-56 graph, a metanetwork with 8 layers and hidden size 64 (the paper's
CIFAR setting) is timed in three variants, each in its own subprocess so that peak memory
(``ru_maxrss`` growth during the first call, i.e. everything that call allocates) is its own:

* ``dense``: :class:`metanet.MetaNetwork`, layers on the encoder's dense per-layer blocks,
  their edge side in the fused C++ kernel of ``metaprune::meta_blocks``;
* ``pyg``: :class:`metanet.ReferenceMetaNetwork`, ``MessagePassing`` with
  ``aggr=["mean", "std", "max", "min"]`` over ``edge_index`` (same parameters);
* ``dense+torch-reference`` (with ``--reference``): ``meta_blocks`` forced to its pure-torch
  reference (block by block), the fallback where the C++ kernel is unavailable.

Times are medians over ``--repeats`` calls after one warm-up call; "cpu" is the process's
CPU time, less sensitive than wall time to other jobs on a shared machine. The loss for
the backward pass is ``sum(x'^2) + sum(w'^2)`` over the outputs. In float64 the script also
checks that ``dense`` and ``pyg`` compute the same function (outputs and parameter
gradients). Published implementation on this class of machine (idle): 4.5 s forward,
15.9 s forward+backward, 4.9 GB peak (METHOD.md, issue 3).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings

import torch

# Run as a script, this file's folder comes first on sys.path and its name would shadow the
# `metanet` package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
warnings.filterwarnings("ignore")

MODEL, LAYERS, HIDDEN = "cifar_resnet56", 8, 64
PUBLISHED = {"fwd": 4.5, "fwd+bwd": 15.9, "peak_mb": 4.9 * 1024}


def _graph(dtype: torch.dtype = torch.float32):
    from graph_encoding import encode
    from metaprune.models import create_model

    torch.manual_seed(0)
    model = create_model(MODEL).eval().to(dtype)
    return encode(model, torch.randn(1, 3, 32, 32, dtype=dtype))


def _network(variant: str, graph, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    from metanet import MetaNetwork, ReferenceMetaNetwork, edge_types_of

    cls = ReferenceMetaNetwork if variant == "pyg" else MetaNetwork
    torch.manual_seed(1)
    net = cls(LAYERS, HIDDEN, edge_types=edge_types_of([graph])).to(dtype)
    return net


def _step(net: torch.nn.Module, graph, backward: bool) -> None:
    if backward:
        net.zero_grad(set_to_none=True)
        x, flat = net(graph)
        (x.square().sum() + flat.square().sum()).backward()
    else:
        with torch.no_grad():
            net(graph)


def worker(variant: str, mode: str, repeats: int) -> dict:
    """Runs in a subprocess: peak memory of the first call, then timed repeats."""
    if variant == "dense+torch-reference":
        os.environ["METAPRUNE_FORCE_REFERENCE"] = "1"
    import cuda_ops

    assert cuda_ops.native_available()  # built before the clock starts
    graph = _graph()
    net = _network(variant, graph)
    backward = mode == "fwd+bwd"
    _ = graph.edge_index if variant == "pyg" else None  # derived once, as a stored graph would
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    _step(net, graph, backward)
    first = time.perf_counter() - t0
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        _step(net, graph, backward)
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return {
        "wall": statistics.median(wall),
        "cpu": statistics.median(cpu),
        "peak_mb": peak_mb,
        "first": first,
    }


def check_same_function() -> dict:
    """Max abs differences between dense and PyG in float64: outputs and every gradient."""
    graph = _graph(torch.float64)
    dense, pyg = _network("dense", graph, torch.float64), _network("pyg", graph, torch.float64)
    pyg.load_state_dict(dense.state_dict())
    outs = []
    for net in (dense, pyg):
        x, flat = net(graph)
        (x.square().sum() + flat.square().sum()).backward()
        outs.append((x.detach(), flat.detach(), [p.grad for p in net.parameters()]))
    (xa, fa, ga), (xb, fb, gb) = outs
    grad_diff = max(float((a - b).abs().max()) for a, b in zip(ga, gb))
    grad_scale = max(float(b.abs().max()) for b in gb)
    return {
        "x": float((xa - xb).abs().max()),
        "edge_flat": float((fa - fb).abs().max()),
        "edge_delta_scale": float((fb - graph.edge_flat).abs().max()),
        "grad": grad_diff,
        "grad_scale": grad_scale,
    }


def _run_worker(variant: str, mode: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, mode, "--repeats", str(args.repeats)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--reference", action="store_true", help="also time meta_blocks' pure-torch reference"
    )
    parser.add_argument(
        "--no-check", action="store_true", help="skip the float64 equivalence check"
    )
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(*args.worker, args.repeats)))
        return

    graph = _graph()
    net = _network("dense", graph)
    params = sum(p.numel() for p in net.parameters())
    load0 = os.getloadavg()[0]
    print(
        f"# {datetime.date.today()}  torch {torch.__version__}  threads {torch.get_num_threads()}  "
        f"load average {load0:.1f}"
    )
    print(
        f"# {MODEL}: {graph.num_nodes} nodes, {graph.num_edges} edges "
        f"({int(graph.layer_table.shape[0])} blocks), metanetwork L={LAYERS} h={HIDDEN}, {params:,} parameters"
    )
    variants = ["dense", "pyg"] + (["dense+torch-reference"] if args.reference else [])
    results = {v: {m: _run_worker(v, m, args) for m in ("fwd", "fwd+bwd")} for v in variants}
    load1 = os.getloadavg()[0]

    ref = results["pyg"]
    print()
    print(
        "| variant | fwd wall s | fwd cpu s | fwd+bwd wall s | fwd+bwd cpu s | peak MB fwd | peak MB fwd+bwd | fwd+bwd speed-up vs pyg (wall / cpu) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for v, r in results.items():
        f, fb = r["fwd"], r["fwd+bwd"]
        print(
            f"| {v} | {f['wall']:.3f} | {f['cpu']:.3f} | {fb['wall']:.3f} | {fb['cpu']:.3f} | "
            f"{f['peak_mb']:.0f} | {fb['peak_mb']:.0f} | "
            f"{ref['fwd+bwd']['wall'] / fb['wall']:.1f}x / {ref['fwd+bwd']['cpu'] / fb['cpu']:.1f}x |"
        )
    print(
        f"| published (METHOD.md, idle) | {PUBLISHED['fwd']:.1f} | | {PUBLISHED['fwd+bwd']:.1f} | | | "
        f"{PUBLISHED['peak_mb']:.0f} | |"
    )
    fd = results["dense"]
    print(
        f"\nforward speed-up vs pyg: {ref['fwd']['wall'] / fd['fwd']['wall']:.1f}x wall, "
        f"{ref['fwd']['cpu'] / fd['fwd']['cpu']:.1f}x cpu; load average {load0:.1f} -> {load1:.1f}"
    )
    if not args.no_check:
        d = check_same_function()
        print(
            f"float64 dense vs pyg, max abs diff: x' {d['x']:.1e}, edge values {d['edge_flat']:.1e} "
            f"(edge change scale {d['edge_delta_scale']:.1e}), parameter gradients {d['grad']:.1e} "
            f"(gradient scale {d['grad_scale']:.1e})"
        )


if __name__ == "__main__":
    main()
