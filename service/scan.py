"""NaN/Inf in a safetensors file's float tensors, checked on its bytes as they stream past.

An upload's weights must be finite. Checking them after the upload means reading the whole
file back (a second pass over every byte, after the transfer); :class:`FiniteScan` instead
sees each chunk once, on the upload's sink thread next to the hash and the write: it parses
the safetensors header from the first bytes, then checks each float tensor's bytes as they
arrive (an element split between two chunks is carried over). It never raises: a header it
cannot use leaves it :attr:`~FiniteScan.complete` ``False`` and the caller falls back to
reading the file (:func:`nonfinite_tensors`), whose header checks then name the problem.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["FLOAT_DTYPES", "FiniteScan", "nonfinite_tensors"]

_BLOCK = 1024 * 1024  # read size of the fallback (a multiple of every element size)

#: safetensors float dtype -> (numpy dtype, or the unsigned view and its exponent mask)
FLOAT_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("<f8", 0), "F32": ("<f4", 0), "F16": ("<f2", 0), "BF16": ("<u2", 0x7F80),
}  # fmt: skip


def _finite(block: memoryview | bytes, dtype: str) -> bool:
    """No NaN/Inf in ``block``: a min and a max (NaN propagates through both; no copy) for
    numpy's float types; bfloat16 by its exponent bits (all ones = Inf or NaN)."""
    kind, mask = FLOAT_DTYPES[dtype]
    values = np.frombuffer(block, dtype=kind)
    if values.size == 0:
        return True
    if mask:
        return not bool(np.any((values & mask) == mask))
    return bool(np.isfinite(values.min()) and np.isfinite(values.max()))


class _Span(NamedTuple):
    begin: int  # absolute offsets in the file
    end: int
    dtype: str
    name: str


class FiniteScan:
    """Feed a safetensors file's bytes in order (:meth:`feed`); :attr:`bad` lists the float
    tensors holding NaN/Inf, valid once :attr:`complete`."""

    def __init__(self, max_header_bytes: int) -> None:
        self._max_header = max_header_bytes
        self._head, self._need = bytearray(), 0
        self._spans: list[_Span] | None = None
        self._failed = False
        self._pos = 0  # bytes fed so far
        self._index = 0  # the span being checked
        self._carry = b""  # the first bytes of an element split between chunks
        self.bad: list[str] = []

    @property
    def complete(self) -> bool:
        """The header was usable and every float tensor's bytes have been checked."""
        return not self._failed and self._spans is not None and self._index == len(self._spans)

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        start, self._pos = self._pos, self._pos + len(view)
        if self._failed:
            return
        if self._spans is None:
            view = self._read_header(view)
            start = self._pos - len(view)
            if self._spans is None or self._failed:
                return
        spans = self._spans
        end = start + len(view)
        while self._index < len(spans):
            span = spans[self._index]
            if span.begin >= end:
                return
            lo, hi = max(span.begin, start), min(span.end, end)
            if hi > lo:
                self._check(span, view[lo - start : hi - start])
            if hi < span.end:
                return
            self._index, self._carry = self._index + 1, b""

    def _read_header(self, view: memoryview) -> memoryview:
        """Collect the 8-byte length, then the header; return what of ``view`` follows."""
        if len(self._head) < 8:
            take = min(len(view), 8 - len(self._head))
            self._head += view[:take]
            view = view[take:]
            if len(self._head) < 8:
                return view
            (length,) = struct.unpack("<Q", self._head)
            if not 2 <= length <= self._max_header:
                self._failed = True
                return view
            self._need = 8 + length
        take = min(len(view), self._need - len(self._head))
        self._head += view[:take]
        if len(self._head) == self._need:
            self._spans = self._parse(bytes(self._head[8:]), self._need)
            self._failed = self._spans is None
            self._head = bytearray()
        return view[take:]

    @staticmethod
    def _parse(header: bytes, base: int) -> list[_Span] | None:
        try:
            tensors = json.loads(header)
            spans = []
            for name, info in tensors.items():
                if name == "__metadata__" or info["dtype"] not in FLOAT_DTYPES:
                    continue
                begin, end = info["data_offsets"]
                if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end):
                    return None
                spans.append(_Span(base + begin, base + end, info["dtype"], name))
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        spans.sort()
        if any(a.end > b.begin for a, b in zip(spans, spans[1:])):
            return None  # overlapping tensors: the layout check refuses the file
        return spans

    def _check(self, span: _Span, part: memoryview) -> None:
        if self.bad and self.bad[-1] == span.name:
            return  # already found bad
        size = np.dtype(FLOAT_DTYPES[span.dtype][0]).itemsize
        if self._carry:  # complete the split element
            need = size - len(self._carry)
            self._carry += bytes(part[:need])
            part = part[need:]
            if len(self._carry) < size:
                return
            element, self._carry = self._carry, b""
            if not _finite(element, span.dtype):
                self.bad.append(span.name)
                return
        whole = len(part) - len(part) % size
        self._carry = bytes(part[whole:])
        if whole and not _finite(part[:whole], span.dtype):
            self.bad.append(span.name)


def nonfinite_tensors(path: Path, header_len: int) -> list[str]:
    """Names of float tensors of a safetensors file holding NaN/Inf, reading the data in
    1 MiB blocks into one reused buffer (the layout must have been checked, so offsets lie
    within the file)."""
    buffer = bytearray(_BLOCK)
    view = memoryview(buffer)
    bad = []
    with open(path, "rb") as f:
        f.seek(8)
        tensors = json.loads(f.read(header_len))
        for key, info in tensors.items():
            if key == "__metadata__" or info["dtype"] not in FLOAT_DTYPES:
                continue
            begin, end = info["data_offsets"]
            f.seek(8 + header_len + begin)
            left = end - begin
            while left > 0:
                n = f.readinto(view[: min(_BLOCK, left)])
                if not n:
                    break
                left -= n
                if not _finite(view[:n], info["dtype"]):
                    bad.append(key)
                    break
    return bad
