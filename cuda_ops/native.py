"""Build and load the C++ CPU kernels in ``cuda_ops/cpu/``.

The kernels are plain C++17 behind a C ABI, without torch headers, so the system compiler
builds one in about a second (a torch extension takes most of a minute here). A build is
cached under ``$METAPRUNE_KERNEL_CACHE`` (default ``~/.cache/metaprune/kernels``), keyed by
the source, the flags, the compiler and the CPU (the build targets the host's instruction
set), and loaded with :mod:`ctypes`, which releases the GIL during calls.

If no compiler is found or the build fails, :func:`load` raises :class:`NativeBuildError`
with the compiler's message; callers fall back to the pure-torch reference (see
:func:`cuda_ops.use_reference`).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["NativeBuildError", "load", "cache_dir"]

SOURCES = Path(__file__).with_name("cpu")
# -ffp-contract=off: no fused multiply-adds, so a product recomputed in the backward pass
# rounds exactly as in the forward pass and as torch's own elementwise ops do.
FLAGS = (
    "-O3", "-march=native", "-mprefer-vector-width=512", "-ffp-contract=off", "-fno-math-errno",
    "-std=c++17", "-shared", "-fPIC", "-fopenmp",
)  # fmt: skip
ABI_VERSION = 1


class NativeBuildError(RuntimeError):
    """A C++ kernel could not be built or loaded."""


def cache_dir() -> Path:
    root = os.environ.get("METAPRUNE_KERNEL_CACHE")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "metaprune" / "kernels"


def _compiler() -> str:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)  # type: ignore[return-value]
    raise NativeBuildError("no C++ compiler found (looked for $CXX, c++, g++, clang++)")


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


@functools.cache
def load(name: str) -> ctypes.CDLL:
    """The built library of ``cuda_ops/cpu/<name>.cpp`` (built on first use, then cached)."""
    source = SOURCES / f"{name}.cpp"
    if not source.is_file():
        raise NativeBuildError(f"no kernel source {source}")
    cxx = _compiler()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(
        "\0".join([source.read_text(), *FLAGS, version, _cpu_flags(), platform.machine()]).encode()
    ).hexdigest()[:16]
    target = cache_dir() / f"{name}-{key}.so"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        # build beside the target and rename: concurrent builders never see a partial file
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        result = subprocess.run(
            [cxx, *FLAGS, str(source), "-o", tmp], capture_output=True, text=True
        )
        if result.returncode != 0:
            os.unlink(tmp)
            raise NativeBuildError(f"building {source.name} failed:\n{result.stderr[-4000:]}")
        os.replace(tmp, target)
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as err:
        raise NativeBuildError(f"loading {target} failed: {err}") from err
    found = lib.metaprune_abi_version()
    if found != ABI_VERSION:
        raise NativeBuildError(f"{target}: ABI version {found}, expected {ABI_VERSION}")
    return lib
