"""``Augmenter``: the weight-space augmentations of meta-training, applied to one member.

Weight-space learners overfit their few training networks (Shamsian et al., "Improved
Generalization of Weight Space Networks via Augmentations", ICML 2024). Each training
step can show the metanetwork a different network instead, drawn around the member:

1. MixUp (probability ``mixup``): with a random partner of the same architecture, at
   least as wide in every group, aligned by weight matching (:mod:`.mixup`), mixed with
   ``lam ~ U(mixup_min, 1)`` (the member stays the larger share);
2. positive per-channel scaling (``scale = a``: factors ``exp(U(-a, a))``) of every group
   where it keeps the function (:mod:`.scaling`, checked once per member);
3. weight noise (``noise``: ``sigma`` times each weight's std) and edge dropout
   (``edge_dropout``: share of ``(out, in)`` kernel slices zeroed) (:mod:`.noise`).

The result is a new :class:`~graph_encoding.ModelGraph` of the member's plan; the member's
module, groups and graph are untouched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from graph_encoding import ModelGraph, decode_tensors

from .channels import ChannelGroup, channel_groups
from .mixup import align, aligned, mix, mixable
from .noise import edge_dropout, weight_noise
from .scaling import scalable_groups, scale

__all__ = ["AugmentConfig", "Augmenter", "graph_with"]


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Strengths of the augmentations (all off by default); see the module docstring."""

    scale: float = 0.0
    noise: float = 0.0
    edge_dropout: float = 0.0
    mixup: float = 0.0
    mixup_min: float = 0.7

    def __post_init__(self) -> None:
        bounds = {"scale": (0.0, 2.0), "noise": (0.0, 0.5), "edge_dropout": (0.0, 0.5),
                  "mixup": (0.0, 1.0), "mixup_min": (0.0, 1.0)}  # fmt: skip
        for name, (lo, hi) in bounds.items():
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise ValueError(f"AugmentConfig.{name} must be in [{lo}, {hi}] (found {value})")

    @property
    def enabled(self) -> bool:
        return any((self.scale, self.noise, self.edge_dropout, self.mixup))


def graph_with(graph: ModelGraph, tensors: Mapping[str, Tensor]) -> ModelGraph:
    """A graph of ``graph``'s plan holding ``tensors`` (the inverse of ``decode_tensors``)."""
    plan = graph.plan
    flat = (
        torch.cat([tensors[k].reshape(-1) for k, _ in plan.weights])
        if plan.weights
        else graph.edge_flat
    )
    x = graph.x.clone()
    for p in plan.placements:
        x[p.node_offset : p.node_offset + p.size, p.column] = tensors[p.key][
            p.start : p.start + p.size
        ]
    return ModelGraph(x=x, edge_flat=flat.to(graph.edge_flat.dtype), layer_table=graph.layer_table,
                      num_nodes=graph.num_nodes, plan=plan, extras=graph.extras)  # fmt: skip


@dataclasses.dataclass
class _Prepared:
    groups: list[ChannelGroup]
    scalable: list[ChannelGroup]


class Augmenter:
    """Applies an :class:`AugmentConfig` to members (``name``, ``model``, ``graph``,
    ``groups`` as :class:`~metanet.training.data.Member` has them).

    Args:
        config: the strengths.
        example_inputs: input shape of the members (the scaling check runs 4 random inputs).
    """

    def __init__(self, config: AugmentConfig, example_inputs: Tensor) -> None:
        self.config = config
        self.inputs = torch.randn(
            (4, *example_inputs.shape[1:]), generator=torch.Generator().manual_seed(0)
        )
        self._prepared: dict[str, _Prepared] = {}

    def prepare(self, member: Any) -> _Prepared:
        if member.name not in self._prepared:
            state = _tensors(member.graph)
            groups = channel_groups(member.groups, state)
            scalable = (
                scalable_groups(member.model, groups, self.inputs.to(member.graph.x.device))
                if self.config.scale
                else []
            )
            self._prepared[member.name] = _Prepared(groups, scalable)
        return self._prepared[member.name]

    def partners(self, member: Any, pool: Sequence[Any]) -> list[Any]:
        """Members of ``pool`` (other than ``member``) it can be mixed with."""
        mine = self.prepare(member).groups
        return [p for p in pool if p.name != member.name and mixable(mine, self.prepare(p).groups)]

    @torch.no_grad()
    def __call__(
        self, member: Any, pool: Sequence[Any] = (), generator: torch.Generator | None = None
    ) -> ModelGraph:
        """``member``'s graph, augmented; ``pool`` supplies MixUp partners."""
        c = self.config
        gen = generator if generator is not None else torch.default_generator
        prepared = self.prepare(member)
        tensors = _tensors(member.graph)
        if c.mixup and float(torch.rand((), generator=gen)) < c.mixup:
            partners = self.partners(member, pool)
            if partners:
                other = partners[int(torch.randint(len(partners), (), generator=gen))]
                b, groups_b = _tensors(other.graph), self.prepare(other).groups
                perms = align(tensors, b, prepared.groups, groups_b)
                lam = c.mixup_min + (1 - c.mixup_min) * float(torch.rand((), generator=gen))
                tensors = mix(tensors, aligned(tensors, b, prepared.groups, groups_b, perms), lam)
        if c.scale:
            for g in prepared.scalable:
                factors = torch.exp(torch.empty(g.size).uniform_(-c.scale, c.scale, generator=gen))
                tensors = scale(tensors, g, factors.to(member.graph.x.dtype))
        if c.noise:
            tensors = weight_noise(tensors, c.noise, gen)
        if c.edge_dropout:
            tensors = edge_dropout(tensors, c.edge_dropout, gen)
        return graph_with(member.graph, tensors)


def _tensors(graph: ModelGraph) -> dict[str, Tensor]:
    return decode_tensors(graph.plan, graph.x, graph.edge_flat, graph.extras)
