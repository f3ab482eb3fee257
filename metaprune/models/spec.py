"""``ArchSpec``: a model architecture as plain, versioned JSON data.

A spec names a registered model (the registry is the allow-list: a spec can only
ever call a registered constructor), its JSON kwargs, and, for pruned models, the
channel plan (see :mod:`metaprune.models.channel_plan`). Its JSON form is::

    {"format_version": 1, "name": "cifar_resnet20", "kwargs": {"num_classes": 10},
     "channel_plan": {"layer1.0.conv1": {"in_channels": 16, "out_channels": 8, "groups": 1}}}

(``channel_plan`` is omitted for unpruned models.)

Specs are client data: parsing bounds their size and nesting (:mod:`metaprune.documents`),
and :meth:`ArchSpec.build` sizes the spec on the meta device and checks it against
:class:`~metaprune.limits.Limits` before it allocates anything (:mod:`.size`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from metaprune.documents import check_depth, parse_json
from metaprune.errors import InvalidInputError, LimitExceededError, quote
from metaprune.limits import DEFAULT_LIMITS, Limits
from metaprune.models.channel_plan import (
    ChannelPlan,
    channel_plan_of,
    normalize_channel_plan,
)
from metaprune.models.registry import UnknownModelError, is_model

__all__ = ["SPEC_FORMAT_VERSION", "ArchSpec", "SpecError"]

SPEC_FORMAT_VERSION = 1

_KEYS = frozenset({"format_version", "name", "kwargs", "channel_plan"})


class SpecError(InvalidInputError):
    """An architecture spec is malformed (wrong types, unknown keys, bad version)."""


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """A registered model name, its JSON kwargs and an optional channel plan.

    Args:
        name: a name from :func:`metaprune.models.list_models`.
        kwargs: constructor kwargs; must be JSON-serialisable (they are stored canonicalised).
        channel_plan: per-module structural attributes of a pruned model, or ``None``
            (an empty plan is stored as ``None``).

    Raises:
        UnknownModelError: if ``name`` is not registered.
        SpecError: if ``kwargs`` or ``channel_plan`` are not plain JSON data.
    """

    name: str
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    channel_plan: ChannelPlan | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise SpecError(f"spec name must be a string (found {quote(self.name)})")
        if not is_model(self.name):
            raise UnknownModelError(self.name)
        if not isinstance(self.kwargs, Mapping) or not all(isinstance(k, str) for k in self.kwargs):
            raise SpecError(
                f"spec {self.name!r}: kwargs must be a mapping with string keys (found {quote(self.kwargs)})"
            )
        # depth first: json.dumps recurses once per level
        check_depth(dict(self.kwargs), DEFAULT_LIMITS, f"spec {self.name!r} kwargs")
        try:
            kwargs = json.loads(json.dumps(dict(self.kwargs), allow_nan=False))
        except (TypeError, ValueError) as err:
            raise SpecError(
                f"spec {self.name!r}: kwargs must be plain JSON data ({quote(str(err))})"
            ) from None
        object.__setattr__(self, "kwargs", kwargs)
        plan = self.channel_plan
        if plan is not None:
            try:
                plan = normalize_channel_plan(plan) or None
            except ValueError as err:
                raise SpecError(f"spec {self.name!r}: {err}") from None
        object.__setattr__(self, "channel_plan", plan)

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_json(), sort_keys=True))

    def to_json(self) -> dict[str, Any]:
        """The spec as a plain JSON dict (deep copy)."""
        out: dict[str, Any] = {
            "format_version": SPEC_FORMAT_VERSION,
            "name": self.name,
            "kwargs": json.loads(json.dumps(self.kwargs)),
        }
        if self.channel_plan is not None:
            out["channel_plan"] = json.loads(json.dumps(self.channel_plan))
        return out

    @classmethod
    def from_json(
        cls,
        data: Mapping[str, Any] | str | bytes,
        *,
        limits: Limits = DEFAULT_LIMITS,
        require_version: bool = True,
    ) -> ArchSpec:
        """Parse a dict from :meth:`to_json` (or its JSON text).

        Args:
            data: the spec as a dict or JSON text.
            limits: bounds on the text's size and nesting.
            require_version: if false, a missing ``format_version`` means the current one
                (the plain ``{"name": ..., "kwargs": {...}}`` form the docs describe).

        Raises:
            SpecError: on invalid JSON, unknown keys, or a missing/unsupported ``format_version``.
            UnknownModelError: if the name is not registered.
            LimitExceededError: text over ``max_spec_bytes`` or nesting over ``max_json_depth``.
        """
        if isinstance(data, (str, bytes, bytearray)):
            try:
                data = parse_json(data, limits, "spec")
            except LimitExceededError:
                raise
            except InvalidInputError as err:
                raise SpecError(str(err)) from None
        if not isinstance(data, Mapping):
            raise SpecError(f"spec must be a JSON object (found {type(data).__name__})")
        unknown = sorted(str(k) for k in data if k not in _KEYS)
        if unknown:
            raise SpecError(
                f"spec has unknown key(s) {quote(unknown)} (expected a subset of {sorted(_KEYS)})"
            )
        version = data.get("format_version", None if require_version else SPEC_FORMAT_VERSION)
        if version != SPEC_FORMAT_VERSION:
            raise SpecError(
                f"spec format_version must be {SPEC_FORMAT_VERSION} (found {quote(version)}); "
                "it was written by an incompatible metaprune version"
            )
        if "name" not in data:
            raise SpecError("spec has no 'name'")
        return cls(
            name=data["name"], kwargs=data.get("kwargs", {}), channel_plan=data.get("channel_plan")
        )

    def build(
        self, device: torch.device | str | None = None, *, limits: Limits | None = DEFAULT_LIMITS
    ) -> nn.Module:
        """Create the model (optionally directly on ``device``, e.g. ``"meta"``) and apply the plan.

        Unless ``limits`` is ``None`` (trusted callers only), the spec is first sized on the
        meta device and checked against ``limits`` (:func:`metaprune.limits.check_spec`),
        so a spec from a client never allocates more than the limits allow.

        Raises:
            LimitExceededError: the model is over a limit.
            SpecError: the constructor fails with these kwargs or this channel plan.
        """
        from metaprune.models.size import construct

        if limits is not None and str(device) != "meta":
            from metaprune.limits import check_spec

            check_spec(self, limits)
        return construct(self, device, limits)

    def skeleton(self, limits: Limits = DEFAULT_LIMITS) -> nn.Module:
        """The model for inspecting structure and shapes: built on the meta device (no memory,
        no initialisation cost) where the constructor allows it; else, once the spec is known
        to be within ``limits`` (sized in a bounded child process), on the CPU.

        Raises:
            LimitExceededError, SpecError: see :meth:`build`.
        """
        from metaprune.models.size import _is_meta_failure, construct

        try:
            return construct(self, "meta", limits)
        except (NotImplementedError, RuntimeError) as err:  # e.g. constructors calling .tolist()
            if not _is_meta_failure(err):
                raise
        return self.build(limits=limits)

    def with_plan_of(self, model: nn.Module) -> ArchSpec:
        """This spec with the channel plan of ``model``, a pruned instance of the architecture."""
        base = dataclasses.replace(self, channel_plan=None).skeleton()
        return dataclasses.replace(self, channel_plan=channel_plan_of(model, base))
