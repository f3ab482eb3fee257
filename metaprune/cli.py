"""The ``metaprune`` command line: ``prune``, ``eval``, ``info`` and pluggable subcommands.

Usage::

    metaprune prune model.safetensors --dataset digits --target-speedup 3 \\
        --method metanet --metanet NAME -o out/
    metaprune eval out/model.safetensors --dataset digits
    metaprune info out/model.safetensors

Exit status (decided in one place, :func:`_describe` and the commands' return values):

====  ==========================================================================
0     done (``prune``: the target was reached)
1     unexpected error (one line on stderr; ``--traceback`` shows the trace)
2     bad input: arguments, files, names, limits (``InvalidInputError``,
      ``NotFoundError``, ``LimitExceededError``, ``OSError`` on a named file)
3     ``prune`` finished but did not reach its target (outputs are still written;
      ``report.json`` has ``"target_reached": false``)
130   interrupted or cancelled
====  ==========================================================================

Errors print one line on stderr (at most a few KB); ``--traceback`` shows the full trace.

Extension points: other packages add subcommands without editing this file. A module
listed in :data:`PLUGIN_MODULES` is imported (if installed) when a command that is not
built in is parsed (or for ``--help``), and either

* defines ``register(subparsers)``, which adds parsers to the top-level subparsers
  object and gives each leaf parser a ``func=run`` default (``metanet.cli`` adds the
  ``zoo build`` and ``metanet fit/export`` groups this way), or
* calls :func:`add_subcommand` at import; a group such as ``metaprune zoo build`` adds
  its own nested subparsers in ``configure`` and dispatches in ``run``::

    from metaprune.cli import add_subcommand

    def configure(parser):            # an argparse.ArgumentParser for "zoo"
        sub = parser.add_subparsers(dest="zoo_command", required=True)
        sub.add_parser("build").add_argument("manifest")

    def run(args) -> int:             # exit status
        ...

    add_subcommand("zoo", configure, run, help="build and inspect model zoos")
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

__all__ = ["PLUGIN_MODULES", "Subcommand", "UsageError", "add_subcommand", "main"]

#: Modules that register subcommands (skipped if not installed), see the module doc.
PLUGIN_MODULES: list[str] = ["metanet.cli", "metaprune.batch.cli", "service.cli"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TARGET_NOT_REACHED = 3
EXIT_CANCELLED = 130

_EXIT_HELP = (
    "exit status: 0 done, 1 unexpected error, 2 bad input (arguments, files, names, limits), "
    "3 prune did not reach its target, 130 interrupted or cancelled"
)


class UsageError(Exception):
    """Bad command-line input; printed as one line, exit status 2."""


@dataclasses.dataclass(frozen=True)
class Subcommand:
    name: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]
    help: str = ""


_SUBCOMMANDS: dict[str, Subcommand] = {}


def add_subcommand(
    name: str,
    configure: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int | None],
    help: str = "",
) -> None:
    """Register ``metaprune NAME``: ``configure`` adds its arguments, ``run`` executes it
    and returns the exit status (``None`` = 0). Re-registering a name replaces it."""
    _SUBCOMMANDS[name] = Subcommand(name, configure, run, help)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (raised, not printed with usage)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


_BUILTIN = ("prune", "eval", "info")


def build_parser(plugins: bool = True) -> argparse.ArgumentParser:
    """The parser of built-in subcommands, plus every plugin's if ``plugins``."""
    modules = _load_plugins() if plugins else []
    parser = _Parser(
        prog="metaprune", description="Meta-learned structural pruning.", epilog=_EXIT_HELP
    )
    parser.add_argument("--traceback", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for command in _SUBCOMMANDS.values():
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.configure(p)
        p.set_defaults(func=command.run)
    for module in modules:
        register = getattr(module, "register", None)
        if callable(register):
            register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 unexpected error, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    show_trace = "--traceback" in argv
    warnings.filterwarnings(
        "ignore", message=".*torch.jit.script.* is deprecated", category=FutureWarning
    )
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        parser = build_parser(plugins=command not in _BUILTIN)
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except SystemExit as exit_:  # --help / --version
        return exit_.code if isinstance(exit_.code, int) else 0
    except KeyboardInterrupt:
        print("metaprune: interrupted", file=sys.stderr)
        return EXIT_CANCELLED
    except Exception as err:  # noqa: BLE001 (the one place errors become exit codes)
        if show_trace:
            raise
        status, text = _describe(err)
        print(text, file=sys.stderr)
        return status


def _describe(err: Exception) -> tuple[int, str]:
    """The exit status and the one-line message of ``err`` (the one place for both)."""
    from metaprune.errors import InvalidInputError, cap_message, describe_exception
    from metaprune.pruning.progress import PruneCancelled

    if isinstance(err, UsageError):
        return EXIT_USAGE, cap_message(" ".join(str(err).split()))
    if isinstance(err, PruneCancelled):
        return EXIT_CANCELLED, cap_message(f"metaprune: {err}")
    if isinstance(err, InvalidInputError):
        message = " ".join(str(err).split()) or type(err).__name__
        return EXIT_USAGE, cap_message(f"metaprune: error: {message}")
    if isinstance(err, OSError):  # a file the user named: unreadable, permissions, ...
        reason = err.strerror or describe_exception(err)
        name = f" {str(err.filename)!r}" if err.filename else ""
        return EXIT_USAGE, cap_message(f"metaprune: error: cannot use{name}: {reason}")
    return EXIT_ERROR, cap_message(
        f"metaprune: unexpected {describe_exception(err)} (rerun with --traceback)"
    )


def _load_plugins() -> list[ModuleType]:
    modules = []
    for name in PLUGIN_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ImportError:  # the parent package is missing
            found = False
        if found:
            modules.append(importlib.import_module(name))
    return modules


# --------------------------------------------------------------------------- prune


def _configure_prune(p: argparse.ArgumentParser) -> None:
    from metaprune.pruning.config import METHODS, TARGET_KINDS

    p.add_argument("checkpoint", help="input checkpoint (.safetensors with metaprune spec)")
    p.add_argument("--dataset", required=True, help="registered dataset name, e.g. digits")
    p.add_argument("--data-root", help="local root of file-based datasets")
    p.add_argument("-o", "--out", required=True, help="output directory")
    p.add_argument("--config", help="PruneConfig as a JSON or YAML file (flags override it)")
    p.add_argument("--target-speedup", type=_positive_float, help="target ratio (default 2)")
    p.add_argument("--target-kind", choices=TARGET_KINDS, help="what the ratio measures")
    p.add_argument(
        "--method",
        choices=METHODS,
        help="pruning method (default auto: the report says which ran and why)",
    )
    p.add_argument(
        "--reg", type=_reg, help="sparse-training strength: a number or 'auto' (default)"
    )
    p.add_argument(
        "--metanet",
        help="exported metanetwork: a registered name, a path to NAME.safetensors, or "
        "'auto' (the default of --method metanet: chosen by the model's graph, the report "
        "says which and why); implies --method metanet (any other --method with --metanet "
        "is an error)",
    )
    p.add_argument("--epochs", type=_nonneg_int, help="fine-tune epochs after pruning")
    p.add_argument(
        "--before-epochs",
        type=_nonneg_int,
        help="epochs before pruning (after-metanetwork fine-tune / sparse training)",
    )
    p.add_argument("--lr", type=_positive_float, help="learning rate of both fine-tunes")
    p.add_argument("--steps", type=_positive_int, help="pruning schedule resolution")
    p.add_argument("--min-channels", type=_positive_int, help="per-layer minimum width")
    p.add_argument("--max-layer-ratio", type=float, help="per-layer maximum pruned fraction")
    p.add_argument("--round-to", type=_positive_int, help="keep widths multiples of this")
    p.add_argument("--bn-images", type=_nonneg_int, help="BatchNorm recalibration images")
    p.add_argument("--bn-batches", type=_nonneg_int, help="deprecated: --bn-images / batch size")
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--seed", type=_nonneg_int)
    p.add_argument("--device", help="torch device, e.g. cpu or cuda:0")
    p.add_argument("--threads", type=_positive_int, help="torch intra-op threads for the job")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_limits_argument(p)
    p.add_argument("--max-wall-seconds", type=_positive_float, help="wall-clock budget of the job")
    p.epilog = _EXIT_HELP


def _reg(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a number >= 0 or 'auto' (found {text!r})"
        ) from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0 or 'auto' (found {text!r})")
    return value


def _run_prune(args: argparse.Namespace) -> int:
    import metanet  # noqa: F401  (the CLI offers the "metanet" method, which it registers)
    from metaprune.errors import quote
    from metaprune.pruning import PruneConfig, format_report, prune

    limits = _limits(args)
    if args.metanet is not None and args.method is None:
        args.method = "metanet"  # --metanet implies the method (documented in --help)
    if args.metanet is not None and args.method != "metanet":
        raise UsageError(
            f"metaprune prune: error: --metanet needs --method metanet (found --method {args.method})"
        )
    data = _read_config(args.config) if args.config else PruneConfig().to_dict()
    if args.bn_batches is not None and args.bn_images is None:  # the version-1 flag
        args.bn_images = args.bn_batches * (args.batch_size or data.get("batch_size") or 128)
    flags = {
        ("target", "value"): args.target_speedup, ("target", "kind"): args.target_kind,
        ("method",): args.method, ("metanet",): args.metanet, ("sparse", "reg"): args.reg,
        ("after_pruning", "epochs"): args.epochs, ("before_pruning", "epochs"): args.before_epochs,
        ("after_pruning", "lr"): args.lr, ("before_pruning", "lr"): args.lr,
        ("pruning", "steps"): args.steps, ("pruning", "min_channels"): args.min_channels,
        ("pruning", "max_layer_ratio"): args.max_layer_ratio, ("pruning", "round_to"): args.round_to,
        ("bn_recalibration_images",): args.bn_images, ("batch_size",): args.batch_size,
        ("seed",): args.seed, ("device",): args.device,
        ("max_wall_seconds",): args.max_wall_seconds,
    }  # fmt: skip
    for path, value in flags.items():
        if value is not None:
            node = data
            for key in path[:-1]:
                node = node.setdefault(key, {})
                if not isinstance(node, dict):
                    raise UsageError(
                        f"metaprune prune: error: config key {key!r} must be a mapping "
                        f"(found {type(node).__name__})"
                    )
            node[path[-1]] = value
    config = PruneConfig.from_dict(data)
    config.check_limits(limits)
    if config.metanet is not None and config.method not in ("metanet", "auto"):
        raise UsageError(
            f"metaprune prune: error: the config names metanet {quote(config.metanet)} but method "
            f"{config.method!r} does not use it; set method to 'metanet' or drop 'metanet'"
        )
    if not Path(args.checkpoint).exists():
        raise UsageError(f"metaprune prune: error: checkpoint {args.checkpoint!r} does not exist")
    _set_threads(args.threads, limits)
    with _progress_bar(args.quiet) as progress:
        result = prune(
            args.checkpoint, args.dataset, config, progress, data_root=args.data_root, limits=limits
        )
    paths = result.save(args.out)
    print(format_report(result.report))
    for kind, path in paths.items():
        print(f"  {kind:<10} {path}")
    return EXIT_OK if result.report.get("target_reached") is True else EXIT_TARGET_NOT_REACHED


def _read_config(path: str) -> dict[str, Any]:
    from metaprune.documents import parse_yaml
    from metaprune.errors import LimitExceededError
    from metaprune.limits import DEFAULT_LIMITS

    try:
        with open(path, "rb") as f:  # noqa: PTH123
            raw = f.read(DEFAULT_LIMITS.max_spec_bytes + 1)  # never more than the limit
    except OSError as err:
        raise UsageError(
            f"metaprune prune: error: cannot read config {path!r}: {err.strerror}"
        ) from None
    try:
        data = parse_yaml(raw, DEFAULT_LIMITS, f"config {path!r}")  # YAML is a superset of JSON
    except LimitExceededError:
        raise
    except ValueError as err:
        raise UsageError(f"metaprune prune: error: {err}") from None
    if not isinstance(data, dict):
        raise UsageError(f"metaprune prune: error: config {path!r} must be a mapping")
    return data


class _progress_bar:
    """A rich progress bar on stderr with one bar per stage; a no-op when quiet."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> Callable[[Any], None] | None:
        if self.quiet:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.bar = Progress(
            TextColumn("{task.description:<15}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), console=Console(stderr=True), transient=False,
        )  # fmt: skip
        self.bar.__enter__()
        return self.update

    def update(self, event: Any) -> None:
        task = self.tasks.get(event.stage)
        if task is None:
            task = self.tasks[event.stage] = self.bar.add_task(
                event.stage, total=max(event.total, 1), info=""
            )
        m = event.metrics
        info = ", ".join(
            f"{k} {v:.3f}" for k, v in m.items()
            if k in ("val_accuracy", "macs_speedup", "train_loss") and isinstance(v, float)
        )  # fmt: skip
        done = event.step >= event.total or m.get("reached")
        self.bar.update(task, completed=event.total if done else event.step, info=info)

    def __exit__(self, *exc: object) -> None:
        if not self.quiet:
            self.bar.__exit__(*exc)


# --------------------------------------------------------------------------- eval, info


def _configure_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint")
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-root")
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the train/val split")
    p.add_argument("--threads", type=_positive_int, help="torch intra-op threads")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_limits_argument(p)


def _add_limits_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--limits",
        metavar="FILE",
        help="JSON/YAML mapping overriding the default Limits, e.g. {max_params: 500000000}",
    )


def _limits(args: argparse.Namespace) -> Any:
    """The ``Limits`` of this run: the defaults, overridden by ``--limits FILE``."""
    from metaprune.documents import parse_yaml
    from metaprune.limits import DEFAULT_LIMITS, Limits

    path = getattr(args, "limits", None)
    if path is None:
        return DEFAULT_LIMITS
    try:
        with open(path, "rb") as f:  # noqa: PTH123
            raw = f.read(DEFAULT_LIMITS.max_spec_bytes + 1)
    except OSError as err:
        raise UsageError(f"metaprune: error: cannot read limits {path!r}: {err.strerror}") from None
    return Limits.from_dict(parse_yaml(raw, DEFAULT_LIMITS, f"limits {path!r}") or {})


def _set_threads(threads: int | None, limits: Any = None) -> None:
    """One or two threads are much faster than the default on a shared CPU (tiny kernels)."""
    if threads is not None:
        import torch

        from metaprune.limits import DEFAULT_LIMITS

        (limits or DEFAULT_LIMITS).check("max_threads", threads, "--threads")

        torch.set_num_threads(threads)


def _run_eval(args: argparse.Namespace) -> int:
    import torch

    from metaprune import checkpoint
    from metaprune.data import get_dataset, make_loaders
    from metaprune.pruning import evaluate, measure_cost
    from metaprune.pruning.pipeline import _check_classes

    limits = _limits(args)
    _set_threads(args.threads, limits)
    limits.check("max_batch_size", args.batch_size, "--batch-size")
    model, spec = checkpoint.load(args.checkpoint, limits=limits)
    splits = get_dataset(args.dataset, args.data_root, args.seed)
    limits.check("max_image_size", splits.image_size, f"dataset {splits.name!r}")
    _, val, test = make_loaders(splits, args.batch_size, args.seed)
    example = torch.zeros(1, splits.in_channels, splits.image_size, splits.image_size)
    _check_classes(model.eval(), example, splits)  # input shape and class count, as prune
    cost = measure_cost(model, example)
    out = {
        "architecture": spec.name, "dataset": splits.name,
        "val_accuracy": evaluate(model, val), "test_accuracy": evaluate(model, test),
        "macs": cost.macs, "params": cost.params,
    }  # fmt: skip
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{spec.name} on {splits.name}: val {100 * out['val_accuracy']:.2f} %, "
              f"test {100 * out['test_accuracy']:.2f} %, {cost.macs:,} MACs, {cost.params:,} params")  # fmt: skip
    return 0


def _configure_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint")
    p.add_argument("--image-size", type=_positive_int, default=None,
                   help="input size for MACs and the graph (default: 8 for 1 channel, else 32)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_limits_argument(p)


def _run_info(args: argparse.Namespace) -> int:
    import torch

    from metaprune import checkpoint
    from metaprune.errors import InvalidInputError, describe_exception
    from metaprune.limits import check_spec
    from metaprune.pruning import measure_cost

    limits = _limits(args)
    spec = checkpoint.read_spec(args.checkpoint, limits=limits)
    in_channels = spec.kwargs.get("in_channels", 3)
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise InvalidInputError(f"spec {spec.name!r}: in_channels must be a positive int")
    size = args.image_size or (8 if in_channels == 1 else 32)
    check_spec(spec, limits, (in_channels, size, size))  # before any real memory
    model, spec = checkpoint.load(args.checkpoint, limits=limits)
    example = torch.zeros(1, in_channels, size, size)
    model.eval()
    try:
        cost = measure_cost(model, example)
    except Exception as err:  # noqa: BLE001 (a forward pass on a bad shape raises anything)
        raise InvalidInputError(
            f"{spec.name} does not accept inputs of shape {tuple(example.shape[1:])}: "
            f"{describe_exception(err)}"
        ) from None
    info: dict[str, Any] = {
        "architecture": spec.name, "kwargs": spec.kwargs,
        "pruned_modules": len(spec.channel_plan or {}), "input_shape": list(example.shape[1:]),
        "params": cost.params, "macs": cost.macs,
    }  # fmt: skip
    try:
        from graph_encoding import encode

        graph = encode(model, example)
        info["graph"] = {"nodes": int(graph.num_nodes), "edges": int(graph.num_edges),
                         "coverage": float(graph.coverage)}  # fmt: skip
    except Exception as err:  # noqa: BLE001 (graph size is informative, never fatal)
        info["graph"] = {"error": " ".join(str(err).split())}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"architecture  {spec.name} {json.dumps(spec.kwargs)}")
    print(f"pruned        {info['pruned_modules']} module(s) resized by the channel plan")
    print(f"input         {tuple(info['input_shape'])}")
    print(f"params        {cost.params:,}")
    print(f"MACs          {cost.macs:,}")
    g = info["graph"]
    print("graph         " + (f"{g['nodes']:,} nodes, {g['edges']:,} edges" if "nodes" in g
                              else f"not encodable: {g['error']}"))  # fmt: skip
    return 0


# --------------------------------------------------------------------------- argument types


def _positive_int(text: str) -> int:
    return _typed(text, int, lambda v: v >= 1, "an int >= 1")


def _nonneg_int(text: str) -> int:
    return _typed(text, int, lambda v: v >= 0, "an int >= 0")


def _positive_float(text: str) -> float:
    return _typed(text, float, lambda v: v > 0, "a number > 0")


def _typed(text: str, kind: type, ok: Callable[[Any], bool], what: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {what}, found {text!r}")
    return value


add_subcommand("prune", _configure_prune, _run_prune, help="prune a checkpoint to a target")
add_subcommand("eval", _configure_eval, _run_eval, help="accuracy, MACs and params of a checkpoint")
add_subcommand(
    "info", _configure_info, _run_info, help="architecture, size and graph of a checkpoint"
)


if __name__ == "__main__":
    sys.exit(main())
