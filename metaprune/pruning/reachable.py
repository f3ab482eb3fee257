"""How far the per-layer floor lets a model be pruned, known before any work is done.

Every prunable layer keeps at least ``max(min_channels, ceil((1 - max_layer_ratio) * width))``
channels (:class:`~metaprune.pruning.PruningOptions`), so a model cannot be pruned beyond
the point where every layer sits at its floor. A target past that point would run the whole
schedule and fail; :func:`check_reachable` refuses it up front, naming the largest value
that can be reached.

The bound is computed on a **meta-device** copy of the model (shapes only: no weights are
copied, nothing is evaluated): one step of :func:`~metaprune.pruning.progressive_prune` that
asks for every channel, which the floor turns into "every layer at its floor", and one MACs
count. Which channels survive does not matter for the count, so random importance is used.
It gives exactly the speed-up a full progressive prune saturates at (same pruner, same
floor, same ignored classifier), in ~0.5 s for a ResNet-20 and ~2 s for a ResNet-50 at 224.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from metaprune.errors import MetapruneError
from metaprune.pruning._checks import ConfigError
from metaprune.pruning.config import PruneConfig, PruningOptions, Target
from metaprune.pruning.progressive import progressive_prune
from metaprune.pruning.targets import meta_copy

if TYPE_CHECKING:
    from metaprune.limits import Limits
    from metaprune.models import ArchSpec

__all__ = ["check_reachable", "check_reachable_spec", "max_reachable", "max_reachable_spec"]

_KINDS = ("macs", "params")  # a latency speed-up is only known by measuring it


def max_reachable(
    model: nn.Module,
    example_inputs: Tensor,
    options: PruningOptions | None = None,
    kind: str = "macs",
    frozen: Sequence[str] = (),
) -> float:
    """The largest ``kind`` ratio (base / pruned MACs or parameters) that pruning with the
    floor of ``options`` can reach: every prunable layer at its floor, the groups of the
    layers named in ``frozen`` (the dry run's) left whole. ``model`` is not modified (a
    meta-device copy is pruned).

    Raises:
        ConfigError: ``kind`` is not ``"macs"`` or ``"params"``.
    """
    if kind not in _KINDS:
        raise ConfigError(f"max_reachable: kind must be one of {_KINDS} (found {kind!r})")
    options = options or PruningOptions()
    skeleton = meta_copy(model)
    history = progressive_prune(
        skeleton, example_inputs.to("meta"), Target(kind, 1e300), importance="random",
        steps=1, round_to=options.round_to, max_layer_ratio=options.max_layer_ratio,
        min_channels=options.min_channels, frozen=frozen,
    )  # fmt: skip
    return history[-1].value(kind)


def check_reachable(
    model: nn.Module, example_inputs: Tensor, config: PruneConfig, frozen: Sequence[str] = ()
) -> float | None:
    """Refuse a target the floor (and the ``frozen`` layers' groups, kept whole) makes
    unreachable; return the largest reachable value (``None`` for a latency target, which
    is not known without measuring, or for a model that cannot run on the meta device:
    its schedule meets the floor as before).

    Raises:
        ConfigError: naming the target, the floor settings, the frozen layers and the
            largest reachable value.
    """
    if config.target.kind not in _KINDS or config.target.value <= 1.0:
        return None
    best = _bound_or_none(
        lambda: max_reachable(model, example_inputs, config.pruning, config.target.kind, frozen)
    )
    if best is not None:
        _refuse_beyond(config, best, frozen)
    return best


def max_reachable_spec(
    spec: ArchSpec, input_shape: tuple[int, ...], options: PruningOptions, kind: str,
    limits: Limits,
) -> float | None:  # fmt: skip
    """:func:`max_reachable` of the architecture ``spec`` at ``input_shape`` (``(C, H, W)``),
    built on the meta device under ``limits`` (size it with
    :func:`~metaprune.limits.check_spec` first); ``None`` if its constructor cannot run on
    the meta device (the pipeline checks again on the real model). Cached per spec."""
    import json

    return _spec_bound(
        json.dumps(spec.to_json(), sort_keys=True), tuple(input_shape),
        options.round_to, options.max_layer_ratio, options.min_channels, kind, limits,
    )  # fmt: skip


def check_reachable_spec(
    spec: ArchSpec, input_shape: tuple[int, ...], config: PruneConfig, limits: Limits
) -> float | None:
    """:func:`check_reachable` for an architecture spec (what a server has before a job
    runs); ``None`` when not checked (latency target, or the model cannot be built or
    pruned on the meta device).

    Raises:
        ConfigError: the target is beyond the largest reachable value.
    """
    if config.target.kind not in _KINDS or config.target.value <= 1.0:
        return None
    best = max_reachable_spec(spec, input_shape, config.pruning, config.target.kind, limits)
    if best is not None:
        _refuse_beyond(config, best)
    return best


@functools.lru_cache(maxsize=256)
def _spec_bound(
    spec_json: str, input_shape: tuple[int, ...], round_to: int | None, max_layer_ratio: float,
    min_channels: int, kind: str, limits: Limits,
) -> float | None:  # fmt: skip
    from metaprune.models import ArchSpec
    from metaprune.models.size import construct

    spec = ArchSpec.from_json(spec_json, limits=limits)
    try:
        model = construct(spec, "meta", limits)
    except (NotImplementedError, RuntimeError):  # needs real data to build (e.g. RegNets)
        return None
    options = PruningOptions(
        round_to=round_to, max_layer_ratio=max_layer_ratio, min_channels=min_channels
    )
    example = torch.empty((1, *input_shape), device="meta")
    return _bound_or_none(lambda: max_reachable(model, example, options, kind))


def _bound_or_none(compute: Callable[[], float]) -> float | None:
    # The bound is a courtesy check before work: a model whose forward or pruning cannot
    # run on the meta device (data-dependent control flow, ops without meta kernels) is
    # pruned as before and meets the floor during the schedule instead.
    try:
        return compute()
    except MetapruneError:
        raise
    except Exception:  # noqa: BLE001 (any failure of the meta run means "not known")
        return None


def _refuse_beyond(config: PruneConfig, best: float, frozen: Sequence[str] = ()) -> None:
    target, pruning = config.target, config.pruning
    if target.value <= best:
        return
    shown = math.floor(best * 100) / 100  # never print a value that is not reachable
    kept = ""
    if frozen:  # the dry run's verdict, before any work (report["structure"] has why)
        names = ", ".join(repr(f) for f in frozen[:3]) + (", ..." if len(frozen) > 3 else "")
        kept = f" and the {len(frozen)} layer(s) it cannot prune structurally kept whole ({names})"
    raise ConfigError(
        f"target.value {target.value:g} ({target.kind} ratio) cannot be reached: with every "
        f"layer at its floor (pruning.max_layer_ratio {pruning.max_layer_ratio:g}, "
        f"pruning.min_channels {pruning.min_channels}"
        + (f", pruning.round_to {pruning.round_to}" if pruning.round_to else "")
        + f"){kept} this model reaches at most {shown:.2f}; ask for <= {shown:.2f}"
        + ("" if frozen else " or raise pruning.max_layer_ratio")
    )

