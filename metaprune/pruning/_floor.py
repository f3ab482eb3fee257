"""``FlooredPruner``: Torch-Pruning's global pruner with a per-layer width floor.

Torch-Pruning's own guard (``max_pruning_ratio``) only stops pruning a group *after* it
fell below the limit, and one global step can empty most of a layer at once. Here the
floor is enforced where the decision is made: when a group's importance is estimated,
its ``floor`` most important channels are marked ``inf`` (never below the global
threshold), and any of them that a step still selects (when the schedule asks for more
channels than are prunable) are dropped when the pruning group is built -- before
Torch-Pruning's own check, which would otherwise reject a group that empties a layer and
so freeze the layer above its floor.

The same mechanism caps what one step may take from a group (``prune_step(max_loss=...)``):
Torch-Pruning's global step prunes every channel whose score is ``<=`` the global
threshold, so a group whose scores are flat (a transformer's residual stream at random
init: one coupled group across every block) falls from full width to its floor in a
single step the moment the threshold reaches it -- torchvision's ViT-B/32 went from 1.8x
to 14.9x MACs in one step of a 2x schedule. Protecting all but ``max_loss`` of a group's
initial width spreads that fall over several steps, so the target is met near where it
is asked for; the channels it holds back are ranked again at the next step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from metaprune.pruning._score_cache import ScoreCache, cacheable

__all__ = ["FlooredPruner"]

# layers whose every parameter Torch-Pruning prunes itself
_PLAIN = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear)


def _each_index_once(group: tp.dependency.Group) -> tp.dependency.Group:
    """``group`` with each layer's indices listed once. A walk that reaches a layer's
    channel from two root channels (SKNet's kernel paths, through its radix-split
    attention) lists it twice, and Torch-Pruning's pruners subtract the list's length
    from the width attribute: ``in_channels`` fell below the weight's width, which the
    channel plan then rebuilt wrong."""
    for i, item in enumerate(group.items):
        if len(set(item.idxs)) == len(item.idxs):  # the common case, checked in C
            continue
        seen: set[int] = set()
        keep = [j for j, idx in enumerate(item.idxs) if not (idx in seen or seen.add(idx))]
        if len(keep) < len(item.idxs):
            roots = item.root_idxs
            group[i] = tp._helpers.GroupItem(item.dep, [item.idxs[j] for j in keep])
            group[i].root_idxs = [roots[j] for j in keep]
    return group


class FlooredPruner(tp.pruner.BasePruner):
    """A ``BasePruner`` whose layers keep at least
    ``max(min_channels, ceil((1 - max_layer_ratio) * initial width))`` channels, rounded up
    to ``round_to``; call :meth:`prune_step` instead of ``step``.

    ``reuse_scores``: a group whose layers hold the same tensors as at its last scoring is
    not scored again (:mod:`metaprune.pruning._score_cache`; bit for bit the same scores,
    for the criteria known to allow it). Change no weight through ``.data`` between steps.

    Attributes:
        saturated: after a step, whether no prunable channel was left above its floor
            when the step started (further steps cannot change the model).
        unscored: groups (by root module id) whose importance Torch-Pruning could not
            compute, with the error; they are never pruned.
    """

    def __init__(
        self, *args: Any, min_channels: int = 2, max_layer_ratio: float = 0.75,
        reuse_scores: bool = True, **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.scores = ScoreCache() if reuse_scores and cacheable(self.importance) else None
        self.min_channels = min_channels
        self.max_layer_ratio = max_layer_ratio
        self.saturated = False
        self.unscored: dict[int, str] = {}  # groups whose importance failed -> why
        self._protected: dict[tuple[nn.Module, bool], set[int]] = {}
        self._slack = 0
        self._max_loss: float | None = None  # share of a layer's initial width per step
        build_group = self.DG.get_pruning_group

        def get_pruning_group(module: nn.Module, pruning_fn: Any, idxs: Any) -> Any:
            # Keys are only present between a group's importance estimate and the end of
            # the step, i.e. when _prune builds the group it is about to prune.
            protected = self._protected.get((module, self.DG.is_out_channel_pruning_fn(pruning_fn)))
            if protected:
                idxs = [int(i) for i in idxs if int(i) not in protected]
            return _each_index_once(build_group(module, pruning_fn, idxs))

        self.DG.get_pruning_group = get_pruning_group  # type: ignore[method-assign]

    def _initial(self, module: nn.Module, out: bool) -> int | None:
        return (self.layer_init_out_ch if out else self.layer_init_in_ch).get(module)

    def floor(self, module: nn.Module, out: bool) -> int:
        """The minimum width of ``module``'s outputs (``out``) or inputs."""
        initial = self._initial(module, out)
        if initial is None:
            return self.min_channels
        floor = max(self.min_channels, math.ceil((1.0 - self.max_layer_ratio) * initial - 1e-9))
        if self.round_to:
            floor = math.ceil(floor / self.round_to) * self.round_to
        return min(floor, initial)

    @torch.no_grad()
    def estimate_importance(self, group: tp.dependency.Group) -> torch.Tensor | None:
        score = super().estimate_importance
        try:
            imp = score(group) if self.scores is None else self.scores.scores(group, lambda: score(group))
        except (IndexError, RuntimeError) as err:
            # Torch-Pruning maps some groups' indices past a layer's width (DPN's sliced
            # dense concatenations): such a group cannot be scored, so it is not pruned
            module = group[0].dep.target.module
            self.unscored.setdefault(id(module), f"{type(module).__name__}: {err}")
            return None
        if imp is None:
            return None
        dep = group[0].dep
        module, out = dep.target.module, self.DG.is_out_channel_pruning_fn(dep.handler)
        width = self.DG.get_out_channels(module) if out else self.DG.get_in_channels(module)
        ch_groups = self._get_channel_groups(group)
        if width is None or len(imp) % ch_groups:
            return imp
        group_size = len(imp) // ch_groups
        keep = min(group_size, math.ceil(self.floor(module, out) / ch_groups))
        self._slack += max(0, len(imp) - keep * ch_groups)
        heads = any(isinstance(d.target.module, nn.MultiheadAttention) for d, _ in group)
        keep = max(keep, group_size - self._most(module, out, ch_groups, heads))
        scores = torch.nan_to_num(imp.view(ch_groups, group_size).float().mean(0), nan=0.0)
        positions = torch.topk(scores, k=keep).indices
        protected = (positions[None, :] + group_size * torch.arange(ch_groups)[:, None]).flatten()
        imp = imp.clone().float()
        imp[protected.to(imp.device)] = math.inf
        root_idxs = group[0].root_idxs
        self._protected[(module, out)] = {int(root_idxs[i]) for i in protected.tolist()}
        return imp

    def _most(self, module: nn.Module, out: bool, ch_groups: int, heads: bool) -> int:
        """How many channels of each of a group's ``ch_groups`` this step may remove."""
        initial = self._initial(module, out)
        if self._max_loss is None or initial is None or (ch_groups > 1 and not heads):
            # no cap; nor on grouped channels other than nn.MultiheadAttention's heads,
            # where it broke ResNeSt's split attention (its fc2 and grouped conv ended at
            # different widths; cause not isolated)
            return 1 << 62
        most = max(1, int(self._max_loss * initial) // ch_groups)
        return max(most, self.round_to or 1)

    def _per_channel_extras(self, group: tp.dependency.Group) -> list[tuple[nn.Module, str, Tensor]]:
        """Per-output-channel parameters of conv/linear subclasses that Torch-Pruning
        prunes as plain layers (weight and bias only): timm's ``ScaledStdConv2d`` ``gain``
        (NF-ResNet). Returns ``(module, name, indices to keep)`` for the group's layers."""
        extras = []
        for dep, idxs in group:
            module = dep.target.module
            if type(module) in _PLAIN or not isinstance(module, (_ConvNd, nn.Linear)):
                continue
            if not self.DG.is_out_channel_pruning_fn(dep.handler):
                continue
            width = int(module.weight.shape[0])
            drop = {int(getattr(i, "idx", i)) for i in idxs}
            keep = torch.tensor([i for i in range(width) if i not in drop], dtype=torch.long)
            for name, param in module.named_parameters(recurse=False):
                if name not in ("weight", "bias") and param.dim() >= 1 and param.shape[0] == width:
                    extras.append((module, name, keep.to(param.device)))
        return extras

    def prune_step(self, max_loss: float | None = None) -> int:
        """One pruning step with the floor enforced; returns how many groups were pruned.

        ``max_loss``: if given, no group loses more than this share of its root layer's
        initial width in this step (at least one channel per channel group, and at
        least ``round_to``), whatever the global threshold says; ``None``: no cap.
        """
        if max_loss is not None and not max_loss > 0:
            raise ValueError(f"max_loss must be > 0, got {max_loss!r}")
        self._max_loss = max_loss
        self._protected.clear()
        self._slack = 0
        pruned = 0
        try:
            for group in self.step(interactive=True):
                if len(group[0].idxs) == 0:  # every selected channel was protected
                    continue
                extras = self._per_channel_extras(group)
                group.prune()
                for module, name, keep in extras:
                    old = getattr(module, name)
                    setattr(module, name, nn.Parameter(old.data[keep].clone(), old.requires_grad))
                pruned += 1
        finally:
            self._protected.clear()
            self._max_loss = None
        self.saturated = self._slack == 0
        return pruned
