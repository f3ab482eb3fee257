"""The committed generated code is exactly what protos/generate.py produces (drift check)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _generate_module():
    spec = importlib.util.spec_from_file_location(
        "protos_generate", REPO / "protos" / "generate.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(120)
def test_committed_code_matches_the_protos(tmp_path: Path) -> None:
    written = _generate_module().generate(tmp_path)
    committed = REPO / "service" / "_generated"
    names = sorted(p.name for p in written)
    assert names == sorted(p.name for p in committed.iterdir() if p.is_file()), (
        "service/_generated has files protos/generate.py does not make (or lacks some)"
    )
    for name in names:
        assert (tmp_path / name).read_text() == (committed / name).read_text(), (
            f"service/_generated/{name} differs from the protos: run python protos/generate.py"
        )
    assert any(n.endswith("_pb2_grpc.py") for n in names)


def test_generated_imports_are_rewritten_into_the_service_package() -> None:
    text = (REPO / "service" / "_generated" / "pruning_service_pb2.py").read_text()
    assert "from service._generated import prune_config_pb2" in text
    assert "from metaprune.v1 import" not in text  # would shadow the metaprune package
