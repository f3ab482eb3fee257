"""cuda_ops.native: building, caching and loading the C++ kernels."""

from __future__ import annotations

from pathlib import Path

import pytest

from cuda_ops import native


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty kernel cache and a cleared in-process cache of loaded libraries."""
    monkeypatch.setenv("METAPRUNE_KERNEL_CACHE", str(tmp_path / "cache"))
    native.load.cache_clear()
    yield tmp_path
    native.load.cache_clear()


def test_builds_once_into_the_cache_and_reuses_it(fresh: Path) -> None:
    lib = native.load("meta_blocks")
    assert lib.metaprune_abi_version() == native.ABI_VERSION
    built = sorted((fresh / "cache").glob("meta_blocks-*.so"))
    assert len(built) == 1 and native.cache_dir() == fresh / "cache"
    assert (
        not list((fresh / "cache").glob("*.so.*")) and len(list((fresh / "cache").iterdir())) == 1
    )
    stamp = built[0].stat().st_mtime_ns
    native.load.cache_clear()
    native.load("meta_blocks")  # a new process would find the built library
    assert built[0].stat().st_mtime_ns == stamp


def test_a_failing_build_raises_with_the_compiler_message(
    fresh: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = fresh / "src"
    sources.mkdir()
    (sources / "broken.cpp").write_text("int f() { return undefined_name; }\n")
    monkeypatch.setattr(native, "SOURCES", sources)
    with pytest.raises(
        native.NativeBuildError, match="building broken.cpp failed:(.|\n)*undefined_name"
    ):
        native.load("broken")
    assert not list((fresh / "cache").glob("*.so"))  # no partial library left behind
    with pytest.raises(native.NativeBuildError, match="no kernel source"):
        native.load("missing")


def test_no_compiler(fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "")
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    with pytest.raises(native.NativeBuildError, match="no C\\+\\+ compiler found"):
        native.load("meta_blocks")
