"""The Triton kernels (CUDA path) against the references, run by Triton's interpreter on
CPU tensors (``TRITON_INTERPRET=1``, set in ``tests/conftest.py``)."""

from __future__ import annotations

import os

import pytest
import torch

from cuda_ops import dispatch, use_reference
from cuda_ops.meta_blocks_reference import backward_reference, forward_reference
from cuda_ops.multi_aggregate_reference import (
    multi_aggregate_backward_reference,
    multi_aggregate_reference,
)
from cuda_ops.triton_meta_blocks import backward_triton, forward_triton
from cuda_ops.triton_multi_aggregate import backward_triton as aggregate_backward
from cuda_ops.triton_multi_aggregate import forward_triton as aggregate_forward

# edge offset, out offset, out size, in offset, in size, groups: dense, grouped, an identity
# diagonal into block 0's outputs, depthwise, a dense block longer than one BLOCK_T (16) in
# both directions (20 inputs, 18 outputs), and nodes 62..63 without edges
TABLE = torch.tensor(
    [
        [0, 8, 4, 0, 3, 1],
        [12, 12, 6, 8, 4, 2],
        [24, 8, 4, 14, 4, 4],
        [28, 18, 3, 12, 3, 3],
        [31, 40, 18, 20, 20, 1],
    ]
)
NUM_EDGES, NUM_NODES = 31 + 18 * 20, 64
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-4}


def test_runs_under_the_interpreter() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1"


@pytest.mark.parametrize(  # one channel block (masked), and two channel blocks
    "hidden, dtype", [(5, torch.float64), (5, torch.float32), (70, torch.float64)]
)
def test_meta_blocks_triton_matches_reference(hidden: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(hidden)
    e = torch.randn(NUM_EDGES, hidden, generator=g, dtype=dtype)
    xab = torch.randn(NUM_NODES, 3 * hidden, generator=g, dtype=dtype)
    got = forward_triton(e, xab, TABLE)
    want = forward_reference(e, xab, TABLE)
    tol = TOLERANCE[dtype]
    for a, b in zip(got, want):
        assert a.dtype == dtype
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    assert torch.equal(got[0][62:], torch.zeros(2, 4, hidden, dtype=dtype))
    grads = [torch.randn(t.shape, generator=g, dtype=dtype) for t in want]
    got_b = backward_triton(e, xab, TABLE, want[0], want[1], *grads)
    want_b = backward_reference(e, xab, TABLE, want[0], want[1], *grads)
    for a, b in zip(got_b, want_b):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_meta_blocks_triton_ties_split_evenly() -> None:
    e = torch.ones(NUM_EDGES, 3, dtype=torch.float64)
    xab = torch.ones(NUM_NODES, 9, dtype=torch.float64)
    fwd, rev, e_new = forward_reference(e, xab, TABLE)
    g_fwd = torch.zeros_like(fwd)
    g_fwd[9, 2] = 1.0  # node 9's max: three edges of block 0 and one identity edge tie
    zeros = (torch.zeros_like(rev), torch.zeros_like(e_new))
    got = backward_triton(e, xab, TABLE, fwd, rev, g_fwd, *zeros)
    want = backward_reference(e, xab, TABLE, fwd, rev, g_fwd, *zeros)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert torch.equal(got[0][[3, 4, 5, 25]], torch.full((4, 3), 0.25, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_multi_aggregate_triton_matches_reference(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    m, hidden = 40, 7
    stats = torch.randn(m, 4, hidden, generator=g, dtype=dtype)
    stats[:, 1] = stats[:, 0].square() / 3 + stats[:, 1].abs()
    counts = torch.randint(0, 5, (m,), generator=g).to(dtype)
    stats[counts == 0] = 0.0
    factor = torch.randn(m, hidden, generator=g, dtype=dtype)
    factor[0] = 1e-4  # std at the floor
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(
        aggregate_forward(stats, counts, factor, 1e-5),
        multi_aggregate_reference(stats, counts, factor),
        rtol=tol,
        atol=tol,
    )
    grad = torch.randn(m, 4 * hidden, generator=g, dtype=dtype)
    for a, b in zip(
        aggregate_backward(stats, counts, factor, grad, 1e-5),
        multi_aggregate_backward_reference(stats, counts, factor, grad),
    ):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_dispatch_sends_cuda_tensors_to_triton() -> None:
    assert dispatch.use_triton("cuda", torch.float32) and dispatch.use_triton("cuda", torch.float64)
    assert not dispatch.use_triton("cpu", torch.float32)
    assert not dispatch.use_triton("cuda", torch.bfloat16)  # -> the torch reference
    with use_reference():
        assert not dispatch.use_triton("cuda", torch.float32)
