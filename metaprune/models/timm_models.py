"""timm as an architecture source: ``timm/<name>`` for every name in timm's own registry.

timm is optional: it is imported on first use, and without it the source reports
"timm is not installed" instead of accepting names. A spec is client data, so:

* the allow-list is ``timm.list_models()`` (architecture names; pretrained tags such as
  ``resnet18.a1_in1k`` name weights and are refused);
* nothing is ever downloaded: ``pretrained`` (and every other way timm has of reading
  weights or files: ``pretrained_cfg``, ``checkpoint_path``, ``cache_dir``, ...) is refused;
* kwargs are limited to those in :data:`TIMM_KWARGS`, which change shapes or
  regularisation and nothing else, each type-checked; any other is refused by name;
* the spec is sized on the meta device under :class:`~metaprune.limits.Limits` before
  anything real is built, like every registered architecture (:mod:`.size`).

:func:`timm_input` gives a spec's preferred input (timm's ``pretrained_cfg``: input size,
mean and std), adjusted for ``img_size`` and ``in_chans``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

from torch import nn

from metaprune.errors import quote
from metaprune.models.registry import ArchitectureSource, ModelFactory, register_source

__all__ = ["PREFIX", "TIMM_KWARGS", "InputConfig", "timm_input", "timm_model_names"]

PREFIX = "timm/"

#: kwargs a ``timm/<name>`` spec may pass to ``timm.create_model`` -> what they must be.
TIMM_KWARGS: dict[str, str] = {
    "num_classes": "a positive int",
    "in_chans": "a positive int",
    "img_size": "a positive int or a list of two",
    "drop_rate": "a number in [0, 1)",
    "drop_path_rate": "a number in [0, 1)",
    "proj_drop_rate": "a number in [0, 1)",
    "attn_drop_rate": "a number in [0, 1)",
    "pos_drop_rate": "a number in [0, 1)",
    "drop_block_rate": "a number in [0, 1)",
}
_MAX_INT = 1 << 20  # far beyond any real class count, channel count or side


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """What a model expects as input: ``input_size`` ``(C, H, W)``, and the per-channel
    normalisation it was trained with (``None`` where unknown)."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def _timm() -> Any:
    import timm

    return timm


def _unavailable() -> str | None:
    try:
        _timm()
    except ImportError:
        return "timm is not installed (pip install timm) so 'timm/<name>' specs are refused"
    return None


@functools.lru_cache(maxsize=1)
def timm_model_names() -> frozenset[str]:
    """timm's architecture names (``timm.list_models()``); empty without timm."""
    try:
        return frozenset(_timm().list_models())
    except ImportError:
        return frozenset()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= _MAX_INT


def _valid(key: str, value: object) -> bool:
    if key == "img_size":
        pair = isinstance(value, list) and len(value) == 2 and all(_is_int(v) for v in value)
        return _is_int(value) or pair
    if key.endswith("rate"):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return number and math.isfinite(value) and 0 <= value < 1  # type: ignore[arg-type]
    return _is_int(value)


def check_timm_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first kwarg that is not allowed or not valid."""
    if "pretrained" in kwargs:
        raise ValueError(
            f"{PREFIX}{name}: 'pretrained' is not accepted (nothing is ever downloaded; "
            "bring your weights with 'metaprune import')"
        )
    for key, value in kwargs.items():
        if key not in TIMM_KWARGS:
            raise ValueError(
                f"{PREFIX}{name}: kwarg {quote(key)} is not accepted (accepted: "
                f"{', '.join(TIMM_KWARGS)})"
            )
        if not _valid(key, value):
            raise ValueError(
                f"{PREFIX}{name}: {key} must be {TIMM_KWARGS[key]} (found {quote(value)})"
            )


def _factory(name: str) -> ModelFactory:
    def build(**kwargs: Any) -> nn.Module:
        check_timm_kwargs(name, kwargs)
        if isinstance(kwargs.get("img_size"), list):
            kwargs["img_size"] = tuple(kwargs["img_size"])
        return _timm().create_model(name, pretrained=False, **kwargs)

    build.__name__ = build.__qualname__ = name
    return build


def timm_input(name: str, kwargs: dict[str, Any]) -> InputConfig:
    """The preferred input of ``timm/<name>`` built with ``kwargs``: timm's default
    ``input_size``, mean and std, with ``img_size`` and ``in_chans`` applied (mean and std
    are ``None`` when ``in_chans`` differs from the pretrained channel count).

    Raises:
        ValueError: if ``name`` is not in timm's registry or timm is missing.
    """
    if name not in timm_model_names():
        raise ValueError(f"{PREFIX}{quote(name)} is not in timm's registry")
    cfg = _timm().models.get_pretrained_cfg(name)
    channels, height, width = cfg.input_size if cfg is not None else (3, 224, 224)
    mean = tuple(cfg.mean) if cfg is not None else None
    std = tuple(cfg.std) if cfg is not None else None
    side = kwargs.get("img_size")
    if side is not None:
        height, width = (side, side) if isinstance(side, int) else tuple(side)
    in_chans = kwargs.get("in_chans", channels)
    if in_chans != channels:
        mean = std = None
    return InputConfig((int(in_chans), int(height), int(width)), mean, std)


register_source(
    ArchitectureSource(
        name="timm", names=timm_model_names, factory=_factory, unavailable=_unavailable
    )
)
