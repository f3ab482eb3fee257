"""Quality benchmark (issue 8): pruning quality against preparation compute, per method.

    python benchmarks/quality.py --family cifar_resnet20          # one family (run several in parallel)
    python benchmarks/quality.py --quick                          # ~5-minute smoke run
    python benchmarks/quality.py --report-only                    # tables + plot from results

Held-out models: ``quality_heldout.py`` (the zoo recipe, seeds 100+, never seen by the
metanetwork). Data: ``digits`` 8x8, the zoo's split. For every held-out model and every
**preparation budget** (epochs before pruning, ``--budgets``), each preparation runs
once through the pipeline's own method code (:class:`MethodContext`, so exactly what
``metaprune prune`` does):

* ``plain``: fine-tune (``group-l2`` / ``random`` preparation; budget 0 = the model as is);
* ``sl``: sparse training with ``reg="auto"`` (chosen by validation accuracy after a proxy
  prune to ``--proxy-target``; its search trials are inside the preparation's epochs, so
  every row compares at equal *total* epochs, and in its wall time);
* ``metanet``: a metanetwork's forward pass (``--metanet``, default the shipped
  ``resnet20-digits``; rows tagged ``metanet@TAG`` with ``--tag``), then the fine-tune
  (budget 0 = forward pass only); run on every family the metanetwork can encode, so
  families it was not trained on are measured too;
* ``metanet-sl``: the forward pass, then sparse training with ``reg="auto"`` from its
  output (a warm start; compare with ``sl`` at the same budget);
* ``metanet-raw``: the forward pass with its rewrite always kept, then the fine-tune: the
  metanetwork's own effect (``metanet`` is the product path, whose accuracy check
  discards a rewrite that costs validation accuracy, and then prunes the input model).

Each prepared model is pruned (progressive, global, ``--steps``) with one or more
criteria, giving the rows: ``group-l2[max]``, ``group-l2[sum]``, ``random`` (from
``plain``), ``group-l2-sl[sum]``, ``group-l2-sl[max]`` (from ``sl``), ``metanet[sum]``,
``metanet[max]``. At the first step reaching each MACs target a copy is BN-recalibrated
(exactly, on a fixed training subset) and measured:

* prunability: validation and test accuracy at 1.5, 2, 3, 4x, no fine-tune;
* final accuracy (budget ``--final-budget`` only): the 4x and 8x copies fine-tuned for
  ``--ft-epochs`` (best validation epoch, ties to the latest), so every row has spent the
  same epochs after pruning; rows differ before pruning only by what is reported;
* latency (``--final-budget`` only): base vs pruned, timed back to back at 32x32 inputs
  (digits upsampled; the nets are fully convolutional), 1 thread.

The strongest baseline of each (family, budget, target) is the baseline row with the best
mean *validation* accuracy; every row gets per-model paired test differences against it.
Nothing is selected on the test split. Results are written after every finished cell to
``benchmarks/quality/results[_quick].json`` (resumable); tables go to
``benchmarks/quality/*.md``, the plot to ``benchmarks/quality/budget.png``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import fcntl
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
_HERE = Path(__file__).resolve().parent
# benchmarks/ holds a metanet.py (another benchmark) that would shadow the metanet package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.append(str(_HERE))  # last, after the repo: quality_heldout, not metanet.py

import quality_heldout as heldout_mod  # noqa: E402

import metanet  # noqa: E402, F401  (registers the "metanet" method)
from metaprune.data import get_dataset, make_loaders  # noqa: E402
from metaprune.pruning import (  # noqa: E402
    FinetuneBudget,
    PruneConfig,
    SparseTraining,
    evaluate,
    finetune,
    measure_latency,
    progressive_prune,
    recalibrate_bn,
)
from metaprune.pruning.bn import calibration_loader  # noqa: E402
from metaprune.pruning.methods import MethodContext, get_method  # noqa: E402
from metaprune.pruning.targets import layer_widths  # noqa: E402

OUT = ROOT / "benchmarks" / "quality"
PRUNABILITY = (1.5, 2.0, 3.0, 4.0)
FINAL = (4.0, 8.0)
METANET_NAME = "resnet20-digits"
# prepared model -> rows (label, importance, normaliser); labels name the method as a user does
ROWS = {
    "plain": [("group-l2[max]", "group-l2", "max"), ("group-l2[sum]", "group-l2", "sum"),
              ("group-l2[mean]", "group-l2", "mean"), ("random", "random", "sum")],
    "sl": [("group-l2-sl[sum]", "group-l2", "sum"), ("group-l2-sl[max]", "group-l2", "max"),
           ("group-l2-sl[mean]", "group-l2", "mean")],
    "metanet": [("metanet[sum]", "group-l2", "sum"), ("metanet[max]", "group-l2", "max")],
    "metanet-sl": [("metanet-sl[sum]", "group-l2", "sum")],
    "metanet-raw": [("metanet-raw[sum]", "group-l2", "sum"), ("metanet-raw[max]", "group-l2", "max")],
}  # fmt: skip
BASELINES = tuple(lbl for p in ("plain", "sl") for lbl, imp, _ in ROWS[p] if imp == "group-l2")
PREP_METHOD = {"plain": "group-l2", "sl": "group-l2-sl", "metanet": "metanet",
               "metanet-sl": "group-l2-sl", "metanet-raw": "group-l2"}  # fmt: skip


def tagged(name: str, prep: str, tag: str) -> str:
    """A metanetwork prep's result key / row label carries the metanetwork's ``--tag``:
    ``metanet@pa``, ``metanet@pa[sum]``."""
    if not tag or not prep.startswith("metanet"):
        return name
    base, bracket, rest = name.partition("[")
    return f"{base}@{tag}{bracket}{rest}"


def log(*args: Any) -> None:
    print(time.strftime("%H:%M:%S"), *args, flush=True)


# ----------------------------------------------------------------------------- running


class Runner:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.splits = get_dataset("digits", seed=0)  # the zoo's split
        self.example = torch.zeros(1, 1, 8, 8)
        self._metanet = None

    def loaders(self, seed: int):
        return make_loaders(self.splits, self.a.batch_size, seed)

    def config(self, prep: str, seed: int, epochs: int) -> PruneConfig:
        a = self.a
        return PruneConfig(
            method=PREP_METHOD[prep], seed=seed, batch_size=a.batch_size,
            before_pruning=FinetuneBudget(epochs=epochs, lr=a.lr, schedule="cosine"),
            sparse=SparseTraining(reg="auto"),
            bn_recalibration_images=a.recal_batches * a.batch_size,
            metanet=a.metanet if prep == "metanet" else None,
        )  # fmt: skip

    def metanetwork(self):
        if self._metanet is None:
            from metanet.export import load

            self._metanet = load(self.a.metanet)
        return self._metanet

    def prepare(self, prep: str, model, seed: int, epochs: int):
        """The method's before-pruning stage, through the pipeline's own code.
        ``metanet-sl``: the metanetwork's forward pass, then sparse training from its output
        (the warm start of issue 11)."""
        train, val, _ = self.loaders(seed)
        config = self.config(prep, seed, epochs)
        ctx = MethodContext(config, train, val, torch.device("cpu"), self.example,
                            metanetwork=self.metanetwork() if prep == "metanet" else None,
                            proxy=lambda m: self.proxy(m, seed))  # fmt: skip
        torch.manual_seed(seed)
        start = time.perf_counter()
        model, check = copy.deepcopy(model), None
        if prep == "metanet-sl":  # the metanet method's own guarded rewrite, then sparse training
            from metanet.method import guarded_rewrite

            model, check = guarded_rewrite(model, self.metanetwork(), ctx)
        elif prep == "metanet-raw":  # the metanetwork itself: its rewrite always kept
            from metanet import apply_metanetwork

            model = apply_metanetwork(self.metanetwork(), model, self.example)
            for param in model.parameters():
                param.requires_grad_(True)
        prepared = get_method(config.method).prepare(model, ctx)
        seconds = time.perf_counter() - start
        info = dict(ctx.info.get("before_pruning", {}))
        if check is not None:
            info["metanet"] = {"accuracy_check": check}
        return prepared.eval(), info, seconds

    def proxy(self, model, seed: int) -> float:
        """What ``reg="auto"`` scores its trials by (issue 20): the best normaliser's validation
        accuracy of a copy pruned to ``--proxy-target`` in 20 steps, BN recalibrated. One
        target for every row of the prep, so ``sl`` rows at other targets use its choice."""
        _, val, _ = self.loaders(seed)
        accs = []
        for normalizer in ("sum", "mean", "max"):
            m = copy.deepcopy(model)
            progressive_prune(m, self.example, self.a.proxy_target, steps=20, normalizer=normalizer)
            recalibrate_bn(m, self.calib(seed), self.a.recal_batches)
            accs.append(evaluate(m, val))
        return max(accs)

    def calib(self, seed: int):
        return calibration_loader(self.splits.train, self.a.recal_batches, self.a.batch_size, seed)

    def prune_points(self, prepared, importance: str, normalizer: str, seed: int, targets, keep):
        """One progressive run up to max(targets); a recalibrated copy measured at each target."""
        a = self.a
        _, val, test = self.loaders(seed)
        calib = self.calib(seed)
        pending = sorted(targets)
        points: dict[str, dict[str, Any]] = {}
        snaps: dict[float, torch.nn.Module] = {}

        def on_step(info, m) -> None:
            while pending and info.macs_speedup >= pending[0]:
                t = pending.pop(0)
                c = copy.deepcopy(m)
                recalibrate_bn(c, calib, a.recal_batches)
                points[str(t)] = {"step": info.step, "macs_speedup": info.macs_speedup,
                                  "val": evaluate(c, val), "test": evaluate(c, test),
                                  "widths": layer_widths(c)}  # fmt: skip
                if t in keep:
                    snaps[t] = c

        model = copy.deepcopy(prepared)
        start = time.perf_counter()
        hist = progressive_prune(
            model, self.example, max(targets), importance=importance, steps=a.steps,
            normalizer=normalizer, seed=seed, on_step=on_step,
        )  # fmt: skip
        for t in pending:  # not reached: every layer at its floor
            points[str(t)] = {"reached": False, "macs_speedup": hist[-1].macs_speedup}
        return points, snaps, time.perf_counter() - start

    def finetune_points(self, snaps, seed: int) -> dict[str, dict[str, Any]]:
        a = self.a
        train, val, test = self.loaders(seed)
        out = {}
        for t, model in sorted(snaps.items()):
            torch.manual_seed(seed)
            start = time.perf_counter()
            budget = FinetuneBudget(epochs=a.ft_epochs, lr=a.lr, schedule="cosine")
            res = finetune(model, train, val, budget, stage="after_pruning", select_initial=True)
            out[str(t)] = {"val": evaluate(model, val), "test": evaluate(model, test),
                           "kept_epoch": res.best_epoch, "epochs": a.ft_epochs,
                           "seconds": time.perf_counter() - start,
                           "latency_speedup": self.latency_speedup(self.base_model, model)}  # fmt: skip
        return out

    def latency_speedup(self, base, pruned) -> float:
        """Base / pruned latency at 32x32, timed back to back; min over rounds (load only adds)."""
        a = self.a
        shape = (1, a.latency_size, a.latency_size)

        def lat(m):
            return measure_latency(m, shape, batch_size=a.latency_batch, threads=1,
                                   repeats=a.latency_repeats, warmup=1)  # fmt: skip

        b, p = [], []
        for _ in range(a.latency_rounds):
            b.append(lat(base))
            p.append(lat(pruned))
        return min(b) / min(p)

    def cell(self, h, prep: str, budget: int) -> dict[str, Any]:
        """One (held-out model, preparation, budget): preparation + its rows."""
        a = self.a
        model, _ = heldout_mod.load(h)
        self.base_model = model
        _, val, test = self.loaders(h.seed)
        prepared, info, prep_seconds = self.prepare(prep, model, h.seed, budget)
        rec: dict[str, Any] = {
            "family": h.family,
            "model": h.name,
            "prep": tagged(prep, prep, a.tag),
            "metanet": a.metanet if prep.startswith("metanet") else None,
            "budget": budget,
            "before_pruning": {k: v for k, v in info.items()},
            "prep_seconds": prep_seconds,
            "prepared": {"val": evaluate(prepared, val), "test": evaluate(prepared, test)},
            "rows": {},
        }
        final = budget == a.final_budget
        for label, importance, normalizer in ROWS[prep]:
            if label not in a.rows or (not final and a.light_rows and label not in a.light_rows):
                continue
            tuned = final and (not a.final_rows or label in a.final_rows)
            targets = PRUNABILITY + (FINAL if tuned else ())
            points, snaps, secs = self.prune_points(prepared, importance, normalizer, h.seed,
                                                    targets, set(FINAL) if tuned else set())  # fmt: skip
            row: dict[str, Any] = {"points": points, "prune_seconds": secs}
            if tuned:
                row["final"] = self.finetune_points(snaps, h.seed)
            rec["rows"][tagged(label, prep, a.tag)] = row
        return rec


# ----------------------------------------------------------------------------- reporting


def _ms(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _fmt(xs: list[float], scale: float = 100.0, signed: bool = False) -> str:
    if not xs:
        return "–"
    m, s = _ms([scale * x for x in xs])
    return f"{m:+.1f} ± {s:.1f}" if signed else f"{m:.1f} ± {s:.1f}"


def collect(results: dict[str, Any]) -> dict[tuple, dict[str, dict[str, Any]]]:
    """(family, budget) -> row label -> model -> {row data + prep info}."""
    out: dict[tuple, dict[str, dict[str, Any]]] = {}
    for rec in results["cells"].values():
        key = (rec["family"], rec["budget"])
        for label, row in rec["rows"].items():
            out.setdefault(key, {}).setdefault(label, {})[rec["model"]] = {
                **row, "prep_seconds": rec["prep_seconds"], "prepared": rec["prepared"],
                "before_pruning": rec["before_pruning"],
            }  # fmt: skip
    for rows in out.values():  # every prep pruned with several normalisers, metanetworks too
        for base in sorted({label.split("[")[0] for label in rows if label != "random"}):
            _derive_auto(rows, base)
    return out


def _derive_auto(rows: dict[str, dict[str, Any]], base: str) -> None:
    """``base[auto]``: per model and target, the normaliser row with the best validation
    accuracy (ties: sum, mean, max) -- exactly what ``normalizer="auto"`` does in the
    pipeline, since a progressive run to a target takes the same steps as one beyond it."""
    labels = [f"{base}[{n}]" for n in ("sum", "mean", "max") if f"{base}[{n}]" in rows]
    if len(labels) < 2:
        return
    auto: dict[str, Any] = {}
    for model in set.intersection(*(set(rows[lbl]) for lbl in labels)):
        entry = {**rows[labels[0]][model], "points": {}, "final": {}, "chosen": {}}
        for t in (*PRUNABILITY, *FINAL):
            cands = [
                (lbl, rows[lbl][model])
                for lbl in labels
                if _acc(rows[lbl][model], t, "val") is not None
            ]
            if not cands:
                continue
            lbl, best = max(cands, key=lambda c: _acc(c[1], t, "val"))  # first of equals
            entry["points"][str(t)] = best["points"][str(t)]
            entry["chosen"][str(t)] = lbl
            if str(t) in best.get("final", {}):
                entry["final"][str(t)] = best["final"][str(t)]
        auto[model] = entry
    rows[f"{base}[auto]"] = auto


def _acc(entry: dict[str, Any], t: float, split: str, part: str = "points") -> float | None:
    pt = entry.get(part, {}).get(str(t), {})
    return pt.get(split)


def _strongest(rows: dict[str, dict[str, Any]], t: float, part: str) -> str | None:
    """The baseline row with the best mean validation accuracy at target ``t``."""
    best, best_val = None, -1.0
    for label in BASELINES:
        vals = [
            v for e in rows.get(label, {}).values() if (v := _acc(e, t, "val", part)) is not None
        ]
        if vals and statistics.fmean(vals) > best_val:
            best, best_val = label, statistics.fmean(vals)
    return best


def _vs(rows, label: str, ref: str | None, t: float, part: str) -> str:
    if ref is None or label == ref:
        return "(strongest)" if label == ref else "–"
    diffs = []
    for model, e in rows[label].items():
        x, y = _acc(e, t, "test", part), _acc(rows.get(ref, {}).get(model, {}), t, "test", part)
        if x is not None and y is not None:
            diffs.append(x - y)
    if not diffs:
        return "–"
    wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    return f"{_fmt(diffs, signed=True)} ({wins}W/{losses}L)"


def _order(labels) -> list[str]:
    known = [lbl for rows in ROWS.values() for lbl, _, _ in rows]
    known[1:1] = ["group-l2[auto]"]
    known.insert(known.index("group-l2-sl[sum]"), "group-l2-sl[auto]")
    return [lbl for lbl in known if lbl in labels] + sorted(set(labels) - set(known))


def report(results: dict[str, Any], out: Path, suffix: str) -> str:
    data = collect(results)
    s = results.get("settings", {})
    md: list[str] = []
    families = sorted({f for f, _ in data})
    for fam in families:
        budgets = sorted(b for f, b in data if f == fam)
        models = sorted(
            {m for (f, _), rows in data.items() if f == fam for r in rows.values() for m in r}
        )
        md += [f"### {fam} ({len(models)} held-out models: {', '.join(models)})", ""]
        md += ["Prunability: test accuracy % at each MACs speed-up, BN recalibrated, no fine-tune; "
               "Δ = per-model paired test difference vs the strongest baseline (best mean *validation* "
               "accuracy among group-l2[max|sum|mean] and group-l2-sl[max|sum|mean]), mean ± std (wins/losses).", ""]  # fmt: skip
        for b in budgets:
            rows = data[(fam, b)]
            md += [f"**{b} epoch(s) before pruning**", ""]
            head = (
                "| row | prep epochs trained | prep s | acc before | "
                + " | ".join(f"{t:g}x | {t:g}x Δ" for t in PRUNABILITY)
                + " |"
            )
            md += [head, "|" + "---|" * (4 + 2 * len(PRUNABILITY))]
            refs = {t: _strongest(rows, t, "points") for t in PRUNABILITY}
            for label in _order(rows):
                es = rows[label]
                ep = [e["before_pruning"].get("epochs_trained", b) or 0 for e in es.values()]
                cells = [f"{label} (n={len(es)})", f"{statistics.fmean(ep):.1f}",
                         f"{statistics.fmean(e['prep_seconds'] for e in es.values()):.1f}",
                         _fmt([e["prepared"]["test"] for e in es.values()])]  # fmt: skip
                for t in PRUNABILITY:
                    accs = [v for e in es.values() if (v := _acc(e, t, "test")) is not None]
                    cells += [_fmt(accs), _vs(rows, label, refs[t], t, "points")]
                md.append("| " + " | ".join(cells) + " |")
            md.append("")
            md.append(
                "Strongest baseline per target: "
                + ", ".join(f"{t:g}x {refs[t]}" for t in PRUNABILITY)
            )
            regs = [
                (m, e["before_pruning"].get("sparse_reg"))
                for m, e in rows.get("group-l2-sl[sum]", {}).items()
            ]
            if regs:
                md.append(
                    "reg chosen on validation: "
                    + ", ".join(f"{m.split('/')[-1]} {r:g}" for m, r in regs if r is not None)
                )
            md.append("")
            if any(e.get("final") for r in rows.values() for e in r.values()):
                md += [f"Final accuracy after {s.get('ft_epochs')} fine-tune epochs (equal for every row), "
                       "test %, Δ vs the strongest baseline (by validation); latency speed-up = base / "
                       f"pruned at {s.get('latency_size')}x{s.get('latency_size')}, batch {s.get('latency_batch')}, 1 thread:", ""]  # fmt: skip
                md += ["| row | " + " | ".join(f"{t:g}x | {t:g}x Δ | {t:g}x latency" for t in FINAL) + " |",
                       "|" + "---|" * (1 + 3 * len(FINAL))]  # fmt: skip
                frefs = {t: _strongest(rows, t, "final") for t in FINAL}
                for label in _order(rows):
                    es = rows[label]
                    cells = [label]
                    for t in FINAL:
                        accs = [
                            v for e in es.values() if (v := _acc(e, t, "test", "final")) is not None
                        ]
                        lat = [
                            v
                            for e in es.values()
                            if (v := _acc(e, t, "latency_speedup", "final")) is not None
                        ]
                        m, sd = _ms(lat)
                        cells += [_fmt(accs), _vs(rows, label, frefs[t], t, "final"),
                                  f"{m:.2f} ± {sd:.2f}" if lat else "–"]  # fmt: skip
                    md.append("| " + " | ".join(cells) + " |")
                md += [
                    "",
                    "Strongest baseline after fine-tune: "
                    + ", ".join(f"{t:g}x {frefs[t]}" for t in FINAL),
                    "",
                ]
    text = "\n".join(md) + "\n"
    (out / f"tables{suffix}.md").write_text(text)
    _plot(data, out / f"budget{suffix}.png")
    return text


def _plotted(labels: list[str]) -> list[str]:
    """One curve per preparation: its ``[auto]`` row (the normaliser the pipeline would
    pick on validation) where derived, else its only row; ``random`` as the floor."""
    bases = {lbl.split("[")[0] for lbl in labels}
    keep = [f"{b}[auto]" if f"{b}[auto]" in labels else None for b in bases]
    singles = [
        lbl for lbl in labels if sum(x.split("[")[0] == lbl.split("[")[0] for x in labels) == 1
    ]
    return [lbl for lbl in labels if lbl in keep or lbl in singles]


def _plot(data, path: Path) -> None:
    from matplotlib.figure import Figure

    families = sorted({f for f, _ in data})
    if not families:
        return
    targets = (2.0, 3.0)
    fig = Figure(figsize=(5.5 * len(targets), 4 * len(families)), dpi=100)
    for i, fam in enumerate(families):
        budgets = sorted(b for f, b in data if f == fam)
        labels = _plotted(_order({lbl for b in budgets for lbl in data[(fam, b)]}))
        for j, t in enumerate(targets):
            ax = fig.add_subplot(len(families), len(targets), i * len(targets) + j + 1)
            for label in labels:
                xs, ys, es = [], [], []
                for b in budgets:
                    accs = [v for e in data[(fam, b)].get(label, {}).values()
                            if (v := _acc(e, t, "test")) is not None]  # fmt: skip
                    if accs:
                        m, sd = _ms([100 * x for x in accs])
                        xs.append(b)
                        ys.append(m)
                        es.append(sd)
                if xs:
                    ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label,
                                linestyle="--" if label.endswith("[max]") else "-")  # fmt: skip
            ax.set_xlabel("epochs before pruning (preparation budget)")
            ax.set_ylabel(f"test acc % at {t:g}x MACs (no fine-tune)")
            ax.set_title(f"{fam}, {t:g}x")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, format="png")


# ----------------------------------------------------------------------------- main


def _locked_update(path: Path, key: str, rec: dict[str, Any], settings: dict[str, Any]) -> None:
    """Add one finished cell to the shared results file (several families run in parallel)."""
    lock = path.with_suffix(".lock")
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.exists() else {"cells": {}}
        data.setdefault("settings", settings)
        data.setdefault("commands", [])
        cmd = "python benchmarks/quality.py " + " ".join(sys.argv[1:])
        if cmd not in data["commands"]:
            data["commands"].append(cmd)
        data["cells"][key] = rec
        data["date"] = datetime.datetime.now().isoformat(timespec="minutes")
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--family", nargs="+", default=["cifar_resnet20", "cifar_vgg11_bn"])
    p.add_argument("--seeds", type=int, default=3, help="held-out models per family")
    p.add_argument("--budgets", type=int, nargs="+", default=[5, 0, 2, 10, 1],
                   help="epochs before pruning, run in this order")  # fmt: skip
    p.add_argument(
        "--final-budget", type=int, default=5, help="budget that also gets the fine-tune + latency"
    )
    p.add_argument(
        "--ft-epochs", type=int, default=10, help="fine-tune epochs after pruning (final part)"
    )
    p.add_argument("--preps", nargs="+", default=["plain", "sl", "metanet"], choices=list(ROWS))
    p.add_argument("--rows", nargs="+", default=[lbl for r in ROWS.values() for lbl, _, _ in r])
    p.add_argument("--light-rows", nargs="*", default=[],
                   help="rows measured at budgets other than --final-budget (default: all)")  # fmt: skip
    p.add_argument("--final-rows", nargs="*", default=[],
                   help="rows fine-tuned and timed at --final-budget (default: all)")  # fmt: skip
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--recal-batches", type=int, default=20)
    p.add_argument("--proxy-target", type=float, default=2.0,
                   help="MACs target reg='auto' chooses by (its trials count in the budget)")  # fmt: skip
    p.add_argument("--latency-size", type=int, default=32)
    p.add_argument("--latency-batch", type=int, default=32)
    p.add_argument("--latency-repeats", type=int, default=3)
    p.add_argument("--latency-rounds", type=int, default=2)
    p.add_argument(
        "--quick", action="store_true", help="1 ResNet-20, budgets 1 and 0, 4 rows, 2 ft epochs"
    )
    p.add_argument(
        "--metanet",
        default=METANET_NAME,
        help="metanetwork of the metanet preps (a shipped name or an export path)",
    )
    p.add_argument("--tag", default="", help="suffix of the metanet preps' rows (metanet@TAG[sum])")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args(argv)
    if a.quick:
        a.family, a.seeds, a.budgets, a.final_budget = ["cifar_resnet20"], 1, [1, 0], 1
        a.ft_epochs, a.steps, a.latency_repeats, a.latency_rounds = 2, 30, 2, 1
        a.rows = ["group-l2[max]", "group-l2[sum]", "group-l2-sl[sum]", "metanet[sum]"]
        a.final_rows, a.recal_batches = ["group-l2[sum]", "group-l2-sl[sum]"], 5
    torch.set_num_threads(1)
    a.out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if a.quick else ""
    path = a.out / f"results{suffix}.json"
    if a.report_only:
        print(report(json.loads(path.read_text()), a.out, suffix))
        return 0
    settings = {k: v for k, v in vars(a).items() if k in (
        "seeds", "final_budget", "ft_epochs", "steps", "lr", "batch_size", "recal_batches",
        "proxy_target", "latency_size", "latency_batch", "latency_repeats", "latency_rounds")}  # fmt: skip
    done = set(json.loads(path.read_text())["cells"]) if path.exists() else set()
    runner = Runner(a)
    for fam in a.family:
        models = heldout_mod.heldout_models(fam, a.seeds, log=log)
        for budget in a.budgets:
            for h in models:
                for prep in a.preps:
                    if prep in ("sl", "metanet-sl") and budget == 0:
                        continue  # no epochs: sparse training is the plain model
                    key = f"{h.name}/{budget}/{tagged(prep, prep, a.tag)}"
                    if key in done:
                        continue
                    start = time.perf_counter()
                    rec = runner.cell(h, prep, budget)
                    rec["seconds"] = time.perf_counter() - start
                    _locked_update(path, key, rec, settings)
                    pts = " ".join(f"{lbl}:" + "/".join(
                        f"{100 * r['points'][str(t)]['test']:.0f}" for t in PRUNABILITY if "test" in r["points"][str(t)])
                        for lbl, r in rec["rows"].items())  # fmt: skip
                    reg = rec["before_pruning"].get("sparse_reg")
                    log(
                        f"{key}: prep {rec['prep_seconds']:.0f}s"
                        + (f" reg {reg:g}" if reg is not None else "")
                        + f" | {pts} | {rec['seconds']:.0f}s"
                    )
    print(report(json.loads(path.read_text()), a.out, suffix))
    return 0


if __name__ == "__main__":
    sys.exit(main())
