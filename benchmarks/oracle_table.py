"""A default's gap to the hindsight oracle, per held-out model and family (issue 20).

    python benchmarks/oracle_table.py \\
        --oracle benchmarks/quality/issue20k_oracle_a.json benchmarks/quality/issue20k_oracle_r20.json \\
        --default benchmarks/quality/issue20j_shipped_3x.json benchmarks/quality/issue20j_shipped_r20b.json:3 \\
                  benchmarks/quality/issue20j_stepdown_2x.json benchmarks/quality/issue20j_stepdown_r20b.json:2

Reads ``quality_families.py`` JSONs: the fixed-strength rows (``reg=R``, from
``--oracle``) and the rows of the default to judge (``--row``, ``default`` unless said,
from ``--default``). ``FILE:2,3`` takes only those targets of a file (a file can hold
rows of another rule at the other target). A cell given twice takes the later file and
says so on stderr. The **oracle** of a model and target is its best fixed strength on
test, in hindsight (a bound no method can use); the gap is default - oracle, in test
points. A family meets issue 20's target at a target when its mean gap is >= -2 (the
mean default within 2 points of the mean of the per-model oracles); the count of models
within 2 is shown beside it. Test % with validation % in brackets.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

TOLERANCE = 2.0  # points: issue 20's "within 2 points of the oracle"
Cell = dict[str, float]  # {"test": %, "val": %}


def _spec(text: str) -> tuple[Path, set[str] | None]:
    """``FILE`` or ``FILE:2,3`` -> (path, targets as the JSON's keys, e.g. {"2.0", "3.0"})."""
    path, sep, targets = text.rpartition(":")
    if not sep:
        return Path(text), None
    return Path(path), {str(float(t)) for t in targets.split(",")}


def load_rows(
    specs: list[str], keep, budget: int
) -> dict[tuple[str, str], dict[str, dict[str, Cell]]]:
    """(family, model) -> row label -> target -> cell, for the rows ``keep(label)`` accepts
    at ``budget`` total epochs; later files override earlier ones (noted on stderr)."""
    out: dict[tuple[str, str], dict[str, dict[str, Cell]]] = {}
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


def table(oracle_rows, default_rows, row: str, targets: list[str]) -> str:
    """Markdown: one line per model and target, then the family means and the verdict."""
    regs = sorted({lbl for rows in oracle_rows.values() for lbl in rows}, key=_reg_key)
    head = ["model", "target", row] + regs + ["oracle (strength)", "gap"]
    md = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    summary = ["| family | target | models | default mean | oracle mean | mean gap | models within 2 | met |",
               "|---" * 8 + "|"]  # fmt: skip
    for family in sorted({f for f, _ in oracle_rows} | {f for f, _ in default_rows}):
        models = sorted({m for f, m in oracle_rows if f == family} | {m for f, m in default_rows if f == family},
                        key=lambda m: int(m.lstrip("s")))  # fmt: skip
        for target in targets:
            pairs = []  # (default test, oracle test) where both exist
            for model in models:
                fixed = oracle_rows.get((family, model), {})
                cells = {r: fixed.get(r, {}).get(target) for r in regs}
                measured = {r: c for r, c in cells.items() if c is not None}
                best = (
                    max(measured, key=lambda r: measured[r]["test"]) if measured else None
                )  # first of equals
                ours = default_rows.get((family, model), {}).get(row, {}).get(target)
                gap = (
                    None if ours is None or best is None else ours["test"] - measured[best]["test"]
                )
                if gap is not None:
                    pairs.append((ours["test"], measured[best]["test"]))
                oracle = (
                    "–" if best is None else f"{measured[best]['test']:.1f} ({_reg_key(best):g})"
                )
                md.append(f"| {family}/{model} | {float(target):g}x | {_fmt(ours)} | "
                          + " | ".join(_fmt(cells[r]) for r in regs)
                          + f" | {oracle} | {'–' if gap is None else f'{gap:+.1f}'} |")  # fmt: skip
            if pairs:
                mean_ours = statistics.fmean(p[0] for p in pairs)
                mean_best = statistics.fmean(p[1] for p in pairs)
                within = sum(o - b >= -TOLERANCE for o, b in pairs)
                met = "yes" if mean_ours - mean_best >= -TOLERANCE else "**no**"
                summary.append(f"| {family} | {float(target):g}x | {len(pairs)} | {mean_ours:.1f} | {mean_best:.1f} "
                               f"| {mean_ours - mean_best:+.1f} | {within} of {len(pairs)} | {met} |")  # fmt: skip
    return "\n".join(md) + "\n\n" + "\n".join(summary) + "\n"


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
    p.add_argument("--out", type=Path, help="also write the table here (markdown)")
    a = p.parse_args(argv)
    oracle_rows = load_rows(a.oracle, lambda label: label.startswith("reg="), a.budget)
    default_rows = load_rows(a.default, lambda label: label == a.row, a.budget)
    text = table(oracle_rows, default_rows, a.row, [str(t) for t in a.targets])
    if a.out:
        a.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
