"""Pruning methods: what happens to the model before progressive pruning, and how channels
are ranked. A registry, so the benchmark and the tests cover every method automatically.

Every method spends the same ``before_pruning`` budget, so comparisons are fair: exactly
``before_pruning.epochs`` epochs of training, of which the **last** is kept (no method
selects an epoch on validation before pruning, where training exists to change the
weights), then an exact BatchNorm recalibration, so that the reported
``stages.before_pruning.val_accuracy`` is the prepared network's real accuracy (sparse
training leaves the running statistics stale: 86.7 % read vs 96.8 % real). The report
says what each method spent: ``epochs_trained`` (with ``reg="auto"`` the search's trials
are inside the budget, so it never exceeds ``before_pruning.epochs``) and wall ``seconds``. ``"auto"`` is not a method of its own: the pipeline
resolves it first (:mod:`metaprune.pruning.auto`).

``metanet`` is registered by the ``metanet`` package when it is imported (it depends on
this module, never the other way round); the entry points that offer it (CLI, service,
batch) import it.

==================  ==================================================  ==========
method              before pruning                                      importance
==================  ==================================================  ==========
``metanet``         metanetwork transform, then fine-tune               group-l2
``group-l2``        plain fine-tune                                     group-l2
``group-l2-sl``     sparse training (DepGraph group-norm regulariser)   group-l2
``growing-reg``     targeted growing L2 on the channels a dry prune     group-l2
                    removes (GReg-1's idea; :mod:`.growing_reg`)
``taylor``          plain fine-tune                                     taylor
``hessian``         plain fine-tune                                     hessian
``random``          plain fine-tune                                     random
==================  ==================================================  ==========

``metanet`` (``Method.data_aware``) also searches the cost- and data-aware criteria, as the
strongest baseline does, and at 0 epochs hands the pipeline its input beside the rewrite
(``MethodContext.reference``).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from metaprune.errors import InvalidInputError, NotFoundError
from metaprune.pruning._checks import ConfigError
from metaprune.pruning.bn import calibration_subset, recalibrate_bn
from metaprune.pruning.config import PruneConfig
from metaprune.pruning.finetune import FinetuneResult, evaluate, finetune
from metaprune.pruning.growing_reg import growing_reg
from metaprune.pruning.progress import CancelToken, ProgressCallback, notify
from metaprune.pruning.sparse import search_reg, sparse_train

__all__ = [
    "Method",
    "MethodContext",
    "MetanetUnavailable",
    "UnknownMetanetError",
    "UnknownMetanetError",
    "get_method",
    "list_methods",
    "plain_finetune",
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
    #: fixed sample set for BatchNorm recalibration (default: a seeded subset of training data)
    calibration_loader: DataLoader | None = None
    #: validation accuracy of the model as given to ``prepare``, if the caller measured it
    input_val_accuracy: float | None = None
    #: ``proxy(model)``: validation accuracy of a copy pruned to the job's target and
    #: BN-recalibrated; what ``reg="auto"`` chooses by (set by the pipeline)
    proxy: Callable[[nn.Module], float] | None = None
    #: how many validation images ``proxy`` scores on (``None``: unknown, no noise model)
    proxy_images: int | None = None
    #: ``dry_prune(model)``: ``(score, pruned)``, the proxy's score and the best-scoring
    #: pruned copy it made (which channels the job's routine removes; set by the pipeline)
    dry_prune: Callable[[nn.Module], tuple[float, nn.Module]] | None = None
    #: the model's architecture name (its spec), if known: what held-out records are kept by
    family: str | None = None
    #: set by ``prepare``: a model the prepared one must beat at the target (the ``metanet``
    #: method's input beside its rewrite, at 0 epochs). The criterion search scores both with
    #: every candidate and prunes this one instead unless the prepared model's best
    #: validation accuracy is higher by more than the proxy's noise
    #: (:func:`~metaprune.pruning.choose.within_noise`; report: ``stages.prune.reference``)
    reference: nn.Module | None = None

    def finetune(self, model: nn.Module, stage: str, **kwargs: Any) -> FinetuneResult:
        """The ``before_pruning`` budget: every epoch trained, the last one kept."""
        return finetune(
            model, self.train_loader, self.val_loader, self.config.before_pruning, self.device,
            self.progress, stage=stage, cancel=self.cancel, select_initial=False, keep_last=True,
            **kwargs,
        )  # fmt: skip

    def recalibrate(self, model: nn.Module) -> None:
        """BatchNorm recalibration on the job's fixed calibration set (one training-mode
        pass, :mod:`metaprune.pruning.bn`), one progress event per batch."""
        if self.calibration_loader is None:
            self.calibration_loader = calibration_subset(
                self.train_loader.dataset, self.config.bn_recalibration_images,
                self.config.batch_size, self.config.seed,
            )  # fmt: skip
        loader = self.calibration_loader
        recalibrate_bn(model, loader, len(loader), self.device, exact=False,
                       on_batch=self._tick("recalibrate"))  # fmt: skip

    def evaluate(self, model: nn.Module) -> float:
        """Validation accuracy, one progress event per batch."""
        return evaluate(model, self.val_loader, self.device, on_batch=self._tick("evaluate"))

    def _tick(self, task: str) -> Callable[[], None]:
        epochs = self.config.before_pruning.epochs
        return lambda: notify(self.progress, self.cancel, "before_pruning", epochs, epochs,
                              task=task)  # fmt: skip

    def record(
        self, model: nn.Module, start: float, stale: float | None, **extra: Any
    ) -> dict[str, Any]:
        """Recalibrate the prepared model; record what the stage spent and really reached.

        ``stale`` is the validation accuracy training saw (running statistics as trained);
        ``extra`` entries override the defaults (e.g. ``epochs_trained`` of a search).
        """
        self.recalibrate(model)
        epochs = self.config.before_pruning.epochs
        info = {
            "val_accuracy": self.evaluate(model),
            "val_accuracy_stale_bn": stale, "epochs": epochs, "kept_epoch": epochs,
            "best_epoch": epochs, "epochs_trained": epochs, **extra,
        }  # fmt: skip
        info["seconds"] = time.perf_counter() - start
        self.info["before_pruning"] = info
        return info


@dataclasses.dataclass(frozen=True)
class Method:
    """A pruning method: ``prepare(model, ctx)`` returns the model to prune (in place or new).

    ``load(config, limits, allow_paths)``, if given, loads what the method needs before any
    work is done (the ``metanet`` method's metanetwork), so a bad name fails at once;
    :func:`~metaprune.pruning.prune` passes the result as ``MethodContext.metanetwork``
    (``None`` when the method chooses it later, from the model: ``metanet`` "auto").
    """

    name: str
    importance: str
    prepare: Callable[[nn.Module, MethodContext], nn.Module]
    description: str = ""
    load: Callable[[PruneConfig, Any, bool], nn.Module | None] | None = None
    #: the criterion search also tries the cost- and data-aware criteria (with the
    #: ``"auto"`` normaliser), as for the strongest baseline, however the method was chosen
    data_aware: bool = False


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
        hint = _PROVIDERS.get(name)
        hint = f"; it is registered by `import {hint}`" if hint else ""
        raise ConfigError(
            f"unknown method {name!r} (registered: {', '.join(list_methods())}){hint}"
        ) from None


# methods registered by packages above this one, named so a missing import reads clearly
_PROVIDERS = {"metanet": "metanet"}


def plain_finetune(
    model: nn.Module, ctx: MethodContext, start: float | None = None, *, as_given: bool = False,
    **extra: Any,
) -> nn.Module:  # fmt: skip
    """The shared preparation: the ``before_pruning`` fine-tune, recalibrated and recorded
    (``start``: when the stage began; ``extra``: more entries for the report).

    ``as_given``: ``model`` is the model given to the job, so ``ctx.input_val_accuracy``
    (if known) is its accuracy, and with 0 epochs nothing is measured again.
    """
    start = time.perf_counter() if start is None else start
    known = ctx.input_val_accuracy if as_given else None
    if ctx.config.before_pruning.epochs == 0 and known is not None:
        # nothing trained: the prepared model is the input, whose accuracy is known and
        # whose statistics are its own (pruning recalibrates them anyway)
        notify(ctx.progress, ctx.cancel, "before_pruning", 0, 0)
        ctx.info["before_pruning"] = {
            "val_accuracy": known, "val_accuracy_stale_bn": known,
            "epochs": 0, "kept_epoch": 0, "best_epoch": 0, "epochs_trained": 0, **extra,
            "seconds": time.perf_counter() - start,
        }  # fmt: skip
        return model
    result = ctx.finetune(model, "before_pruning", initial_val_accuracy=known)
    ctx.record(model, start, result.best_val_accuracy, **extra)
    return model


def _sparse(model: nn.Module, ctx: MethodContext) -> nn.Module:
    """DepGraph's sparse training (:mod:`metaprune.pruning.sparse`), ``reg`` fixed or searched."""
    start = time.perf_counter()
    reg = ctx.config.sparse.reg
    if reg == "auto" and ctx.config.before_pruning.epochs > 0:
        model, chosen, search = search_reg(model, ctx)
        ctx.info.setdefault("stage_seconds", {})["reg_search"] = search["seconds"]
        # the search kept no per-epoch validation figures, so there is no stale one
        ctx.record(model, start, None, sparse_reg=chosen, reg_search=search,
                   epochs_trained=search["epochs_trained"])  # fmt: skip
        return model
    reg = 0.0 if reg == "auto" else float(reg)  # no epochs: sparse training cannot act
    result = sparse_train(model, ctx, reg)
    ctx.record(model, start, result.best_val_accuracy, sparse_reg=reg)
    return model


def _growing(model: nn.Module, ctx: MethodContext) -> nn.Module:
    """Targeted growing regularisation (:mod:`metaprune.pruning.growing_reg`); with no
    epochs there is nothing to train: the model as given, as ``group-l2``."""
    if ctx.config.before_pruning.epochs == 0:
        return plain_finetune(model, ctx, as_given=True)
    start = time.perf_counter()
    model, record = growing_reg(model, ctx)
    ctx.info.setdefault("stage_seconds", {})["reg_search"] = record["proxy_seconds"]
    ctx.record(model, start, None, growing_reg=record, epochs_trained=record["epochs_trained"])
    return model


_as_given = functools.partial(plain_finetune, as_given=True)
register_method(Method("group-l2", "group-l2", _as_given, "plain fine-tune, group L2 importance"))
register_method(Method("group-l2-sl", "group-l2", _sparse, "sparse training, group L2 importance"))
register_method(Method("growing-reg", "group-l2", _growing,
                       "targeted growing regularisation, group L2 importance", data_aware=True))
register_method(Method("group-l2-macs", "group-l2-macs", _as_given, "plain fine-tune, group L2 per MAC"))
register_method(Method("taylor", "taylor", _as_given, "plain fine-tune, first-order Taylor"))
register_method(Method("hessian", "hessian", _as_given, "plain fine-tune, OBD (Fisher) importance"))
register_method(Method("random", "random", _as_given, "plain fine-tune, random importance"))
