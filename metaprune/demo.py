"""``make demo``: the product as its users meet it, through the gRPC service.

1. start ``metaprune serve`` as a subprocess on a free loopback port with a temporary
   data directory (its generated admin token is read from there);
2. meanwhile, train (or reuse) a ``cifar_resnet20`` (1 input channel) on scikit-learn's
   ``digits``, save it as a safe checkpoint and check the graph round trip bit for bit;
3. upload it with :class:`service.client.PruningClient`, create a job to a 2x MACs speed-up
   with the server's default method, and show its progress stream;
4. download the result (sha256 checked), reload it with :func:`metaprune.load` and check
   that its test accuracy is the one the server reported; print the report, and latency
   where the pruned model's smaller MACs can show;
5. stop the server gracefully (SIGTERM). Any failure exits non-zero.

    python -m metaprune.demo [--out out/demo] [--speedup 2] [--method M] [--retrain]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import graph_encoding
from metaprune import ArchSpec, checkpoint, get_dataset
from metaprune.data import make_loaders
from metaprune.pruning import (
    FinetuneBudget,
    evaluate,
    finetune,
    format_report,
    measure_latency,
)

__all__ = ["main"]

# where a small CNN's speed-up shows on a CPU: enough pixels that convolutions, not the
# per-layer Python and dispatch overhead, dominate a forward pass
LATENCY_SIZE, LATENCY_BATCH = 64, 16


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def train_base(splits, seed: int, epochs: int) -> tuple[torch.nn.Module, ArchSpec]:
    spec = ArchSpec(
        "cifar_resnet20", {"in_channels": splits.in_channels, "num_classes": splits.num_classes}
    )
    torch.manual_seed(seed)
    model = spec.build()
    train, val, test = make_loaders(splits, batch_size=64, seed=seed)
    finetune(
        model, train, val, FinetuneBudget(epochs=epochs, lr=0.1, schedule="cosine"), stage="train"
    )
    _say(f"trained {spec.name}: val {evaluate(model, val):.3f}, test {evaluate(model, test):.3f}")
    return model, spec


def base_checkpoint(out: Path, splits, seed: int, epochs: int, retrain: bool) -> Path:
    """The trained base model, reused from an earlier run with the same settings."""
    path, stamp = out / "base.safetensors", out / "base.json"
    settings = {"seed": seed, "epochs": epochs, "arch": "cifar_resnet20", "dataset": "digits"}
    if (
        not retrain
        and path.exists()
        and stamp.exists()
        and json.loads(stamp.read_text()) == settings
    ):
        checkpoint.load(path)  # still a valid checkpoint
        _say(f"reusing the trained base model {path} (--retrain to train it again)")
        return path
    model, spec = train_base(splits, seed, epochs)
    checkpoint.save(model, spec, path)
    stamp.write_text(json.dumps(settings))
    _say(f"saved {path} ({path.stat().st_size / 1024:.0f} KiB, safetensors + JSON spec)")
    return path


def check_round_trip(path: Path, example: torch.Tensor) -> None:
    model, spec = checkpoint.load(path)
    model.eval()
    t = time.perf_counter()
    graph = graph_encoding.encode(model, example)
    encode_s = time.perf_counter() - t
    state = graph_encoding.decode(graph, model)
    exact = all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    kinds = torch.bincount(graph.edge_type, minlength=len(graph_encoding.EdgeKind))
    by_kind = ", ".join(
        f"{k.name.lower()} {int(kinds[k])}" for k in graph_encoding.EdgeKind if kinds[k]
    )
    _say(
        f"graph of {spec.name}: {graph.num_nodes} nodes, {graph.num_edges} edges ({by_kind}), "
        f"{len(graph.plan.blocks)} blocks, coverage {graph.coverage:.3f}, encoded in {encode_s * 1e3:.1f} ms"
    )
    _say(f"decode(encode(model)) == model.state_dict() for all {len(state)} tensors: {exact}")
    if not exact:
        raise SystemExit("round trip is not exact")


def latency_lines(base_path: Path, pruned_path: Path, report: dict, in_channels: int) -> list[str]:
    """Latency at the dataset's size (from the report) and at a size where compute dominates."""
    base, _ = checkpoint.load(base_path)
    pruned, _ = checkpoint.load(pruned_path)
    shape = (in_channels, LATENCY_SIZE, LATENCY_SIZE)
    timing = {"batch_size": LATENCY_BATCH, "threads": 1, "repeats": 5, "warmup": 1}
    big_base, big_pruned = (
        measure_latency(base, shape, **timing),
        measure_latency(pruned, shape, **timing),
    )
    small = report["speedup"]["latency"]
    return [
        f"latency speed-up at the dataset's 8x8 inputs (from the report): {small:.2f}x -- "
        "tiny tensors: per-layer overhead, not arithmetic, dominates, so this figure is noisy "
        "and understates what fewer MACs buy",
        f"latency speed-up at {LATENCY_SIZE}x{LATENCY_SIZE} inputs, batch {LATENCY_BATCH}, 1 thread: "
        f"{1e3 * big_base:.1f} ms -> {1e3 * big_pruned:.1f} ms = {big_base / big_pruned:.2f}x "
        f"(MACs speed-up {report['speedup']['macs']:.2f}x; channel pruning pays where compute dominates)",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/demo", type=Path)
    parser.add_argument("--method", default=None, help="pruning method (default: the server's)")
    parser.add_argument("--metanet", default="resnet20-digits")
    parser.add_argument("--speedup", default=2.0, type=float)
    parser.add_argument("--train-epochs", default=15, type=int)
    parser.add_argument("--seed", default=0, type=int)
    parser.add_argument("--retrain", action="store_true", help="train the base model again")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny tensors: one thread beats two on a shared machine
    args.out.mkdir(parents=True, exist_ok=True)

    from service.cli import _follow
    from service.client import PruningClient
    from service.process import serve_process

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="metaprune-demo-") as tmp:
        data = Path(tmp) / "data"
        server = serve_process(data, log=Path(tmp) / "serve.log", timeout=120, wait=False)
        try:
            splits = get_dataset("digits", seed=args.seed)
            base_path = base_checkpoint(
                args.out, splits, args.seed, args.train_epochs, args.retrain
            )
            check_round_trip(base_path, splits.train[0][0][None])
            server.wait_listening(120)
            token = (data / "admin.token").read_text().strip()
            _say(f"metaprune serve listening on {server.address} (data {data}, token from "
                 f"{data / 'admin.token'}, mode {oct((data / 'admin.token').stat().st_mode & 0o777)})")  # fmt: skip
            with PruningClient(server.address, token) as client:
                model = client.upload(base_path, display_name="digits-resnet20")
                _say(f"uploaded as {model.model_id[:23]}... ({model.params:,} params)")
                config = {
                    "target": {"kind": "macs", "value": args.speedup},
                    "before_pruning": {"epochs": 3, "lr": 0.01},
                    "after_pruning": {"epochs": 5, "lr": 0.01}, "seed": args.seed,
                }  # fmt: skip
                if args.method:
                    config["method"] = args.method
                if args.method == "metanet":
                    config["metanet"] = args.metanet
                job = client.create_job(
                    model.model_id, "digits", config, request_id=f"demo-{time.time_ns()}"
                )
                _say(f"job {job.job_id}: method {job.config.method}, target {args.speedup}x MACs")
                job = _follow(client, job.job_id, quiet=False)
                if job.state != 3:  # JOB_STATE_SUCCEEDED
                    raise SystemExit(f"job {job.job_id} did not succeed: {job.error}")
                paths = client.download(job.job_id, args.out / "pruned")
            _say("downloaded " + ", ".join(str(p) for p in paths.values()) + " (sha256 verified)")
            report = json.loads(paths["report"].read_text())
            print(format_report(report), flush=True)

            reloaded, pruned_spec = checkpoint.load(paths["checkpoint"])
            _, _, test = make_loaders(splits, batch_size=128, seed=args.seed)
            accuracy = evaluate(reloaded, test)
            same = accuracy == report["final"]["test_accuracy"]
            _say(f"reloaded with metaprune.load ({len(pruned_spec.channel_plan or {})} resized layers): "
                 f"test accuracy {accuracy:.4f}, the server reported "
                 f"{report['final']['test_accuracy']:.4f}: identical: {same}")  # fmt: skip
            if not same:
                raise SystemExit("the reloaded checkpoint does not reproduce the server's report")
            for line in latency_lines(base_path, paths["checkpoint"], report, splits.in_channels):
                _say(line)
        finally:
            status = server.terminate(60) if server.proc.poll() is None else server.proc.returncode
        if status != 0:
            raise SystemExit(
                f"metaprune serve exited with {status}: {server.log.read_text()[-2000:]}"
            )
        _say(
            f"server stopped gracefully (SIGTERM, exit 0); demo took {time.perf_counter() - start:.0f} s"
        )


if __name__ == "__main__":
    main()
