"""Command-line subcommands of the metanetwork side: ``zoo build``, ``metanet fit``,
``metanet export``.

Each subcommand is a pair ``configure(parser)`` / ``run(args) -> int`` listed in
:data:`SUBCOMMANDS`; :func:`register` adds them all to an ``argparse`` subparsers object
(``metaprune``'s top-level CLI does this), and :func:`main` runs them stand-alone
(``python -m metanet.cli metanet fit --config ...``).

``metanet fit`` hands every argument after it to :class:`MetaPruneCLI` (LightningCLI):
``--config``, ``--print_config``, ``--trainer.max_epochs 3`` etc.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = [
    "SUBCOMMANDS",
    "configure_metanet_export",
    "configure_metanet_fit",
    "configure_zoo_build",
    "main",
    "make_cli",
    "register",
    "run_metanet_export",
    "run_metanet_fit",
    "run_zoo_build",
]


# ---------------------------------------------------------------------------- zoo build
def configure_zoo_build(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root", required=True, help="zoo directory (created; resumed if it exists)"
    )
    parser.add_argument(
        "--config", help="YAML/JSON file of ZooConfig fields (see metanet/configs/)"
    )
    parser.add_argument("--size", type=int, help="override: number of members")
    parser.add_argument("--arch", help="override: architecture name")
    parser.add_argument("--dataset", help="override: dataset name")
    parser.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    parser.add_argument(
        "--backend", choices=("local", "ray"), default="local",
        help="executor: local worker processes or Ray tasks (default local)",
    )  # fmt: skip
    parser.add_argument(
        "--ray-address", default=None, help="Ray cluster address (default: a local Ray)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_zoo_build(args: argparse.Namespace) -> int:
    import yaml

    from .zoo import ZooConfig, build_zoo

    data = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    for key in ("size", "arch", "dataset"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    zoo = build_zoo(
        ZooConfig.from_dict(data or {}),
        args.root,
        workers=args.workers,
        progress=not args.no_progress,
        backend=args.backend,
        ray_address=args.ray_address,
    )
    accs = [zoo.metrics(n)["val_accuracy"] for n in zoo.members]
    print(
        f"zoo {args.root}: {len(accs)} members, val accuracy {min(accs):.4f}-{max(accs):.4f} "
        f"(mean {sum(accs) / len(accs):.4f}); meta-train {len(zoo.meta_train)}, meta-val {len(zoo.meta_val)}"
    )
    return 0


# ---------------------------------------------------------------------------- metanet fit
def _lightning_cli_class() -> type:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

    class _MetaPruneCLI(LightningCLI):
        """LightningCLI for meta-training, with checkpoint selection on ``val/auc`` built in."""

        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
            parser.set_defaults({
                "checkpoint.monitor": "val/auc", "checkpoint.mode": "max", "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch:03d}", "checkpoint.auto_insert_metric_name": False,
            })  # fmt: skip

    return _MetaPruneCLI


def make_cli(args: Sequence[str], *, run: bool = True) -> object:
    """``MetaPruneCLI(MetaPruneModule, ZooDataModule)`` on ``args`` (``["fit", ...]`` when
    ``run``, else the bare arguments; see LightningCLI)."""
    from .training import MetaPruneModule, ZooDataModule

    # sys.argv also holds "metanet fit" (DDP re-launches it for the other ranks): expected
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    return _lightning_cli_class()(
        MetaPruneModule, ZooDataModule, args=list(args), run=run, seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
    )  # fmt: skip


def configure_metanet_fit(parser: argparse.ArgumentParser) -> None:
    # every argument belongs to LightningCLI: make argparse treat "--x" as plain values
    parser.prefix_chars = "+"
    parser.add_argument(
        "lightning_args",
        nargs=argparse.REMAINDER,
        help="LightningCLI arguments (--config, --print_config, ...)",
    )


def run_metanet_fit(args: argparse.Namespace) -> int:
    make_cli(["fit", *args.lightning_args])
    return 0


# ---------------------------------------------------------------------------- metanet export
def configure_metanet_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ckpt",
        required=True,
        help="Lightning checkpoint written by `metanet fit` (trusted files only)",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="output path without suffix: writes OUT.safetensors and OUT.json",
    )
    parser.add_argument("--info", help="extra JSON object merged into the exported info")
    parser.add_argument(
        "--zoo",
        action="append",
        default=[],
        help="a zoo directory it was meta-trained on (repeatable): its meta-train members' "
        "graphs give the export's training summary, which automatic metanetwork choice reads",
    )


def run_metanet_export(args: argparse.Namespace) -> int:
    from .export import export_checkpoint
    from .summary import zoo_summary

    info = json.loads(args.info) if args.info else None
    summary = zoo_summary(args.zoo) if args.zoo else None
    weights, config = export_checkpoint(args.ckpt, args.out, info=info, summary=summary)
    print(f"wrote {weights} and {config}")
    return 0


# ---------------------------------------------------------------------------- registration
Subcommand = tuple[
    str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]
]

#: ``group -> [(name, configure, run)]``: ``metaprune GROUP NAME ...``.
SUBCOMMANDS: dict[str, list[Subcommand]] = {
    "zoo": [("build", configure_zoo_build, run_zoo_build)],
    "metanet": [
        ("fit", configure_metanet_fit, run_metanet_fit),
        ("export", configure_metanet_export, run_metanet_export),
    ],
}

_HELP = {
    "zoo": "build model zoos for meta-training",
    "build": "train, lightly prune and fine-tune N models (resumable)",
    "metanet": "train and export metanetworks",
    "fit": "meta-train with LightningCLI (--config YAML, --print_config)",
    "export": "write a fit checkpoint's metanetwork as safetensors + JSON",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``zoo`` and ``metanet`` command groups to ``subparsers``; each leaf parser gets
    ``func=run`` as its default, so the caller runs ``args.func(args)``."""
    for group, commands in SUBCOMMANDS.items():
        parser = subparsers.add_parser(group, help=_HELP[group])
        leaves = parser.add_subparsers(dest=f"{group}_command", required=True)
        for name, configure, run in commands:
            leaf = leaves.add_parser(name, help=_HELP[name])
            configure(leaf)
            leaf.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="metanet", description="metanetwork zoo and training commands"
    )
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
