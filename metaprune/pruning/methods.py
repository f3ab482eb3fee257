"""Pruning methods: what happens to the model before progressive pruning, and how channels
are ranked. A registry, so the benchmark and the tests cover every method automatically.

Every method spends the same ``before_pruning`` budget, so comparisons are fair:

==================  ==================================================  ==========
method              before pruning                                      importance
==================  ==================================================  ==========
``metanet``         metanetwork transform, then fine-tune               group-l2
``group-l2``        plain fine-tune                                     group-l2
``group-l2-sl``     sparse training (DepGraph group-norm regulariser)   group-l2
``random``          plain fine-tune                                     random
==================  ==================================================  ==========
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.utils.data import DataLoader

from metaprune.errors import InvalidInputError, LimitExceededError, NotFoundError, quote
from metaprune.pruning._checks import ConfigError
from metaprune.pruning.config import PruneConfig
from metaprune.pruning.finetune import FinetuneResult, finetune
from metaprune.pruning.progress import CancelToken, ProgressCallback, notify
from metaprune.pruning.targets import find_classifier

__all__ = [
    "Method",
    "MethodContext",
    "MetanetUnavailable",
    "UnknownMetanetError",
    "get_method",
    "list_methods",
    "register_method",
]


class MetanetUnavailable(InvalidInputError, RuntimeError):
    """The ``metanet`` method cannot get a metanetwork (package or weights missing)."""


class UnknownMetanetError(MetanetUnavailable, NotFoundError):
    """``PruneConfig.metanet`` names no registered (exported) metanetwork."""


@dataclasses.dataclass
class MethodContext:
    """What a method's preparation stage may use."""

    config: PruneConfig
    train_loader: DataLoader
    val_loader: DataLoader
    device: torch.device
    example_inputs: Tensor
    progress: ProgressCallback | None = None
    cancel: CancelToken | None = None
    metanetwork: nn.Module | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def finetune(self, model: nn.Module, stage: str, **kwargs: Any) -> FinetuneResult:
        return finetune(
            model, self.train_loader, self.val_loader, self.config.before_pruning, self.device,
            self.progress, stage=stage, cancel=self.cancel, select_initial=False, **kwargs,
        )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Method:
    """A pruning method: ``prepare(model, ctx)`` returns the model to prune (in place or new)."""

    name: str
    importance: str
    prepare: Callable[[nn.Module, MethodContext], nn.Module]
    description: str = ""


_REGISTRY: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


def list_methods() -> list[str]:
    return sorted(_REGISTRY)


def get_method(name: str) -> Method:
    """The registered method ``name``; :class:`ConfigError` naming the choices otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown method {name!r} (registered: {', '.join(list_methods())})"
        ) from None


def _plain(model: nn.Module, ctx: MethodContext) -> nn.Module:
    result = ctx.finetune(model, "before_pruning")
    ctx.info["before_pruning"] = {
        "best_epoch": result.best_epoch,
        "val_accuracy": result.best_val_accuracy,
    }
    return model


def _sparse(model: nn.Module, ctx: MethodContext) -> nn.Module:
    """DepGraph's sparse training: after every backward pass, GroupNormPruner adds a
    group-norm penalty gradient that pushes whole unimportant groups towards zero."""
    regulariser = tp.pruner.GroupNormPruner(
        model, ctx.example_inputs, tp.importance.GroupMagnitudeImportance(p=2),
        reg=ctx.config.sparse.reg, global_pruning=True,
        ignored_layers=[find_classifier(model, ctx.example_inputs)],
    )  # fmt: skip
    regulariser.update_regularizer()
    # keep_last: selecting the best validation epoch would discard the sparse training
    result = ctx.finetune(model, "before_pruning", regularizer=regulariser.regularize, keep_last=True)
    ctx.info["before_pruning"] = {
        "best_epoch": result.best_epoch, "val_accuracy": result.best_val_accuracy,
        "sparse_reg": ctx.config.sparse.reg,
    }  # fmt: skip
    return model


def _load_metanetwork(
    config: PruneConfig, *, limits: Any = None, allow_paths: bool = True
) -> nn.Module:
    """Load the metanetwork ``config.metanet`` (a name or a path) with ``metanet.load``
    (within ``limits``; with ``allow_paths=False`` only registered names are accepted).

    Raises:
        MetanetUnavailable: if the ``metanet`` package has no ``load`` yet, or loading fails.
    """
    if config.metanet is None:
        raise MetanetUnavailable(
            "method 'metanet' needs a metanetwork: set PruneConfig.metanet (a name or path) "
            "or pass metanetwork= to prune(); use method 'group-l2' to prune without one"
        )
    try:
        metanet = importlib.import_module("metanet")
    except ImportError as err:
        raise MetanetUnavailable(f"method 'metanet' needs the metanet package ({err})") from None
    load = getattr(metanet, "load", None)
    if load is None:
        with contextlib.suppress(ImportError):
            load = getattr(importlib.import_module("metanet.export"), "load", None)
    if load is None:
        raise MetanetUnavailable(
            "method 'metanet' needs metanet.load(name_or_path), which this installation lacks; "
            "use --method group-l2 or pass a metanetwork object"
        )
    options: dict[str, Any] = {}
    if limits is not None:
        options["limits"] = limits
    if not allow_paths:
        options["allow_paths"] = False
    try:
        return load(config.metanet, **options)
    except LimitExceededError:
        raise
    except NotFoundError as err:
        raise UnknownMetanetError(f"cannot load metanetwork: {err}") from None
    except (OSError, ValueError, KeyError) as err:
        raise MetanetUnavailable(f"cannot load metanetwork {quote(config.metanet)}: {err}") from None


def _metanet(model: nn.Module, ctx: MethodContext) -> nn.Module:
    net = ctx.metanetwork if ctx.metanetwork is not None else _load_metanetwork(ctx.config)
    import metanet  # lazily: only this method depends on it

    notify(ctx.progress, ctx.cancel, "metanet", 0, 1)
    net = net.to(ctx.device).eval()
    with torch.no_grad():
        transformed = metanet.apply_metanetwork(net, model, ctx.example_inputs)
    transformed = transformed.to(ctx.device)
    for param in transformed.parameters():  # built under no_grad: make it trainable again
        param.requires_grad_(True)
    notify(ctx.progress, ctx.cancel, "metanet", 1, 1)
    return _plain(transformed, ctx)


register_method(Method("metanet", "group-l2", _metanet, "metanetwork transform, then fine-tune"))
register_method(Method("group-l2", "group-l2", _plain, "plain fine-tune, group L2 importance"))
register_method(Method("group-l2-sl", "group-l2", _sparse, "sparse training, group L2 importance"))
register_method(Method("random", "random", _plain, "plain fine-tune, random importance"))
