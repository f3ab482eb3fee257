"""``metaprune serve`` and ``metaprune client ...`` (registered by ``metaprune.cli``).

    metaprune serve [--config service.toml] [--host H] [--port P] [--data-dir D] [--workers N]
    metaprune client info|upload|prune|watch|download|cancel|jobs [--address H:P] [--token T]

The token comes from ``--token`` or ``$METAPRUNE_TOKEN``; ``--root-cert`` (and
``--client-cert``/``--client-key`` for mTLS) switch the client to TLS. Imports of gRPC and
torch happen inside the commands, so ``metaprune --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from metaprune.cli import _json_object

__all__ = ["register"]


def register(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the gRPC pruning service",
                           description="Run the gRPC pruning service.")  # fmt: skip
    serve.add_argument("--config", help="service config (.toml/.yaml); defaults are embedded")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 50051; 0 = any free port)")
    serve.add_argument(
        "--data-dir", help="database, blobs and results (default ~/.local/share/metaprune)"
    )
    serve.add_argument("--workers", type=int, help="job worker processes (default 1)")
    serve.add_argument("--port-file", help="write the bound port to this file once listening")
    serve.set_defaults(func=_run_serve)

    client = sub.add_parser("client", help="talk to a pruning service",
                            description="Talk to a metaprune pruning service.")  # fmt: skip
    csub = client.add_subparsers(dest="client_command", metavar="COMMAND", required=True)

    def leaf(name: str, help: str) -> argparse.ArgumentParser:
        p = csub.add_parser(name, help=help, description=help)
        p.add_argument("--address", default=os.environ.get("METAPRUNE_ADDRESS", "127.0.0.1:50051"))
        p.add_argument("--token", help="bearer token (default: $METAPRUNE_TOKEN)")
        p.add_argument("--root-cert", help="PEM of the CA of the server's certificate (TLS)")
        p.add_argument("--client-cert", help="client certificate PEM (mTLS)")
        p.add_argument("--client-key", help="client key PEM (mTLS)")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=_run_client)
        return p

    leaf("info", "server version, limits, datasets and metanetworks")
    p = leaf("upload", "upload a checkpoint; prints its model id")
    p.add_argument("checkpoint")
    p = leaf("prune", "upload (if a path), create a pruning job, optionally wait and download")
    p.add_argument("model", help="a checkpoint path or a model id (sha256:...)")
    p.add_argument("--dataset", required=True, help="dataset name on the server")
    p.add_argument(
        "--dataset-kwargs", type=_json_object, metavar="JSON",
        help="dataset options, e.g. '{\"image_size\": 64, \"num_classes\": 10}'",
    )  # fmt: skip
    p.add_argument("--config", help="PruneConfig fields as a JSON/YAML file (flags override)")
    p.add_argument("--target-speedup", type=float)
    p.add_argument("--target-kind", choices=("macs", "params", "latency"))
    p.add_argument("--method")
    p.add_argument("--metanet", help="metanetwork name on the server")
    p.add_argument("--epochs", type=int, help="fine-tune epochs after pruning")
    p.add_argument("--before-epochs", type=int, help="epochs before pruning")
    p.add_argument("--steps", type=int, help="pruning schedule resolution")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int, help="seed of the job (0 to 2**32 - 1)")
    p.add_argument("--request-id", help="idempotency key (default: random)")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends")
    p.add_argument("-o", "--out", help="with --wait: download the result here")
    p.add_argument("--format", choices=("safetensors", "onnx", "pt2"), default="safetensors",
                   help="with -o: the model as a checkpoint, ONNX or torch.export .pt2")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p = leaf("watch", "follow a job's progress until it ends")
    p.add_argument("job_id")
    p.add_argument("--quiet", action="store_true")
    p = leaf("download", "download a finished job's checkpoint, report and plot")
    p.add_argument("job_id")
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--format", choices=("safetensors", "onnx", "pt2"), default="safetensors",
                   help="the model as a metaprune checkpoint, ONNX or torch.export .pt2")  # fmt: skip
    p = leaf("cancel", "cancel a queued or running job")
    p.add_argument("job_id")
    p = leaf("jobs", "list jobs")
    p.add_argument("--state", action="append", default=[],
                   choices=("queued", "running", "succeeded", "failed", "cancelled"))  # fmt: skip


# --------------------------------------------------------------------------- serve


def _run_serve(args: argparse.Namespace) -> int:
    from service.config import load_config
    from service.logs import configure_logging
    from service.server import create_server

    config = load_config(
        args.config, host=args.host, port=args.port, data_dir=args.data_dir, workers=args.workers
    )
    configure_logging()
    server, port = create_server(config)
    server.start()
    print(f"metaprune serve: listening on {config.host}:{port} (data {config.data_path})",
          file=sys.stderr, flush=True)  # fmt: skip
    if args.port_file:
        tmp = Path(f"{args.port_file}.tmp")
        tmp.write_text(f"{port}\n")
        os.replace(tmp, args.port_file)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    while not stop.wait(0.5):
        pass
    server.stop()
    return 0


# --------------------------------------------------------------------------- client


def _run_client(args: argparse.Namespace) -> int:
    import grpc

    # everything a command may need, imported before gRPC starts its threads (all torch-free):
    # no import happens while a call is in flight
    import metaprune.pruning.progress  # noqa: F401
    import metaprune.pruning.report  # noqa: F401
    import service.convert  # noqa: F401
    from service.client import PruningClient

    read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
    client = PruningClient(
        args.address, args.token, root_certificates=read(args.root_cert),
        client_certificate=read(args.client_cert), client_key=read(args.client_key),
    )  # fmt: skip
    try:
        with client:
            return _COMMANDS[args.client_command](client, args)
    except grpc.RpcError as err:
        print(f"metaprune client: {err.code().name}: {err.details()}", file=sys.stderr)
        return 2 if err.code() != grpc.StatusCode.UNAVAILABLE else 1


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


def _job_dict(job: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(job, preserving_proto_field_name=True)


def _info(client: Any, args: argparse.Namespace) -> int:
    info = client.server_info()
    datasets = [d.name for d in client.list_datasets()]
    metanets = [m.name for m in client.list_metanetworks()]
    data = {"version": info.version, "token": info.token_name, "workers": info.workers,
            "methods": list(info.methods), "target_kinds": list(info.target_kinds),
            "datasets": datasets, "metanetworks": metanets, "limits": dict(info.limits)}  # fmt: skip
    _print(args, data, "\n".join(f"{k:<13} {v}" for k, v in data.items()))
    return 0


def _upload(client: Any, args: argparse.Namespace) -> int:
    model = client.upload(args.checkpoint)
    _print(
        args,
        _job_dict(model),
        f"{model.model_id}  ({model.size_bytes:,} bytes, {model.params:,} params)",
    )
    return 0


def _prune(client: Any, args: argparse.Namespace) -> int:
    data: dict[str, Any] = {}
    if args.config:
        import yaml

        data = yaml.safe_load(Path(args.config).read_text()) or {}
    flags = {
        ("target", "value"): args.target_speedup, ("target", "kind"): args.target_kind,
        ("method",): args.method, ("metanet",): args.metanet,
        ("after_pruning", "epochs"): args.epochs, ("before_pruning", "epochs"): args.before_epochs,
        ("pruning", "steps"): args.steps, ("batch_size",): args.batch_size, ("seed",): args.seed,
    }  # fmt: skip
    for path, value in flags.items():
        if value is not None:
            node = data
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = value
    from metaprune.pruning.config import PruneConfig

    PruneConfig.from_dict(data)  # a bad setting fails before the upload, without torch
    model_id = args.model
    if not model_id.startswith("sha256:"):
        model_id = client.upload(args.model).model_id
        print(f"uploaded {args.model} as {model_id}", file=sys.stderr)
    job = client.create_job(
        model_id, args.dataset, data, request_id=args.request_id,
        dataset_kwargs=args.dataset_kwargs,
    )  # fmt: skip
    print(f"job {job.job_id} {_state(job)}", file=sys.stderr)
    if not args.wait:
        _print(args, _job_dict(job), job.job_id)
        return 0
    job = _follow(client, job.job_id, args.quiet)
    if job.state != 3:  # JOB_STATE_SUCCEEDED
        print(f"metaprune client: job {job.job_id} {_state(job)}: {job.error}", file=sys.stderr)
        return 1
    if args.out:
        paths = client.download(job.job_id, args.out, args.format)
        from metaprune.pruning.report import format_report

        print(format_report(json.loads(paths["report"].read_text())))
        for kind, path in paths.items():
            print(f"  {kind:<10} {path}")
    else:
        _print(args, _job_dict(job), f"job {job.job_id} succeeded: {job.summary_json}")
    return 0


def _follow(client: Any, job_id: str, quiet: bool) -> Any:
    from metaprune.cli import _progress_bar  # the same bar as `metaprune prune`
    from metaprune.pruning.progress import ProgressEvent
    from service.convert import event_from_proto

    with _progress_bar(quiet) as update:

        def on_message(job: Any, event: Any) -> None:
            if event is not None and update is not None:
                update(ProgressEvent(**event_from_proto(event)))

        return client.watch(job_id, on_message)


def _watch(client: Any, args: argparse.Namespace) -> int:
    job = _follow(client, args.job_id, args.quiet)
    _print(
        args,
        _job_dict(job),
        f"job {job.job_id} {_state(job)}" + (f": {job.error}" if job.error else ""),
    )
    return 0 if job.state == 3 else 1


def _download(client: Any, args: argparse.Namespace) -> int:
    paths = client.download(args.job_id, args.out, args.format)
    _print(
        args,
        {k: str(v) for k, v in paths.items()},
        "\n".join(f"{k:<10} {v}" for k, v in paths.items()),
    )
    return 0


def _cancel(client: Any, args: argparse.Namespace) -> int:
    job = client.cancel_job(args.job_id)
    _print(args, _job_dict(job), f"job {job.job_id} {_state(job)}")
    return 0


def _jobs(client: Any, args: argparse.Namespace) -> int:
    from service._generated import pruning_service_pb2 as pb

    states = tuple(pb.JobState.Value(f"JOB_STATE_{s.upper()}") for s in args.state)
    jobs = client.list_jobs(states)
    lines = [
        f"{j.job_id}  {_state(j):<10} {j.dataset:<10} {j.model_id[:19]}  {j.error[:60]}"
        for j in jobs
    ]
    _print(args, [_job_dict(j) for j in jobs], "\n".join(lines) or "no jobs")
    return 0


def _state(job: Any) -> str:
    from service._generated import pruning_service_pb2 as pb

    return pb.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()


_COMMANDS = {"info": _info, "upload": _upload, "prune": _prune, "watch": _watch,
             "download": _download, "cancel": _cancel, "jobs": _jobs}  # fmt: skip
