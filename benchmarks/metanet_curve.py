"""Issue 21: a learning curve of meta-training against effective members, with and without
weight-space augmentations, and the held-out 0-epoch check of the result.

    # meta-train on a snapshot zoo (metanet/configs/zoo_resnet20_digits_snap3.yaml), at equal steps
    nice python benchmarks/metanet_curve.py fit --zoo runs/zoo-resnet20-digits-snap3 --snapshots 1 --tag s1
    nice python benchmarks/metanet_curve.py fit --zoo runs/zoo-resnet20-digits-snap3 --snapshots 3 --aug --tag s3-aug
    # the same run trained on to 8 epochs from its last checkpoint (same options, --resume TAG)
    nice python benchmarks/metanet_curve.py fit --zoo runs/zoo-resnet20-digits-snap3 --snapshots 3 --aug --epochs 8 --tag s3-aug-e8 --resume s3-aug
    # held-out ResNet-20s (benchmarks/quality_heldout.py, seeds 100+), 0 epochs, 2x / 3x MACs:
    # the guarded metanet path with an export against the default (`auto`: criterion chosen on validation)
    nice python benchmarks/metanet_curve.py heldout --export runs/metanet-curve/s3-aug/best --n 5
    # the learning curve of held-out gain against distinct training runs, and its extrapolation
    python benchmarks/metanet_curve.py curve --point d21-r24-3x-aug:24 --point d21-r96-3x-aug:96

``fit`` uses the recipe of ``general-digits`` (canonical edges, 4 x 32, ratios 0.1,
prune-aware objective, batch-statistics BN, gradient clip 1) and holds the number of
optimizer steps per epoch fixed (``--steps``), so 1x and 3x members cost the same compute;
``val/auc_gain`` is the selection signal's gain over the members as they are (meta-val:
the final network of each held-out *run*; no run is on both sides). Rows go to
``benchmarks/quality/metanet_curve.json``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
from pathlib import Path

import torch

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # benchmarks/metanet.py
sys.path.insert(len(sys.path), str(_HERE))
if str(_HERE.parent) not in sys.path:
    sys.path.insert(0, str(_HERE.parent))

OUT = _HERE / "quality" / "metanet_curve.json"
AUG = {"aug_scale": 0.5, "aug_noise": 0.01, "aug_edge_dropout": 0.02, "aug_mixup": 0.5,
       "aug_mixup_min": 0.8}  # fmt: skip


def _update(path: Path, key: str, row: dict) -> None:
    """Add ``key`` to the JSON at ``path``; shards running side by side take turns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.exists() else {}
        data[key] = row
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)


def _augment(a: argparse.Namespace) -> dict:
    """AUG (``--aug``), or one of its augmentations alone (``--aug-only``: the controls)."""
    if a.aug_only:
        keys = {"scale": ["aug_scale"], "noise": ["aug_noise"], "dropout": ["aug_edge_dropout"],
                "mixup": ["aug_mixup", "aug_mixup_min"]}[a.aug_only]  # fmt: skip
        return {k: AUG[k] for k in keys}
    return dict(AUG) if a.aug else {}


def _train_members(zoos: list[str], snapshots: int | None, cap: int | None = None) -> int:
    """How many meta-train members ``ZooDataModule(train_snapshots=snapshots,
    max_train_members=cap)`` will take (read from the zoo indexes: nothing is encoded twice)."""
    from metanet.zoo import Zoo

    count = 0
    for d in zoos:
        z = Zoo.open(d)
        runs = set(z.run_of(m) for m in z.meta_train)
        n = len(z.meta_train) if snapshots is None else sum(
            min(snapshots, len(z.config.run_members(r))) for r in runs)  # fmt: skip
        count += n if cap is None else min(cap, n)
    return count


def fit(a: argparse.Namespace) -> int:
    import lightning as L
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    from metanet.export import export_checkpoint
    from metanet.training import MetaPruneModule, ZooDataModule

    L.seed_everything(a.seed)
    zoo = a.zoo[0] if len(a.zoo) == 1 else a.zoo
    members = _train_members(a.zoo, a.snapshots, a.max_train)
    # every row takes exactly --steps optimizer steps per epoch: each member's batches
    # rounded up, the epoch cut at --steps (a shuffled subset when members > steps)
    per_member = -(-a.steps // members)
    data = ZooDataModule(zoo, batch_size=64, batches_per_member=per_member, eval_batch_size=256,
                         train_snapshots=a.snapshots, max_val_members=a.max_val,
                         max_train_members=a.max_train)  # fmt: skip
    data.setup("fit")  # once (Lightning's own call returns at once)
    assert len(data.train_members) == members, (len(data.train_members), members)
    module = MetaPruneModule(
        num_layers=4, hidden=32, node_ratio=0.1, edge_ratio=0.1, edge_encoding="canonical",
        lr=1e-3, weight_decay=5e-4, lr_step_epochs=100, reg=0.0, val_max_speedup=3.0,
        val_prune_steps=20, val_recalibrate_batches=2, val_normalizer="sum", prune_weight=1.0,
        batch_stats=True, grad_clip=1.0, **_augment(a),
    )  # fmt: skip
    curve: list[dict] = []
    resume, prior = _resume(a)

    class Record(Callback):
        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            m = trainer.callback_metrics
            row = {"epoch": trainer.current_epoch, "step": trainer.global_step,
                   **{k: round(float(m[f"val/{k}"]), 4) for k in ("auc", "auc_base", "auc_gain")}}  # fmt: skip
            curve.append(row)
            print(a.tag, row, flush=True)

    root = Path(a.runs) / a.tag
    ckpt = ModelCheckpoint(dirpath=root / "checkpoints", monitor="val/auc", mode="max",
                           save_top_k=1, filename="best-{epoch:03d}")  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=a.epochs, logger=False,
                        limit_train_batches=a.steps,
                        check_val_every_n_epoch=a.val_every, num_sanity_val_steps=0,
                        callbacks=[ckpt, Record()], enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(root))  # fmt: skip
    start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=resume)
    seconds = time.perf_counter() - start
    curve = [*prior, *curve]  # selection over the whole run, the resumed epochs included
    best = max(curve, key=lambda r: r["auc"])
    export_checkpoint(resume if best in prior else ckpt.best_model_path, root / "best")
    _update(Path(a.out), a.tag, {
        "zoo": zoo, "snapshots_per_run": a.snapshots, "train_members": members,
        "train_runs": len({m.name.split(".")[0] for m in data.train_members}),
        "val_members": len(data.val_members), "augment": _augment(a) or None,
        "steps": trainer.global_step, "batches_per_member": per_member, "curve": curve,
        "max_val": a.max_val, "max_train": a.max_train,
        "best": best, "last": curve[-1], "seconds": round(seconds), "seed": a.seed,
        "export": str(root / "best"), "resumed_from": a.resume,
    })  # fmt: skip
    return 0


def _resume(a: argparse.Namespace) -> tuple[str | None, list[dict]]:
    """``--resume TAG``: the checkpoint of run TAG (its only one, which must be its last
    validation: ``save_top_k=1`` keeps the best) and TAG's curve; more epochs on the same
    optimizer state are the same run trained longer, without paying its first epochs again."""
    if a.resume is None:
        return None, []
    done = json.loads(Path(a.out).read_text()) if Path(a.out).exists() else {}
    if a.resume not in done:
        raise SystemExit(f"fit --resume: no run {a.resume!r} in {a.out}")
    prior = done[a.resume]["curve"]
    ckpts = sorted((Path(a.runs) / a.resume / "checkpoints").glob("*.ckpt"))
    if len(ckpts) != 1:
        raise SystemExit(f"fit --resume: expected one checkpoint of {a.resume!r}, found {ckpts}")
    epoch = torch.load(ckpts[0], map_location="cpu", weights_only=True)["epoch"]  # tensors and plain types only
    if epoch != prior[-1]["epoch"] or a.epochs <= epoch + 1:
        raise SystemExit(f"fit --resume: {ckpts[0]} is epoch {epoch}; the run's last validation "
                         f"was epoch {prior[-1]['epoch']} and --epochs must exceed {epoch + 1}")  # fmt: skip
    return str(ckpts[0]), prior


def heldout(a: argparse.Namespace) -> int:
    import quality_heldout as heldout_mod

    import metanet  # noqa: F401  (registers the metanet method)
    from metaprune.pruning import FinetuneBudget, PruneConfig, Target, prune

    out = Path(a.heldout_out)
    shard, shards = (int(x) for x in a.shard.split("/"))
    cells = [(h, t) for h in heldout_mod.heldout_models(a.family, a.n) for t in a.targets]
    jobs = [] if a.no_default else [("default", {})]
    if a.export:
        jobs.append((a.tag, {"method": "metanet", "metanet": str(a.export)}))
    if a.default_if_rewritten:  # the metanet job first: it may make the default's redundant
        jobs.reverse()
    mine = cells[shard::shards][:: -1 if a.reverse else 1]  # other shards take the rest
    for h, t in mine:
        for tag, options in jobs:
            key = f"{tag}/{h.name}/{t}"
            done = json.loads(out.read_text()) if out.exists() else {}
            if key in done:
                continue
            mine_row = done.get(f"{a.tag}/{h.name}/{t}") or {}
            if tag == "default" and a.default_if_rewritten and mine_row and (
                (mine_row.get("reference") or {}).get("kept") != "prepared"
            ):  # the input was pruned: by construction the default's job (tests/metanet/test_method.py)
                _update(out, key, {**mine_row, "derived_from": a.tag, "guard": None, "reference": None})
                continue
            config = PruneConfig(target=Target("macs", t), before_pruning=FinetuneBudget(epochs=0),
                                 after_pruning=FinetuneBudget(epochs=0), **options)  # fmt: skip
            start = time.perf_counter()
            report = prune(h.path, "digits", config).report
            guard = report["stages"].get("before_pruning", {}).get("metanet", {})
            reference = dict(report["stages"]["prune"].get("reference") or {})
            reference.pop("other_search", None)  # the rewrite against the input at the target
            row = {"test": report["final"]["test_accuracy"], "val": report["final"]["val_accuracy"],
                   "macs_speedup": report["speedup"]["macs"],
                   "choice": report.get("method_choice"),
                   "guard": guard.get("accuracy_check") if isinstance(guard, dict) else None,
                   "reference": reference or None,
                   "seconds": round(time.perf_counter() - start)}  # fmt: skip
            _update(out, key, row)
            print(key, f"test {100 * row['test']:.1f}", row["guard"], row["reference"], flush=True)
    if a.export and shards == 1:  # the evidence travels with the export (metanet.record)
        from metanet.record import attach_record, heldout_record

        record = heldout_record(json.loads(out.read_text()), a.tag)
        attach_record(a.export, record)
        print(json.dumps(record, indent=1))
    return 0


def curve(a: argparse.Namespace) -> int:
    """Held-out gain and paired wins per point (``TAG:RUNS[:JSON]``), and the log-linear
    extrapolation (metanet.record.extrapolate_runs) to the decision rule's +2 points."""
    from metanet.record import extrapolate_runs, heldout_record

    points: list[tuple[int, dict]] = []
    for spec in a.point:
        tag, runs, *path = spec.split(":")
        source = Path(path[0] if path else a.heldout_out)
        record = heldout_record(json.loads(source.read_text()), tag).get(a.family)
        if record is None:
            raise SystemExit(f"curve: no {tag!r} rows paired with 'default' on {a.family} in {source}")
        targets = record["targets"]
        print(f"| {tag} | {runs} | " + " | ".join(
            f"{100 * s['gain']:+.1f} ± {100 * s.get('gain_se', 0):.1f}, {s['wins']}/{s['models']}"
            for s in targets.values()) + " |")  # fmt: skip
        points.append((int(runs), {t: s["gain"] for t, s in targets.items()}))
    names = sorted(set.intersection(*(set(g) for _, g in points)))
    for name in [*names, "mean"]:
        gains = [(r, sum(g[t] for t in names) / len(names) if name == "mean" else g[name])
                 for r, g in points]  # fmt: skip
        fit = extrapolate_runs(gains)
        need = fit["runs_for_goal"]
        print(f"{name}: {100 * fit['slope']:+.2f} points per doubling of distinct runs; "
              f"+{100 * fit['goal']:.0f} points at " + ("never" if need is None else f"~{need:.0f} runs"))  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit")
    f.add_argument("--zoo", required=True, nargs="+",
                   help="zoo directories (several: one meta-training over all, e.g. the chunks of "
                   "metanet/configs/zoo_resnet20_digits_distinct.yaml)")
    f.add_argument("--snapshots", type=int, default=None, help="members per meta-train run")
    f.add_argument("--aug", action="store_true", help="the augmentations of AUG")
    f.add_argument("--aug-only", choices=("scale", "noise", "dropout", "mixup"), default=None,
                   help="one augmentation of AUG alone (a control)")
    f.add_argument("--tag", required=True)
    f.add_argument("--epochs", type=int, default=8)
    f.add_argument("--steps", type=int, default=36, help="optimizer steps per epoch")
    f.add_argument("--val-every", type=int, default=2)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--max-val", type=int, default=None,
                   help="meta-val runs per zoo (the first ones; default all): validation cost")
    f.add_argument("--max-train", type=int, default=None,
                   help="meta-train members per zoo (the first ones, whole runs in order; default all)")
    f.add_argument("--runs", default="runs/metanet-curve")
    f.add_argument("--resume", default=None,
                   help="a run's tag (same options) to train on from its last checkpoint to --epochs")
    h = sub.add_parser("heldout")
    h.add_argument("--export", default=None, help="a metanet export (none: the default only)")
    h.add_argument("--tag", default="metanet")
    h.add_argument("--family", default="cifar_resnet20")
    h.add_argument("--n", type=int, default=5)
    h.add_argument("--targets", type=float, nargs="+", default=[2.0, 3.0])
    h.add_argument("--shard", default="0/1", help="i/k: every k-th (model, target) from the i-th")
    h.add_argument("--no-default", action="store_true", help="skip the baseline rows")
    h.add_argument("--default-if-rewritten", action="store_true",
                   help="run the baseline only where the metanet job pruned the rewrite; elsewhere "
                   "it pruned the input exactly as the baseline does, so its row is the baseline's")
    h.add_argument("--reverse", action="store_true",
                   help="the shard from its end (a second process meets the first half-way)")
    c = sub.add_parser("curve")
    c.add_argument("--point", action="append", required=True,
                   help="TAG:RUNS[:JSON]: a held-out tag, its distinct meta-train runs, its rows "
                   "(default --heldout-out)")
    c.add_argument("--family", default="cifar_resnet20")
    for q in (h, c):
        q.add_argument("--heldout-out", default=str(OUT.with_name("metanet_curve_heldout.json")))
    for q in (f, h):
        q.add_argument("--out", default=str(OUT))
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    return {"fit": fit, "heldout": heldout, "curve": curve}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
