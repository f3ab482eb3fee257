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
as :func:`calibration_loader`'s. ``refine=k`` adds ``k`` eval-mode passes that each
re-estimate *every* BatchNorm at once, exactly over the whole set, from the inputs the
previous estimate gives: one refinement makes the statistics independent of batch
composition to first order at the cost of one pass, where exactness costs one pass per
BatchNorm (~26 passes on a ResNet-50: minutes per recalibration at 224x224). The
pipeline uses the single pass on a fixed subset everywhere: on held-out ``digits``
models it was within 2 test images of the exact estimate over the same 1,257 images,
while the number of images mattered more (256 instead of 1,257: up to 3 points lower;
``benchmarks/RESULTS.md``, issue 18).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset, Subset

from metaprune.pruning._checks import check_int

__all__ = ["calibration_loader", "calibration_subset", "recalibrate_bn"]


class _Stop(Exception):
    """Raised by the hook to cut a forward pass short once the BatchNorm's input is seen."""


def calibration_subset(
    dataset: Dataset, images: int, batch_size: int, seed: int, num_workers: int = 0
) -> DataLoader:
    """A fixed, seeded random subset of ``images`` samples (all if fewer), never reshuffled.

    Every recalibration with it sees the same images, so recalibrating the same weights
    twice gives the same statistics; a random (not leading) subset, because file datasets
    are often sorted by class. Also the job's fixed validation subsets.
    """
    check_int("images", images, minimum=0)
    check_int("batch_size", batch_size, minimum=1)
    n = len(dataset)  # type: ignore[arg-type]
    take = min(n, images)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:take]
    return DataLoader(
        Subset(dataset, sorted(order.tolist())), batch_size=max(1, min(batch_size, take)),
        shuffle=False, num_workers=num_workers, persistent_workers=num_workers > 0,
        multiprocessing_context="spawn" if num_workers > 0 else None,
    )  # fmt: skip


def calibration_loader(dataset: Dataset, batches: int, batch_size: int, seed: int) -> DataLoader:
    """:func:`calibration_subset` of ``batches * batch_size`` samples."""
    check_int("batches", batches, minimum=0)
    check_int("batch_size", batch_size, minimum=1)
    return calibration_subset(dataset, batches * batch_size, batch_size, seed)


def recalibrate_bn(
    model: nn.Module,
    loader: Iterable,
    batches: int = 20,
    device: torch.device | str | None = None,
    *,
    exact: bool = True,
    refine: int = 0,
    on_batch: Callable[[], None] | None = None,
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
        refine: with ``exact=False``, this many more eval-mode passes, each setting every
            BatchNorm to the exact statistics of its input under the previous estimate.
        on_batch: called after every forward pass of a batch (progress; may raise).

    Returns:
        The number of batches used (fewer than ``batches`` if ``loader`` ran out).
    """
    check_int("batches", batches, minimum=0)
    check_int("refine", refine, minimum=0)
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
                    used = _recalibrate_one(model, norm, loader, batches, device, on_batch)
            else:
                for m in norms:
                    m.reset_running_stats()
                    m.momentum = None  # cumulative average over the batches
                    m.train()
                for batch in itertools.islice(loader, batches):
                    model(_inputs(batch, device))
                    used += 1
                    if on_batch is not None:
                        on_batch()
                for m in norms:
                    m.eval()
                for _ in range(refine):
                    _refine_all(model, norms, loader, batches, device, on_batch)
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


class _Moments:
    """Float64 sums of a BatchNorm's input over every position of every sample."""

    def __init__(self) -> None:
        self.total: Tensor | None = None
        self.squares: Tensor | None = None
        self.count = 0

    def add(self, x: Tensor) -> None:
        x = x.detach().to(torch.float64)
        dims = [d for d in range(x.dim()) if d != 1]  # every dim but channels
        s, q = x.sum(dim=dims), (x * x).sum(dim=dims)
        self.total = s if self.total is None else self.total + s
        self.squares = q if self.squares is None else self.squares + q
        self.count += x.numel() // x.shape[1]

    def store(self, norm: _BatchNorm, batches: int) -> None:
        """Set ``norm``'s running mean and unbiased variance (unchanged if never reached)."""
        if self.total is None or self.squares is None or self.count < 2:
            return
        mean = self.total / self.count
        var = (self.squares / self.count - mean * mean).clamp_min(0.0)
        var = var * (self.count / (self.count - 1))
        norm.running_mean.copy_(mean.to(norm.running_mean.dtype))  # type: ignore[union-attr]
        norm.running_var.copy_(var.to(norm.running_var.dtype))  # type: ignore[union-attr]
        if norm.num_batches_tracked is not None:
            norm.num_batches_tracked.fill_(batches)


def _refine_all(
    model: nn.Module, norms: list[_BatchNorm], loader: Iterable, batches: int,
    device: torch.device | str, on_batch: Callable[[], None] | None,
) -> None:  # fmt: skip
    """One eval-mode pass; every BatchNorm set to the moments of its input in that pass."""
    moments = {m: _Moments() for m in norms}
    handles = [m.register_forward_pre_hook(lambda mod, args: moments[mod].add(args[0])) for m in norms]
    used = 0
    try:
        for batch in itertools.islice(loader, batches):
            model(_inputs(batch, device))
            used += 1
            if on_batch is not None:
                on_batch()
    finally:
        for h in handles:
            h.remove()
    for norm, m in moments.items():
        m.store(norm, used)


def _recalibrate_one(
    model: nn.Module, norm: _BatchNorm, loader: Iterable, batches: int,
    device: torch.device | str, on_batch: Callable[[], None] | None = None,
) -> int:  # fmt: skip
    """Exact statistics of ``norm``'s input over the loader's samples (earlier BNs final)."""
    moments = _Moments()

    def hook(module: nn.Module, args: tuple) -> None:
        moments.add(args[0])
        raise _Stop

    used = 0
    handle = norm.register_forward_pre_hook(hook)
    try:
        for batch in itertools.islice(loader, batches):
            used += 1
            with contextlib.suppress(_Stop):
                model(_inputs(batch, device))
            if on_batch is not None:
                on_batch()
    finally:
        handle.remove()
    moments.store(norm, used)  # never reached (or one value): its statistics are kept
    return used
