"""Batches on the local backend: completion, a broken entry, idempotence, SIGKILL and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import metaprune
from metaprune.batch import run_batch
from metaprune.batch.cli import run as cli_run  # noqa: F401 - the CLI module imports cleanly
from metaprune.cli import main
from metaprune.pruning import measure_cost
from metaprune.testing.batch import TINY_FIXED_CONFIG as CONFIG
from metaprune.testing.batch import make_tiny_models, write_manifest

pytestmark = pytest.mark.timeout(600)
KEYS = [f"m{i}/{t}" for i in range(3) for t in ("macs-1.5x", "macs-2x")]


def result_mtimes(out: Path) -> dict[str, int]:
    """``model/target -> mtime`` of every published result (temporary directories excluded)."""
    return {
        f"{p.parent.parent.name}/{p.parent.name}": p.stat().st_mtime_ns
        for p in out.glob("*/*/result.json")
        if not p.parent.name.startswith(".")
    }


@pytest.mark.slow
def test_a_zoo_completes_with_a_broken_entry_failed_and_reruns_are_idempotent(tmp_path):
    models = make_tiny_models(tmp_path / "zoo", n=3)
    (tmp_path / "zoo" / "broken.safetensors").write_bytes(os.urandom(256))  # a corrupt checkpoint
    manifest = write_manifest(tmp_path / "m.yaml", [{"path": "zoo/*.safetensors"}], config=CONFIG)
    out = tmp_path / "out"
    outcome = run_batch(manifest, out, workers=2, progress=False)

    assert outcome.skipped == 0 and outcome.ran == 8
    c = outcome.counts
    assert (c["succeeded"], c["failed"], c["total"], c["pending"], c["running"]) == (6, 2, 8, 0, 0)
    rows = {f"{r['model']}/{r['target']}": r for r in outcome.rows}
    assert sorted(rows) == sorted(KEYS + ["broken/macs-1.5x", "broken/macs-2x"])
    for target in ("macs-1.5x", "macs-2x"):
        broken = rows[f"broken/{target}"]
        assert (
            broken["status"] == "failed" and broken["attempts"] == 2
        )  # retried once, then given up
        assert broken["error"].startswith("CheckpointError: checkpoint ")
        assert "is not a readable safetensors file" in broken["error"]
        assert not (out / "broken" / target).exists()

    example = torch.randn(1, 1, 8, 8)
    for i, path in enumerate(models):
        base_macs = measure_cost(metaprune.load(path)[0], example).macs
        for target, value in (("macs-1.5x", 1.5), ("macs-2x", 2.0)):
            row = rows[f"m{i}/{target}"]
            assert row["status"] == "succeeded" and row["error"] is None and row["attempts"] == 0
            assert row["method"] == "group-l2" and row["dataset"] == "synthetic"
            model, spec = metaprune.load(out / row["checkpoint"])  # a safe checkpoint, no pickle
            macs = measure_cost(model, example).macs
            assert macs == row["final_macs"] and row["base_macs"] == base_macs
            assert base_macs / macs >= value and row["target_reached"] is True
            assert 0.0 <= row["final_test_accuracy"] <= 1.0 and row["wall_seconds"] > 0
            assert spec.name == "cifar_resnet20"
            for name in ("model.safetensors", "report.json", "curve.png", "result.json"):
                assert (out / f"m{i}" / target / name).is_file()

    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == c and len(summary["rows"]) == 8
    csv_lines = (out / "summary.csv").read_text().splitlines()
    assert csv_lines[0].startswith("model,target,status,") and len(csv_lines) == 9
    assert sum(",failed," in line for line in csv_lines) == 2
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = json.loads((out / "batch.json").read_text())["tasks"]
    assert all(state[k]["runs"] == 1 for k in KEYS) and state["broken/macs-2x"]["runs"] == 2

    # the same command again: nothing is recomputed, failed tasks are out of attempts
    before = result_mtimes(out)
    again = run_batch(manifest, out, workers=2, progress=False)
    assert again.skipped == 8 and again.ran == 0 and again.counts == c
    assert result_mtimes(out) == before and len(before) == 6
    assert json.loads((out / "batch.json").read_text())["tasks"]["m0/macs-2x"]["runs"] == 1

    # --retry-failed gives the broken entry its attempts again; finished tasks stay untouched
    retried = run_batch(manifest, out, workers=1, max_attempts=1, retry_failed=True, progress=False)
    assert retried.ran == 2 and retried.counts["failed"] == 2 and result_mtimes(out) == before


@pytest.mark.slow
def test_sigkill_of_the_batch_process_midway_then_resume(tmp_path, capsys):
    make_tiny_models(tmp_path / "zoo", n=3)
    manifest = write_manifest(tmp_path / "m.yaml", [{"path": "zoo/*.safetensors"}], config=CONFIG)
    out = tmp_path / "out"
    root = str(Path(metaprune.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "metaprune.cli", "batch", "run", str(manifest), "-o", str(out),
               "--workers", "1", "--quiet"]  # fmt: skip
    with open(tmp_path / "log.txt", "wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 400
        while not result_mtimes(out) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None, (tmp_path / "log.txt").read_text()
        workers = _children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
    finished = result_mtimes(out)
    assert 1 <= len(finished) < 6
    assert workers  # the pool's worker existed, and it does not outlive its parent
    deadline = time.monotonic() + 60
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers)

    capsys.readouterr()
    assert main(["batch", "status", str(out), "--json"]) == 0  # readable after a kill
    status = json.loads(capsys.readouterr().out)
    assert status["running"] is False and status["counts"]["total"] == 6
    assert status["counts"]["succeeded"] == len(finished)  # the outputs are the truth
    assert status["counts"]["pending"] == 6 - len(finished) and status["counts"]["running"] == 0
    assert main(["batch", "status", str(out)]) == 0  # the table, too
    assert "(stopped)" in capsys.readouterr().out

    resumed = run_batch(manifest, out, workers=2, progress=False)
    assert resumed.skipped == len(finished) and resumed.ran == 6 - len(finished)
    assert resumed.counts["succeeded"] == 6 and resumed.counts["total"] == 6
    assert {k: v for k, v in result_mtimes(out).items() if k in finished} == finished  # not redone
    state = json.loads((out / "batch.json").read_text())["tasks"]
    assert all(state[k]["runs"] == 1 for k in finished)
    assert all(state[k]["status"] == "succeeded" and state[k]["attempts"] == 0 for k in KEYS)
    leftovers = [p for p in out.glob("*/.*") if p.is_dir()]
    assert leftovers == []  # the killed task's temporary directory was cleaned up


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
