"""``ZooConfig``: how a model zoo is built, as a typed, frozen, versioned dataclass."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from metaprune.pruning.config import NORMALIZERS, FinetuneBudget

__all__ = ["SNAPSHOT_DTYPES", "ZOO_FORMAT_VERSION", "ZooConfig"]

ZOO_FORMAT_VERSION = 1
#: how snapshot members may be stored (issue 21: "fp16 is fine for inputs")
SNAPSHOT_DTYPES = ("float16", "float32")


def _budget(data: FinetuneBudget | Mapping[str, Any]) -> FinetuneBudget:
    if isinstance(data, FinetuneBudget):
        return data
    data = dict(data)
    if "milestones" in data:
        data["milestones"] = tuple(data["milestones"])
    return FinetuneBudget(**data)


@dataclasses.dataclass(frozen=True)
class ZooConfig:
    """Everything that determines a zoo's members (METHOD.md section 4, "data models").

    Member ``i`` is trained from scratch with seed ``seed + i`` (initialisation and batch
    order), pruned with group-L2 importance to ``initial_speedup`` x MACs, its BatchNorm
    statistics recalibrated, then fine-tuned. Every member sees the same dataset split
    (``data_seed``), so the validation images stay unseen by every member and by
    meta-training alike.

    Args:
        arch: a registered architecture (``metaprune.models.list_models``).
        arch_kwargs: its constructor kwargs; ``num_classes`` and ``in_channels`` default to
            the dataset's.
        dataset: a registered dataset name; ``dataset_kwargs`` its options.
        data_seed: seed of the dataset's train/val/test split.
        size: number of members.
        seed: seed of member 0.
        batch_size: training batch size.
        train: the from-scratch training budget (SGD; the best validation epoch is kept).
        initial_speedup: MACs speed-up of the light "initial" pruning (``1.0`` skips it).
        prune_steps: steps of the progressive pruner (step ``k`` removes ``k / prune_steps``).
        prune_normalizer: group-L2 importance normaliser of the light pruning. ``"sum"``
            by default: with ``"max"`` the light 1.3x prune thinned stage 1 of ``digits``
            ResNet-20s from 16 to ~9 channels and dropped validation accuracy to 61-74 %
            before the fine-tune (``benchmarks/RESULTS.md``, issue 8). Zoos built before
            this field existed used ``"max"``.
        recalibrate_batches: BatchNorm recalibration batches after pruning.
        finetune: the fine-tune budget after pruning.
        meta_val_fraction: share of members held out for checkpoint selection.
        split_seed: seed of the meta-train / meta-val split.
        snapshots: members per training run (issue 21): the final, lightly pruned and
            fine-tuned network plus ``snapshots - 1`` weight snapshots taken at the end of
            epochs spread evenly over the run's training and fine-tune epochs (unpruned
            networks during training, pruned ones during the fine-tune). The meta split is
            drawn over runs, so no run sits on both sides. ``1`` (the default) is the
            one-member-per-run zoo of format 1, and is left out of :meth:`to_dict`, so zoos
            and recipes written before the field existed compare equal.
        snapshot_dtype: storage of the snapshots (``"float32"`` or ``"float16"``, which
            halves them; members load as float32 either way, and a snapshot's metrics are
            measured on the stored weights). Left out of :meth:`to_dict` at its default,
            as ``snapshots`` is.
    """

    arch: str = "cifar_resnet20"
    arch_kwargs: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"in_channels": 1, "width": 1.0}
    )
    dataset: str = "digits"
    dataset_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    data_seed: int = 0
    size: int = 20
    seed: int = 0
    batch_size: int = 64
    train: FinetuneBudget = FinetuneBudget(epochs=20, lr=0.1, schedule="cosine")
    initial_speedup: float = 1.3
    prune_steps: int = 100
    prune_normalizer: str = "sum"
    recalibrate_batches: int = 10
    finetune: FinetuneBudget = FinetuneBudget(epochs=8, lr=0.01, schedule="cosine")
    meta_val_fraction: float = 0.2
    split_seed: int = 0
    snapshots: int = 1
    snapshot_dtype: str = "float32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "train", _budget(self.train))
        object.__setattr__(self, "finetune", _budget(self.finetune))
        object.__setattr__(self, "arch_kwargs", dict(self.arch_kwargs))
        object.__setattr__(self, "dataset_kwargs", dict(self.dataset_kwargs))
        for name in ("size", "batch_size", "prune_steps", "snapshots"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ZooConfig.{name} must be an int >= 1 (found {value!r})")
        if self.prune_normalizer not in NORMALIZERS:
            raise ValueError(
                f"ZooConfig.prune_normalizer must be one of {NORMALIZERS} "
                f"(found {self.prune_normalizer!r})"
            )
        if self.recalibrate_batches < 0:
            raise ValueError(
                f"ZooConfig.recalibrate_batches must be >= 0 (found {self.recalibrate_batches})"
            )
        if self.snapshots > self.train.epochs + self.finetune.epochs:
            raise ValueError(
                f"ZooConfig.snapshots must be at most the run's epochs "
                f"({self.train.epochs} + {self.finetune.epochs}) (found {self.snapshots})"
            )
        if self.snapshot_dtype not in SNAPSHOT_DTYPES:
            raise ValueError(
                f"ZooConfig.snapshot_dtype must be one of {sorted(SNAPSHOT_DTYPES)} "
                f"(found {self.snapshot_dtype!r})"
            )
        if not self.initial_speedup >= 1.0:
            raise ValueError(
                f"ZooConfig.initial_speedup must be >= 1 (found {self.initial_speedup})"
            )
        if not 0.0 <= self.meta_val_fraction < 1.0:
            raise ValueError(
                f"ZooConfig.meta_val_fraction must be in [0, 1) (found {self.meta_val_fraction})"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (nested budgets as dicts, tuples as lists)."""
        out = dataclasses.asdict(self)
        for key in ("train", "finetune"):
            out[key]["milestones"] = list(out[key]["milestones"])
        if self.snapshots == 1:
            del out["snapshots"]
        if self.snapshot_dtype == "float32":
            del out["snapshot_dtype"]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ZooConfig:
        """Parse :meth:`to_dict`'s output; unknown keys raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"ZooConfig: unknown key(s) {unknown} (expected a subset of {sorted(known)})"
            )
        return cls(**dict(data))

    def run_names(self) -> list[str]:
        """One name per training run: ``"0000"``, ``"0001"``, ... (run ``i`` has seed ``seed + i``)."""
        return [f"{i:04d}" for i in range(self.size)]

    def run_members(self, run: str) -> list[str]:
        """The members of training run ``run``: its snapshots ``"<run>.k"`` (``k`` = 1 ..
        ``snapshots - 1``, in training order), then the final network ``"<run>"``."""
        return [f"{run}.{k}" for k in range(1, self.snapshots)] + [run]

    def member_names(self) -> list[str]:
        return [m for run in self.run_names() for m in self.run_members(run)]

    def snapshot_epochs(self) -> list[int]:
        """Epochs (counted over training, then fine-tune) after which snapshots ``1 ..
        snapshots - 1`` are taken: evenly spread, distinct, before the run's end."""
        total = self.train.epochs + self.finetune.epochs
        return [max(1, round(k * total / self.snapshots)) for k in range(1, self.snapshots)]
