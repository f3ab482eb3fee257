"""Tests for metaprune.pruning._tp_groups: indexed groups equal Torch-Pruning's scans."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from torch import nn
from torchvision.models import VisionTransformer

from metaprune.pruning._tp_groups import ORIGINALS
from metaprune.pruning.structure import make_pruner


class _CatAdd(nn.Module):
    """Two branches concatenated, projected and added back: layers reached twice."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a, self.b = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 6, 3, padding=1)
        self.mix = nn.Conv2d(10, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8 + 10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        cat = torch.cat([self.a(s), self.b(s)], 1)
        y = self.bn(self.mix(cat) + s)
        return self.head(torch.cat([y, cat], 1).mean((2, 3)))


def _models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                            hidden_dim=16, mlp_dim=32, num_classes=3)  # fmt: skip
    return {"vit": vit.eval(), "cat_add": _CatAdd().eval()}


def _groups(model: nn.Module) -> list[list[tuple]]:
    x = torch.randn(1, 3, 32, 32)
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    pruner = make_pruner(model, x, tp.importance.GroupMagnitudeImportance(p=2), ignored_layers=[head])
    found = []
    for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                          root_module_types=pruner.root_module_types):  # fmt: skip
        idxs = group[0].idxs[: len(group[0].idxs) // 2]  # a partial group, as a step prunes
        part = pruner.DG.get_pruning_group(group[0].dep.target.module, group[0].dep.handler, idxs)
        # a dependency by its nodes' names and functions (each build has its own nodes)
        found += [[(str(d), list(i), list(item.root_idxs)) for (d, i), item in zip(g, g.items)]
                  for g in (group, part)]  # fmt: skip
    return found


@pytest.mark.parametrize("name", ["vit", "cat_add"])
def test_indexed_groups_equal_torch_prunings(name, monkeypatch):
    model = _models()[name]
    got = _groups(model)
    for attr in ("has_pruning_op", "add_and_merge"):
        monkeypatch.setattr(tp.dependency.Group, attr, ORIGINALS[attr])
    for attr in ("to_plain_idxs", "to_root_idxs"):
        monkeypatch.setattr(tp._helpers, attr, ORIGINALS[attr])
    want = _groups(model)
    assert len(got) == len(want) > 4
    assert got == want
    assert max(len(g) for g in got) > 3


def test_an_item_replaced_by_position_is_found_by_its_new_layer():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    graph = tp.DependencyGraph().build_dependency(nn.Sequential(a, b), torch.randn(1, 2))
    fn = tp.pruner.function.prune_linear_out_channels
    node_a, node_b = graph.module2node[a], graph.module2node[b]
    dep_a, dep_b = (tp.dependency.Dependency(fn, fn, source=n, target=n) for n in (node_a, node_b))
    idx = [tp._helpers._HybridIndex(0, 0)]
    group = tp.dependency.Group()
    group.add_and_merge(dep_a, idx)
    assert group.has_pruning_op(dep_a, idx) and not group.has_pruning_op(dep_b, idx)
    group[0] = tp._helpers.GroupItem(dep_b, idx)
    assert group.has_pruning_op(dep_b, idx) and not group.has_pruning_op(dep_a, idx)
    group.add_and_merge(dep_b, [tp._helpers._HybridIndex(1, 1), tp._helpers._HybridIndex(0, 0)])
    assert len(group) == 1 and [i.idx for i in group[0].idxs] == [0, 1]
