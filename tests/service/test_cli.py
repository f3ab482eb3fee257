"""``metaprune client ...`` against the session's real server (``metaprune serve`` itself is
run as a subprocess by the crash-recovery test and the demo)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import metaprune
from metaprune.cli import main
from service.testing import TOKENS, tiny_config

pytestmark = pytest.mark.timeout(180)


def _client(server: Any, *args: str) -> list[str]:
    return ["client", args[0], "--address", f"127.0.0.1:{server.port}", *args[1:]]


def test_client_prune_round_trip(server: Any, checkpoint: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("METAPRUNE_TOKEN", TOKENS["alice"][0])
    config = tmp_path / "job.json"
    config.write_text(json.dumps(tiny_config()))
    out = tmp_path / "out"
    status = main(_client(server, "prune", str(checkpoint), "--dataset", "synthetic", "--config",
                          str(config), "--target-speedup", "1.6", "--wait", "-o", str(out), "--quiet",
                          "--dataset-kwargs", '{"image_size": 12}'))  # fmt: skip
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "uploaded" in captured.err and "target macs 1.6x reached" in captured.out
    model, spec = metaprune.load(out / "model.safetensors")
    report = json.loads((out / "report.json").read_text())
    assert report["speedup"]["macs"] >= 1.6 and spec.channel_plan
    assert report["dataset_kwargs"] == {"image_size": 12}

    assert main(_client(server, "jobs", "--state", "succeeded", "--json")) == 0
    jobs = json.loads(capsys.readouterr().out)
    assert jobs and all(j["state"] == "JOB_STATE_SUCCEEDED" for j in jobs)
    job_id = jobs[0]["job_id"]
    assert main(_client(server, "download", job_id, "-o", str(tmp_path / "again"))) == 0
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (
        out / "model.safetensors"
    ).read_bytes()
    assert main(_client(server, "watch", job_id, "--quiet")) == 0
    assert f"job {job_id} succeeded" in capsys.readouterr().out


def test_client_info_and_errors(server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_client(server, "info", "--json", "--token", TOKENS["viewer"][0])) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["token"] == "viewer" and "synthetic" in info["datasets"]
    assert info["limits"]["max_params"] == 200_000_000
    assert main(_client(server, "cancel", "0" * 32, "--token", TOKENS["alice"][0])) == 2
    assert "NOT_FOUND" in capsys.readouterr().err
    assert main(_client(server, "info", "--token", "wrong-token-wrong-token")) == 2
    assert "UNAUTHENTICATED" in capsys.readouterr().err
