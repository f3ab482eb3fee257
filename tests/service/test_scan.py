"""FiniteScan: NaN/Inf found on a safetensors file's bytes fed in arbitrary pieces, equal to
reading the file back; a header it cannot use leaves it incomplete (the caller reads back)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from service.scan import FiniteScan, nonfinite_tensors


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path]:
    """Five float tensors of every dtype (two poisoned near their ends) and an int one."""
    torch.manual_seed(0)
    tensors = {
        "a.f32": torch.randn(1001), "b.f16": torch.randn(333).half(),
        "c.bf16": torch.randn(517).bfloat16(), "d.f64": torch.randn(77).double(),
        "e.f32": torch.randn(64), "f.i64": torch.arange(9),
    }  # fmt: skip
    tensors["b.f16"][-1] = float("inf")
    tensors["c.bf16"][300] = float("nan")
    tensors["f.i64"][0] = -1  # integers are never "non-finite"
    path = tmp_path_factory.mktemp("scan") / "m.safetensors"
    save_file(tensors, str(path), metadata={"metaprune.spec": "{}"})
    return path.read_bytes(), path


def _scan(data: bytes, sizes: list[int], max_header: int = 1 << 20) -> FiniteScan:
    scan, pos, i = FiniteScan(max_header), 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        scan.feed(memoryview(data)[pos : pos + n])
        pos, i = pos + n, i + 1
    return scan


@pytest.mark.parametrize("sizes", [[10**9], [1], [3], [7, 5], [4096], [13, 1, 2000]])
def test_any_split_finds_what_reading_back_finds(poisoned: tuple[bytes, Path], sizes) -> None:
    data, path = poisoned
    scan = _scan(data, sizes)
    header_len = struct.unpack("<Q", data[:8])[0]
    assert scan.complete
    assert sorted(scan.bad) == sorted(nonfinite_tensors(path, header_len)) == ["b.f16", "c.bf16"]


def test_finite_weights_pass(tmp_path: Path) -> None:
    save_file({"w": torch.randn(100), "h": torch.randn(5).half()}, str(tmp_path / "ok"))
    scan = _scan((tmp_path / "ok").read_bytes(), [17])
    assert scan.complete and scan.bad == []


def test_an_unusable_header_leaves_it_incomplete(poisoned: tuple[bytes, Path]) -> None:
    data, _ = poisoned
    header_len = struct.unpack("<Q", data[:8])[0]
    assert not _scan(data, [100], max_header=header_len - 1).complete  # over the bound
    assert not _scan(data[: len(data) - 10], [100]).complete  # truncated: not all checked
    assert not _scan(b"\x80\x04" + data[2:], [100]).complete  # a pickle's first bytes
    garbage = struct.pack("<Q", 5) + b"{nope" + data[8:]
    assert not _scan(garbage, [100]).complete
    overlap = b'{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},' \
        b'"y":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}'  # fmt: skip
    assert not _scan(struct.pack("<Q", len(overlap)) + overlap + bytes(12), [5]).complete
    assert not _scan(struct.pack("<Q", 0) + bytes(40), [5]).complete
