"""One small model per torchvision and timm family, pruned, saved and reloaded as a user would.

    PYTHONPATH=. .venv/bin/python -m metaprune.testing.prune_sweep [--epochs N] [name ... | --timm | --torchvision | --all-torchvision]

With no argument: every torchvision and timm family below. A name is a spec name
(``timm/resnet18``, ``torchvision/vgg11_bn``; sizes as below when listed, else 64 px).

Each model (random init, 10 classes) is pruned with :func:`metaprune.prune` to 2x MACs at
64x64 (transformers at a multiple of their patch and window: the encoder sweep's sizes)
with 0 epochs (``--epochs N``: the default method with N preparation epochs, i.e.
``growing-reg``) on a small seeded ``synthetic`` task, saved with ``result.save``, and
reloaded **in a fresh process** with :func:`metaprune.load`; its outputs on a fixed input
are compared with the in-memory pruned model's. Prints a markdown table (source/family,
model, result, MACs speed-up, max output difference, reason, seconds). Results:

* ``exact``: reached 2x, reloaded outputs bit-equal;
* ``close``: reached 2x, reloaded outputs equal up to float rounding (the difference is
  printed; the rebuilt model's tensors are laid out afresh, which some kernels notice);
* ``refused``: an :class:`~metaprune.errors.InvalidInputError` before any work (the reason);
* ``short``: pruned and reloaded, but the target was not reached (frozen groups);
* ``FAILED``: anything else (a crash, a reload that differs): a bug.

The slow tests ``tests/metaprune/pruning/test_prune_sweep_*.py`` run the same check.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

__all__ = ["TIMM", "TORCHVISION", "Outcome", "main", "run"]

# one small model per torchvision family -> (kwargs, input side)
TORCHVISION: dict[str, tuple[dict[str, Any], int]] = {
    "alexnet": ({}, 64),
    "convnext_tiny": ({}, 64),
    "densenet121": ({}, 64),
    "efficientnet_b0": ({}, 64),
    "efficientnet_v2_s": ({}, 64),
    "googlenet": ({"aux_logits": False}, 64),
    "inception_v3": ({"aux_logits": False}, 96),
    "maxvit_t": ({}, 224),  # its 7x7 partitions need a multiple of 224
    "mnasnet0_5": ({}, 64),
    "mobilenet_v2": ({}, 64),
    "mobilenet_v3_small": ({}, 64),
    "regnet_x_400mf": ({}, 64),
    "resnet18": ({}, 64),
    "resnext50_32x4d": ({}, 64),
    "shufflenet_v2_x0_5": ({}, 64),
    "squeezenet1_0": ({}, 64),
    "swin_t": ({}, 64),
    "swin_v2_t": ({}, 64),
    "vgg11_bn": ({}, 64),
    "vit_b_32": ({"image_size": 64}, 64),
    "wide_resnet50_2": ({}, 64),
}

_TIMM_SIZE_KWARGS = ("img_size",)


def _timm_families() -> dict[str, tuple[str, dict[str, Any], int]]:
    from metaprune.testing.timm_sweep import FAMILIES

    out = {}
    for family, (name, kwargs, side) in FAMILIES.items():
        # only kwargs a timm/<name> spec accepts; the VGG head's mlp_ratio is not one
        out[family] = (name, {k: v for k, v in kwargs.items() if k in _TIMM_SIZE_KWARGS}, side)
    return out


TIMM: dict[str, tuple[str, dict[str, Any], int]] = _timm_families()


@dataclass
class Outcome:
    source: str
    model: str
    result: str
    speedup: float = 0.0
    max_diff: float | None = None
    reason: str = ""
    seconds: float = 0.0


def _config(steps: int = 12, epochs: int = 0) -> Any:
    from metaprune.pruning import PruneConfig

    return PruneConfig.from_dict({
        "method": "auto" if epochs else "group-l2",
        "target": {"kind": "macs", "value": 2.0},
        "importance": {"normalizer": "mean"},
        "pruning": {"steps": steps, "curve_points": 0, "curve_bn_recalibration": False},
        "before_pruning": {"epochs": epochs}, "after_pruning": {"epochs": 0},
        "bn_recalibration_images": 16, "batch_size": 16,
        "latency": {"batch_size": 1, "repeats": 1, "warmup": 1},
    })  # fmt: skip


def prune_one(
    name: str, kwargs: dict[str, Any], side: int, out: Path, steps: int = 12, epochs: int = 0
) -> Outcome:
    """Prune ``name`` (a spec name) to 2x at ``side`` px and save it with its reference
    outputs into ``out``; the reload happens later, in a fresh process."""
    import metaprune
    from metaprune.data import get_dataset
    from metaprune.errors import InvalidInputError
    from metaprune.models import ArchSpec

    source = name.split("/", 1)[0]
    start = time.perf_counter()
    try:
        spec = ArchSpec(name, {**kwargs, "num_classes": 10})
        torch.manual_seed(0)
        model = spec.build()
        splits = get_dataset(
            "synthetic", None, 0, image_size=side, num_classes=10, n_train=32, n_val=16, n_test=16
        )
        result = metaprune.prune(model, splits, _config(steps, epochs), spec=spec)
        result.save(out)
    except InvalidInputError as err:
        return Outcome(source, name, "refused", reason=str(err),
                       seconds=time.perf_counter() - start)  # fmt: skip
    except Exception as err:  # noqa: BLE001 (a crash is a bug: reported, never hidden)
        return Outcome(source, name, "FAILED", reason=f"CRASH {err!r}",
                       seconds=time.perf_counter() - start)  # fmt: skip
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = result.model.eval()(x)
    save_file({"x": x, "y": y.contiguous()}, str(out / "reference.safetensors"))
    speedup = float(result.report["speedup"]["macs"])
    reached = bool(result.report["target_reached"])
    frozen = result.report["structure"]["frozen"]
    reason = f"frozen: {frozen[0]['modules'][0]} ({frozen[0]['reason']})" if frozen else ""
    return Outcome(source, name, "pruned" if reached else "short", speedup, None, reason,
                   time.perf_counter() - start)  # fmt: skip


def _reload_main(directories: list[str]) -> None:
    """In a fresh process: load every checkpoint and compare with its reference outputs."""
    import metaprune

    torch.set_num_threads(1)
    for directory in directories:
        ref = load_file(str(Path(directory) / "reference.safetensors"))
        try:
            model, _ = metaprune.load(Path(directory) / "model.safetensors")
            with torch.no_grad():
                y = model.eval()(ref["x"])
            diff = float((y - ref["y"]).abs().max())
            reply = {"exact": bool(torch.equal(y, ref["y"])), "diff": diff}
        except Exception as err:  # noqa: BLE001
            reply = {"error": repr(err)[:300]}
        print(json.dumps({"dir": directory, **reply}), flush=True)


def reload_all(outcomes: list[tuple[Outcome, Path]]) -> None:
    """Reload the pruned ones in one fresh process and set their result."""
    todo = [(o, d) for o, d in outcomes if o.result in ("pruned", "short")]
    if not todo:
        return
    code = "import sys; from metaprune.testing.prune_sweep import _reload_main; _reload_main(sys.argv[1:])"
    done = subprocess.run(
        [sys.executable, "-c", code, *(str(d) for _, d in todo)],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    replies = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            reply = json.loads(line)
            replies[reply["dir"]] = reply
    for outcome, directory in todo:
        reply = replies.get(str(directory), {"error": f"no reply: {done.stderr[-300:]}"})
        if "error" in reply:
            outcome.result, outcome.reason = "FAILED", f"reload: {reply['error']}"
            continue
        outcome.max_diff = reply["diff"]
        if outcome.result == "short":
            continue
        outcome.result = "exact" if reply["exact"] else "close" if reply["diff"] < 1e-4 else "FAILED"


def run(
    models: list[tuple[str, dict[str, Any], int]], *, each: bool = False, steps: int = 12, epochs: int = 0
) -> list[Outcome]:
    """Prune, save and reload each ``(spec name, kwargs, side)`` in ``steps`` progressive
    steps; see the module doc. The reloads run in one fresh process at the end, or
    (``each``) one per model, so that the results of a long sweep come in (on stderr) as
    it goes."""
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        pairs = []
        for i, (name, kwargs, side) in enumerate(models):
            directory = Path(tmp) / str(i)
            pairs.append((prune_one(name, kwargs, side, directory, steps, epochs), directory))
            if each:
                reload_all(pairs[-1:])
            print(f"  {json.dumps(asdict(pairs[-1][0]))}", file=sys.stderr, flush=True)
        if not each:
            reload_all(pairs)
    return [o for o, _ in pairs]


def _selection(args: list[str]) -> list[tuple[str, dict[str, Any], int]]:
    tv = [(f"torchvision/{n}", kw, side) for n, (kw, side) in TORCHVISION.items()]
    timm = [(f"timm/{name}", kw, side) for name, kw, side in TIMM.values()]
    if args == ["--all-torchvision"]:
        from metaprune.models.torchvision_models import torchvision_model_names

        chosen = dict((n, (kw, side)) for n, kw, side in tv)
        return [(f"torchvision/{n}", *chosen.get(f"torchvision/{n}", ({}, 64))) for n in torchvision_model_names()]
    if args == ["--timm"]:
        return timm
    if args == ["--torchvision"]:
        return tv
    if args:
        known = {n: (n, kw, side) for n, kw, side in tv + timm}
        return [known.get(a, (a, {}, 64)) for a in args]
    return tv + timm


def main(args: list[str]) -> None:
    if {"-h", "--help"} & set(args):
        print(__doc__)
        return
    epochs = 0
    if args[:1] == ["--epochs"]:
        if len(args) < 2 or not args[1].isdigit():
            raise SystemExit(f"--epochs needs a whole number of epochs (found {args[1:2]})")
        epochs, args = int(args[1]), args[2:]
    rows = run(_selection(args), each=True, epochs=epochs)
    print("| source | model | result | MACs speed-up | max diff | reason | s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        diff = "" if r.max_diff is None else f"{r.max_diff:.1e}"
        print(f"| {r.source} | {r.model} | {r.result} | {r.speedup:.2f} | {diff} | "
              f"{r.reason[:200]} | {r.seconds:.1f} |")  # fmt: skip
    print()
    for source in sorted({r.source for r in rows}):
        counts: dict[str, int] = {}
        for r in rows:
            if r.source == source:
                counts[r.result] = counts.get(r.result, 0) + 1
        total = sum(counts.values())
        ok = counts.get("exact", 0) + counts.get("close", 0)
        print(f"{source}: {ok} of {total} pruned to 2x and reloaded ({100 * ok / total:.0f} %); {counts}")
    print(json.dumps([asdict(r) for r in rows]), file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
