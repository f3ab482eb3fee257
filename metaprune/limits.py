"""``Limits``: every bound on what one request may ask for, named in one place.

A client controls a few hundred bytes of spec and config; without bounds those bytes can
ask for a 10^9-class classifier or a million epochs. Every entry point (library, CLI,
batch, the gRPC service) checks requests against one ``Limits`` object *before* doing any
work, and the service reports it through ``GetServerInfo``. The defaults suit a 2-core,
24 GiB machine; an operator raises them in the service or batch configuration
(``Limits.from_dict``) or with ``dataclasses.replace``.

Example::

    limits = Limits.from_dict({"max_params": 200_000_000})
    limits.check("max_params", n_params, what="spec 'resnet50'")   # LimitExceededError if over
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from metaprune.errors import InvalidInputError, LimitExceededError, quote

if TYPE_CHECKING:
    from metaprune.models.size import SpecSize
    from metaprune.models.spec import ArchSpec

__all__ = ["DEFAULT_LIMITS", "Limits", "check_spec"]


@dataclasses.dataclass(frozen=True)
class Limits:
    """Upper bounds on one request. Every field is a maximum; all are positive.

    Architecture (checked from the spec without allocating real memory):
        max_params: parameters of the model a spec builds.
        max_macs: multiply-accumulates of one forward pass at the job's input size.
    Job settings:
        max_epochs: epochs of any one fine-tune stage.
        max_steps: pruning schedule steps.
        max_batch_size: training / evaluation / latency batch size.
        max_image_size: input height or width.
        max_threads: torch threads a job may use.
        max_repeats: latency timing repeats (and warm-up passes).
        max_latency_seconds: time budget of one latency measurement.
        max_images: images of one budget counted in images (BatchNorm recalibration,
            a curve point, the normaliser search).
        max_wall_seconds: wall-clock budget of one job.
    Files and wire:
        max_upload_bytes: a checkpoint file (or upload).
        max_spec_bytes: an architecture spec's JSON text.
        max_header_bytes: a safetensors header.
        max_json_depth: nesting depth of any JSON/YAML document.
    Building (a spec is sized by building it on the meta device, or in a bounded child
    process where its constructor cannot run there):
        max_tensors: parameter and buffer tensors of one model (stops specs that ask for
            10^8 blocks long before they cost time or host memory).
        max_build_seconds: time one spec may take to build for sizing.
    """

    max_params: int = 200_000_000
    max_macs: int = 50_000_000_000
    max_epochs: int = 200
    max_steps: int = 2_000
    max_batch_size: int = 4_096
    max_image_size: int = 1_024
    max_threads: int = 64
    max_repeats: int = 1_000
    max_latency_seconds: float = 600.0
    max_images: int = 1_000_000
    max_wall_seconds: float = 24 * 3600.0
    max_upload_bytes: int = 2 * 1024**3
    max_spec_bytes: int = 1024**2
    max_header_bytes: int = 16 * 1024**2
    max_json_depth: int = 32
    max_tensors: int = 20_000
    max_build_seconds: float = 120.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidInputError(
                    f"Limits.{field.name} must be a number (found {quote(value)})"
                )
            try:
                finite = math.isfinite(value)
            except OverflowError:  # an int too large for a float
                finite = False
            if not (finite and value > 0):
                raise InvalidInputError(f"Limits.{field.name} must be > 0 (found {value!r})")

    def check(self, limit: str, requested: float, what: str = "") -> None:
        """Raise :class:`LimitExceededError` if ``requested`` is over the limit named ``limit``."""
        bound = getattr(self, limit)
        if requested > bound:
            raise LimitExceededError(limit, bound, requested, what)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Limits:
        """Defaults overridden by ``data``; unknown keys are refused by name."""
        if not isinstance(data, Mapping):
            raise InvalidInputError(f"limits must be a mapping (found {type(data).__name__})")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in data if k not in names)
        if unknown:
            raise InvalidInputError(
                f"limits: unknown key(s) {quote(unknown)} (expected a subset of {sorted(names)})"
            )
        return cls(**data)


DEFAULT_LIMITS = Limits()


def check_spec(
    spec: ArchSpec | Mapping[str, Any] | str,
    limits: Limits = DEFAULT_LIMITS,
    input_shape: tuple[int, ...] | None = None,
) -> SpecSize:
    """Size ``spec`` without allocating real memory and check it against ``limits``.

    Call it before any real construction of a model from client data. ``spec`` may be an
    :class:`~metaprune.models.ArchSpec`, its JSON dict or JSON text. ``input_shape``
    (``(C, H, W)``) enables the MACs check and is itself checked against ``max_image_size``.

    Returns:
        The spec's :class:`~metaprune.models.size.SpecSize`.

    Raises:
        LimitExceededError: over ``max_params``, ``max_macs``, ``max_image_size``,
            ``max_tensors``, ``max_build_seconds`` or ``max_spec_bytes``.
        InvalidInputError: a malformed spec (:class:`~metaprune.models.SpecError`) or one
            whose constructor fails; NotFoundError for an unknown model name.
    """
    from metaprune.models.size import spec_size
    from metaprune.models.spec import ArchSpec

    if not isinstance(spec, ArchSpec):
        spec = ArchSpec.from_json(spec, limits=limits)
    if not isinstance(limits, Limits):
        raise InvalidInputError(f"limits must be a Limits (found {type(limits).__name__})")
    size = spec_size(spec, input_shape, limits=limits)
    what = f"spec {quote(spec.name)}"
    limits.check("max_params", size.params, what)
    if size.macs is not None:
        limits.check("max_macs", size.macs, f"{what} at input shape {tuple(input_shape or ())}")
    return size
