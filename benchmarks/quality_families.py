"""The default job on held-out families it was never tuned on (issue 20).

    python benchmarks/quality_families.py --family cifar_resnet56 --seeds 1 --budgets 0 10
    python benchmarks/quality_families.py --report-only

Held-out models: ``quality_heldout.py`` (zoo recipe: 15 epochs, light prune to 1.3x,
5 fine-tune epochs; seeds 100+; ``cifar_resnet56`` at width 0.5, ``cifar_vgg19_bn`` at
width 0.25). For every model, total preparation budget (``before_pruning.epochs``) and
MACs target, through :func:`metaprune.pruning.prune` exactly as a user runs it:

* ``default``: ``PruneConfig()`` with only the target, the budget and no fine-tune
  changed (method ``auto``: reg, criterion and normaliser chosen by the proxy);
* ``today-0`` (budget 0 only): the 0-epoch default before this issue, group-L2 with the
  normaliser chosen on validation (``method="group-l2"``);
* ``reg=R`` (budgets > 0, ``--oracle``): sparse training at each fixed strength of the
  default grid for the same budget, then the pipeline's pruning with the default's
  criterion search (``--oracle-method auto``; the first run used group-L2 normalisers
  only, ``group-l2``); the **oracle** is the best of them per model and target *on
  test*, i.e. in hindsight (a bound no method can use, reported as such);
* ``--growing``: the default rows run ``method="growing-reg"`` (targeted growing
  regularisation, ``--ceiling`` / ``--ramp``) instead of ``auto``;
* ``prune-first`` (``--prune-first``, instead of the default rows): the same total
  epochs spent the classical way, a reference any preparation must beat: the 0-epoch
  default prunes the model as given, then the default after-pruning fine-tune recipe
  (its learning-rate search included) trains the pruned model for the budget;
* ``default+ft`` (``--finetune``): the default's pruned model after the default
  after-pruning fine-tune (20 epochs, best validation epoch).

Test accuracy is BN-recalibrated, no fine-tune unless said; nothing is selected on test
except the hindsight oracle. Results go to ``benchmarks/quality/families.json``
(resumable), the table to ``benchmarks/quality/families.md``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # benchmarks/metanet.py
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.append(str(_HERE))  # last, after the repo: quality_heldout, not metanet.py

import quality_heldout as heldout_mod  # noqa: E402

from metaprune.checkpoint import save  # noqa: E402
from metaprune.data import get_dataset, make_loaders  # noqa: E402
from metaprune.pruning import (  # noqa: E402
    FinetuneBudget,
    PruneConfig,
    SparseTraining,
    Target,
    evaluate,
    finetune,
    get_method,
    prune,
)
from metaprune.pruning.methods import MethodContext  # noqa: E402

OUT = ROOT / "benchmarks" / "quality"
NO_FT = FinetuneBudget(epochs=0)


def log(*args: Any) -> None:
    print(time.strftime("%H:%M:%S"), *args, flush=True)


def _run(model_or_path, spec, config: PruneConfig) -> tuple[Any, dict[str, Any]]:
    start = time.perf_counter()
    result = prune(model_or_path, "digits", config, spec=spec)
    r = result.report
    bp = r["stages"].get("before_pruning", {})
    return result, {
        "test": r["final"]["test_accuracy"], "val": r["final"]["val_accuracy"],
        "macs_speedup": r["speedup"]["macs"], "criterion": r["method_choice"].get("criterion"),
        "method": r["method"], "reg": bp.get("sparse_reg"),
        "epochs_trained": bp.get("epochs_trained"), "stage_seconds": r["stage_seconds"],
        "reg_trials": [{k: round(v, 3) if isinstance(v, float) else v for k, v in t.items()}
                       for t in bp.get("reg_search", {}).get("trials", [])],
        "reg_kept": bp.get("reg_search", {}).get("kept"),
        "step_down": bp.get("reg_search", {}).get("step_down"),
        "incumbent_proxy": bp.get("reg_search", {}).get("incumbent_proxy"),
        "growing_reg": {k: v for k, v in bp.get("growing_reg", {}).items() if k not in ("rule", "marked")}
        | {"marked": {k: v for k, v in bp.get("growing_reg", {}).get("marked", {}).items() if k != "groups"}},
        "criterion_trials": {f"{t['criterion']}[{t['normalizer']}]": round(t["val_accuracy"], 3)
                             for t in r["stages"]["prune"].get("criterion_search", {}).get("trials", [])},
        "seconds": time.perf_counter() - start,
    }  # fmt: skip


def cells(h, budget: int, targets: list[float], a) -> dict[str, dict[str, Any]]:
    """Every row of one (model, budget): row label -> target -> result."""
    model, spec = heldout_mod.load(h)
    out: dict[str, dict[str, Any]] = {}
    base = PruneConfig(before_pruning=FinetuneBudget(epochs=budget), after_pruning=NO_FT, seed=a.seed)
    sparse = {k: v for k, v in (("search_fraction", a.search_fraction), ("step_down", a.step_down))
              if v is not None}  # fmt: skip
    if a.growing:  # targeted growing regularisation as the default rows (issue 20, session 10)
        sparse.update({k: v for k, v in (("growing_ceiling", a.ceiling), ("growing_ramp", a.ramp))
                       if v is not None})  # fmt: skip
        base = dataclasses.replace(base, method="growing-reg")
    if sparse:  # the reg search's challenger share (0: the prior alone), its step-down (0: off)
        base = dataclasses.replace(base, sparse=SparseTraining(**sparse))
    label = "prune-first" if a.prune_first else "default"
    if a.prune_first:  # the budget after pruning instead of before it
        base = dataclasses.replace(base, before_pruning=FinetuneBudget(epochs=0),
                                   after_pruning=dataclasses.replace(PruneConfig().after_pruning, epochs=budget))
    for t in [] if a.oracle_only else targets:
        config = dataclasses.replace(base, target=Target("macs", t))
        result, rec = _run(h.path, None, config)
        out.setdefault(label, {})[str(t)] = rec
        log(f"{h.name} b{budget} {t}x {label}: {100 * rec['test']:.1f} ({rec['criterion']}, reg {rec['reg']}, "
            f"{rec['epochs_trained']} ep, {rec['seconds']:.0f}s)")  # fmt: skip
        if a.save_pruned:  # for fine-tune experiments on the same pruned model (a checkpoint, no pickle)
            a.save_pruned.mkdir(parents=True, exist_ok=True)
            save(result.model, result.spec, a.save_pruned / f"{h.family}_s{h.seed}_b{budget}_{t:g}x.safetensors")
        if a.finetune and t in a.finetune:
            splits = get_dataset("digits", seed=0)
            train, val, test = make_loaders(splits, config.batch_size, config.seed)
            torch.manual_seed(config.seed)
            finetune(result.model, train, val, PruneConfig().after_pruning, stage="after_pruning")
            out.setdefault("default+ft", {})[str(t)] = {"test": evaluate(result.model, test),
                                                         "val": evaluate(result.model, val)}  # fmt: skip
            log(f"  +ft: {100 * out['default+ft'][str(t)]['test']:.1f}")
        if budget == 0:
            today = dataclasses.replace(config, method="group-l2")
            out.setdefault("today-0", {})[str(t)] = _run(h.path, None, today)[1]
            log(f"{h.name} b0 {t}x today-0: {100 * out['today-0'][str(t)]['test']:.1f}")
    if budget > 0 and a.oracle:
        splits = get_dataset("digits", seed=0)
        for reg in a.oracle_regs or PruneConfig().sparse.auto_grid:
            config = PruneConfig(method="group-l2-sl", sparse=SparseTraining(reg=reg),
                                 before_pruning=FinetuneBudget(epochs=budget), seed=a.seed)  # fmt: skip
            train, val, _ = make_loaders(splits, config.batch_size, config.seed)
            ctx = MethodContext(config, train, val, torch.device("cpu"), torch.zeros(1, 1, 8, 8))
            torch.manual_seed(config.seed)
            start = time.perf_counter()
            prepared = get_method("group-l2-sl").prepare(copy.deepcopy(model), ctx)
            prep_s = time.perf_counter() - start
            for t in targets:
                # the default's own criterion search (auto at 0 epochs): only reg differs
                prune_cfg = PruneConfig(method=a.oracle_method, target=Target("macs", t),
                                        before_pruning=FinetuneBudget(epochs=0), after_pruning=NO_FT)  # fmt: skip
                rec = _run(prepared, spec, prune_cfg)[1]
                rec.update(reg=reg, epochs_trained=budget, prep_seconds=prep_s)
                out.setdefault(f"reg={reg:g}", {})[str(t)] = rec
                log(f"{h.name} b{budget} {t}x reg {reg:g}: {100 * rec['test']:.1f}")
    return out


def report(data: dict[str, Any]) -> str:
    """Mean test % per (family, budget, row, target); oracle = per-model best fixed reg."""
    md = []
    groups: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for key, rows in data["cells"].items():
        fam, budget = key.split("/")[0], int(key.rsplit("/", 1)[1])
        groups.setdefault((fam, budget), {})[key.rsplit("/", 1)[0]] = rows
    for (fam, budget), models in sorted(groups.items()):
        targets = sorted({t for rows in models.values() for r in rows.values() for t in r}, key=float)
        labels = sorted({lbl for rows in models.values() for lbl in rows},
                        key=lambda s: (s != "default", s != "today-0", s))  # fmt: skip
        md += [f"**{fam}, {budget} total epoch(s)** ({len(models)} model(s): "
               f"{', '.join(m.split('/')[-1] for m in sorted(models))})", "",
               "| row | " + " | ".join(f"{t}x test %" for t in targets) + " | epochs trained | s |",
               "|---" * (len(targets) + 3) + "|"]  # fmt: skip

        for label in labels:
            vals = [[rows[label][t]["test"] for rows in models.values() if t in rows.get(label, {})]
                    for t in targets]  # fmt: skip
            eps = [r.get("epochs_trained") for rows in models.values()
                   for r in rows.get(label, {}).values() if r.get("epochs_trained") is not None]  # fmt: skip
            secs = [r.get("seconds", 0.0) for rows in models.values() for r in rows.get(label, {}).values()]
            md.append(f"| {label} | " + " | ".join(
                f"{100 * statistics.fmean(v):.1f}" if v else "–" for v in vals)
                + f" | {max(eps) if eps else '–'} | {statistics.fmean(secs) if secs else 0:.0f} |")  # fmt: skip
        regs = [lbl for lbl in labels if lbl.startswith("reg=")]
        if regs:
            oracle = []
            for t in targets:
                best = [max(rows[r][t]["test"] for r in regs if t in rows.get(r, {}))
                        for rows in models.values() if any(t in rows.get(r, {}) for r in regs)]  # fmt: skip
                oracle.append(f"{100 * statistics.fmean(best):.1f}" if best else "–")
            md.append("| oracle (best fixed reg per model, in hindsight on test) | "
                      + " | ".join(oracle) + f" | {budget} | |")  # fmt: skip
        md.append("")
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", nargs="+", default=["cifar_resnet56", "cifar_vgg19_bn"])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--budgets", type=int, nargs="+", default=[0, 10])
    p.add_argument("--targets", type=float, nargs="+", default=[2.0, 3.0])
    p.add_argument("--oracle", action="store_true", help="fixed-reg rows at budgets > 0")
    p.add_argument("--oracle-method", default="auto", choices=["auto", "group-l2"],
                   help="how the fixed-reg rows prune: the default's criterion search (auto) or "
                   "group-L2 normalisers only (group-l2, the first run's oracle)")
    p.add_argument("--oracle-regs", type=float, nargs="+", help="fixed-reg rows for these strengths only")
    p.add_argument("--oracle-only", action="store_true", help="no default rows (add oracle rows to a run)")
    p.add_argument("--finetune", type=float, nargs="*", default=[], help="targets fine-tuned after")
    p.add_argument("--only-seeds", type=int, nargs="+", help="of the --seeds models, run these seeds only")
    p.add_argument("--seed", type=int, default=0,
                   help="PruneConfig.seed of the default rows and of the fixed-reg rows' training (data "
                   "order; the fixed-reg rows prune with seed 0): training noise, same models")
    p.add_argument("--seed0", type=int, default=heldout_mod.SEED0,
                   help="first model seed (100: the held-out models; 200: a set to fit constants on)")
    p.add_argument("--search-fraction", type=float, help="default rows: sparse.search_fraction (0: no challengers)")
    p.add_argument("--step-down", type=float, help="default rows: sparse.step_down (standard errors; 0: off)")
    p.add_argument("--growing", action="store_true",
                   help="default rows: method growing-reg (targeted growing regularisation) instead of auto")
    p.add_argument("--ceiling", type=float, help="with --growing: sparse.growing_ceiling")
    p.add_argument("--ramp", type=float, help="with --growing: sparse.growing_ramp")
    p.add_argument("--prune-first", action="store_true",
                   help="rows 'prune-first': prune at 0 epochs, then fine-tune the pruned model for the budget")
    p.add_argument("--save-pruned", type=Path, help="save the default's pruned models (whole modules) here")
    p.add_argument("--out", type=Path, default=OUT / "families.json")
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if not a.report_only:
        for fam in a.family:
            for budget in a.budgets:
                for h in heldout_mod.heldout_models(fam, a.seeds, log=log, seed0=a.seed0):
                    if a.only_seeds and h.seed not in a.only_seeds:
                        continue
                    key = f"{h.name}/{budget}"
                    data = json.loads(a.out.read_text()) if a.out.exists() else {"cells": {}}
                    if key in data["cells"]:
                        continue
                    rows = cells(h, budget, a.targets, a)
                    data = json.loads(a.out.read_text()) if a.out.exists() else {"cells": {}}
                    data["cells"][key] = rows
                    data.setdefault("commands", []).append(" ".join(sys.argv))
                    a.out.parent.mkdir(parents=True, exist_ok=True)
                    a.out.write_text(json.dumps(data, indent=1, sort_keys=True))
    data = json.loads(a.out.read_text())
    text = report(data)
    a.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
