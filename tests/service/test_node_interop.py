"""The contract outside Python: a Node client (``@grpc/grpc-js`` + ``@grpc/proto-loader``,
tests/service/node/) built only from protos/ goes through health, reflection v1, upload
with its own sha256, refused requests, a job, its progress stream and the download against
a real server; what it got is checked here against the server's own records."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from service.client import PruningClient
from service.testing import TOKENS

NODE_DIR = Path(__file__).resolve().parent / "node"
PROTOS = Path(__file__).resolve().parents[2] / "protos"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _npm_ci() -> None:
    """Install the locked dependencies once (node_modules is git-ignored; .ci/run installs
    it up front); reinstall when package-lock.json is newer than the install."""
    marker = NODE_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_DIR / "package-lock.json"
    if marker.exists() and marker.stat().st_mtime >= lock.stat().st_mtime:
        return
    done = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=NODE_DIR,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, f"npm ci failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"


@pytest.fixture(scope="module")
def node() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the Node interop test (Node >= 18)")
    _npm_ci()
    return node


def test_a_node_client_does_the_whole_round_trip(
    node: str, server: Any, connect: Callable[..., PruningClient], checkpoint: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    env = {
        **os.environ, "ADDRESS": f"127.0.0.1:{server.port}", "TOKEN": TOKENS["bob"][0],
        "CHECKPOINT": str(checkpoint), "OUT": str(tmp_path), "PROTOS": str(PROTOS),
    }  # fmt: skip
    done = subprocess.run(
        [node, "interop.js"], cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=400
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])

    assert "metaprune.v1.PruningService" in got["reflection_v1"]
    assert "grpc.health.v1.Health" in got["reflection_v1"]
    assert got["max_message_bytes"] == 4 * 1024 * 1024
    sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert got["model_id"] == f"sha256:{sha}"
    assert "sha256 mismatch" in got["bad_sha256"]
    assert "request_id must be 1-128 printable characters" in got["empty_request_id"]
    assert "(found nan)" in got["nan_reg"]

    bob = connect("bob")
    job = bob.get_job(got["job_id"])  # the job is bob's, as the server sees it
    assert job.owner == "bob" and got["final_state"] == "JOB_STATE_SUCCEEDED"
    watched = got["watch"]
    assert watched["states"][-1] == "JOB_STATE_SUCCEEDED" and watched["messages"] >= 3
    assert {"evaluate_base", "prune", "evaluate"} <= set(watched["stages"])
    assert got["download"]["sha256"] == job.result_sha256
    assert got["download"]["size"] == job.result_size_bytes
    result = server.jobs.blobs.result_dir(job.job_id) / "model.safetensors"
    assert Path(got["download"]["path"]).read_bytes() == result.read_bytes()

    schemas = PROTOS / "metaprune" / "v1"
    report = json.loads((tmp_path / "report.json").read_text())
    summary = json.loads(got["summary_json"])
    jsonschema.validate(report, json.loads((schemas / "report.schema.json").read_text()))
    jsonschema.validate(summary, json.loads((schemas / "summary.schema.json").read_text()))
    assert summary == json.loads(job.summary_json)
    assert report["target_reached"] is True and report["speedup"]["macs"] >= 1.5
