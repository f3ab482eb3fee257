"""``Zoo``: the ``zoo.json`` index of a model zoo, read and written."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metaprune.checkpoint import load
from metaprune.models import ArchSpec

from .config import ZOO_FORMAT_VERSION, ZooConfig
from .member import member_paths, read_metrics, write_json_atomic

__all__ = ["INDEX_NAME", "Zoo", "ZooError", "meta_split"]

INDEX_NAME = "zoo.json"


class ZooError(ValueError):
    """A zoo directory is missing, incomplete, or was built with another configuration."""


def meta_split(names: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded ``(meta_train, meta_val)`` split; meta-val gets ``round(fraction * n)``
    members (at least one when ``fraction > 0`` and there are two or more members)."""
    n_val = round(fraction * len(names))
    if fraction > 0 and len(names) >= 2:
        n_val = min(max(n_val, 1), len(names) - 1)
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    val = sorted(names[i] for i in order[:n_val])
    return [n for n in names if n not in val], val


@dataclasses.dataclass(frozen=True)
class Zoo:
    """A zoo directory: its configuration, members and meta-train / meta-val split."""

    root: Path
    config: ZooConfig
    meta_train: list[str]
    meta_val: list[str]

    @property
    def members(self) -> list[str]:
        return self.config.member_names()

    @classmethod
    def create(cls, root: str | os.PathLike[str], config: ZooConfig) -> Zoo:
        """The zoo of ``config`` at ``root``; its index is written unless it exists with
        the same configuration (a different one raises :class:`ZooError`)."""
        root = Path(root)
        if (root / INDEX_NAME).exists():
            zoo = cls.open(root)
            if zoo.config != config:
                old, new = zoo.config.to_dict(), config.to_dict()
                diff = sorted(k for k in new if old.get(k) != new.get(k))
                raise ZooError(
                    f"zoo {str(root)!r} was built with another configuration (differs in {diff}); "
                    "use a new directory or the same configuration to resume"
                )
            return zoo
        # drawn over training runs, so a run's snapshots never straddle the split
        train_runs, val_runs = meta_split(
            config.run_names(), config.meta_val_fraction, config.split_seed
        )
        meta_train = [m for r in train_runs for m in config.run_members(r)]
        meta_val = [m for r in val_runs for m in config.run_members(r)]
        zoo = cls(root=root, config=config, meta_train=meta_train, meta_val=meta_val)
        zoo.write_index()
        return zoo

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> Zoo:
        """Read ``root/zoo.json``."""
        root = Path(root)
        path = root / INDEX_NAME
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ZooError(f"cannot read zoo index {str(path)!r}: {err}") from None
        if data.get("format_version") != ZOO_FORMAT_VERSION:
            raise ZooError(
                f"zoo index {str(path)!r} has format_version {data.get('format_version')!r}, "
                f"expected {ZOO_FORMAT_VERSION}"
            )
        config = ZooConfig.from_dict(data["config"])
        split = data["split"]
        return cls(
            root=root,
            config=config,
            meta_train=list(split["meta_train"]),
            meta_val=list(split["meta_val"]),
        )

    @property
    def runs(self) -> list[str]:
        return self.config.run_names()

    def run_of(self, member: str) -> str:
        """The training run a member comes from (its snapshots share it)."""
        return member.split(".", 1)[0]

    def finished_runs(self) -> list[str]:
        """Runs all of whose members are finished."""
        done = set(self.finished())
        return [r for r in self.runs if all(m in done for m in self.config.run_members(r))]

    def finished(self) -> list[str]:
        """Members whose metrics file (written last) is present and readable."""
        return [n for n in self.members if read_metrics(self.paths(n)[1]) is not None]

    def paths(self, name: str) -> tuple[Path, Path]:
        """``(checkpoint, metrics)`` of member ``name``."""
        return member_paths(self.root, name)

    def metrics(self, name: str) -> dict[str, Any]:
        metrics = read_metrics(self.paths(name)[1])
        if metrics is None:
            raise ZooError(
                f"zoo {str(self.root)!r}: member {name!r} is not finished (no metrics); run `metaprune zoo build` again"
            )
        return metrics

    def load_member(self, name: str) -> tuple[nn.Module, ArchSpec]:
        """The member's model (eval mode) and spec; the member must be finished."""
        self.metrics(name)
        model, spec = load(self.paths(name)[0])
        return model.eval(), spec

    def write_index(self) -> None:
        finished = set(self.finished())
        data = {
            "format_version": ZOO_FORMAT_VERSION,
            "config": self.config.to_dict(),
            "members": [
                {
                    "name": n,
                    "run": self.run_of(n),
                    "seed": self.config.seed + int(self.run_of(n)),
                    "checkpoint": str(self.paths(n)[0].relative_to(self.root)),
                    "metrics": str(self.paths(n)[1].relative_to(self.root)),
                    "finished": n in finished,
                }
                for n in self.members
            ],
            "split": {"meta_train": self.meta_train, "meta_val": self.meta_val},
            "complete": len(finished) == len(self.members),
        }
        write_json_atomic(self.root / INDEX_NAME, data)
