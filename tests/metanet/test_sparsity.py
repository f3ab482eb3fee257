"""The group-sparsity loss has exactly the gradient Torch-Pruning's ``regularize`` injects."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from torch import nn

from graph_encoding import decode_tensors, encode
from metanet.sparsity import GroupSparsity, output_layers
from metaprune.models import create_model
from metaprune.testing import TinyConvNet, randomize_norms


def _regularize_grad(
    model: nn.Module, x: torch.Tensor, ignored: list[str], reg: float, alpha: float
) -> dict[str, torch.Tensor]:
    """The gradient ``GroupNormPruner.regularize`` adds to zero gradients."""
    modules = dict(model.named_modules())
    pruner = tp.pruner.GroupNormPruner(
        model, x, importance=tp.importance.GroupMagnitudeImportance(p=2), reg=reg,
        ignored_layers=[modules[n] for n in ignored],
    )  # fmt: skip
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    pruner.regularize(model, alpha=alpha)
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "make, shape",
    [
        (
            lambda: randomize_norms(TinyConvNet(in_channels=2, width=4, num_classes=3), seed=1),
            (1, 2, 6, 6),
        ),
        (
            lambda: randomize_norms(
                create_model("cifar_resnet20", in_channels=1, num_classes=5, width=0.25), seed=2
            ),
            (1, 1, 8, 8),
        ),
    ],
    ids=["tiny", "resnet20"],
)
def test_loss_gradient_equals_regularize(make, shape) -> None:
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(shape)
    ignored = output_layers(model, x)
    assert ignored == ["fc"]
    expected = _regularize_grad(model, x, ignored, reg=10.0, alpha=16.0)
    assert expected["bn1.weight"].abs().sum() > 0 and expected["conv1.weight"].abs().sum() > 0

    sparsity = GroupSparsity.from_model(model, x, reg=10.0, alpha=16.0)
    graph = encode(model, x)
    edges = graph.edge_flat.clone().requires_grad_()
    nodes = graph.x.clone().requires_grad_()
    tensors = decode_tensors(graph.plan, nodes, edges, graph.extras, stats_from=graph.x)
    params = {k: v for k, v in tensors.items() if k in expected}
    grads = torch.autograd.grad(sparsity(tensors), list(params.values()), allow_unused=True)
    for (key, value), grad in zip(params.items(), grads):
        grad = torch.zeros_like(value) if grad is None else grad
        torch.testing.assert_close(grad, expected[key], rtol=1e-6, atol=1e-7, msg=key)
    # biases and the classifier's output rows are never regularised
    assert expected["fc.bias"].abs().sum() == 0


def test_gamma_is_one_for_the_strongest_and_alpha_for_the_weakest_channel() -> None:
    model = randomize_norms(TinyConvNet(), seed=3)
    x = torch.randn(1, 3, 6, 6)
    sparsity = GroupSparsity.from_model(model, x, alpha=4.0)
    state = dict(model.state_dict())
    assert len(sparsity.groups) == 2  # conv1's channels and the residual node set
    for imp, gamma in zip(sparsity.importance(state), sparsity.gammas(state)):
        assert gamma[imp.argmax()] == pytest.approx(1.0)
        assert gamma[imp.argmin()] == pytest.approx(4.0)
        assert bool((gamma >= 1).all() and (gamma <= 4).all())


def test_loss_value_and_flat_groups() -> None:
    model = TinyConvNet()
    x = torch.randn(1, 3, 6, 6)
    sparsity = GroupSparsity.from_model(model, x, reg=2.0)
    state = {
        k: torch.ones_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()
    }
    # every channel equally important: gamma = 1, loss = reg/2 * sum of squares of the terms
    expected = sum(
        float(state[t.key].index_select(1 if t.mode == "in" else 0, t.idxs).numel())
        for g in sparsity.groups for t in g.terms if t.regularize
    )  # fmt: skip
    assert float(sparsity(state)) == pytest.approx(expected)
    assert float(GroupSparsity(sparsity.groups, reg=0.0)(state)) == 0.0


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="reg must be >= 0"):
        GroupSparsity([], reg=-1.0)
    with pytest.raises(ValueError, match="alpha must be >= 1"):
        GroupSparsity([], alpha=0.5)
    with pytest.raises(ValueError, match="not modules"):
        GroupSparsity.from_model(TinyConvNet(), torch.randn(1, 3, 6, 6), ignored_layers=["nope"])
