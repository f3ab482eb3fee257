"""``pareto.png``: final accuracy against MACs speed-up for every model, and the front."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["pareto_front", "plot_pareto"]


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats in both speed-up and accuracy, by speed-up."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return sorted(front)


def plot_pareto(rows: list[dict[str, Any]], path: Path) -> Path:
    """Plot the succeeded rows of a batch summary into ``path`` (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r.get("status") == "succeeded" and r.get("macs_speedup")]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    models = sorted({r["model"] for r in done})
    for model in models:
        pts = sorted(
            (r["macs_speedup"], r["final_test_accuracy"]) for r in done if r["model"] == model
        )
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=model)
    front = pareto_front([(r["macs_speedup"], r["final_test_accuracy"]) for r in done])
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black",
                linestyle="--", linewidth=1, label="Pareto front")  # fmt: skip
    ax.set_xlabel("MACs speed-up (base / pruned)")
    ax.set_ylabel("test accuracy after fine-tuning")
    ax.set_title(f"batch: {len(done)} pruned models of {len(models)} inputs")
    ax.grid(alpha=0.3)
    if models and len(models) <= 12:
        ax.legend(fontsize="small")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path
