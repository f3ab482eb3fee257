"""``ZooDataModule``: zoo members (as graphs) and task minibatches for meta-training."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from graph_encoding import ModelGraph, encode
from metaprune.data import DatasetSplits, make_loaders

from ..sparsity import GroupSparsity, SparsityGroup
from ..zoo import Zoo, ZooError, task_splits

__all__ = ["Member", "ZooDataModule"]


@dataclasses.dataclass
class Member:
    """One zoo network, prepared once: its module (eval mode; the template for
    ``functional_call``), its graph and its pruning groups (for the sparsity term)."""

    name: str
    model: nn.Module
    graph: ModelGraph
    groups: list[SparsityGroup]

    def to(self, device: torch.device) -> Member:
        if self.graph.x.device != device:
            self.model.to(device)
            self.graph = self.graph.to(device)
        return self


class _MetaBatches(Dataset):
    """Item ``k``: (member index ``k % members``, a random task minibatch).

    The sampler shuffles the items every epoch (and splits them across processes under
    DDP); the minibatch is drawn with torch's global generator, which Lightning seeds.
    """

    def __init__(self, members: int, data: Dataset, batch_size: int, per_member: int) -> None:
        self.members, self.data, self.batch_size, self.per_member = (
            members,
            data,
            batch_size,
            per_member,
        )
        self.images, self.labels = (
            torch.stack(t) for t in zip(*(data[i] for i in range(len(data))))
        )

    def __len__(self) -> int:
        return self.members * self.per_member

    def __getitem__(self, k: int) -> tuple[Tensor, Tensor, Tensor]:
        pick = torch.randperm(len(self.labels))[: self.batch_size]
        return torch.tensor(k % self.members), self.images[pick], self.labels[pick]


class _Indices(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int) -> Tensor:
        return torch.tensor(k)


class ZooDataModule(L.LightningDataModule):
    """Meta-training data: the meta-train members of a zoo, each paired with task
    minibatches, and the meta-val members for checkpoint selection.

    Args:
        zoo: directory of a finished zoo (``metaprune zoo build``).
        batch_size: task images per training step.
        batches_per_member: training steps per meta-train member and epoch.
        eval_batch_size: batch size of recalibration and validation passes.
        max_train_members, max_val_members: use only the first members (quick runs).

    Train batches are ``(member index, images, labels)``; validation batches are one
    meta-val member index each. Members are encoded once, in :meth:`setup`.
    """

    def __init__(
        self,
        zoo: str,
        batch_size: int = 64,
        batches_per_member: int = 4,
        eval_batch_size: int = 256,
        max_train_members: int | None = None,
        max_val_members: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.zoo_dir = Path(zoo)
        self.batch_size = batch_size
        self.batches_per_member = batches_per_member
        self.eval_batch_size = eval_batch_size
        self.max_train_members = max_train_members
        self.max_val_members = max_val_members
        self.train_members: list[Member] = []
        self.val_members: list[Member] = []

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        if self.train_members:
            return
        self.zoo = Zoo.open(self.zoo_dir)
        missing = sorted(set(self.zoo.members) - set(self.zoo.finished()))
        if missing:
            raise ZooError(
                f"zoo {str(self.zoo_dir)!r} has unfinished members {missing[:5]}; run `metaprune zoo build` to finish it"
            )
        self.splits: DatasetSplits = task_splits(self.zoo.config)
        size = self.splits.image_size
        self.example_inputs = torch.zeros(1, self.splits.in_channels, size, size)
        train_names = self.zoo.meta_train[: self.max_train_members]
        val_names = self.zoo.meta_val[: self.max_val_members]
        if not train_names or not val_names:
            raise ZooError(
                f"zoo {str(self.zoo_dir)!r} needs at least one meta-train and one meta-val member "
                f"(found {len(train_names)} and {len(val_names)})"
            )
        self.train_members = [self._prepare(n) for n in train_names]
        self.val_members = [self._prepare(n) for n in val_names]
        self._train_batches = _MetaBatches(
            len(self.train_members), self.splits.train, self.batch_size, self.batches_per_member
        )

    def _prepare(self, name: str) -> Member:
        model, _ = self.zoo.load_member(name)
        return Member(
            name=name, model=model, graph=encode(model, self.example_inputs),
            groups=GroupSparsity.from_model(model, self.example_inputs).groups,
        )  # fmt: skip

    def graphs(self) -> list[ModelGraph]:
        """Every member's graph (the metanetwork's edge types are read from them)."""
        return [m.graph for m in self.train_members + self.val_members]

    def task_loaders(self, batch_size: int | None = None) -> tuple[DataLoader, DataLoader]:
        """Fresh, identically seeded ``(train, val)`` loaders of the task (BN recalibration,
        selection, fine-tunes); ``batch_size`` defaults to ``eval_batch_size``."""
        train, val, _ = make_loaders(self.splits, batch_size or self.eval_batch_size, seed=0)
        return train, val

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._train_batches, batch_size=None, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Indices(len(self.val_members)), batch_size=None, shuffle=False)
