"""metaprune::meta_blocks: the C++ kernel against the pure-torch reference and autograd."""

from __future__ import annotations

import pytest
import torch

import cuda_ops
from cuda_ops import dispatch, meta_blocks, use_reference
from cuda_ops.meta_blocks_reference import backward_reference, forward_reference

HIDDEN = 5
NUM_NODES = 24
# edge offset, out offset, out size, in offset, in size, groups
TABLE = torch.tensor(
    [
        [0, 8, 4, 0, 3, 1],  # dense 4 x 3
        [12, 12, 6, 8, 4, 2],  # grouped: 2 groups of 3 x 2
        [24, 8, 4, 14, 4, 4],  # identity diagonal into the same outputs as block 0
        [28, 18, 3, 12, 3, 3],  # depthwise
        [31, 18, 3, 0, 2, 1],  # a second dense block into nodes 18..20
    ]
)
NUM_EDGES = 37  # nodes 21..23 have no edges at all; 0..7 receive only reverse messages


def _inputs(dtype: torch.dtype = torch.float64, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(NUM_EDGES, HIDDEN, generator=g, dtype=dtype)
    xab = torch.randn(NUM_NODES, 3 * HIDDEN, generator=g, dtype=dtype)
    return e, xab


def test_native_kernel_is_available() -> None:
    # the machine has a C++ compiler (../.library/env); without it every test here would
    # silently compare the reference with itself
    assert cuda_ops.native_available()


def test_forward_matches_reference_and_a_literal_node() -> None:
    e, xab = _inputs()
    fwd, rev, e_new = meta_blocks(e, xab, TABLE)
    ref = forward_reference(e, xab, TABLE)
    assert fwd.shape == rev.shape == (NUM_NODES, 4, HIDDEN) and e_new.shape == e.shape
    for got, want in zip((fwd, rev, e_new), ref):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-13)
    x, a, b = xab.split(HIDDEN, dim=1)
    # output node 9 (row 1 of block 0 and of the identity block 2): edges 3..5 from inputs
    # 0..2 and edge 25 from input 15
    y = torch.stack([e[3] * x[0], e[4] * x[1], e[5] * x[2], e[25] * x[15]])
    want = torch.stack([y.sum(0), y.square().sum(0), y.amax(0), -y.amin(0)])
    torch.testing.assert_close(fwd[9], want, rtol=0, atol=1e-14)
    # input node 1 (reverse): every output of block 0 (edges 1, 4, 7, 10) and of block 4
    # (edges 32, 34, 36)
    yr = torch.stack(
        [e[k] * x[o] for k, o in [(1, 8), (4, 9), (7, 10), (10, 11), (32, 18), (34, 19), (36, 20)]]
    )
    want = torch.stack([yr.sum(0), yr.square().sum(0), yr.amax(0), -yr.amin(0)])
    torch.testing.assert_close(rev[1], want, rtol=0, atol=1e-14)
    # edge 13: grouped block, output 12 (group 0, row 0) <- input 9 (group 0, column 1)
    torch.testing.assert_close(
        e_new[13], e[13] * (1 + a[9] * b[12] + a[12] * b[9]), rtol=0, atol=1e-14
    )
    # nodes without incoming edges get zeros; 21..23 have none either way
    assert torch.equal(fwd[:8], torch.zeros(8, 4, HIDDEN, dtype=torch.float64))
    assert torch.equal(rev[21:], torch.zeros(3, 4, HIDDEN, dtype=torch.float64))
    assert torch.equal(fwd[21:], torch.zeros(3, 4, HIDDEN, dtype=torch.float64))
    assert (fwd[8:21, 2] > -torch.inf).all() and fwd[8:21, 1].gt(0).all()


def test_float32_matches_float64() -> None:
    e, xab = _inputs()
    want = meta_blocks(e, xab, TABLE)
    got = meta_blocks(e.float(), xab.float(), TABLE)
    assert all(t.dtype == torch.float32 for t in got)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=1e-5, atol=1e-5)


def test_gradients_match_reference_and_autograd() -> None:
    e, xab = _inputs()
    g = torch.Generator().manual_seed(7)
    outs = meta_blocks(e, xab, TABLE)
    grads_out = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in outs]
    e_, xab_ = e.clone().requires_grad_(), xab.clone().requires_grad_()
    native = torch.autograd.grad(meta_blocks(e_, xab_, TABLE), (e_, xab_), grads_out)
    explicit = backward_reference(e, xab, TABLE, outs[0], outs[1], *grads_out)
    through = torch.autograd.grad(forward_reference(e_, xab_, TABLE), (e_, xab_), grads_out)
    assert native[0].abs().sum() > 0 and native[1].abs().sum() > 0
    for a, b, c in zip(native, explicit, through):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        torch.testing.assert_close(a, c, rtol=0, atol=1e-12)
    # nodes that no block reads or writes get no gradient
    assert torch.equal(native[1][21:], torch.zeros(3, 3 * HIDDEN, dtype=torch.float64))


@pytest.mark.parametrize("reference", [False, True])
def test_gradcheck_float64(reference: bool) -> None:
    e, xab = _inputs(seed=3)
    with use_reference(reference):
        assert torch.autograd.gradcheck(
            lambda e, xab: meta_blocks(e, xab, TABLE),
            (e.requires_grad_(), xab.requires_grad_()),
        )


def test_ties_split_the_gradient_evenly_across_blocks() -> None:
    """Equal messages from two blocks into one node: each edge attaining the max gets an
    equal share, as autograd's amax (and PyG's max aggregation) does."""
    e = torch.ones(NUM_EDGES, HIDDEN, dtype=torch.float64)
    xab = torch.ones(NUM_NODES, 3 * HIDDEN, dtype=torch.float64)
    e_, xab_ = e.clone().requires_grad_(), xab.clone().requires_grad_()
    fwd, rev, e_new = meta_blocks(e_, xab_, TABLE)
    g_fwd = torch.zeros_like(fwd)
    g_fwd[9, 2] = 1.0  # d max of node 9: four edges (three of block 0, one identity) tie
    (de, dxab) = torch.autograd.grad(fwd, (e_, xab_), g_fwd)
    assert torch.equal(de[[3, 4, 5, 25]], torch.full((4, HIDDEN), 0.25, dtype=torch.float64))
    assert de.sum().item() == pytest.approx(HIDDEN)  # nothing else gets any
    explicit = backward_reference(
        e,
        xab,
        TABLE,
        fwd.detach(),
        rev.detach(),
        g_fwd,
        torch.zeros_like(rev),
        torch.zeros_like(e_new),
    )
    assert torch.equal(de, explicit[0]) and torch.equal(dxab, explicit[1])


def test_result_does_not_depend_on_thread_count() -> None:
    e, xab = _inputs(seed=5)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            e_, xab_ = e.clone().requires_grad_(), xab.clone().requires_grad_()
            outs = meta_blocks(e_, xab_, TABLE)
            grads = torch.autograd.grad(sum(t.sin().sum() for t in outs), (e_, xab_))
            results.append([t.detach() for t in (*outs, *grads)])
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-13)


def test_opcheck() -> None:
    e, xab = _inputs()
    torch.library.opcheck(
        torch.ops.metaprune.meta_blocks.default,
        (e.requires_grad_(), xab.requires_grad_(), TABLE),
    )


def test_use_reference_never_calls_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        def __getattr__(self, name: str):
            raise AssertionError(f"kernel called: {name}")

    e, xab = _inputs()
    want = forward_reference(e, xab, TABLE)
    monkeypatch.setitem(dispatch._LIBS, "meta_blocks", Broken())
    with use_reference():
        got = meta_blocks(e, xab, TABLE)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    with pytest.raises(AssertionError, match="kernel called"):
        meta_blocks(e, xab, TABLE)


def test_empty_table() -> None:
    e, xab = _inputs()
    fwd, rev, e_new = meta_blocks(e[:0], xab, torch.zeros(0, 6, dtype=torch.int64))
    assert e_new.shape == (0, HIDDEN)
    assert torch.equal(fwd, torch.zeros(NUM_NODES, 4, HIDDEN, dtype=torch.float64))
    assert torch.equal(rev, fwd)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda e, x, t: (e, x[:, :-1], t), r"expected e \[E, h\] and xab \[N, 3h\]"),
        (lambda e, x, t: (e.float(), x, t), "e is torch.float32 on cpu, xab torch.float64"),
        (lambda e, x, t: (e, x, t.int()), r"int64 block table \[B, 6\]"),
        (lambda e, x, t: (e[:-1], x, t), r"block 4 .*'edge_offset': 31.* does not fit 36 edges"),
        (lambda e, x, t: (e, x[:20], t), r"block 3 .* does not fit 37 edges and 20 nodes"),
        (
            lambda e, x, t: (e, x, torch.tensor([[0, 8, 4, 0, 3, 2]])),
            "not divisible by groups",
        ),
    ],
)
def test_bad_inputs_name_what_is_wrong(change, match: str) -> None:  # noqa: ANN001
    e, xab = _inputs()
    with pytest.raises(ValueError, match=match):
        meta_blocks(*change(e, xab, TABLE))


def test_backward_checks_its_inputs() -> None:
    e, xab = _inputs()
    fwd, rev, e_new = meta_blocks(e, xab, TABLE)
    with pytest.raises(ValueError, match=r"expected g_e \[37, 5\] torch.float64, found \[36, 5\]"):
        torch.ops.metaprune.meta_blocks_backward(e, xab, TABLE, fwd, rev, fwd, rev, e_new[:-1])
    with pytest.raises(ValueError, match=r"expected rev \[24, 4, 5\]"):
        torch.ops.metaprune.meta_blocks_backward(e, xab, TABLE, fwd, rev[:3], fwd, rev, e_new)
