"""Automatic choices made by the objective: validation accuracy after pruning to the target.

A job asks for a speed-up, so every automatic choice (the sparse-training strength, the
importance criterion and its normaliser) is judged by the **prunability** it delivers:
a *proxy* prunes a copy of the candidate model to the requested target, recalibrates
BatchNorm and measures validation accuracy (never test). Accuracy before pruning is not
the objective: on held-out ``cifar_resnet56`` / ``cifar_vgg19_bn`` models the largest
strength that kept pre-pruning accuracy within a tolerance lost 6-13 points at 3x to a
fixed stronger one, which in turn lost at 2x (issue 20).

* :func:`choose_criterion`: score each :class:`Candidate` (criterion x normaliser) with
  the proxy, keep the best (ties: the earlier candidate).
* :mod:`metaprune.pruning.sparse` chooses ``reg`` (a choice that needs training) with the
  same proxy: the prior's strength trains the budget, short challengers displace it only
  beyond noise.
* :func:`within_noise`: two accuracies measured on ``n`` validation images differ by
  chance by about ``sqrt((a(1-a) + b(1-b)) / n)`` (one standard error of the difference);
  a choice made by less than that is reading noise (on a held-out ResNet-56 a reg search
  chose 0.01 over 0.03 by one validation image of 64 and lost 40 test points at 2x;
  issue 20).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

__all__ = [
    "Candidate",
    "ProxyFn",
    "choose_criterion",
    "criterion_candidates",
    "proxy_images",
    "within_noise",
]


@dataclasses.dataclass(frozen=True)
class Candidate:
    """An importance criterion with its group normaliser, e.g. ``group-l2[sum]``."""

    criterion: str
    normalizer: str

    @property
    def label(self) -> str:
        return f"{self.criterion}[{self.normalizer}]"


#: ``proxy(model, candidate)``: validation accuracy of a copy of ``model`` pruned to the
#: job's target with ``candidate`` and BN-recalibrated (``model`` itself is not modified)
ProxyFn = Callable[[nn.Module, Candidate], float]

#: data-aware criteria use Torch-Pruning's default normaliser (``mean``; on held-out
#: ResNet-20s it beat ``sum`` and ``max`` for ``taylor`` by 10-25 points at 2x)
DATA_AWARE_NORMALIZER = "mean"
#: the normaliser of an extra criterion when the job's is ``"auto"`` (default above):
#: group-L2 per MAC with ``sum`` beat ``mean`` and ``max`` by 20-40 points on held-out
#: VGG-19s at 2x and 3x (``lamp`` was level with ``sum``; benchmarks/RESULTS.md, issue 20)
EXTRA_NORMALIZER = {"group-l2-macs": "sum"}


#: a validation split up to this size is scored whole by the proxy (cheap: pruning, not
#: evaluation, dominates a proxy's cost); a larger one by ``search_images`` of it
WHOLE_VALIDATION = 512


def proxy_images(val_images: int, search_images: int) -> int:
    """How many validation (and calibration) images the proxy uses: the whole split when it
    is small (``digits``: 180 images, against 64 by ``search_images``), else
    ``search_images`` (large splits at 224 px: the proxy's cost stays bounded)."""
    return val_images if val_images <= WHOLE_VALIDATION else min(search_images, val_images)


def within_noise(best: float, other: float, images: int, z: float = 1.0) -> bool:
    """Whether accuracy ``other`` is within ``z`` standard errors of ``best`` when both are
    measured on the same ``images`` images (binomial error of the difference, unpaired:
    an upper bound on the paired one, so near-ties are called ties a little generously)."""
    if images < 1:
        raise ValueError(f"within_noise: images must be >= 1 (found {images})")
    for name, acc in (("best", best), ("other", other)):
        if not 0.0 <= acc <= 1.0:
            raise ValueError(f"within_noise: {name} must be an accuracy in [0, 1] (found {acc})")
    spread = math.sqrt((best * (1 - best) + other * (1 - other)) / images)
    return best - other <= z * max(spread, 0.5 / images)  # half an image at 0 % / 100 %


def criterion_candidates(
    importance: str, normalizer: str, normalizers: Sequence[str], extra: Sequence[str] = ()
) -> list[Candidate]:
    """The candidates of a job: ``importance`` with ``normalizer`` (or every one of
    ``normalizers`` when it is ``"auto"``), then each criterion of ``extra`` (with its
    :data:`EXTRA_NORMALIZER` when ``normalizer`` is ``"auto"``)."""
    norms = list(normalizers) if normalizer == "auto" else [normalizer]
    out = [Candidate(importance, n) for n in norms]
    for c in extra:
        if c != importance:
            auto = EXTRA_NORMALIZER.get(c, DATA_AWARE_NORMALIZER)
            out.append(Candidate(c, auto if normalizer == "auto" else normalizer))
    return out


def choose_criterion(
    model: nn.Module,
    candidates: Sequence[Candidate],
    proxy: ProxyFn,
    *,
    final: Callable[[Candidate], float] | None = None,
    finalists: int = 2,
) -> tuple[Candidate, dict[str, Any]]:
    """The candidate whose proxy-pruned copy of ``model`` has the best validation accuracy.

    With ``final``, a second round: the ``finalists`` best candidates by ``proxy``
    (a cheap first round, e.g. on half the images) are scored again by
    ``final(candidate)`` (e.g. over all of them) and the best by that score wins; the
    others are eliminated on their first score.

    Returns:
        ``(candidate, record)``: the winner, and each candidate's score(s) and seconds.
    """
    if not candidates:
        raise ValueError("choose_criterion needs at least one candidate")
    start = time.perf_counter()
    trials = []
    for cand in candidates:
        t0 = time.perf_counter()
        trials.append({"criterion": cand.criterion, "normalizer": cand.normalizer,
                       "val_accuracy": proxy(model, cand), "seconds": time.perf_counter() - t0})  # fmt: skip
    alive, key = range(len(trials)), "val_accuracy"
    if final is not None and finalists < len(candidates):
        alive = sorted(sorted(alive, key=lambda i: -trials[i]["val_accuracy"])[: max(1, finalists)])
        for i in alive:
            t0 = time.perf_counter()
            trials[i]["final_accuracy"] = final(candidates[i])
            trials[i]["seconds"] += time.perf_counter() - t0
        key = "final_accuracy"
    best = max(alive, key=lambda i: trials[i][key])  # first of equals
    record = {"trials": trials, "chosen": candidates[best].label,
              "seconds": time.perf_counter() - start}  # fmt: skip
    return candidates[best], record
