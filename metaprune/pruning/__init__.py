"""Structural pruning: the pipeline (:func:`prune`), its config and its building blocks.

>>> from metaprune.pruning import PruneConfig, Target, prune
>>> result = prune("model.safetensors", "digits", PruneConfig(target=Target("macs", 3.0)))
>>> result.save("out/")   # model.safetensors, report.json, curve.png

The building blocks are public so that other jobs reuse them: the metanetwork's training
selects checkpoints with :func:`progressive_prune`, benchmarks call :func:`finetune`,
:func:`recalibrate_bn` and :func:`measure_latency` directly.
"""

from metaprune.pruning._checks import ConfigError
from metaprune.pruning.bn import recalibrate_bn
from metaprune.pruning.config import (
    CONFIG_VERSION,
    FinetuneBudget,
    ImportanceOptions,
    LatencyOptions,
    PruneConfig,
    PruningOptions,
    SparseTraining,
    Target,
)
from metaprune.pruning.finetune import FinetuneResult, evaluate, finetune
from metaprune.pruning.importance import list_importances, make_importance, register_importance
from metaprune.pruning.latency import measure_latency
from metaprune.pruning.methods import (
    MetanetUnavailable,
    Method,
    get_method,
    list_methods,
    register_method,
)
from metaprune.pruning.pipeline import PruneResult, prune
from metaprune.pruning.progress import (
    CANCEL,
    CancelToken,
    ProgressCallback,
    ProgressEvent,
    PruneCancelled,
)
from metaprune.pruning.progressive import StepInfo, progressive_prune
from metaprune.pruning.report import format_report, plot_curve, write_report
from metaprune.pruning.targets import Cost, find_classifier, layer_widths, measure_cost

__all__ = [
    "CANCEL",
    "CONFIG_VERSION",
    "CancelToken",
    "ConfigError",
    "Cost",
    "FinetuneBudget",
    "FinetuneResult",
    "ImportanceOptions",
    "LatencyOptions",
    "MetanetUnavailable",
    "Method",
    "ProgressCallback",
    "ProgressEvent",
    "PruneCancelled",
    "PruneConfig",
    "PruneResult",
    "PruningOptions",
    "SparseTraining",
    "StepInfo",
    "Target",
    "evaluate",
    "find_classifier",
    "finetune",
    "format_report",
    "get_method",
    "layer_widths",
    "list_importances",
    "list_methods",
    "make_importance",
    "measure_cost",
    "measure_latency",
    "plot_curve",
    "progressive_prune",
    "prune",
    "recalibrate_bn",
    "register_importance",
    "register_method",
    "write_report",
]
