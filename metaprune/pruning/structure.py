"""What Torch-Pruning must be told about a model, and a dry run proving it before any work.

Torch-Pruning's dependency graph couples channels through convolutions, linears, norms,
residual adds, concatenations, grouped and depthwise convolutions, SE gates and bare
per-channel parameters (ConvNeXt ``gamma``, torchvision ``layer_scale``, ResMLP's affine,
position embeddings: its ``unwrapped_parameters``, found automatically). What it cannot
see is Python state a ``forward`` reads: the head count and head width of an attention
module with a fused ``qkv`` layer (timm's ``Attention`` and its relatives). So:

* :func:`attention_heads` gives Torch-Pruning those layers' head counts (its
  ``num_heads``: every head loses the same channels), and :func:`sync_heads` writes the
  new head width back into the module after every step (:func:`set_heads`, which the
  channel plan's replay also uses, so a rebuilt model computes the same thing).
  ``nn.MultiheadAttention`` keeps its heads the same way (``out_channel_groups``).
* :func:`check_prunable` is a **dry run** on a copy of the model on the meta device
  (shapes only; about one traced forward pass): it prunes every coupled group once, runs
  the pruned copy, and checks that its channel plan rebuilds it (same tensor names and
  shapes, and a forward pass). A group whose pruning breaks the model (a ``forward``
  that computes a width from the input, a channel-order-dependent op) is found by
  bisection and *frozen*: the job prunes the rest and reports what it froze and why. A
  model Torch-Pruning cannot trace, or with nothing left to prune, is refused with
  :class:`~metaprune.errors.InvalidInputError` naming the module and the reason,
  before any work.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from metaprune.errors import InvalidInputError, describe_exception
from metaprune.models.channel_plan import (
    apply_channel_plan,
    channel_plan_of,
    head_attrs,
    set_heads,
    sync_derived_widths,
)
from metaprune.pruning._floor import FlooredPruner
from metaprune.pruning._tp_fixes import MappingTooLarge, recorded_concat_widths
from metaprune.pruning.targets import find_classifier, forget_cached_tensors, meta_copy

__all__ = [
    "FrozenGroup",
    "PruningStructure",
    "attention_heads",
    "check_prunable",
    "make_pruner",
    "sync_heads",
]

# the dry run's step: every group loses this share of its channels (at least one per
# channel group), which is enough to exercise every coupling
_PROBE_RATIO = 0.25



@dataclasses.dataclass(frozen=True)
class FrozenGroup:
    """A coupled group the pruner leaves alone: its layers (module paths) and why."""

    modules: tuple[str, ...]
    reason: str


@dataclasses.dataclass(frozen=True)
class PruningStructure:
    """The dry run's verdict: how many coupled groups can be pruned, which are frozen."""

    groups: int
    frozen: tuple[FrozenGroup, ...] = ()

    @property
    def frozen_modules(self) -> tuple[str, ...]:
        """Module paths to keep out of pruning (pass to ``progressive_prune(frozen=...)``)."""
        return tuple(m for group in self.frozen for m in group.modules)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prunable_groups": self.groups,
            "frozen": [{"modules": list(g.modules), "reason": g.reason} for g in self.frozen],
        }


def _qkv_width(module: nn.Module) -> int | None:
    qkv = getattr(module, "qkv", None)
    if isinstance(qkv, nn.Linear):
        return int(qkv.out_features)
    if isinstance(qkv, _ConvNd) and qkv.groups == 1:
        return int(qkv.out_channels)
    return None


def _head_first(module: nn.Module) -> bool:
    """timm's ``head_first`` attention (MaxxViT's ``rw`` models) lays its ``qkv`` output
    out as ``heads x (q, k, v)``: Torch-Pruning's head groups would take different
    channels from a head's q, k and v, so such a ``qkv`` keeps its width."""
    return bool(getattr(module, "head_first", False)) and _qkv_width(module) is not None


def _fused_qkv_modules(model: nn.Module) -> list[nn.Module]:
    """Attention modules with a fused ``qkv`` layer whose output is ``3 x heads x dim``."""
    found = []
    for module in model.modules():
        heads, width = head_attrs(module), _qkv_width(module)
        if heads is None or width is None or _head_first(module):
            continue
        dim = heads.get("head_dim", heads.get("dim_head"))
        if dim is not None and width == 3 * heads["num_heads"] * dim:
            found.append(module)
    return found


def attention_heads(model: nn.Module) -> dict[nn.Module, int]:
    """The fused ``qkv`` layers of ``model``'s attention modules and their head counts
    (Torch-Pruning's ``num_heads``)."""
    return {m.qkv: int(m.num_heads) for m in _fused_qkv_modules(model)}


def sync_heads(model: nn.Module) -> None:
    """After a pruning step, give every fused-qkv attention module the head width its
    ``qkv`` layer now has (the head count never changes), set the widths a ``forward``
    reads from plain attributes (:data:`~metaprune.models.channel_plan.DERIVED_WIDTHS`:
    torchvision ViT's ``hidden_dim``), and forget what modules cached
    from the unpruned weights (:func:`~metaprune.pruning.targets.forget_cached_tensors`)."""
    forget_cached_tensors(model)
    sync_derived_widths(model)
    for module in model.modules():
        heads, width = head_attrs(module), _qkv_width(module)
        if heads is None or width is None or "num_heads" not in heads:
            continue
        n = heads["num_heads"]
        dim = heads.get("head_dim", heads.get("dim_head"))
        if width % (3 * n) == 0 and width // (3 * n) != dim:
            set_heads(module, n, width // (3 * n))


def make_pruner(
    model: nn.Module,
    example_inputs: Tensor | tuple[Tensor, ...],
    importance: tp.importance.Importance,
    *,
    ignored_layers: Sequence[nn.Module],
    frozen: Sequence[str] = (),
    **kwargs: Any,
) -> FlooredPruner:
    """The :class:`FlooredPruner` for ``model``, told about its attention heads; layers
    named in ``frozen`` are ignored too. ``kwargs`` go to the pruner."""
    ignored = list(ignored_layers)
    for path in frozen:
        try:
            ignored.append(model.get_submodule(path))
        except AttributeError:
            raise InvalidInputError(
                f"frozen layer {path!r} is not a module of {type(model).__name__}"
            ) from None
    ignored += [m.qkv for m in model.modules() if _head_first(m)]
    mha = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    # Torch-Pruning warns of every bare parameter; the graph's traced pass records the
    # true widths of the concatenations it meets
    with warnings.catch_warnings(), recorded_concat_widths():
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        pruner = FlooredPruner(
            model, example_inputs, importance, ignored_layers=ignored,
            out_channel_groups=mha, num_heads=attention_heads(model), **kwargs,
        )  # fmt: skip
    forget_cached_tensors(model)  # filled by the graph's traced pass, with autograd on
    return pruner


# ----------------------------------------------------------------------------- dry run



def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {
        name: tuple(t.shape)
        for name, t in (*model.named_parameters(remove_duplicate=False),
                        *model.named_buffers(remove_duplicate=False))
    }  # fmt: skip


def _group_modules(pruner: FlooredPruner, names: dict[nn.Module, str]) -> list[tuple[str, ...]]:
    """Each prunable group as the paths of the layers whose outputs it prunes (root first)."""
    groups = []
    for group in pruner.DG.get_all_groups(
        ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types
    ):
        paths = []
        for dep, _ in group:
            if pruner.DG.is_out_channel_pruning_fn(dep.handler):
                path = names.get(dep.target.module)
                if path is not None and path not in paths:
                    paths.append(path)
        if paths:
            groups.append(tuple(paths))
    return groups


def check_prunable(
    model: nn.Module,
    example_inputs: Tensor,
    ignored_layers: Sequence[nn.Module] | None = None,
    *,
    round_to: int | None = None,
) -> PruningStructure:
    """Dry-run structural pruning of ``model`` (a copy on the meta device; see the module
    doc) and return which groups can be pruned and which must be frozen.

    Args:
        model: not modified.
        example_inputs: one example batch (its shape matters, not its values).
        ignored_layers: layers whose outputs are never pruned (default: the classifier).
        round_to: the job's channel rounding.

    Raises:
        InvalidInputError: Torch-Pruning cannot trace the model, or no group can be pruned
            without breaking it (the message names the module and the error).
    """
    names = {m: n for n, m in model.named_modules()}
    if ignored_layers is None:
        ignored_layers = [find_classifier(model, example_inputs)]
    ignored = [names[m] for m in ignored_layers if m in names]
    device = "meta" if _runs_on_meta(model, example_inputs) else "cpu"
    probe = _Probe(model, example_inputs, ignored, device, round_to)
    groups = probe.groups
    if not groups:
        raise InvalidInputError(
            f"{type(model).__name__} has no prunable layer (Torch-Pruning found no coupled "
            "group of channels outside the classifier)"
        )
    error = probe.first_error
    if error is None:
        return PruningStructure(groups=len(groups))
    frozen: list[FrozenGroup] = []

    def bisect(candidates: list[tuple[str, ...]], error: str) -> None:
        if len(candidates) == 1:
            frozen.append(FrozenGroup(candidates[0], error))
            return
        half = len(candidates) // 2
        found = False
        for part in (candidates[:half], candidates[half:]):
            part_error = probe.attempt(part)
            if part_error is not None:
                found = True
                bisect(part, part_error)
        if not found:  # only the combination fails: freeze all of it
            frozen.extend(FrozenGroup(c, error) for c in candidates)

    bisect(groups, error)
    kept = [g for g in groups if g not in {f.modules for f in frozen}]
    final = probe.attempt(kept) if kept else "every group fails"
    if final is not None or not kept:
        first = frozen[0]
        raise InvalidInputError(
            f"{type(model).__name__} cannot be pruned structurally: pruning "
            f"{first.modules[0]!r} breaks it ({first.reason})"
        )
    return PruningStructure(groups=len(groups), frozen=tuple(frozen))


def _layer_before(node: Any, names: dict[nn.Module, str]) -> str | None:
    """The nearest layer of the model feeding a Torch-Pruning graph node (breadth first)."""
    frontier, seen = [node], set()
    for _ in range(32):
        following = []
        for n in frontier:
            path = names.get(getattr(n, "module", None))  # type: ignore[arg-type]
            if path:
                return path
            following += [i for i in getattr(n, "inputs", ()) if id(i) not in seen]
            seen.update(id(i) for i in following)
        frontier = following
    return None


def _runs_on_meta(model: nn.Module, example: Tensor) -> bool:
    """Whether ``model`` runs on the meta device (not if its forward reads tensor values)."""
    try:
        with torch.no_grad():
            meta_copy(model).eval()(example.to("meta"))
    except Exception:  # noqa: BLE001 (any op may lack a meta kernel)
        return False
    return True


def _untraceable(model: nn.Module, err: BaseException) -> InvalidInputError:
    where, reshape = "", False
    tb = err.__traceback__
    while tb is not None:  # the dependency-graph node Torch-Pruning was mapping, if any
        node = tb.tb_frame.f_locals.get("reshape_node", tb.tb_frame.f_locals.get("node"))
        reshape = reshape or tb.tb_frame.f_code.co_name == "update_reshape_index_mapping"
        if node is not None and hasattr(node, "inputs"):
            layer = _layer_before(node, {m: n for n, m in model.named_modules()})
            where = f" after layer {layer!r}" if layer else where
        tb = tb.tb_next
    if isinstance(err, MappingTooLarge):
        why = (
            "its forward reshapes tensors across the channel axis (e.g. window partitions) "
            f"in a way Torch-Pruning cannot follow channel by channel ({err})"
        )
    elif reshape:
        why = (
            "its forward reshapes the channel axis (a channel shuffle or a split into "
            "groups) in a way Torch-Pruning cannot map channel by channel"
        )
    else:
        why = describe_exception(err)
    return InvalidInputError(f"Torch-Pruning cannot trace {type(model).__name__}{where}: {why}")


class _Probe:
    """Prunes copies of one model on ``device`` with some groups allowed, and checks them."""

    def __init__(
        self,
        model: nn.Module,
        example: Tensor,
        ignored: list[str],
        device: str,
        round_to: int | None,
    ) -> None:
        self.model, self.ignored, self.device, self.round_to = model, ignored, device, round_to
        self.example = example.to(device)
        pruned = self._copy()
        try:
            pruner = self._pruner(pruned, [])
        except Exception as err:  # noqa: BLE001 (tracing a foreign model raises anything)
            raise _untraceable(pruned, err) from None
        self.groups = _group_modules(pruner, {m: n for n, m in pruned.named_modules()})
        self.first_error = self._run(pruned, pruner)

    def _copy(self) -> nn.Module:
        clone = meta_copy(self.model) if self.device == "meta" else copy.deepcopy(self.model)
        return clone.eval()

    def _pruner(self, model: nn.Module, frozen: Sequence[str]) -> FlooredPruner:
        return make_pruner(
            model, self.example, tp.importance.RandomImportance(),
            ignored_layers=[model.get_submodule(p) for p in self.ignored], frozen=frozen,
            global_pruning=False, pruning_ratio=_PROBE_RATIO, iterative_steps=1,
            round_to=self.round_to, max_layer_ratio=1.0, min_channels=1,
        )  # fmt: skip

    def attempt(self, allowed: list[tuple[str, ...]]) -> str | None:
        """Prune only the ``allowed`` groups; the error it causes, or ``None``."""
        allowed_roots = {g[0] for g in allowed}
        others = [g[0] for g in self.groups if g[0] not in allowed_roots]
        pruned = self._copy()
        try:
            pruner = self._pruner(pruned, others)
        except Exception as err:  # noqa: BLE001
            return describe_exception(err)
        return self._run(pruned, pruner)

    def _run(self, pruned: nn.Module, pruner: FlooredPruner) -> str | None:
        try:
            pruner.prune_step()
            sync_heads(pruned)
            with torch.no_grad():
                pruned(self.example)
            return _rebuild_error(pruned, self._copy, self.example)
        except Exception as err:  # noqa: BLE001 (a broken pruned model raises anything)
            return describe_exception(err)


def _rebuild_error(
    pruned: nn.Module, fresh: Callable[[], nn.Module], example: Tensor
) -> str | None:
    """Why the channel plan of ``pruned`` does not rebuild it from a fresh copy, or ``None``."""
    plan = channel_plan_of(pruned, fresh())
    rebuilt = apply_channel_plan(fresh(), plan)
    want, got = _shapes(pruned), _shapes(rebuilt)
    if want != got:
        diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        k = diff[0]
        return (
            f"the channel plan does not rebuild it: {k!r} has shape {got.get(k)} in the "
            f"rebuild, {want.get(k)} in the pruned model ({len(diff)} tensor(s) differ)"
        )
    with torch.no_grad():
        rebuilt(example)
    return None
