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

import importlib
from typing import Any

from .errors import InvalidInputError, LimitExceededError, MetapruneError, NotFoundError
from .version import __version__

# Everything else is imported on first use (PEP 562): `metaprune.errors`, `metaprune.limits`
# and `metaprune.pruning.config` stay cheap, so the CLI's dispatch and the service client
# start without torch (the pruning pipeline pulls in Torch-Pruning and the metanetwork).
_LAZY = {
    "CheckpointError": "checkpoint", "load": "checkpoint", "load_state": "checkpoint",
    "read_spec": "checkpoint", "save": "checkpoint",
    "DatasetError": "data", "DatasetSplits": "data", "get_dataset": "data",
    "list_datasets": "data",
    "DEFAULT_LIMITS": "limits", "Limits": "limits", "check_spec": "limits",
    "ArchSpec": "models", "SpecSize": "models", "create_model": "models",
    "list_models": "models", "spec_size": "models",
    "prune": "pruning", "PruneConfig": "pruning", "PruneResult": "pruning",
}  # fmt: skip

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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    try:  # a submodule not imported yet (`metaprune.checkpoint` after `import metaprune`)
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module 'metaprune' has no attribute {name!r}")
