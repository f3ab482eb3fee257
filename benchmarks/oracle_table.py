"""A default's gap to the hindsight oracle, per held-out model and family (issue 20).

    python benchmarks/oracle_table.py --oracle benchmarks/quality/issue20k_oracle_*.json \\
        --default benchmarks/quality/issue20j_shipped_3x.json benchmarks/quality/issue20j_shipped_r20b.json:3 \\
                  benchmarks/quality/issue20j_stepdown_2x.json benchmarks/quality/issue20j_stepdown_r20b.json:2

Reads ``quality_families.py`` JSONs: the fixed-strength rows (``reg=R``, from
``--oracle``) and the rows of the default to judge (``--row``, ``default`` unless said,
from ``--default``). ``FILE:2,3`` takes only those targets of a file (a file can hold
rows of another rule at the other target). A cell given twice takes the later file and
says so on stderr. The **oracle** of a model and target is its best fixed strength on
test, in hindsight (a bound no method can use); the gap is default - oracle, in test
points. A family meets issue 20's target at a target when its mean gap is >= -2 (the
mean default within 2 points of the mean of the per-model oracles, over the models both
inputs have); the count of models within 2 is shown beside it, and the fixed strength
validation would choose (a non-hindsight reference, though not at equal budget: it trains
every strength). Test % with validation % in brackets. Give one training seed
(``quality_families.py --seed``) per invocation: cells of the same model overwrite.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

TOLERANCE = 2.0  # points: issue 20's "within 2 points of the oracle"
Cell = dict[str, float]  # {"test": %, "val": %}
Rows = dict[tuple[str, str], dict[str, dict[str, Cell]]]  # (family, model) -> label -> target


def _spec(text: str) -> tuple[Path, set[str] | None]:
    """``FILE`` or ``FILE:2,3`` -> (path, targets as the JSON's keys, e.g. {"2.0", "3.0"})."""
    path, sep, targets = text.rpartition(":")
    if not sep:
        return Path(text), None
    return Path(path), {str(float(t)) for t in targets.split(",")}


def load_rows(specs: list[str], keep: Callable[[str], bool], budget: int) -> Rows:
    """(family, model) -> row label -> target -> cell, for the rows ``keep(label)`` accepts
    at ``budget`` total epochs; later files override earlier ones (noted on stderr)."""
    out: Rows = {}
    for text in specs:
        path, targets = _spec(text)
        for key, rows in json.loads(path.read_text())["cells"].items():
            family, model, cell_budget = key.split("/")
            if int(cell_budget) != budget:
                continue
            for label, by_target in rows.items():
                if not keep(label):
                    continue
                for target, rec in by_target.items():
                    if targets is not None and target not in targets:
                        continue
                    dest = out.setdefault((family, model), {}).setdefault(label, {})
                    if target in dest:
                        print(f"note: {family}/{model} {label} {target}x: {path.name} overrides "
                              "an earlier file", file=sys.stderr)  # fmt: skip
                    dest[target] = {"test": 100 * rec["test"], "val": 100 * rec["val"]}
    return out


def _fmt(cell: Cell | None) -> str:
    return "–" if cell is None else f"{cell['test']:.1f} ({cell['val']:.1f})"


def _reg_key(label: str) -> float:
    return float(label.split("=", 1)[1])


@dataclasses.dataclass(frozen=True)
class Gap:
    """One model at one target: the judged row, every fixed strength, the oracle, and the
    fixed strength validation would choose (a reference no hindsight inflates: where it and
    the oracle differ, test and validation disagree, often by less than their noise)."""

    family: str
    model: str
    target: str
    ours: Cell | None
    fixed: dict[str, Cell | None]  # "reg=R" -> cell (None: not measured)
    best: str | None  # the oracle's label: best on test, the weakest of equals
    on_val: str | None  # best on validation, the weakest of equals

    @property
    def gap(self) -> float | None:
        if self.ours is None or self.best is None:
            return None
        return self.ours["test"] - self.fixed[self.best]["test"]  # type: ignore[index]


def _argmax(labels: list[str], cells: dict[str, Cell | None], split: str) -> str:
    return max(labels, key=lambda r: cells[r][split])  # type: ignore[index]  # first of equals


def gaps(oracle_rows: Rows, default_rows: Rows, row: str, targets: list[str]) -> list[Gap]:
    """Every (family, target, model) either input has, in that order."""
    regs = sorted({lbl for rows in oracle_rows.values() for lbl in rows}, key=_reg_key)
    out = []
    for family in sorted({f for f, _ in oracle_rows} | {f for f, _ in default_rows}):
        models = {m for f, m in oracle_rows if f == family} | {
            m for f, m in default_rows if f == family
        }
        for target in targets:
            for model in sorted(models, key=lambda m: int(m.lstrip("s"))):
                rows = oracle_rows.get((family, model), {})
                fixed = {r: rows.get(r, {}).get(target) for r in regs}
                measured = [r for r in regs if fixed[r] is not None]
                best, on_val = (
                    (_argmax(measured, fixed, "test"), _argmax(measured, fixed, "val"))
                    if measured
                    else (None, None)
                )
                ours = default_rows.get((family, model), {}).get(row, {}).get(target)
                out.append(Gap(family, model, target, ours, fixed, best, on_val))
    return out


def _pick(g: Gap, label: str | None) -> str:
    return "–" if label is None else f"{g.fixed[label]['test']:.1f} ({_reg_key(label):g})"  # type: ignore[index]


def render(rows: list[Gap], row: str) -> str:
    """Markdown: one line per model and target, then per family and target the means and
    the verdict (the mean gap; models within 2 beside it)."""
    regs = list(rows[0].fixed) if rows else []
    head = ["model", "target", row] + regs + ["oracle (strength)", "gap", "best on val (strength)"]
    md = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for g in rows:
        md.append(f"| {g.family}/{g.model} | {float(g.target):g}x | {_fmt(g.ours)} | "
                  + " | ".join(_fmt(g.fixed[r]) for r in regs)
                  + f" | {_pick(g, g.best)} | {'–' if g.gap is None else f'{g.gap:+.1f}'} | {_pick(g, g.on_val)} |")  # fmt: skip
    md += ["", f"| family | target | models | {row} mean | oracle mean | mean gap | models within 2 | met "
           "| best on val, mean |", "|---" * 9 + "|"]  # fmt: skip
    for family, target in dict.fromkeys((g.family, g.target) for g in rows):
        paired = [g for g in rows if (g.family, g.target) == (family, target) and g.gap is not None]
        if not paired:
            continue
        ours = statistics.fmean(g.ours["test"] for g in paired)  # type: ignore[index]
        gap = statistics.fmean(g.gap for g in paired)  # type: ignore[misc]
        within = sum(g.gap >= -TOLERANCE for g in paired)  # type: ignore[operator]
        on_val = statistics.fmean(g.fixed[g.on_val]["test"] for g in paired)  # type: ignore[index]
        md.append(f"| {family} | {float(target):g}x | {len(paired)} | {ours:.1f} | {ours - gap:.1f} | {gap:+.2f} "
                  f"| {within} of {len(paired)} | {'yes' if gap >= -TOLERANCE else '**no**'} | {on_val:.1f} |")  # fmt: skip
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--oracle", nargs="+", required=True, help="JSONs with reg=R rows (FILE or FILE:2,3)"
    )
    p.add_argument(
        "--default",
        nargs="+",
        required=True,
        help="JSONs with the rows to judge (FILE or FILE:2,3)",
    )
    p.add_argument("--row", default="default", help="the row label to judge in --default files")
    p.add_argument("--budget", type=int, default=10, help="total epochs of the cells compared")
    p.add_argument("--targets", type=float, nargs="+", default=[2.0, 3.0])
    p.add_argument("--regs", type=float, nargs="+", help="the oracle over these strengths only")
    p.add_argument("--out", type=Path, help="also write the table here (markdown)")
    a = p.parse_args(argv)
    wanted = None if a.regs is None else {f"reg={r:g}" for r in a.regs}
    oracle_rows = load_rows(
        a.oracle, lambda lbl: lbl.startswith("reg=") and (wanted is None or lbl in wanted), a.budget
    )
    default_rows = load_rows(a.default, lambda label: label == a.row, a.budget)
    text = render(gaps(oracle_rows, default_rows, a.row, [str(t) for t in a.targets]), a.row)
    if a.out:
        a.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
