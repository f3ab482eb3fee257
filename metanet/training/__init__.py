"""Meta-training with Lightning: :class:`MetaPruneModule` wraps a plain
:class:`~metanet.MetaNetwork`, :class:`ZooDataModule` serves zoo members and task batches,
and :mod:`~metanet.training.selection` computes the ``val/auc`` selection signal."""

from .data import Member, ZooDataModule
from .module import MetaPruneModule
from .selection import CurvePoint, accuracy_at, curve_auc, pruning_curve

__all__ = [
    "CurvePoint",
    "Member",
    "accuracy_at",
    "MetaPruneModule",
    "ZooDataModule",
    "curve_auc",
    "pruning_curve",
]
