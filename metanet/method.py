"""The ``metanet`` pruning method, registered in the pipeline's method registry.

The pipeline (:mod:`metaprune.pruning`) knows nothing of this package: importing
``metanet`` registers the method, as models and datasets are registered, and the entry
points that offer it (the CLI, the service's workers, batch tasks) import ``metanet``.

``PruneConfig.metanet`` ``None`` or ``"auto"`` chooses among the registered metanetworks
with a winning held-out record on the model's family (where none has one, the pipeline's
advisor, :mod:`metanet.advisor`, runs the strongest baseline instead), by the model's
graph (:func:`metanet.choice.choose_metanetwork`); the report's
``stages.before_pruning.metanet`` says which was used, why, and any warning (also logged).

A guarded ``metanet`` job is never below the strongest baseline on validation (issue 21):
it searches the default's criteria (``Method.data_aware``: group L2 with each normaliser,
per MAC, ``taylor``, ``hessian``), and at 0 epochs the input competes with the rewrite in
that search (``MethodContext.reference``): the rewrite is pruned only if its best
validation accuracy at the target beats the input's beyond noise. Before, the method
ranked with group L2 alone and lost to the default where the rewrite was discarded
(ResNet-56 s101 at 2x: 46.9 against 61.7 %, ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from typing import Any

import torch
from torch import nn

from graph_encoding import ModelGraph, encode
from metaprune.errors import LimitExceededError, NotFoundError, quote
from metaprune.limits import DEFAULT_LIMITS, Limits
from metaprune.pruning.config import PruneConfig
from metaprune.pruning.finetune import evaluate
from metaprune.pruning.methods import (
    MetanetUnavailable,
    Method,
    MethodContext,
    UnknownMetanetError,
    plain_finetune,
    register_method,
)
from metaprune.pruning.progress import notify

from .advisor import AUTO, winners
from .apply import apply_metanetwork
from .choice import choose_metanetwork
from .export import load

__all__ = ["AUTO", "MAX_ACCURACY_DROP", "guarded_rewrite", "load_for_job"]

#: smallest validation-accuracy drop (a ratio) for which a rewrite is discarded
MAX_ACCURACY_DROP = 0.01
_LOG = logging.getLogger(__name__)


def load_for_job(
    config: PruneConfig, limits: Limits | None = DEFAULT_LIMITS, allow_paths: bool = True
) -> nn.Module | None:
    """The metanetwork ``config.metanet`` (a registered name, or with ``allow_paths`` a path
    to an export), checked against ``limits``; ``None`` when it is ``None`` or ``"auto"``
    (chosen by evidence and the model's graph when the method runs, :mod:`metanet.advisor`).

    Raises:
        MetanetUnavailable: its files are unreadable.
        UnknownMetanetError: no metanetwork of that name.
        LimitExceededError: the metanetwork is over ``limits``.
    """
    if config.metanet is None or config.metanet == AUTO:
        # chosen when the method runs; with none registered (or none with a winning record
        # on the family) the pipeline's advisor runs the strongest baseline instead
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
    net, details, graph = _metanetwork(model, ctx)
    # at 0 epochs the input costs nothing more to keep: the pipeline's criterion search
    # prunes both with every candidate and keeps the rewrite only if it is clearly better
    # there (MethodContext.reference); with epochs the input would need its own fine-tune,
    # so the rewrite is judged at the target here, before it trains
    zero = ctx.config.before_pruning.epochs == 0
    transformed, check = guarded_rewrite(model, net, ctx, graph, at_target=not zero)
    if zero and not check["discarded"]:
        ctx.reference = model
        check["at_target"] = "the criterion search: stages.prune.reference"
    details["accuracy_check"] = check
    notify(ctx.progress, ctx.cancel, "metanet", 1, 1)
    seconds = time.perf_counter() - start
    # a discarded rewrite leaves the input as given: prepared exactly as the default's
    return plain_finetune(transformed, ctx, start, as_given=check["discarded"],
                          metanet_seconds=seconds, metanet=details)  # fmt: skip


def guarded_rewrite(
    model: nn.Module, net: nn.Module, ctx: MethodContext, graph: ModelGraph | None = None,
    at_target: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:  # fmt: skip
    """``net``'s rewrite of ``model`` (trainable, on ``ctx.device``), unless it costs
    validation accuracy: then a copy of ``model`` itself, with a warning. ``graph``: the
    model's encoding, if already made; ``at_target`` False: no comparison at the target
    (the caller makes it, e.g. the pipeline's criterion search at 0 epochs).

    Both are compared BatchNorm-recalibrated on the job's calibration set, on the
    validation split; the rewrite is discarded when it falls below the input's accuracy
    by more than ``max(MAX_ACCURACY_DROP, 2 standard errors)`` (the rule of
    ``reg="auto"``), and, when the job has a target proxy (``ctx.proxy``), unless it beats
    the input's validation accuracy once both are pruned to the target. A metanetwork far
    from what it was trained on can wreck a model: the general metanetwork took held-out
    VGG-11s to chance (issue 11, ``benchmarks/RESULTS.md``).
    """
    with torch.no_grad():
        transformed = apply_metanetwork(net.to(ctx.device).eval(), model, ctx.example_inputs, graph)
    transformed = transformed.to(ctx.device)
    before, after = _recalibrated_accuracy(model, ctx), _recalibrated_accuracy(transformed, ctx)
    n = max(1, len(ctx.val_loader.dataset))
    tolerance = max(MAX_ACCURACY_DROP, 2.0 * math.sqrt(before * (1.0 - before) / n))
    check: dict[str, Any] = {
        "val_accuracy_input": before, "val_accuracy_rewritten": after,
        "tolerance": tolerance, "discarded": after < before - tolerance - 1e-9,
    }  # fmt: skip
    if check["discarded"]:
        reason = (
            f"the metanetwork lowered the BN-recalibrated validation accuracy from "
            f"{before:.4f} to {after:.4f} (tolerance {tolerance:.4f})"
        )
        return _discard(model, ctx, check, reason), check
    for param in transformed.parameters():  # built under no_grad: make it trainable again
        param.requires_grad_(True)
    if ctx.proxy is not None and at_target:
        transformed = _guard_at_target(model, transformed, ctx, check)
    return transformed, check


def _guard_at_target(
    model: nn.Module, transformed: nn.Module, ctx: MethodContext, check: dict[str, Any]
) -> nn.Module:
    """Keep the rewrite only if it prunes better at the job's target (``ctx.proxy``: a
    pruned, recalibrated copy's validation accuracy). Unpruned accuracy cannot see this: on
    a held-out ResNet-20 a rewrite that kept it exactly pruned 19 points worse at 2x
    (issue 21, ``benchmarks/RESULTS.md``)."""
    at_input, at_rewrite = ctx.proxy(model), ctx.proxy(transformed)
    check.update(proxy_input=at_input, proxy_rewritten=at_rewrite)
    if at_rewrite > at_input:
        return transformed
    reason = (
        f"the metanetwork's rewrite did not improve the validation accuracy at the target "
        f"(pruned and recalibrated: {at_input:.4f} as given, {at_rewrite:.4f} rewritten)"
    )
    return _discard(model, ctx, check, reason)


def _discard(model: nn.Module, ctx: MethodContext, check: dict[str, Any], reason: str) -> nn.Module:
    """Record and log why the rewrite was discarded; a trainable copy of ``model``."""
    check.update(discarded=True, warning=f"{reason}: its rewrite was discarded and the input weights are used")
    _LOG.warning("metanet: %s", check["warning"])
    restored = copy.deepcopy(model).to(ctx.device)
    for param in restored.parameters():
        param.requires_grad_(True)
    return restored


def _recalibrated_accuracy(model: nn.Module, ctx: MethodContext) -> float:
    probe = copy.deepcopy(model).to(ctx.device)
    ctx.recalibrate(probe)
    return evaluate(probe, ctx.val_loader, ctx.device)


def _metanetwork(
    model: nn.Module, ctx: MethodContext
) -> tuple[nn.Module, dict[str, Any], ModelGraph | None]:
    """The metanetwork to apply, what the report says about it, and the model's graph if
    the choice had to encode it (so the rewrite does not encode it again)."""
    name = ctx.config.metanet
    if ctx.metanetwork is not None:
        return ctx.metanetwork, {"name": name, "auto": False, "given": "object"}, None
    if name is not None and name != AUTO:
        return load_for_job(ctx.config), {"name": name, "auto": False}, None
    # the choice reads registered names only: the exports shipped with or installed for it;
    # those with a winning held-out record on the model's family if any (the pipeline's
    # advisor ran the strongest baseline instead where there is none), never a loser
    graph = encode(model, ctx.example_inputs)
    choice = choose_metanetwork(graph, winners(ctx.family) or None, allow_paths=False,
                                family=ctx.family)  # fmt: skip
    _LOG.info("metanet auto: %s", choice.reason)
    if choice.warning:
        _LOG.warning("metanet auto: %s", choice.warning)
    net = load_for_job(dataclasses.replace(ctx.config, metanet=choice.name), allow_paths=False)
    return net, choice.to_dict(), graph


register_method(
    Method(
        "metanet", "group-l2", _prepare, "metanetwork transform, then fine-tune",
        load=load_for_job, data_aware=True,
    )
)
