"""The ``metanet`` pruning method, registered in the pipeline's method registry.

The pipeline (:mod:`metaprune.pruning`) knows nothing of this package: importing
``metanet`` registers the method, as models and datasets are registered, and the entry
points that offer it (the CLI, the service's workers, batch tasks) import ``metanet``.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from metaprune.errors import LimitExceededError, NotFoundError, quote
from metaprune.limits import DEFAULT_LIMITS, Limits
from metaprune.pruning.config import PruneConfig
from metaprune.pruning.methods import (
    MetanetUnavailable,
    Method,
    MethodContext,
    UnknownMetanetError,
    plain_finetune,
    register_method,
)
from metaprune.pruning.progress import notify

from .apply import apply_metanetwork
from .export import load

__all__ = ["load_for_job"]


def load_for_job(
    config: PruneConfig, limits: Limits | None = DEFAULT_LIMITS, allow_paths: bool = True
) -> nn.Module:
    """The metanetwork ``config.metanet`` (a registered name, or with ``allow_paths`` a path
    to an export), checked against ``limits``.

    Raises:
        MetanetUnavailable: no metanetwork named, or its files are unreadable.
        UnknownMetanetError: no metanetwork of that name.
        LimitExceededError: the metanetwork is over ``limits``.
    """
    if config.metanet is None:
        raise MetanetUnavailable(
            "method 'metanet' needs a metanetwork: set PruneConfig.metanet (a name or path) "
            "or pass metanetwork= to prune(); use method 'auto' to prune without one"
        )
    options: dict[str, Any] = {"allow_paths": allow_paths}
    if limits is not None:
        options["limits"] = limits
    try:
        return load(config.metanet, **options)
    except LimitExceededError:
        raise
    except NotFoundError as err:
        raise UnknownMetanetError(f"cannot load metanetwork: {err}") from None
    except (OSError, ValueError, KeyError) as err:
        raise MetanetUnavailable(
            f"cannot load metanetwork {quote(config.metanet)}: {err}"
        ) from None


def _prepare(model: nn.Module, ctx: MethodContext) -> nn.Module:
    net = ctx.metanetwork if ctx.metanetwork is not None else load_for_job(ctx.config)
    start = time.perf_counter()
    notify(ctx.progress, ctx.cancel, "metanet", 0, 1)
    net = net.to(ctx.device).eval()
    with torch.no_grad():
        transformed = apply_metanetwork(net, model, ctx.example_inputs)
    transformed = transformed.to(ctx.device)
    for param in transformed.parameters():  # built under no_grad: make it trainable again
        param.requires_grad_(True)
    notify(ctx.progress, ctx.cancel, "metanet", 1, 1)
    return plain_finetune(transformed, ctx, start, metanet_seconds=time.perf_counter() - start)


register_method(
    Method(
        "metanet", "group-l2", _prepare, "metanetwork transform, then fine-tune", load=load_for_job
    )
)
