"""The group-L2 normalisers ``ImportanceOptions(normalizer="auto")`` chooses among.

How group importances are normalised before the global ranking decides which layers
lose channels, and no normaliser is best everywhere (held-out ``digits`` models, test
accuracy at 3x MACs with no fine-tune, ``benchmarks/RESULTS.md``): on VGG-11 ``sum``
beat ``max`` and ``mean`` by ~15 points; on ResNet-20s lightly pruned with ``max`` (the
old zoo recipe) ``max`` was worse than random, while on ResNet-20s lightly pruned with
``sum`` ``mean`` beat ``sum`` by ~10 points. ``"auto"`` therefore scores every candidate
by validation accuracy after pruning a copy to the target and recalibrating BatchNorm,
with the criteria the job may use (:func:`metaprune.pruning.choose.choose_criterion`),
reported as ``stages.prune.criterion_search`` and ``stage_seconds["criterion_search"]``.

The proxy (``ImportanceOptions.search_images`` / ``search_steps``): BatchNorm re-estimated
in one training-mode pass over a fixed subset of training images and accuracy on a fixed
subset of validation images; how often it picks what the full search picked is measured
by ``benchmarks/normalizer_proxy.py`` (``benchmarks/RESULTS.md``, issue 18).
"""

from __future__ import annotations

__all__ = ["NORMALIZER_CANDIDATES"]

#: tried in this order (the first wins ties); ``sum`` first because it was never
#: catastrophic in our measurements
NORMALIZER_CANDIDATES = ("sum", "mean", "max")
