"""BatchNorm recalibration: re-estimate running statistics after the weights changed.

Removing channels changes the distribution every later BatchNorm sees, while its running
mean and variance still describe the unpruned network; measured on ``digits``, accuracy
right after pruning is near chance for every method until the statistics are
re-estimated. Sparse training leaves them stale too (it shrinks whole channels faster
than the momentum-0.1 running averages follow).

Recalibration is **exact and independent of batch order**: each BatchNorm's statistics
are the mean and (unbiased) variance of its input over *all* samples the loader yields,
accumulated in float64, with every earlier BatchNorm already recalibrated and in eval
mode. The naive alternative -- one pass in training mode with ``momentum=None`` -- is
neither: it averages per-batch variances (not the variance of the pass), and every
later layer sees inputs normalised with the statistics of whichever batch a sample
landed in, so two shuffles of the same images gave different statistics (up to 4 test
images apart on ``digits``). Exactness costs one pass per BatchNorm, cut short right
after that BatchNorm (about half a forward pass each on average; 12x one training-mode
pass on a ``digits`` ResNet-20). Identical sample sets give identical statistics up to
float64 summation order; use :func:`calibration_loader` for a fixed, seeded sample set.

``exact=False`` is the cheap single pass (training-mode BatchNorms, ``momentum=None``):
approximate, and order-dependent, but deterministic on a fixed unshuffled loader such
as :func:`calibration_loader`'s. The pipeline uses it only for its accuracy-vs-speed-up
curve, evaluated every few of 200 steps; every reported stage figure is exact.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset, Subset

from metaprune.pruning._checks import check_int

__all__ = ["calibration_loader", "recalibrate_bn"]


class _Stop(Exception):
    """Raised by the hook to cut a forward pass short once the BatchNorm's input is seen."""


def calibration_loader(dataset: Dataset, batches: int, batch_size: int, seed: int) -> DataLoader:
    """A fixed, seeded random subset of ``batches * batch_size`` samples, never reshuffled.

    Every recalibration with it sees the same images, so recalibrating the same weights
    twice gives the same statistics; a random (not leading) subset, because file datasets
    are often sorted by class.
    """
    check_int("batches", batches, minimum=0)
    check_int("batch_size", batch_size, minimum=1)
    n = len(dataset)  # type: ignore[arg-type]
    take = min(n, batches * batch_size)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:take]
    return DataLoader(Subset(dataset, sorted(order.tolist())), batch_size=batch_size, shuffle=False)


def recalibrate_bn(
    model: nn.Module,
    loader: Iterable,
    batches: int = 20,
    device: torch.device | str | None = None,
    *,
    exact: bool = True,
) -> int:
    """Reset and exactly re-estimate the running statistics of every BatchNorm in ``model``.

    Args:
        model: modified in place; its modules' train/eval modes are restored afterwards.
        loader: yields ``(inputs, labels)`` (or bare input) batches; usually training data.
            It is iterated once per BatchNorm, so it must yield the same samples each time
            (any unshuffled loader, e.g. :func:`calibration_loader`).
        batches: how many batches to use (``0`` does nothing).
        device: where to run; default the device of the model's first parameter.
        exact: exact whole-pass statistics, one pass per BatchNorm (see the module doc);
            ``False``: one training-mode pass with cumulative averaging (approximate).

    Returns:
        The number of batches used (fewer than ``batches`` if ``loader`` ran out).
    """
    check_int("batches", batches, minimum=0)
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not norms or batches == 0:
        return 0
    if device is None:
        first = next(itertools.chain(model.parameters(), model.buffers()), None)
        device = first.device if first is not None else "cpu"
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    used = 0
    try:
        model.eval()
        with torch.no_grad():
            if exact:
                for norm in _execution_order(model, norms, loader, device):
                    used = _recalibrate_one(model, norm, loader, batches, device)
            else:
                for m in norms:
                    m.reset_running_stats()
                    m.momentum = None  # cumulative average over the batches
                    m.train()
                for batch in itertools.islice(loader, batches):
                    model(_inputs(batch, device))
                    used += 1
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, mode in modes.items():
            m.training = mode
    return used


def _inputs(batch: object, device: torch.device | str) -> Tensor:
    inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
    return inputs.to(device)  # type: ignore[union-attr]


def _execution_order(
    model: nn.Module, norms: list[_BatchNorm], loader: Iterable, device: torch.device | str
) -> list[_BatchNorm]:
    """The BatchNorms in the order a forward pass reaches them (unreached ones last)."""
    seen: list[_BatchNorm] = []

    def hook(module: nn.Module, args: tuple) -> None:
        if module not in seen:
            seen.append(module)  # type: ignore[arg-type]

    handles = [m.register_forward_pre_hook(hook) for m in norms]
    try:
        for batch in itertools.islice(loader, 1):
            model(_inputs(batch, device)[:1])
    finally:
        for h in handles:
            h.remove()
    return seen + [m for m in norms if m not in seen]


def _recalibrate_one(
    model: nn.Module, norm: _BatchNorm, loader: Iterable, batches: int, device: torch.device | str
) -> int:
    """Exact statistics of ``norm``'s input over the loader's samples (earlier BNs final)."""
    total: Tensor | None = None
    squares: Tensor | None = None
    count = 0

    def hook(module: nn.Module, args: tuple) -> None:
        nonlocal total, squares, count
        x = args[0].detach().to(torch.float64)
        dims = [d for d in range(x.dim()) if d != 1]  # every dim but channels
        s, q = x.sum(dim=dims), (x * x).sum(dim=dims)
        total = s if total is None else total + s
        squares = q if squares is None else squares + q
        count += x.numel() // x.shape[1]
        raise _Stop

    used = 0
    handle = norm.register_forward_pre_hook(hook)
    try:
        for batch in itertools.islice(loader, batches):
            used += 1
            with contextlib.suppress(_Stop):
                model(_inputs(batch, device))
    finally:
        handle.remove()
    if total is None or squares is None or count < 2:
        return used  # never reached (or one value): keep its statistics
    mean = total / count
    var = (squares / count - mean * mean).clamp_min(0.0) * (count / (count - 1))
    norm.running_mean.copy_(mean.to(norm.running_mean.dtype))  # type: ignore[union-attr]
    norm.running_var.copy_(var.to(norm.running_var.dtype))  # type: ignore[union-attr]
    if norm.num_batches_tracked is not None:
        norm.num_batches_tracked.fill_(used)
    return used
