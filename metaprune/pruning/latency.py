"""Measured latency: what a MACs count cannot tell (memory-bound layers, odd widths).

The model runs in eval mode under ``torch.inference_mode`` on a fixed random batch;
the result is the median of ``repeats`` timed passes after ``warmup`` untimed ones,
with ``torch.set_num_threads(threads)`` for the measurement only (then restored): on a
shared CPU, one thread gives far steadier numbers than two.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn

from metaprune.pruning._checks import check_int

__all__ = ["measure_latency"]


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    threads: int = 1,
    repeats: int = 10,
    warmup: int = 2,
) -> float:
    """Median seconds of one forward pass of a ``(batch_size, *input_shape)`` batch.

    The model's mode and the torch thread count are restored afterwards.

    Raises:
        ConfigError: on non-positive ``batch_size``, ``threads`` or ``repeats``.
    """
    check_int("batch_size", batch_size, minimum=1)
    check_int("threads", threads, minimum=1)
    check_int("repeats", repeats, minimum=1)
    check_int("warmup", warmup, minimum=0)
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, *input_shape, generator=generator).to(device)
    old_threads = torch.get_num_threads()
    was_training = model.training
    times: list[float] = []
    try:
        torch.set_num_threads(threads)
        model.eval()
        with torch.inference_mode():
            for i in range(warmup + repeats):
                _sync(device)
                start = time.perf_counter()
                model(x)
                _sync(device)
                if i >= warmup:
                    times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(old_threads)
        model.train(was_training)
    return statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
