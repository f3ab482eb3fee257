"""Quality benchmark (issue 4, section 4): does the metanetwork make networks prunable?

    .venv/bin/python benchmarks/quality.py                 # full run (~30 min on 1 core)
    .venv/bin/python benchmarks/quality.py --quick         # smoke run, a few minutes
    .venv/bin/python benchmarks/quality.py --report-only   # tables + plots from results

Models: ``cifar_resnet20`` (width 1.0, 1 input channel) on ``digits`` at 8x8, *held out*
from the metanetwork's training (default: fresh base seeds put through the zoo's exact
recipe, see ``quality_heldout.py``; ``--heldout meta-val`` uses the zoo's meta-val
members instead, on which the metanetwork checkpoint was selected). MACs and latency
speed-ups are relative to the held-out model itself (already pruned 1.33x by the recipe).

For every held-out model and method, the method's "before pruning" stage runs once with
the same budget (``--epochs``): ``metanet`` = metanetwork transform + fine-tune,
``group-l2-sl`` = DepGraph sparse training, ``group-l2`` / ``random`` = plain fine-tune.
Then one progressive global pruning run (``progressive_prune``) goes up to the largest
target and, at the first step reaching each target, a copy is BN-recalibrated and
measured:

* **Prunability**: speed-ups 1.5, 2, 3 -- recalibrated, *no* fine-tune, test accuracy.
* **Final accuracy**: speed-ups 4, 8 -- recalibrated, then ``--ft-epochs`` of fine-tune
  (best epoch chosen on validation), test accuracy. Every method has the same total
  budget: ``--epochs`` before pruning + ``--ft-epochs`` after.
* **Latency**: median time of a batch of 256 at 8x8, 1 thread, base / pruned.

Extra prunability rows (not part of the equal-budget comparison, labelled as such):
``metanet@0ep`` (metanetwork transform, no fine-tune before pruning) and the
group-L2 methods re-pruned with another importance normaliser (``--ablate-normalizer``).

Results are appended to ``benchmarks/quality/results[_quick].json`` after every
(model, method), so an interrupted run resumes; tables (``*.md``) and plots (``*.png``)
are written to ``benchmarks/quality/``. Every accuracy is on the test split; nothing is
selected on it.
"""

from __future__ import annotations

import argparse
import copy
import datetime
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


def _load_helper(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, _HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


heldout_mod = _load_helper("quality_heldout")

from metaprune.data import get_dataset, make_loaders  # noqa: E402
from metaprune.pruning import (  # noqa: E402
    FinetuneBudget,
    PruneConfig,
    SparseTraining,
    evaluate,
    finetune,
    measure_cost,
    measure_latency,
    progressive_prune,
    recalibrate_bn,
)
from metaprune.pruning.methods import MethodContext, get_method  # noqa: E402
from metaprune.pruning.targets import layer_widths  # noqa: E402

OUT = ROOT / "benchmarks" / "quality"
PRUNABILITY = (1.5, 2.0, 3.0)
FINAL = (4.0, 8.0)
BASELINES = ("group-l2", "group-l2-sl", "random")
METHODS = ("metanet", *BASELINES)
REFERENCES = ("group-l2", "group-l2-sl")
# (file in --out, key, label) of superseded runs kept for comparison
EXTRA = (
    ("results_sl_bestval", "group-l2-sl@best-val", "group-l2-sl, best-val epoch (before fix) *"),
    ("results_metanet_provisional", "metanet@provisional", "metanet, provisional checkpoint (epoch 7) *"),
)
METANET_NAME = "resnet20-digits"
PRETRAINED = ROOT / "metanet" / "pretrained"


def log(*args: Any) -> None:
    print(time.strftime("%H:%M:%S"), *args, flush=True)


# ----------------------------------------------------------------------------- running


def load_metanetwork(name: str):
    try:
        import metanet
    except ImportError as err:
        raise RuntimeError(f"no metanet package: {err}") from None
    load = getattr(metanet, "load", None)
    if load is None:
        from metanet.export import load
    return load(name)


def metanet_available(name: str) -> bool:
    if Path(name).exists():
        return True
    return (PRETRAINED / f"{name}.safetensors").exists()


def metanet_provenance(name: str) -> dict[str, Any]:
    import hashlib

    path = Path(name) if Path(name).exists() else PRETRAINED / f"{name}.safetensors"
    info: dict[str, Any] = {"path": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)}
    if path.exists():
        info["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    meta = path.with_suffix(".json")
    if meta.exists():
        extra = json.loads(meta.read_text()).get("info", {})
        info.update({k: v for k, v in extra.items() if k != "hyper_parameters"})
    return info


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.splits = get_dataset("digits", seed=args.data_seed)  # the zoo's split
        self.example = torch.zeros(1, 1, self.splits.image_size, self.splits.image_size)
        self.shape = (1, self.splits.image_size, self.splits.image_size)
        self._metanet = None

    def loaders(self, seed: int):
        return make_loaders(self.splits, self.args.batch_size, seed)

    def latency(self, model) -> float:
        a = self.args
        return measure_latency(model, self.shape, batch_size=a.latency_batch, threads=1,
                               repeats=a.latency_repeats, warmup=2)

    def metanetwork(self):
        if self._metanet is None:
            self._metanet = load_metanetwork(self.args.metanet)
        return self._metanet

    def prepare(self, method: str, model, seed: int, epochs: int):
        """The method's before-pruning stage (the pipeline's own code)."""
        a = self.args
        train, val, _ = self.loaders(seed)
        config = PruneConfig(
            method=method, seed=seed, batch_size=a.batch_size,
            before_pruning=FinetuneBudget(epochs=epochs, lr=a.lr, schedule="cosine"),
            sparse=SparseTraining(reg=a.sparse_reg),
            metanet=a.metanet if method == "metanet" else None,
        )  # fmt: skip
        ctx = MethodContext(config, train, val, torch.device("cpu"), self.example,
                            metanetwork=self.metanetwork() if method == "metanet" else None)
        torch.manual_seed(seed)
        prepared = get_method(method).prepare(copy.deepcopy(model), ctx)
        return prepared.eval(), ctx.info.get("before_pruning", {})

    def prune_points(self, prepared, importance: str, seed: int, targets, snapshot, normalizer: str):
        """One progressive run up to max(targets); a recalibrated copy measured at each target."""
        a = self.args
        train, val, test = self.loaders(seed)
        pending = sorted(targets)
        points: dict[str, dict[str, Any]] = {}
        snaps: dict[float, torch.nn.Module] = {}

        def on_step(info, m) -> None:
            while pending and info.macs_speedup >= pending[0]:
                t = pending.pop(0)
                c = copy.deepcopy(m)
                recalibrate_bn(c, train, a.recal_batches)
                points[str(t)] = {
                    "step": info.step, "macs_speedup": info.macs_speedup,
                    "val": evaluate(c, val), "test": evaluate(c, test),
                    "latency_s": self.latency(c), "widths": layer_widths(c),
                }  # fmt: skip
                if t in snapshot:
                    snaps[t] = c

        model = copy.deepcopy(prepared)
        hist = progressive_prune(
            model, self.example, max(targets), importance=importance, steps=a.steps,
            max_layer_ratio=a.max_layer_ratio, min_channels=2, normalizer=normalizer, seed=seed,
            on_step=on_step,
        )  # fmt: skip
        for t in pending:  # not reached: every layer at its floor
            points[str(t)] = {"reached": False, "macs_speedup": hist[-1].macs_speedup}
        return points, snaps

    def finetune_points(self, snaps, seed: int) -> dict[str, dict[str, Any]]:
        a = self.args
        train, val, test = self.loaders(seed)
        out = {}
        for t, model in sorted(snaps.items()):
            torch.manual_seed(seed)
            res = finetune(model, train, val, FinetuneBudget(epochs=a.ft_epochs, lr=a.lr, schedule="cosine"),
                           stage="after_pruning", select_initial=True)
            out[str(t)] = {"val": evaluate(model, val), "test": evaluate(model, test),
                           "best_epoch": res.best_epoch, "latency_s": self.latency(model)}
        return out

    def run_one(self, h, method: str, seed: int) -> dict[str, Any]:
        a = self.args
        start = time.perf_counter()
        model, _ = heldout_mod.load(h)
        _, val, test = self.loaders(seed)
        importance = get_method(method).importance
        prepared, info = self.prepare(method, model, seed, a.epochs)
        record: dict[str, Any] = {
            "heldout": h.name, "source": h.source, "seed": seed, "method": method,
            "before_pruning": info,
            "prepared": {"val": evaluate(prepared, val), "test": evaluate(prepared, test)},
        }
        points, snaps = self.prune_points(prepared, importance, seed, PRUNABILITY + FINAL,
                                          set(FINAL), a.normalizer)
        record["points"] = points
        record["final"] = self.finetune_points(snaps, seed)
        if importance == "group-l2":
            record["ablation"] = {}
            for norm in a.ablate_normalizer:
                pts, _ = self.prune_points(prepared, importance, seed, PRUNABILITY, set(), norm)
                record["ablation"][f"normalizer={norm}"] = pts
        if method == "metanet" and a.metanet_zero:
            raw, info0 = self.prepare(method, model, seed, 0)
            pts, _ = self.prune_points(raw, importance, seed, PRUNABILITY, set(), a.normalizer)
            record["metanet_0ep"] = {"prepared": {"val": evaluate(raw, val), "test": evaluate(raw, test)},
                                     "points": pts}
        record["seconds"] = time.perf_counter() - start
        return record


# ----------------------------------------------------------------------------- reporting


def _mean_std(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _fmt(xs: list[float], signed: bool = False) -> str:
    if not xs:
        return "–"
    m, s = _mean_std([100 * x for x in xs])
    return f"{m:+.1f} ± {s:.1f}" if signed else f"{m:.1f} ± {s:.1f}"


def _paired(rows: dict[str, dict], a: str, b: str, key) -> tuple[list[float], list[str]]:
    diffs, names = [], []
    for name, by_method in rows.items():
        if a in by_method and b in by_method:
            x, y = key(by_method[a]), key(by_method[b])
            if x is not None and y is not None:
                diffs.append(x - y)
                names.append(name)
    return diffs, names


def _delta_cell(diffs: list[float]) -> str:
    if not diffs:
        return "–"
    wins = sum(d > 0 for d in diffs)
    return f"{_fmt(diffs, signed=True)} ({wins}/{len(diffs)})"


def _get(path):
    def key(rec):
        cur = rec
        for p in path:
            if not isinstance(cur, dict) or p not in cur:
                return None
            cur = cur[p]
        return cur
    return key


def variants(rows) -> list[tuple[str, str, tuple]]:
    """(label, method, path prefix to the prunability points) for every prunability row."""
    out = []
    methods = {m for r in rows.values() for m in r}
    for m in METHODS:
        if m in methods:
            out.append((m, m, ("points",)))
    for _f, key, label in EXTRA:
        if key in methods:
            out.append((label, key, ("points",)))
    if "metanet" in methods and any("metanet_0ep" in r.get("metanet", {}) for r in rows.values()):
        out.append(("metanet@0ep *", "metanet", ("metanet_0ep", "points")))
    norms = sorted({k for r in rows.values() for rec in r.values() for k in rec.get("ablation", {})})
    for norm in norms:
        for m in ("metanet", "group-l2", "group-l2-sl"):
            if m in methods:
                out.append((f"{m} [{norm.replace('normalizer=', 'norm=')}] *", m, ("ablation", norm)))
    return out


def report(results: dict[str, Any], out: Path, suffix: str) -> str:
    rows: dict[str, dict[str, dict]] = {}
    for rec in results["runs"].values():
        rows.setdefault(rec["heldout"], {})[rec["method"]] = rec
    for fname, key, _label in EXTRA:  # superseded rows, shown for comparison
        extra = out / f"{fname}{suffix}.json"
        if extra.exists():
            for rec in json.loads(extra.read_text())["runs"].values():
                if rec["heldout"] in rows:
                    rows[rec["heldout"]][key] = rec
    names = sorted(rows)
    settings = results["settings"]
    lines: list[str] = []
    md: dict[str, list[str]] = {"prunability": [], "final": [], "latency": []}

    # --- prunability
    head = "| method | acc before pruning | " + " | ".join(
        f"{t:g}x acc | {t:g}x Δ vs group-l2 | {t:g}x Δ vs group-l2-sl" for t in PRUNABILITY) + " |"
    tab = [head, "|" + "---|" * (2 + 3 * len(PRUNABILITY))]
    per_seed = ["| method | speed-up | " + " | ".join(names) + " |", "|" + "---|" * (2 + len(names))]
    plot_series = {}
    for label, method, prefix in variants(rows):
        before_path = ("metanet_0ep", "prepared", "test") if prefix[0] == "metanet_0ep" else ("prepared", "test")
        before = [_get(before_path)(rows[n][method]) for n in names if method in rows[n]]
        before = [b for b in before if b is not None]
        cells = [label, _fmt(before)]
        series = [(1.0, *_mean_std(before))]
        for t in PRUNABILITY:
            k = _get((*prefix, str(t), "test"))
            accs = [k(rows[n][method]) for n in names if method in rows[n]]
            accs = [x for x in accs if x is not None]
            cells.append(_fmt(accs))
            series.append((t, *_mean_std(accs)))
            for ref in REFERENCES:
                refk = _get(("points", str(t), "test"))
                diffs = [k(rows[n][method]) - refk(rows[n][ref]) for n in names
                         if method in rows[n] and ref in rows[n]
                         and k(rows[n][method]) is not None and refk(rows[n][ref]) is not None]
                cells.append("–" if (label == ref) else _delta_cell(diffs))
            per_seed.append(f"| {label} | {t:g}x | " + " | ".join(
                f"{100 * k(rows[n][method]):.1f}" if method in rows[n] and k(rows[n][method]) is not None else "–"
                for n in names) + " |")
        tab.append("| " + " | ".join(cells) + " |")
        plot_series[label] = series
    md["prunability"] = tab + ["", "Per held-out model (test accuracy %, BN recalibrated, no fine-tune):", ""] + per_seed

    # --- final accuracy
    head = "| method | " + " | ".join(
        f"{t:g}x acc | {t:g}x Δ vs group-l2 | {t:g}x Δ vs group-l2-sl" for t in FINAL) + " |"
    tab = [head, "|" + "---|" * (1 + 3 * len(FINAL))]
    per_seed = ["| method | speed-up | " + " | ".join(names) + " |", "|" + "---|" * (2 + len(names))]
    final_series = {}
    for label, method in [(m, m) for m in METHODS] + [(lbl, key) for _f, key, lbl in EXTRA]:
        if not any(method in rows[n] for n in names):
            continue
        cells = [label]
        final_series[label] = []
        for t in FINAL:
            k = _get(("final", str(t), "test"))
            accs = [k(rows[n][method]) for n in names if method in rows[n] and k(rows[n][method]) is not None]
            cells.append(_fmt(accs))
            final_series[label].append((t, *_mean_std(accs)))
            for ref in REFERENCES:
                diffs, _ = _paired(rows, method, ref, k)
                cells.append("–" if method == ref else _delta_cell(diffs))
            per_seed.append(f"| {label} | {t:g}x | " + " | ".join(
                f"{100 * k(rows[n][method]):.1f}" if method in rows[n] and k(rows[n][method]) is not None else "–"
                for n in names) + " |")
        tab.append("| " + " | ".join(cells) + " |")
    md["final"] = tab + ["", f"Per held-out model (test accuracy %, after {settings['ft_epochs']} fine-tune epochs):", ""] + per_seed

    # --- latency
    paired = results.get("latency_pass", {}).get("speedup")
    base_lat = {n: results["base"][n]["latency_s"] for n in names if n in results.get("base", {})}
    ts = PRUNABILITY + FINAL
    tab = ["| method | " + " | ".join(f"{t:g}x MACs" for t in ts) + " |", "|" + "---|" * (1 + len(ts))]
    for method in METHODS:
        if not any(method in rows[n] for n in names):
            continue
        cells = [method]
        for t in ts:
            if paired:
                sp = [paired[f"{n}/{method}"][str(t)] for n in names
                      if f"{n}/{method}" in paired and str(t) in paired[f"{n}/{method}"]]
            else:  # timed during the run: drifts with the machine's load
                k = _get(("final", str(t), "latency_s") if t in FINAL else ("points", str(t), "latency_s"))
                sp = [base_lat[n] / k(rows[n][method]) for n in names
                      if method in rows[n] and n in base_lat and k(rows[n][method])]
            macs = [_get(("points", str(t), "macs_speedup"))(rows[n][method]) for n in names if method in rows[n]]
            macs = [m for m in macs if m]
            m, s_ = _mean_std(sp)
            cells.append(f"{m:.2f} ± {s_:.2f} (MACs {statistics.fmean(macs):.2f})" if sp else "–")
        tab.append("| " + " | ".join(cells) + " |")
    bl = [1000 * v for v in base_lat.values()]
    how = ("paired: base and pruned timed back to back, " + str(results["latency_pass"]["rounds"])
           + " alternating rounds of " + str(results["latency_pass"]["repeats"]) + " passes, ratio of the fastest rounds" if paired else "timed during the run (load drift!)")
    md["latency"] = tab + ["", f"Measured latency speed-up (base / pruned), mean ± std over held-out models; "
                                f"in brackets the mean MACs speed-up actually reached. Batch 256, 8x8 inputs, "
                                f"width 1.0, 1 thread, {how}. Base latency during the run: "
                                f"{min(bl):.0f}-{max(bl):.0f} ms per batch." if bl else ""]

    base_acc = [results["base"][n]["test"] for n in names if n in results.get("base", {})]
    lines.append(f"Held-out models ({len(names)}): {', '.join(names)}; base test accuracy "
                 f"{_fmt(base_acc)} %.")
    if "metanet" in results:
        lines.append(f"Metanetwork: {results['metanet']}")
    for part, tab in md.items():
        (out / f"{part}{suffix}.md").write_text("\n".join(tab) + "\n")
    _plots(plot_series, final_series, out, suffix, len(names), settings)
    return "\n".join(lines)


def _plots(prun, final, out: Path, suffix: str, n: int, settings) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, series in prun.items():
        xs, ms, ss = zip(*series)
        style = "--" if label.endswith("*") else "-"
        ax.errorbar(xs, [100 * m for m in ms], yerr=[100 * s for s in ss], fmt=style + "o", capsize=3,
                    label=label, alpha=0.9 if style == "-" else 0.6)
    ax.set_xlabel("MACs speed-up (vs held-out model)")
    ax.set_ylabel("test accuracy % (BN recalibrated, no fine-tune)")
    ax.set_title(f"Prunability, ResNet-20 digits 8x8, {n} held-out models, mean ± std")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"prunability{suffix}.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 5.5))
    methods = list(final)
    width = 0.8 / max(len(methods), 1)
    for i, m in enumerate(methods):
        xs, ms, ss = zip(*final[m])
        pos = [j + i * width for j in range(len(xs))]
        ax.bar(pos, [100 * v for v in ms], width, yerr=[100 * s for s in ss], capsize=3, label=m)
    ax.set_xticks([j + width * (len(methods) - 1) / 2 for j in range(len(FINAL))])
    ax.set_xticklabels([f"{t:g}x" for t in FINAL])
    lo = min((100 * (m - s) for s_ in final.values() for _, m, s in s_ if not math.isnan(m)), default=0)
    ax.set_ylim(max(0, lo - 5), 100)
    ax.set_ylabel(f"test accuracy % after {settings['ft_epochs']} fine-tune epochs")
    ax.set_title(f"Final accuracy, {n} held-out models, mean ± std")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)
    fig.tight_layout()
    fig.savefig(out / f"final{suffix}.png", dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5, help="number of held-out models (default 5)")
    p.add_argument("--heldout", default="fresh", choices=["fresh", "meta-val", "mixed"])
    p.add_argument("--epochs", type=int, default=5, help="before-pruning epochs, every method")
    p.add_argument("--ft-epochs", type=int, default=20, help="fine-tune epochs after pruning (final part)")
    p.add_argument("--steps", type=int, default=100, help="progressive pruning steps")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--recal-batches", type=int, default=20)
    p.add_argument("--max-layer-ratio", type=float, default=0.75)
    p.add_argument("--normalizer", default="max")
    p.add_argument("--ablate-normalizer", nargs="*", default=["sum"])
    p.add_argument("--sparse-reg", type=float, default=5e-4)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--metanet", default=METANET_NAME)
    p.add_argument("--no-metanet-zero", dest="metanet_zero", action="store_false",
                   help="skip the extra metanet@0ep prunability row")
    p.add_argument("--wait-metanet", type=float, default=0.0,
                   help="minutes to wait for the shipped metanetwork before its rows")
    p.add_argument("--latency-batch", type=int, default=256)
    p.add_argument("--latency-repeats", type=int, default=10)
    p.add_argument("--data-seed", type=int, default=0, help="the zoo's dataset split")
    p.add_argument("--quick", action="store_true", help="2 meta-val models, 1+2 epochs, 100 steps")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args(argv)
    if a.quick:
        a.seeds, a.epochs, a.ft_epochs, a.steps = min(a.seeds, 2), 1, 2, 100
        a.heldout = "meta-val" if a.heldout == "fresh" else a.heldout
        a.latency_repeats = 3
    torch.set_num_threads(1)
    a.out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if a.quick else ""
    path = a.out / f"results{suffix}.json"
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()
                if k not in ("methods", "wait_metanet", "report_only", "out", "metanet_zero")}
    results: dict[str, Any] = {"settings": settings, "runs": {}, "base": {}}
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("settings") == settings:
            results = old
        elif not a.report_only:
            log(f"{path} has other settings; starting afresh (old file kept as .bak)")
            path.rename(path.with_suffix(".json.bak"))
        else:
            results = old
    if a.report_only:
        print(report(results, a.out, suffix))
        return 0
    results["command"] = "python benchmarks/quality.py " + " ".join(sys.argv[1:] if argv is None else argv)

    def save() -> None:
        results["date"] = datetime.datetime.now().isoformat(timespec="minutes")
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
        tmp.replace(path)

    runner = Runner(a)
    models = heldout_mod.heldout_models(a.heldout, a.seeds, log=log)
    for h in models:
        if h.name not in results["base"]:
            model, _ = heldout_mod.load(h)
            _, val, test = runner.loaders(h.seed)
            cost = measure_cost(model, runner.example)
            results["base"][h.name] = {"val": evaluate(model, val), "test": evaluate(model, test),
                                       "macs": cost.macs, "params": cost.params,
                                       "latency_s": runner.latency(model)}
            save()
    order = [m for m in METHODS if m in a.methods and m != "metanet"] + (["metanet"] if "metanet" in a.methods else [])
    for method in order:
        if method == "metanet":
            deadline = time.time() + 60 * a.wait_metanet
            while not metanet_available(a.metanet) and time.time() < deadline:
                log(f"waiting for metanetwork {a.metanet!r} ...")
                time.sleep(120)
            try:
                runner.metanetwork()
                results["metanet"] = metanet_provenance(a.metanet)
            except Exception as err:  # noqa: BLE001 -- report and go on with the baselines
                log(f"metanet rows skipped: cannot load {a.metanet!r}: {err}")
                continue
        for i, h in enumerate(models):
            key = f"{h.name}/{method}"
            if key in results["runs"]:
                continue
            rec = runner.run_one(h, method, seed=i)
            results["runs"][key] = rec
            save()
            pts = " ".join(f"{t}x:{100 * v['test']:.1f}" for t, v in rec["points"].items() if "test" in v)
            fin = " ".join(f"{t}x:{100 * v['test']:.1f}" for t, v in rec["final"].items())
            log(f"{key}: before {100 * rec['prepared']['test']:.1f} | {pts} | ft {fin} | {rec['seconds']:.0f} s")
    print(report(results, a.out, suffix))
    return 0


if __name__ == "__main__":
    sys.exit(main())
