"""Which implementation an op runs: its C++ kernel (CPU float32/float64 tensors, when the
kernel builds), its Triton kernel (CUDA float32/float64 tensors, when Triton is installed)
or its pure-torch reference (every other case, or when forced)."""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

from .native import NativeBuildError, load

__all__ = [
    "use_reference",
    "use_triton",
    "kernel_library",
    "native_available",
    "ptr",
    "SUFFIX",
]

SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_FORCE = {"reference": os.environ.get("METAPRUNE_FORCE_REFERENCE", "") not in ("", "0")}
_LIBS: dict[str, ctypes.CDLL | None] = {}


@contextmanager
def use_reference(enabled: bool = True) -> Iterator[None]:
    """Run every op's pure-torch reference instead of its kernel inside the block (also:
    ``METAPRUNE_FORCE_REFERENCE=1`` in the environment)."""
    before = _FORCE["reference"]
    _FORCE["reference"] = enabled
    try:
        yield
    finally:
        _FORCE["reference"] = before


def _library(name: str, signatures: Mapping[str, Sequence[type]]) -> ctypes.CDLL | None:
    """``cpu/<name>.cpp`` loaded once per process with ``argtypes`` set, or ``None`` (with
    one warning) if it cannot be built."""
    if name not in _LIBS:
        try:
            lib = load(name)
        except NativeBuildError as err:
            warnings.warn(
                f"{name}: C++ kernel unavailable, using the torch reference ({err})", stacklevel=3
            )
            lib = None
        if lib is not None:
            for dt in SUFFIX.values():
                for symbol, argtypes in signatures.items():
                    getattr(lib, f"{symbol}_{dt}").argtypes = list(argtypes)
        _LIBS[name] = lib
    return _LIBS[name]


def kernel_library(
    name: str, signatures: Mapping[str, Sequence[type]], t: Tensor
) -> ctypes.CDLL | None:
    """The kernel library to run on tensors like ``t``, or ``None`` for the reference."""
    if _FORCE["reference"] or t.device.type != "cpu" or t.dtype not in SUFFIX:
        return None
    return _library(name, signatures)


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def use_triton(device_type: str, dtype: torch.dtype) -> bool:
    """Whether tensors of this device type and dtype run an op's Triton kernel."""
    return (
        not _FORCE["reference"]
        and device_type == "cuda"
        and dtype in SUFFIX
        and _triton_installed()
    )


def native_available(name: str, signatures: Mapping[str, Sequence[type]]) -> bool:
    return _library(name, signatures) is not None


def ptr(t: Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())
