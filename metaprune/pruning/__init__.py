"""Structural pruning: the pipeline (:func:`prune`), its config and its building blocks.

>>> from metaprune.pruning import PruneConfig, Target, prune
>>> result = prune("model.safetensors", "digits", PruneConfig(target=Target("macs", 3.0)))
>>> result.save("out/")   # model.safetensors, report.json, curve.png

The building blocks are public so that other jobs reuse them: the metanetwork's training
selects checkpoints with :func:`progressive_prune`, benchmarks call :func:`finetune`,
:func:`recalibrate_bn` and :func:`measure_latency` directly.

Names are imported on first use (PEP 562): importing ``metaprune.pruning.config`` does not
pull in Torch-Pruning and the pipeline, so a thin client can validate a config cheaply.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

#: submodule -> the public names it provides
_EXPORTS: dict[str, tuple[str, ...]] = {
    "_checks": ("ConfigError",),
    "bn": ("recalibrate_bn",),
    "config": (
        "CONFIG_VERSION",
        "FinetuneBudget",
        "ImportanceOptions",
        "LatencyOptions",
        "PruneConfig",
        "PruningOptions",
        "SparseTraining",
        "Target",
    ),
    "finetune": (
        "FinetuneResult",
        "evaluate",
        "finetune",
    ),
    "importance": (
        "list_importances",
        "make_importance",
        "register_importance",
    ),
    "latency": ("measure_latency",),
    "methods": (
        "MetanetUnavailable",
        "Method",
        "get_method",
        "list_methods",
        "register_method",
    ),
    "pipeline": (
        "PruneResult",
        "prune",
    ),
    "progress": (
        "CANCEL",
        "CancelToken",
        "ProgressCallback",
        "ProgressEvent",
        "PruneCancelled",
    ),
    "progressive": (
        "StepInfo",
        "progressive_prune",
    ),
    "report": (
        "format_report",
        "plot_curve",
        "write_report",
    ),
    "targets": (
        "Cost",
        "find_classifier",
        "layer_widths",
        "measure_cost",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    # importing a submodule sets it as an attribute of its package; the submodule
    # `finetune` must not shadow the function `finetune` (the eager imports this replaces
    # overwrote it the same way)
    def __setattr__(self, name: str, value: Any) -> None:
        if not (isinstance(value, types.ModuleType) and name in _MODULE_OF):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
