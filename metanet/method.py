"""The ``metanet`` pruning method, registered in the pipeline's method registry.

The pipeline (:mod:`metaprune.pruning`) knows nothing of this package: importing
``metanet`` registers the method, as models and datasets are registered, and the entry
points that offer it (the CLI, the service's workers, batch tasks) import ``metanet``.

``PruneConfig.metanet`` ``None`` or ``"auto"`` chooses among the registered metanetworks
by the model's graph (:func:`metanet.choice.choose_metanetwork`); the report's
``stages.before_pruning.metanet`` says which was used, why, and any warning (also logged).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import torch
from torch import nn

from graph_encoding import encode
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
from .choice import choose_metanetwork
from .export import list_pretrained, load

__all__ = ["AUTO", "load_for_job"]

AUTO = "auto"
_LOG = logging.getLogger(__name__)


def load_for_job(
    config: PruneConfig, limits: Limits | None = DEFAULT_LIMITS, allow_paths: bool = True
) -> nn.Module | None:
    """The metanetwork ``config.metanet`` (a registered name, or with ``allow_paths`` a path
    to an export), checked against ``limits``; ``None`` when it is ``None`` or ``"auto"``
    (chosen by the model's graph when the method runs), once some metanetwork is registered.

    Raises:
        MetanetUnavailable: no metanetwork registered for "auto", or its files are unreadable.
        UnknownMetanetError: no metanetwork of that name.
        LimitExceededError: the metanetwork is over ``limits``.
    """
    if config.metanet is None or config.metanet == AUTO:
        if not list_pretrained():
            raise MetanetUnavailable(
                "method 'metanet' with metanet 'auto' needs a registered metanetwork "
                "(none in metanet/pretrained/ or $METAPRUNE_METANET_PATH); name an export "
                "path or use another method"
            )
        return None
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
    start = time.perf_counter()
    notify(ctx.progress, ctx.cancel, "metanet", 0, 1)
    net, details = _metanetwork(model, ctx)
    net = net.to(ctx.device).eval()
    with torch.no_grad():
        transformed = apply_metanetwork(net, model, ctx.example_inputs)
    transformed = transformed.to(ctx.device)
    for param in transformed.parameters():  # built under no_grad: make it trainable again
        param.requires_grad_(True)
    notify(ctx.progress, ctx.cancel, "metanet", 1, 1)
    seconds = time.perf_counter() - start
    return plain_finetune(transformed, ctx, start, metanet_seconds=seconds, metanet=details)


def _metanetwork(model: nn.Module, ctx: MethodContext) -> tuple[nn.Module, dict[str, Any]]:
    """The metanetwork to apply and what the report says about it."""
    name = ctx.config.metanet
    if ctx.metanetwork is not None:
        return ctx.metanetwork, {"name": name, "auto": False, "given": "object"}
    if name is not None and name != AUTO:
        return load_for_job(ctx.config), {"name": name, "auto": False}
    # the choice reads registered names only: the exports shipped with or installed for it
    choice = choose_metanetwork(encode(model, ctx.example_inputs), allow_paths=False)
    _LOG.info("metanet auto: %s", choice.reason)
    if choice.warning:
        _LOG.warning("metanet auto: %s", choice.warning)
    net = load_for_job(dataclasses.replace(ctx.config, metanet=choice.name), allow_paths=False)
    return net, choice.to_dict()


register_method(
    Method(
        "metanet", "group-l2", _prepare, "metanetwork transform, then fine-tune", load=load_for_job
    )
)
