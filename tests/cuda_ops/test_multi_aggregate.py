"""metaprune::multi_aggregate: the C++ kernel against the reference, autograd and PyG."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.nn.aggr import MultiAggregation

from cuda_ops import STD_EPS, multi_aggregate, use_reference
from cuda_ops.multi_aggregate_reference import (
    multi_aggregate_backward_reference,
    multi_aggregate_reference,
)

HIDDEN = 6


def _messages(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """A random edge list into 7 nodes (node 6 gets nothing, node 5 one message): ``y``
    per edge, the receiving node ``index`` and receiver factors ``z`` (some negative)."""
    g = torch.Generator().manual_seed(seed)
    index = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 4, 4, 4, 5])
    y = torch.randn(index.numel(), HIDDEN, generator=g, dtype=torch.float64)
    z = torch.randn(7, HIDDEN, generator=g, dtype=torch.float64)
    z[3] = 1e-4  # messages so small that the std is at PyG's floor -> 0
    return y, index, z, 7


def _stats(y: torch.Tensor, index: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[sum, sum of squares, max, -min]`` of ``y`` per node (zeros without messages)."""
    stats = torch.zeros(n, 4, y.size(1), dtype=y.dtype)
    for k in range(n):
        rows = y[index == k]
        if len(rows):
            stats[k] = torch.stack([rows.sum(0), rows.square().sum(0), rows.amax(0), -rows.amin(0)])
    return stats, torch.bincount(index, minlength=n).to(y.dtype)


def test_equals_pyg_multi_aggregation_of_the_messages() -> None:
    y, index, z, n = _messages()
    stats, counts = _stats(y, index, n)
    pyg = MultiAggregation(["mean", "std", "max", "min"])(z[index] * y, index, dim_size=n)
    got = multi_aggregate(stats, counts, z)
    assert got.shape == (n, 4 * HIDDEN)
    torch.testing.assert_close(got, pyg, rtol=0, atol=1e-12)
    assert torch.equal(got[6], torch.zeros(4 * HIDDEN, dtype=torch.float64))  # no messages
    assert torch.equal(got[3, HIDDEN : 2 * HIDDEN], torch.zeros(HIDDEN, dtype=torch.float64))
    assert torch.equal(got[5, HIDDEN : 2 * HIDDEN], torch.zeros(HIDDEN, dtype=torch.float64))
    # a negative factor swaps max and min
    neg = z[0] < 0
    assert neg.any()
    msgs = z[0] * y[index == 0]
    torch.testing.assert_close(got[0, 2 * HIDDEN : 3 * HIDDEN], msgs.amax(0), rtol=0, atol=1e-15)


def test_kernel_matches_reference_forward_and_backward() -> None:
    y, index, z, n = _messages(seed=1)
    stats, counts = _stats(y, index, n)
    grad = torch.randn(
        n, 4 * HIDDEN, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    s_, z_ = stats.clone().requires_grad_(), z.clone().requires_grad_()
    got = multi_aggregate(s_, counts, z_)
    want = multi_aggregate_reference(stats, counts, z)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-15)
    kernel = torch.autograd.grad(got, (s_, z_), grad)
    explicit = multi_aggregate_backward_reference(stats, counts, z, grad)
    s2, z2 = stats.clone().requires_grad_(), z.clone().requires_grad_()
    through = torch.autograd.grad(multi_aggregate_reference(s2, counts, z2), (s2, z2), grad)
    for a, b, c in zip(kernel, explicit, through):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)
        torch.testing.assert_close(a, c, rtol=0, atol=1e-14)
    # the floored std passes no gradient: node 3's sum of squares gets none
    assert torch.equal(kernel[0][3, 1], torch.zeros(HIDDEN, dtype=torch.float64))
    assert kernel[0][0, 1].abs().min() > 0


def test_float32_and_any_leading_shape() -> None:
    y, index, z, n = _messages()
    stats, counts = _stats(y, index, n)
    want = multi_aggregate(stats, counts, z)
    both = multi_aggregate(
        torch.stack([stats, stats]).float(),
        torch.stack([counts, counts]).long(),
        torch.stack([z, z]).float(),
    )
    assert both.shape == (2, n, 4 * HIDDEN) and both.dtype == torch.float32
    torch.testing.assert_close(both[1].double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reference", [False, True])
def test_gradcheck_float64(reference: bool) -> None:
    y, index, z, n = _messages(seed=4)
    z[3] = 0.7  # keep away from the std floor, where the function is not differentiable
    stats, counts = _stats(y, index, n)
    with use_reference(reference):
        assert torch.autograd.gradcheck(
            lambda s, f: multi_aggregate(s, counts, f),
            (stats.requires_grad_(), z.requires_grad_()),
        )


def test_opcheck() -> None:
    y, index, z, n = _messages()
    stats, counts = _stats(y, index, n)
    torch.library.opcheck(
        torch.ops.metaprune.multi_aggregate.default,
        (stats.requires_grad_(), counts, z.requires_grad_(), STD_EPS),
    )


def test_bad_shapes_and_dtypes() -> None:
    y, index, z, n = _messages()
    stats, counts = _stats(y, index, n)
    with pytest.raises(ValueError, match=r"expected stats \[\.\.\., 4, h\]"):
        multi_aggregate(stats[:, :3], counts, z)
    with pytest.raises(ValueError, match="must share a dtype"):
        torch.ops.metaprune.multi_aggregate(stats.float(), counts, z, STD_EPS)
    with pytest.raises(ValueError, match=r"expected grad \[7, 24\] torch.float64, found \[7, 23\]"):
        torch.ops.metaprune.multi_aggregate_backward(
            stats, counts, z, torch.zeros(7, 23).double(), STD_EPS
        )
