"""Meta-training under DDP: two CPU processes (gloo) through ``metanet fit``, a tiny zoo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from metanet.zoo import build_zoo, tiny_zoo_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_process_ddp_fit_on_cpu(tmp_path: Path) -> None:
    from metanet.export import read_fit_checkpoint

    zoo = tmp_path / "zoo"
    build_zoo(tiny_zoo_config(size=3), zoo, progress=False)  # 2 meta-train, 1 meta-val
    ckpt_dir = tmp_path / "ckpt"
    # strategy="ddp" re-launches this very command for rank 1, so run it as its own process
    args = [
        sys.executable, "-m", "metanet.cli", "metanet", "fit",
        "--data.zoo", str(zoo), "--data.batch_size", "8", "--data.batches_per_member", "2",
        "--model.num_layers", "1", "--model.hidden", "8", "--model.reg", "0.001",
        "--model.val_max_speedup", "2.0", "--model.val_prune_steps", "10", "--model.val_recalibrate_batches", "1",
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.logger", "false",
        "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path), "--checkpoint.dirpath", str(ckpt_dir),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # DDP on CPU uses gloo
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=800)
    assert result.returncode == 0, result.stderr[-4000:]
    output = result.stderr + result.stdout
    assert "distributed_backend=gloo" in output and "Starting with 2 processes" in output
    best = sorted(ckpt_dir.glob("best-*.ckpt"))
    assert len(best) == 1 and (ckpt_dir / "last.ckpt").exists()
    metanet = read_fit_checkpoint(best[0])
    assert metanet.config["hidden"] == 8 and metanet.config["num_layers"] == 1
