"""Building one zoo member: train from scratch, prune lightly, recalibrate, fine-tune, save."""

from __future__ import annotations

import copy
import functools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metaprune.checkpoint import save
from metaprune.data import DatasetSplits, get_dataset, make_loaders
from metaprune.models import ArchSpec
from metaprune.pruning.bn import recalibrate_bn
from metaprune.pruning.finetune import evaluate, finetune
from metaprune.pruning.progress import ProgressEvent
from metaprune.pruning.progressive import progressive_prune
from metaprune.pruning.targets import measure_cost

from .config import ZooConfig

__all__ = [
    "build_member",
    "member_paths",
    "read_metrics",
    "write_json_atomic",
    "task_splits",
    "member_spec",
]


def member_paths(root: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """``(checkpoint, metrics)`` paths of member ``name`` under zoo directory ``root``."""
    base = Path(root) / "members"
    return base / f"{name}.safetensors", base / f"{name}.metrics.json"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file, then rename: readers see all of it or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_metrics(path: Path) -> dict[str, Any] | None:
    """The metrics of a finished member, or ``None`` if it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "val_accuracy" in data else None


@functools.lru_cache(maxsize=4)
def _splits(dataset: str, data_seed: int, kwargs_json: str) -> DatasetSplits:
    return get_dataset(dataset, seed=data_seed, **json.loads(kwargs_json))


def task_splits(config: ZooConfig) -> DatasetSplits:
    """The dataset splits every member (and meta-training) uses, cached per process."""
    return _splits(
        config.dataset, config.data_seed, json.dumps(config.dataset_kwargs, sort_keys=True)
    )


def member_spec(config: ZooConfig) -> ArchSpec:
    """The unpruned architecture of the zoo's members."""
    splits = task_splits(config)
    kwargs = {
        "num_classes": splits.num_classes,
        "in_channels": splits.in_channels,
        **config.arch_kwargs,
    }
    return ArchSpec(config.arch, kwargs)


def build_member(config: ZooConfig, index: int, root: str | os.PathLike[str]) -> dict[str, Any]:
    """Build training run ``index`` of the zoo at ``root`` (its final member and its
    ``config.snapshots - 1`` snapshots) and return the final member's metrics.

    Checkpoints are written first and metrics files last (all atomically), the final
    member's last of all, so a member counts as finished only once everything is on disk.
    """
    start = time.perf_counter()
    name = config.run_names()[index]
    seed = config.seed + index
    ckpt_path, metrics_path = member_paths(root, name)
    splits = task_splits(config)
    train, val, test = make_loaders(splits, config.batch_size, seed=seed)
    spec = member_spec(config)
    torch.manual_seed(seed)
    model = spec.build()
    example = torch.zeros(1, splits.in_channels, splits.image_size, splits.image_size)

    snap = _Snapshots(config, name, seed, spec, root)
    trained = finetune(
        model, train, val, config.train, progress=snap.watch(model, 0), stage="train"
    )
    base = measure_cost(model, example)
    base_val = evaluate(model, val)
    history = progressive_prune(
        model,
        example,
        config.initial_speedup,
        importance="group-l2",
        steps=config.prune_steps,
        normalizer=config.prune_normalizer,
    )
    recalibrate_bn(model, train, config.recalibrate_batches)
    pruned_val = evaluate(model, val)
    tuned = finetune(
        model,
        train,
        val,
        config.finetune,
        progress=snap.watch(model, config.train.epochs),
        stage="finetune",
    )
    model.eval()
    cost = measure_cost(model, example)
    metrics = {
        "name": name,
        "seed": seed,
        "val_accuracy": evaluate(model, val),
        "test_accuracy": evaluate(model, test),  # reported only; nothing selects on it
        "macs": cost.macs,
        "params": cost.params,
        "base_macs": base.macs,
        "base_params": base.params,
        "macs_speedup": base.macs / cost.macs,
        "trained_val_accuracy": base_val,
        "trained_best_epoch": trained.best_epoch,
        "pruned_val_accuracy": pruned_val,
        "prune_steps_taken": history[-1].step,
        "finetune_best_epoch": tuned.best_epoch,
        "seconds": round(time.perf_counter() - start, 2),
        "recipe": config.to_dict(),
    }
    save(
        model,
        spec.with_plan_of(model),
        ckpt_path,
        metadata={"zoo.member": name, "zoo.seed": str(seed)},
    )
    snap.write(test, {k: metrics[k] for k in ("base_macs", "base_params")}, example)
    write_json_atomic(metrics_path, metrics)
    return metrics


class _Snapshots:
    """Weight snapshots of one training run at ``config.snapshot_epochs()``, kept in memory
    (the state and the channel plan at that epoch) and written after the final member."""

    def __init__(self, config: ZooConfig, run: str, seed: int, spec: ArchSpec, root: Any) -> None:
        self.config, self.run, self.seed, self.spec, self.root = config, run, seed, spec, root
        self.names = config.run_members(run)[:-1]
        self.epochs = dict(zip(config.snapshot_epochs(), self.names))
        self.taken: list[tuple[str, int, nn.Module, float]] = []

    def watch(self, model: nn.Module, offset: int) -> Callable[[ProgressEvent], None]:
        """A ``finetune`` progress callback; ``offset`` = epochs of the run before this stage."""

        def on_event(event: ProgressEvent) -> None:
            epoch = offset + event.step
            # the end of an epoch: the event with ``train_loss`` (batch events have ``batch``)
            if "train_loss" in event.metrics and epoch in self.epochs:
                copy_ = copy.deepcopy(model).eval()
                self.taken.append((self.epochs[epoch], epoch, copy_, event.metrics["val_accuracy"]))

        return on_event

    def write(self, test: Any, base: dict[str, Any], example: torch.Tensor) -> None:
        dtype = getattr(torch, self.config.snapshot_dtype)
        for name, epoch, model, val_acc in self.taken:
            ckpt, metrics_path = member_paths(self.root, name)
            save(model.to(dtype), self.spec.with_plan_of(model), ckpt,
                 metadata={"zoo.member": name, "zoo.seed": str(self.seed)})  # fmt: skip
            model.float()  # the stored weights, as members load (float32)
            cost = measure_cost(model, example)
            write_json_atomic(metrics_path, {
                "name": name, "run": self.run, "seed": self.seed, "snapshot_epoch": epoch,
                "val_accuracy": val_acc,  # at that epoch, as the training loop measured it
                "test_accuracy": evaluate(model, test),  # reported only
                "macs": cost.macs, "params": cost.params, **base,
                "macs_speedup": base["base_macs"] / cost.macs, "recipe": self.config.to_dict(),
            })  # fmt: skip
