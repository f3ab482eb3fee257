"""Registered test architectures that behave badly on purpose (import to register them).

* ``testing/meta_hostile``: its constructor computes a width with ``.tolist()``, so it
  cannot run on the meta device (like torchvision's RegNets); sizing it takes the bounded
  child-process path, which imports this module to find the registration.
"""

from __future__ import annotations

import torch
from torch import nn

from metaprune.models.registry import is_model, register_model

__all__ = ["META_HOSTILE"]

META_HOSTILE = "testing/meta_hostile"


def meta_hostile(*, width: int = 3, hidden: int = 2) -> nn.Module:
    """``Linear(hidden, width) -> BatchNorm1d(width)`` plus a non-persistent buffer."""
    width = int(torch.tensor([width]).tolist()[0])  # fails under torch.device("meta")
    net = nn.Sequential(nn.Linear(hidden, width), nn.BatchNorm1d(width))
    net.register_buffer("scale", torch.ones(width), persistent=False)
    return net


if not is_model(META_HOSTILE):  # importing twice (e.g. by path in tests) is harmless
    register_model(META_HOSTILE)(meta_hostile)
