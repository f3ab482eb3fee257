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


def _finals(zoo: Zoo, names: list[str]) -> list[str]:
    """The final network of each run among ``names`` (snapshots are named ``<run>.<k>``)."""
    return [n for n in names if zoo.run_of(n) == n]


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
        zoo: directory of a finished zoo (``metaprune zoo build``), or a list of them
            (several families / depths / widths in one meta-training; they must share the
            task: dataset, its options and ``data_seed``). With several zoos member names
            are ``<zoo dir name>/<member>``.
        batch_size: task images per training step.
        batches_per_member: training steps per meta-train member and epoch.
        eval_batch_size: batch size of recalibration and validation passes.
        max_train_members, max_val_members: use only the first members (quick runs).
        train_snapshots: members per meta-train *run* to use in a zoo built with
            ``snapshots`` (issue 21): the final network and its latest
            ``train_snapshots - 1`` snapshots; ``None`` takes all. Meta-val always takes
            each run's final network only (what a user prunes), and no run is on both sides.

    Train batches are ``(member index, images, labels)``; validation batches are one
    meta-val member index each. Members are encoded once, in :meth:`setup`.
    """

    def __init__(
        self,
        zoo: str | list[str],
        batch_size: int = 64,
        batches_per_member: int = 4,
        eval_batch_size: int = 256,
        max_train_members: int | None = None,
        max_val_members: int | None = None,
        train_snapshots: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.zoo_dirs = [Path(z) for z in ([zoo] if isinstance(zoo, (str, Path)) else zoo)]
        if not self.zoo_dirs:
            raise ZooError("ZooDataModule needs at least one zoo directory (found an empty list)")
        self.batch_size = batch_size
        self.batches_per_member = batches_per_member
        self.eval_batch_size = eval_batch_size
        self.max_train_members = max_train_members
        self.max_val_members = max_val_members
        if train_snapshots is not None and train_snapshots < 1:
            raise ZooError(
                f"ZooDataModule: train_snapshots must be >= 1 or None (found {train_snapshots})"
            )
        self.train_snapshots = train_snapshots
        self.train_members: list[Member] = []
        self.val_members: list[Member] = []

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        if self.train_members:
            return
        self.zoos = [Zoo.open(d) for d in self.zoo_dirs]
        for zoo, zoo_dir in zip(self.zoos, self.zoo_dirs):
            missing = sorted(set(zoo.members) - set(zoo.finished()))
            if missing:
                raise ZooError(
                    f"zoo {str(zoo_dir)!r} has unfinished members {missing[:5]}; run `metaprune zoo build` to finish it"
                )
        tasks = {(z.config.dataset, repr(sorted(z.config.dataset_kwargs.items())), z.config.data_seed)
                 for z in self.zoos}  # fmt: skip
        if len(tasks) > 1:
            raise ZooError(
                f"zoos {[str(d) for d in self.zoo_dirs]} were trained on different tasks "
                f"(dataset, options, data_seed: {sorted(tasks)}); meta-training needs one task"
            )
        self.zoo = self.zoos[0]
        self.splits: DatasetSplits = task_splits(self.zoo.config)
        size = self.splits.image_size
        self.example_inputs = torch.zeros(1, self.splits.in_channels, size, size)
        many = len(self.zoos) > 1
        train, val = [], []
        for zoo, zoo_dir in zip(self.zoos, self.zoo_dirs):
            for names, out, cap in ((self._train_names(zoo), train, self.max_train_members),
                                    (_finals(zoo, zoo.meta_val), val, self.max_val_members)):  # fmt: skip
                out += [self._prepare(zoo, n, f"{zoo_dir.name}/{n}" if many else n)
                        for n in names[:cap]]  # fmt: skip
        if not train or not val:
            raise ZooError(
                f"zoo(s) {[str(d) for d in self.zoo_dirs]} need at least one meta-train and one "
                f"meta-val member (found {len(train)} and {len(val)})"
            )
        self.train_members, self.val_members = train, val
        self._train_batches = _MetaBatches(
            len(self.train_members), self.splits.train, self.batch_size, self.batches_per_member
        )

    def _train_names(self, zoo: Zoo) -> list[str]:
        k = self.train_snapshots
        if k is None:
            return list(zoo.meta_train)
        runs = list(dict.fromkeys(zoo.run_of(m) for m in zoo.meta_train))
        return [m for r in runs for m in zoo.config.run_members(r)[-k:]]

    def _prepare(self, zoo: Zoo, name: str, label: str) -> Member:
        model, _ = zoo.load_member(name)
        return Member(
            name=label, model=model, graph=encode(model, self.example_inputs),
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
