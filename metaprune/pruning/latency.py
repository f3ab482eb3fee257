"""Measured latency: what a MACs count cannot tell (memory-bound layers, odd widths).

The model runs in eval mode under ``torch.inference_mode`` on a fixed random batch;
the result is the median of the timed passes after ``warmup`` untimed ones, with
``torch.set_num_threads(threads)`` for the measurement only (then restored): on a
shared CPU, one thread gives far steadier numbers than two.

Timing stops at ``repeats`` timed passes or once ``seconds`` were spent timing, whichever
comes first (one timed pass at least), so a large model at a large input costs a bounded
time, not ``repeats`` slow passes: one batch of 64 through ResNet-50 at 224x224 takes
~13 s on one thread of the benchmark machine. The default batch size follows the input
size for the same reason (:func:`auto_batch_size`).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from metaprune.pruning._checks import ConfigError, check_int

__all__ = ["LatencyMeasurement", "auto_batch_size", "measure_latency", "time_forward"]

#: pixels per latency batch by default: 64 images of 32x32
_PIXELS_PER_BATCH = 64 * 32 * 32


def auto_batch_size(input_shape: Sequence[int], largest: int = 64) -> int:
    """The latency batch for an input shape ``(C, H, W)``: the largest power of two up to
    ``largest`` whose images hold at most 64 x 32 x 32 pixels (64 at 32x32 and below, 16
    at 64x64, 1 at 224x224)."""
    pixels = math.prod(input_shape[1:]) if len(input_shape) > 1 else 1
    batch = 1
    while batch * 2 <= largest and batch * 2 * pixels <= _PIXELS_PER_BATCH:
        batch *= 2
    return batch


@dataclasses.dataclass(frozen=True)
class LatencyMeasurement:
    """The median seconds of one forward pass of ``batch_size`` inputs over ``repeats``
    timed passes (after ``warmup`` untimed ones), which took ``seconds`` in all."""

    median: float
    batch_size: int
    repeats: int
    warmup: int
    seconds: float

    def to_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


def time_forward(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
    threads: int = 1,
    repeats: int = 10,
    warmup: int = 1,
    seconds: float = math.inf,
    on_pass: Callable[[int, int], None] | None = None,
) -> LatencyMeasurement:
    """Time forward passes of a ``(batch_size, *input_shape)`` batch (see the module doc).

    Args:
        batch_size: ``None`` = :func:`auto_batch_size` of ``input_shape``.
        repeats: at most this many timed passes.
        seconds: stop timing once this much time was spent on timed passes.
        on_pass: called as ``on_pass(done, repeats)`` after every pass (progress; it may
            raise to abort).

    The model's mode and the torch thread count are restored afterwards.

    Raises:
        ConfigError: on non-positive ``batch_size``, ``threads``, ``repeats`` or ``seconds``.
    """
    batch_size = auto_batch_size(input_shape) if batch_size is None else batch_size
    check_int("batch_size", batch_size, minimum=1)
    check_int("threads", threads, minimum=1)
    check_int("repeats", repeats, minimum=1)
    check_int("warmup", warmup, minimum=0)
    if not (isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds > 0):
        raise ConfigError(f"seconds must be a number > 0 (found {seconds!r})")
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
                if on_pass is not None:
                    on_pass(i + 1, warmup + repeats)
                if times and sum(times) >= seconds:
                    break
    finally:
        torch.set_num_threads(old_threads)
        model.train(was_training)
    return LatencyMeasurement(
        statistics.median(times), batch_size, len(times), warmup, sum(times)
    )  # fmt: skip


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    batch_size: int | None = 64,
    device: torch.device | str = "cpu",
    threads: int = 1,
    repeats: int = 10,
    warmup: int = 2,
    seconds: float = math.inf,
) -> float:
    """Median seconds of one forward pass of a ``(batch_size, *input_shape)`` batch
    (:func:`time_forward`'s median; ``batch_size=None`` follows the input size).

    Raises:
        ConfigError: on non-positive ``batch_size``, ``threads``, ``repeats`` or ``seconds``.
    """
    return time_forward(
        model, input_shape, batch_size=batch_size, device=device, threads=threads,
        repeats=repeats, warmup=warmup, seconds=seconds,
    ).median  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
