"""``ImportanceOptions(normalizer="auto")``: the group-L2 normaliser chosen on validation.

How group importances are normalised before the global ranking decides which layers
lose channels, and no normaliser is best everywhere (held-out ``digits`` models, test
accuracy at 3x MACs with no fine-tune, ``benchmarks/RESULTS.md``): on VGG-11 ``sum``
beat ``max`` and ``mean`` by ~15 points; on ResNet-20s lightly pruned with ``max`` (the
old zoo recipe) ``max`` was worse than random, while on ResNet-20s lightly pruned with
``sum`` ``mean`` beat ``sum`` by ~10 points. ``"auto"`` prunes a copy of the prepared
model to the target with each candidate (no fine-tune) and keeps the candidate with the
best **validation** accuracy (ties: the earlier candidate, ``sum`` first).

The pipeline scores candidates on a cheap proxy (``ImportanceOptions.search_images`` /
``search_steps``): BatchNorm re-estimated in one training-mode pass over a fixed subset
of training images and accuracy on a fixed subset of validation images, where the first
version recalibrated exactly over 20 batches and scored on the whole split (three full
prunes: minutes per candidate for a ResNet-50 at 224x224). How often the proxy picks
what the full search picked, and what a different pick costs, is measured by
``benchmarks/normalizer_proxy.py`` (``benchmarks/RESULTS.md``, issue 18). The cost is
reported as ``stage_seconds["normalizer_search"]``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["NORMALIZER_CANDIDATES", "choose_normalizer"]

#: tried in this order; ``sum`` first because it was never catastrophic in our measurements
NORMALIZER_CANDIDATES = ("sum", "mean", "max")


def choose_normalizer(
    model: nn.Module,
    prune_copy: Callable[[nn.Module, str], None],
    score: Callable[[nn.Module], float],
    candidates: tuple[str, ...] = NORMALIZER_CANDIDATES,
) -> tuple[str, dict[str, Any]]:
    """Prune a copy of ``model`` with each candidate normaliser and keep the best one.

    Args:
        model: the prepared model (not modified).
        prune_copy: ``prune_copy(copy, normalizer)`` prunes ``copy`` in place to the target.
        score: validation accuracy of a pruned copy (it should recalibrate BatchNorm).
        candidates: normalisers to try, in order of preference on ties.

    Returns:
        ``(normalizer, record)``: the choice, and each candidate's validation accuracy
        and seconds, with the total seconds.
    """
    start = time.perf_counter()
    trials = []
    for name in candidates:
        t0 = time.perf_counter()
        pruned = copy.deepcopy(model)
        prune_copy(pruned, name)
        trials.append({"normalizer": name, "val_accuracy": score(pruned),
                       "seconds": time.perf_counter() - t0})  # fmt: skip
        del pruned
    best = max(trials, key=lambda t: t["val_accuracy"])  # max keeps the first of equals
    record = {
        "trials": trials,
        "chosen": best["normalizer"],
        "seconds": time.perf_counter() - start,
    }
    return best["normalizer"], record
