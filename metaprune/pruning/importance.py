"""Importance criteria for progressive pruning, as a registry (open set, tested per entry).

An importance maps a Torch-Pruning group to one score per channel; low scores are
pruned first. Registered criteria:

* ``"group-l2"``: ``GroupMagnitudeImportance`` -- the L``p`` norm of each channel's
  weights in every coupled layer, reduced over the group (mean) and divided by the
  group's maximum so that all groups can be ranked globally (METHOD.md section 5).
* ``"random"``: seeded uniform scores, the floor every method must beat.
* ``"taylor"``: first-order Taylor, ``|w * dL/dw|`` summed over each channel's weights
  (Torch-Pruning's ``GroupTaylorImportance``), reduced and normalised like group-L2.
* ``"hessian"``: Optimal Brain Damage, ``w^2 * F`` with ``F`` the empirical Fisher
  diagonal (Torch-Pruning's ``GroupHessianImportance`` reading our Fisher from ``.grad``).
* ``"group-l2-macs"``: group-L2 per MAC, each group's normalised scores divided by the
  MACs one of its channels costs (:mod:`metaprune.pruning.macs_importance`).

``taylor`` and ``hessian`` need data: ``make_importance`` gathers their gradients on the
``model`` it will prune, from a fixed, bounded ``calibration`` set of training images
(:mod:`metaprune.pruning.gradients`), before the first ranking; without them it raises.
``group-l2-macs`` needs the model too (one image of ``calibration`` gives its shapes).

Example::

    @register_importance("my-criterion")
    def my_criterion(*, p, group_reduction, normalizer, seed, model, calibration):
        return MyImportance(...)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable

import torch
import torch_pruning as tp
from torch import Tensor, nn

from metaprune.pruning._checks import ConfigError
from metaprune.pruning.gradients import gather_gradients
from metaprune.pruning.macs_importance import MacsAwareImportance

__all__ = [
    "COST_AWARE",
    "DATA_AWARE",
    "GRADIENT_KIND",
    "ImportanceFactory",
    "SeededRandomImportance",
    "list_importances",
    "make_importance",
    "register_importance",
]

ImportanceFactory = Callable[..., tp.importance.Importance]
#: batches of ``(images, labels)`` from the training split, e.g. a fixed unshuffled loader
Calibration = Iterable[tuple[Tensor, Tensor]]
_REGISTRY: dict[str, ImportanceFactory] = {}
#: criteria that read gradients on calibration data (``make_importance`` needs model + data)
DATA_AWARE = ("taylor", "hessian")
#: criteria that weigh scores by each channel's MACs (they need the model and one input)
COST_AWARE = ("group-l2-macs",)
#: the kind of gradient each data-aware criterion reads (:func:`gather_gradients`)
GRADIENT_KIND = {"taylor": "mean", "hessian": "fisher"}


def register_importance(name: str) -> Callable[[ImportanceFactory], ImportanceFactory]:
    """Decorator registering ``factory(*, p, group_reduction, normalizer, seed, model,
    calibration)`` as ``name`` (``model`` and ``calibration`` may be ``None``)."""

    def decorator(factory: ImportanceFactory) -> ImportanceFactory:
        if name in _REGISTRY:
            raise ValueError(f"importance {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorator


def list_importances() -> list[str]:
    """Sorted names of the registered importance criteria."""
    return sorted(_REGISTRY)


def make_importance(
    name: str,
    *,
    p: int = 2,
    group_reduction: str = "mean",
    normalizer: str = "max",
    seed: int = 0,
    model: nn.Module | None = None,
    calibration: Calibration | None = None,
) -> tp.importance.Importance:
    """Build the registered importance ``name``.

    ``model`` and ``calibration`` (batches of training images and labels, bounded and
    fixed: :func:`metaprune.pruning.bn.calibration_subset`) are what a data-aware
    criterion (:data:`DATA_AWARE`) needs: its gradients are gathered on ``model`` (the
    one about to be pruned; its parameters' ``.grad`` is overwritten) before this returns.

    Raises:
        ConfigError: if ``name`` is not registered (close matches are suggested), or is
            data-aware and ``model`` or ``calibration`` is missing.
    """
    factory = _REGISTRY.get(name)
    if factory is None:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=2, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(
            f"unknown importance {name!r} (registered: {', '.join(list_importances())}){hint}"
        )
    if name in DATA_AWARE + COST_AWARE and (model is None or calibration is None):
        why = "by loss gradients" if name in DATA_AWARE else "per MAC"
        raise ConfigError(
            f"importance {name!r} ranks channels {why}: it needs the model "
            "and calibration images (make_importance(..., model=, calibration=))"
        )
    return factory(
        p=p, group_reduction=group_reduction, normalizer=normalizer, seed=seed,
        model=model, calibration=calibration,
    )  # fmt: skip


class SeededRandomImportance(tp.importance.Importance):
    """Uniform random scores from a private generator, so ``random`` runs are reproducible
    (Torch-Pruning's ``RandomImportance`` draws from the global RNG)."""

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def __call__(self, group: tp.dependency.Group) -> torch.Tensor:
        _, idxs = group[0]
        return torch.rand(len(idxs), generator=self.generator)


def _norm(normalizer: str) -> str | None:
    return None if normalizer == "none" else normalizer


@register_importance("group-l2")
def _group_l2(
    *, p: int, group_reduction: str, normalizer: str, **_: object
) -> tp.importance.Importance:
    return tp.importance.GroupMagnitudeImportance(
        p=p, group_reduction=group_reduction, normalizer=_norm(normalizer)
    )


@register_importance("random")
def _random(*, seed: int, **_: object) -> tp.importance.Importance:
    return SeededRandomImportance(seed)


@register_importance("taylor")
def _taylor(
    *, group_reduction: str, normalizer: str, model: nn.Module, calibration: Calibration,
    **_: object,
) -> tp.importance.Importance:
    gather_gradients(model, calibration, GRADIENT_KIND["taylor"])
    return tp.importance.GroupTaylorImportance(
        group_reduction=group_reduction, normalizer=_norm(normalizer)
    )


@register_importance("hessian")
def _hessian(
    *, group_reduction: str, normalizer: str, model: nn.Module, calibration: Calibration,
    **_: object,
) -> tp.importance.Importance:
    gather_gradients(model, calibration, GRADIENT_KIND["hessian"])
    # no accumulate_grad(): with nothing accumulated, the criterion reads .grad (our Fisher)
    return tp.importance.GroupHessianImportance(
        group_reduction=group_reduction, normalizer=_norm(normalizer)
    )


@register_importance("group-l2-macs")
def _group_l2_macs(
    *, p: int, group_reduction: str, normalizer: str, model: nn.Module, calibration: Calibration,
    **_: object,
) -> tp.importance.Importance:
    base = _group_l2(p=p, group_reduction=group_reduction, normalizer=normalizer)
    images, _labels = next(iter(calibration))
    device = next(model.parameters()).device
    return MacsAwareImportance(base, model, images[:1].to(device))
