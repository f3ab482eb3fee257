"""metaprune: meta-learned structural pruning.

The public API::

    import metaprune
    model = metaprune.create_model("cifar_resnet20", in_channels=1)
    metaprune.save(model, metaprune.ArchSpec("cifar_resnet20", {"in_channels": 1}), "m.safetensors")
    model, spec = metaprune.load("m.safetensors")
    splits = metaprune.get_dataset("digits")
    result = metaprune.prune(model, splits, metaprune.PruneConfig())
"""

from __future__ import annotations

from typing import Any

from .checkpoint import CheckpointError, load, load_state, read_spec, save
from .data import DatasetError, DatasetSplits, get_dataset, list_datasets
from .errors import InvalidInputError, LimitExceededError, MetapruneError, NotFoundError
from .limits import DEFAULT_LIMITS, Limits, check_spec
from .models import ArchSpec, SpecSize, create_model, list_models, spec_size
from .version import __version__

__all__ = [
    "__version__",
    "DEFAULT_LIMITS",
    "ArchSpec",
    "CheckpointError",
    "DatasetError",
    "DatasetSplits",
    "InvalidInputError",
    "LimitExceededError",
    "Limits",
    "MetapruneError",
    "NotFoundError",
    "PruneConfig",
    "PruneResult",
    "SpecSize",
    "check_spec",
    "create_model",
    "get_dataset",
    "list_datasets",
    "list_models",
    "load",
    "load_state",
    "prune",
    "read_spec",
    "save",
    "spec_size",
]

_PRUNING = {"prune", "PruneConfig", "PruneResult"}


def __getattr__(name: str) -> Any:
    # the pruning pipeline pulls in Torch-Pruning and the metanetwork: import it on first use
    if name in _PRUNING:
        from . import pruning

        return getattr(pruning, name)
    raise AttributeError(f"module 'metaprune' has no attribute {name!r}")
