"""The checkpoint-selection signal: area under the accuracy-vs-MACs-speed-up curve.

A network is pruned progressively with group-L2 importance; after every step its
BatchNorm statistics are re-estimated on a few training batches (no fine-tune) and its
accuracy measured on the *validation* split. Without recalibration accuracy is near chance
from 2x up for every method on ``digits``, so the curve would not tell metanetworks apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from torch import Tensor, nn

from metaprune.pruning.bn import recalibrate_bn
from metaprune.pruning.finetune import evaluate
from metaprune.pruning.progressive import StepInfo, progressive_prune

__all__ = ["CurvePoint", "accuracy_at", "curve_auc", "pruning_curve"]


@dataclasses.dataclass(frozen=True)
class CurvePoint:
    """Accuracy of the network pruned to ``speedup`` x fewer MACs."""

    speedup: float
    accuracy: float


def pruning_curve(
    model: nn.Module,
    example_inputs: Tensor | tuple[Tensor, ...],
    train_batches: Iterable,
    val_batches: Iterable,
    *,
    max_speedup: float = 3.0,
    steps: int = 40,
    recalibrate_batches: int = 5,
    normalizer: str = "max",
) -> list[CurvePoint]:
    """Prune ``model`` (in place) up to ``max_speedup`` and measure the curve, step 0 first.

    Args:
        train_batches: ``(inputs, labels)`` batches for BatchNorm recalibration.
        val_batches: batches accuracy is measured on (the validation split).
        steps: pruning steps to reach ``100 %`` of the prunable channels; pruning stops at
            the first step that reaches ``max_speedup``.
        normalizer: group-L2 normaliser of the global ranking.
    """
    points: list[CurvePoint] = []

    def measure(info: StepInfo, pruned: nn.Module) -> None:
        recalibrate_bn(pruned, train_batches, recalibrate_batches)
        points.append(CurvePoint(info.macs_speedup, evaluate(pruned, val_batches)))

    progressive_prune(
        model,
        example_inputs,
        max_speedup,
        importance="group-l2",
        steps=steps,
        on_step=measure,
        normalizer=normalizer,
    )
    return points


def curve_auc(points: Sequence[CurvePoint], max_speedup: float) -> float:
    """Mean accuracy over speed-ups ``[1, max_speedup]``: the trapezoidal area under the
    curve divided by ``max_speedup - 1``, so it is an accuracy in ``[0, 1]``.

    The curve is cut at ``max_speedup`` by linear interpolation; if pruning stopped short
    of it (every layer at its floor), the last accuracy is carried to ``max_speedup``.
    """
    if not points:
        raise ValueError("curve_auc: the curve has no points")
    if max_speedup <= 1.0:
        return points[0].accuracy
    xs = [min(p.speedup, max_speedup) for p in points]
    ys = [p.accuracy for p in points]
    if points[-1].speedup > max_speedup and len(points) > 1:
        (x0, y0), (x1, y1) = (
            (points[-2].speedup, points[-2].accuracy),
            (points[-1].speedup, points[-1].accuracy),
        )
        ys[-1] = y0 + (y1 - y0) * (max_speedup - x0) / (x1 - x0)
    if xs[-1] < max_speedup:
        xs.append(max_speedup)
        ys.append(ys[-1])
    area = sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1))
    return area / (max_speedup - 1.0)


def accuracy_at(points: Sequence[CurvePoint], speedup: float) -> float:
    """The curve's accuracy at ``speedup``, linearly interpolated (held flat past its ends)."""
    if not points:
        raise ValueError("accuracy_at: the curve has no points")
    if speedup <= points[0].speedup:
        return points[0].accuracy
    for a, b in zip(points[:-1], points[1:]):
        if a.speedup <= speedup <= b.speedup:
            if b.speedup == a.speedup:
                return b.accuracy
            return a.accuracy + (b.accuracy - a.accuracy) * (speedup - a.speedup) / (
                b.speedup - a.speedup
            )
    return points[-1].accuracy
