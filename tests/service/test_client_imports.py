"""`metaprune client ...` starts without torch and without the pruning pipeline: the
thin client is a gRPC program (behaviour checked here; the start-up time is measured by
benchmarks/service_startup.py)."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import metaprune
from metaprune.checkpoint import SPEC_KEY, read_spec
from metaprune.errors import InvalidInputError
from service.client import SPEC_KEY as CLIENT_SPEC_KEY
from service.client import read_spec_json

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torch_pruning", "metaprune.pruning.pipeline", "metanet", "sklearn")


def _modules_after(code: str) -> dict[str, bool]:
    probe = (
        f"{code}\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"
    )
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env,
        cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "code",
    [
        "import service.client, service.convert, service.cli",
        "import metaprune, metaprune.errors, metaprune.limits, metaprune.pruning.config",
        # the CLI entry point through its dispatch: --help exits 0 inside main()
        "from metaprune.cli import main\nassert main(['client', '--help']) == 0",
        "from metaprune.cli import main\nassert main(['client', 'prune', '--help']) == 0",
        # a client command that fails (no server): the error path stays light too
        "from metaprune.cli import main\n"
        "assert main(['client', 'jobs', '--address', '127.0.0.1:1', '--token', 't']) == 1",
        # a config is validated locally (PruneConfig) without torch
        "from service.client import config_message\n"
        "config_message({'target': {'value': 3.0}, 'device': 'cuda:0', 'seed': 7})",
    ],
)
def test_the_client_side_never_imports_torch_or_the_pipeline(code: str) -> None:
    loaded = _modules_after(code)
    assert not any(loaded.values()), loaded


def test_the_library_is_still_one_attribute_away() -> None:
    assert metaprune.__getattr__("checkpoint").load is metaprune.load  # a lazy submodule
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        metaprune.__getattr__("nothing")
    importlib.import_module("metaprune.pruning.finetune")  # the submodule, by name
    from metaprune.pruning import PruneResult, finetune

    assert callable(finetune) and finetune.__name__ == "finetune"  # not the submodule
    assert metaprune.prune is metaprune.pruning.prune and PruneResult.__name__ == "PruneResult"
    assert set(metaprune.pruning.__all__) <= set(dir(metaprune.pruning))


def test_the_client_reads_the_spec_from_the_header_like_the_library(tmp_path: Path) -> None:
    assert CLIENT_SPEC_KEY == SPEC_KEY == "metaprune.spec"
    spec = metaprune.ArchSpec("cifar_resnet20", {"in_channels": 1, "num_classes": 3})
    path = metaprune.save(spec.build(), spec, tmp_path / "m.safetensors")
    assert json.loads(read_spec_json(path)) == read_spec(path).to_json()
    cases = {
        "pickle.pt": b"\x80\x04\x95" + b"\0" * 40,
        "zip.pt": b"PK\x03\x04" + b"\0" * 40,
        "short.bin": b"\x01\x02",
        "text.safetensors": (8).to_bytes(8, "little") + b"not json",
        "plain.safetensors": (2).to_bytes(8, "little") + b"{}",
    }
    needles = {
        "pickle.pt": "is a Python pickle, not safetensors (pickles are never loaded",
        "zip.pt": "is a zip archive (a torch.save file?), not safetensors",
        "short.bin": "announce a -1-byte header",
        "text.safetensors": "its header is not JSON",
        "plain.safetensors": "has no 'metaprune.spec' metadata, so it is not a metaprune checkpoint",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InvalidInputError, match=re.escape(needles[name])):
            read_spec_json(tmp_path / name)
    with pytest.raises(InvalidInputError, match="cannot read checkpoint"):
        read_spec_json(tmp_path / "missing.safetensors")


def test_client_prune_refuses_a_bad_setting_before_uploading(tmp_path: Path, capsys) -> None:
    from metaprune.cli import main

    missing = tmp_path / "never-read.safetensors"  # the config fails first: no upload, no call
    status = main(["client", "prune", str(missing), "--dataset", "synthetic", "--seed",
                   str(2**40), "--address", "127.0.0.1:1", "--token", "t"])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2, err
    assert f"seed must be an int <= {2**32 - 1} (found {2**40})" in err
