"""Weight noise and edge dropout: small perturbations of a network's weights.

Both act on the weight tensors of conv / linear layers (``dim >= 2``), which are the
graph's edges; biases, norms and running statistics are left alone. Their scale is
relative to each tensor's own spread, so one setting suits layers of any size:

* :func:`weight_noise` adds ``sigma * std(W) * N(0, 1)`` to every entry of ``W``;
* :func:`edge_dropout` zeroes a random share ``p`` of the edges (whole ``(out, in)``
  kernel slices), without rescaling the rest (a rescale would change the function more).

Each draws from the given ``torch.Generator``, so a seed fixes the result.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["edge_dropout", "weight_noise"]

_MAX_SIGMA = 0.5
_MAX_P = 0.5


def _weights(tensors: Mapping[str, Tensor]) -> list[str]:
    return [
        k
        for k, v in tensors.items()
        if k.endswith("weight") and v.dim() >= 2 and v.is_floating_point()
    ]


@torch.no_grad()
def weight_noise(
    tensors: Mapping[str, Tensor], sigma: float, generator: torch.Generator
) -> dict[str, Tensor]:
    """``tensors`` with Gaussian noise of ``sigma`` times each weight's std (``0 <= sigma <= 0.5``)."""
    if not 0.0 <= sigma <= _MAX_SIGMA:
        raise ValueError(f"weight_noise: sigma must be in [0, {_MAX_SIGMA}] (found {sigma})")
    out = dict(tensors)
    for k in _weights(tensors):
        w = tensors[k]
        noise = torch.randn(w.shape, generator=generator, dtype=torch.float32).to(w.dtype)
        out[k] = w + sigma * w.std() * noise.to(w.device)
    return out


@torch.no_grad()
def edge_dropout(
    tensors: Mapping[str, Tensor], p: float, generator: torch.Generator
) -> dict[str, Tensor]:
    """``tensors`` with a random share ``p`` of each weight's edges zeroed (``0 <= p <= 0.5``)."""
    if not 0.0 <= p <= _MAX_P:
        raise ValueError(f"edge_dropout: p must be in [0, {_MAX_P}] (found {p})")
    out = dict(tensors)
    for k in _weights(tensors):
        w = tensors[k]
        keep = torch.rand(w.shape[:2], generator=generator) >= p
        out[k] = w * keep.to(w.dtype).to(w.device).view(*w.shape[:2], *[1] * (w.dim() - 2))
    return out
