"""How a fixed sparse-training strength's prunability evolves, epoch by epoch (issue 20).

    python benchmarks/quality_reg_trajectory.py --family cifar_resnet56 --seeds 2 --seed0 200 \
        --regs 0.03 0.1 --target 3 --out benchmarks/quality/issue20i_traj_fit.json

For each model and strength, the default job (``PruneConfig()``, the budget and the target
set, no fine-tune) runs through :func:`metaprune.pruning.prune` with its ``reg="auto"``
search replaced by one sparse training at that strength for the whole budget
(:class:`~metaprune.pruning.sparse.SparseRun`, the search's own training loop), scored
after every epoch by the job's own proxy (a copy pruned to the target, BN recalibrated,
the validation split) and by the *unpruned* validation accuracy. The end of the run is
pruned by the job as usual (criterion search, test accuracy reported). The question it
answers: is there a signal, early in the budget and on validation only, that a strength
is the wrong one for a model (e.g. it damages the unpruned network)?
Seeds 200+ (``--seed0 200``) are models to look for such a rule on, apart from the held-out
100+.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # benchmarks/metanet.py
if str(_HERE.parent) not in sys.path:
    sys.path.insert(0, str(_HERE.parent))
sys.path.append(str(_HERE))  # last, after the repo: quality_heldout, not metanet.py

import quality_heldout as heldout_mod  # noqa: E402

from metaprune.pruning import FinetuneBudget, PruneConfig, Target, evaluate, methods, prune  # noqa: E402
from metaprune.pruning.sparse import SparseRun  # noqa: E402


def log(*args: Any) -> None:
    print(time.strftime("%H:%M:%S"), *args, flush=True)


def fixed_trajectory(
    reg: float,
    rows: list[dict[str, float]],
    switch: tuple[int, float] | None = None,
    step_down: tuple[float, float] | None = None,
):
    """A stand-in for ``search_reg``: ``reg`` trains the whole budget, scored every epoch
    (``switch=(epoch, reg2)``: from that epoch on the strength is ``reg2``, same run and
    schedule: what a step-down rule firing there would do; ``step_down=(z, reg2)``: the
    rule itself, from epoch 2 on: the first time the proxy is more than ``z`` standard
    errors below its best so far, the strength becomes ``reg2``)."""

    def search(model, ctx):
        start = time.perf_counter()
        per_epoch = max(1, len(ctx.train_loader))
        epochs = ctx.config.before_pruning.epochs
        run = SparseRun(model, ctx, reg, epochs * per_epoch)
        for epoch in range(epochs + 1):
            if switch is not None and epoch == switch[0] + 1:
                run.regulariser.reg = switch[1]  # GroupNormPruner reads it at every step
            if step_down is not None and len(rows) >= 3 and run.regulariser.reg == reg:
                peak, last = max(r["proxy"] for r in rows[:-1]), rows[-1]["proxy"]
                if peak - last > step_down[0] * math.sqrt((peak * (1 - peak) + last * (1 - last)) / ctx.proxy_images):
                    run.regulariser.reg = step_down[1]
                    rows[-1]["step_down"] = step_down[1]
            if epoch:
                run.advance(per_epoch)
            rows.append({"epoch": epoch, "proxy": ctx.proxy(run.model),
                         "unpruned_val": evaluate(run.model, ctx.val_loader, ctx.device)})  # fmt: skip
            log(f"  reg {reg:g} epoch {epoch}: proxy {rows[-1]['proxy']:.3f}, unpruned {rows[-1]['unpruned_val']:.3f}")
        record = {"trials": [], "epochs_trained": float(epochs), "seconds": time.perf_counter() - start}
        return run.model, reg, record

    return search


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", nargs="+", required=True)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--seed0", type=int, default=200)
    p.add_argument("--regs", type=float, nargs="+", default=[0.03, 0.1])
    p.add_argument("--target", type=float, default=3.0)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--switch", help="EPOCH:REG, e.g. 3:0.03: after that epoch the strength steps to REG")
    p.add_argument("--step-down", help="Z:REG, e.g. 2:0.03: the step-down rule (see fixed_trajectory)")
    p.add_argument("--only-seeds", type=int, nargs="+")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    original = methods.search_reg
    switch = None
    if a.switch:
        at, to = a.switch.split(":")
        switch = (int(at), float(to))
    step_down = None
    if a.step_down:
        z, to = a.step_down.split(":")
        step_down = (float(z), float(to))
    for fam in a.family:
        for h in heldout_mod.heldout_models(fam, a.seeds, log=log, seed0=a.seed0):
            if a.only_seeds and h.seed not in a.only_seeds:
                continue
            for reg in a.regs:
                key = f"{h.name}/{reg:g}/{a.target:g}x" + (f"/switch{a.switch}" if a.switch else "") + (
                    f"/stepdown{a.step_down}" if a.step_down else "")
                data = json.loads(a.out.read_text()) if a.out.exists() else {"runs": {}}
                if key in data["runs"]:
                    continue
                rows: list[dict[str, float]] = []
                methods.search_reg = fixed_trajectory(reg, rows, switch, step_down)
                config = PruneConfig(target=Target("macs", a.target), after_pruning=FinetuneBudget(epochs=0),
                                     before_pruning=FinetuneBudget(epochs=a.epochs))  # fmt: skip
                try:
                    report = prune(h.path, "digits", config).report
                finally:
                    methods.search_reg = original
                data = json.loads(a.out.read_text()) if a.out.exists() else {"runs": {}}
                data["runs"][key] = {"trajectory": rows, "test": report["final"]["test_accuracy"],
                                     "val": report["final"]["val_accuracy"],
                                     "base_val": h.metrics["val_accuracy"],
                                     "criterion": report["method_choice"].get("criterion")}  # fmt: skip
                data.setdefault("commands", []).append(" ".join(sys.argv))
                a.out.parent.mkdir(parents=True, exist_ok=True)
                a.out.write_text(json.dumps(data, indent=1, sort_keys=True))
                log(f"{key}: test {100 * data['runs'][key]['test']:.1f} (val {100 * data['runs'][key]['val']:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
