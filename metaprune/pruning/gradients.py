"""Gradients of the loss on a fixed, bounded set of training images, for data-aware criteria.

The ``taylor`` and ``hessian`` importances (:mod:`metaprune.pruning.importance`) score a
channel by what removing it would do to the loss, which needs gradients:

* ``taylor`` (first-order Taylor, Molchanov et al. 2019): the mean gradient of the
  cross-entropy over the calibration images, ``g``; a weight's score is ``|w * g|``.
* ``hessian`` (Optimal Brain Damage with the empirical Fisher as the Hessian diagonal):
  the mean of the **per-sample** squared gradients, ``F``; a weight's score is ``w^2 F``.
  Per-sample gradients come from ``torch.func`` (``vmap`` over ``grad``), in chunks whose
  gradients fit in :data:`MAX_CHUNK_FLOATS` floats. A model too large for a chunk of
  :data:`MICRO_BATCH` samples (over ~8 M parameters: a ResNet-50 got chunks of 2, and
  vmap over 2 images of a 9 M-parameter VGG-11 at 8x8 cost 30x a batched backward)
  gets the standard micro-batch estimate instead: the squared *summed* gradient of each
  micro-batch of :data:`MICRO_BATCH` images, ``(sum_i g_i)^2 = sum_i g_i^2 + sum_{i!=j}
  g_i g_j``, whose cross terms vanish in expectation when the per-sample gradients are
  uncorrelated around a zero mean (a trained model): one batched backward's cost, the
  taylor gradient with it for free (:func:`fisher_estimate` says which one a model gets).

Both are computed once, in eval mode (BatchNorm uses its running statistics, so each
image's gradient is independent of the others and the result does not depend on batch
composition), and stored in each parameter's ``.grad``. Torch-Pruning slices ``.grad``
together with the weight when it removes channels, so the scores of the surviving
channels stay valid through all the steps of a progressive prune at no further cost.

A job scores several criteria on copies of one model (the criterion search) and then
prunes with the winner: a :class:`GradientCache` passed as the calibration set gathers
each kind once, on the first copy that asks, and hands the same gradients to every
later copy with the same weights and buffers; asked for both kinds, it gathers them in one
per-sample pass (the mean is the mean of the per-sample gradients).

The images are a fixed, seeded subset of the **training** split
(``ImportanceOptions.calibration_images``, :func:`metaprune.pruning.bn.calibration_subset`).
Gradients are gathered once per prune, not at every step: on the unpruned network they
are the loss's real sensitivity, while after a step the running BatchNorm statistics of
later layers are stale until recalibrated, so fresh gradients would describe a damaged
network; and per step they would cost ``steps`` passes over the images.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "GRADIENT_KINDS",
    "MAX_CHUNK_FLOATS",
    "MICRO_BATCH",
    "GradientCache",
    "fisher_estimate",
    "gather_gradients",
]

GRADIENT_KINDS = ("mean", "fisher")
#: bound on the per-sample gradients held at once (4 bytes each: 256 MiB)
MAX_CHUNK_FLOATS = 1 << 26
#: images per micro-batch of the Fisher estimate of a model too large for per-sample chunks
MICRO_BATCH = 8


def fisher_estimate(model: nn.Module) -> str:
    """How the Fisher of ``model`` is estimated: ``"per-sample"`` (exact, ``vmap`` chunks
    of at least :data:`MICRO_BATCH` samples fit in :data:`MAX_CHUNK_FLOATS`) or
    ``"micro-batch"`` (squared gradients of micro-batches of :data:`MICRO_BATCH`)."""
    numel = sum(p.numel() for p in model.parameters())
    return "per-sample" if numel * MICRO_BATCH <= MAX_CHUNK_FLOATS else "micro-batch"


def gather_gradients(
    model: nn.Module, calibration: Iterable[tuple[Tensor, Tensor]], kind: str
) -> int:
    """Store in every parameter's ``.grad`` the ``kind`` of loss gradient on ``calibration``
    (batches of ``(images, labels)``, e.g. a fixed unshuffled ``DataLoader``, or a
    :class:`GradientCache`, which gathers once and reuses).

    ``kind`` is ``"mean"`` (mean gradient) or ``"fisher"`` (mean squared per-sample
    gradient). The model runs in eval mode and is left in the mode it was in; parameters
    that do not require gradients are included (and left as they were).

    Returns:
        The number of images used.
    """
    if kind not in GRADIENT_KINDS:
        raise ValueError(f"gradient kind must be one of {GRADIENT_KINDS} (found {kind!r})")
    if isinstance(calibration, GradientCache):
        return calibration.apply(model, kind)
    grads, seen = _gather(model, calibration, (kind,))
    for name, p in model.named_parameters():
        p.grad = grads[kind][name]
    return seen


class GradientCache:
    """A calibration set that gathers each kind of gradient once and reuses it.

    Pass it wherever :func:`gather_gradients` takes a calibration set. The first request
    gathers every kind in ``kinds`` (in one per-sample pass when ``"fisher"`` is among
    them) on that model; a later request on a model with the same parameter and buffer
    names, shapes and values (a copy) gets the stored tensors; a model with other weights
    or BatchNorm statistics is gathered afresh. ``on_batch`` is called after each batch (progress; it may raise).
    """

    def __init__(
        self,
        calibration: Iterable[tuple[Tensor, Tensor]],
        kinds: Sequence[str] = ("mean",),
        on_batch: Callable[[], None] | None = None,
    ) -> None:
        bad = [k for k in kinds if k not in GRADIENT_KINDS]
        if bad or not kinds:
            raise ValueError(f"gradient kinds must be among {GRADIENT_KINDS} (found {list(kinds)})")
        self.calibration, self.kinds, self.on_batch = calibration, tuple(kinds), on_batch
        self._key: Any = None
        self._grads: dict[str, dict[str, Tensor]] = {}
        self._seen = 0
        self.passes = 0  # how many times the images were gone through (for tests/reports)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return iter(self.calibration)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.calibration)  # type: ignore[arg-type]

    def apply(self, model: nn.Module, kind: str) -> int:
        """Set ``model``'s ``.grad`` to the ``kind`` gradients (gathered if needed)."""
        self.gather(model, kind)
        for name, p in model.named_parameters():
            p.grad = self._grads[kind][name]  # shared: pruning slices a new tensor from it
        return self._seen

    def gather(self, model: nn.Module, kind: str | None = None) -> None:
        """Gather the gradients of ``model`` now (every kind, and ``kind``), unless they
        are stored already; ``model``'s ``.grad`` is left alone. A job calls it before
        it makes copies of ``model``: the pass's float64 sums and a large model's
        activations then share memory with nothing else (ViT-B/16 at 224: a peak RSS of
        6.9 GB when gathered after four pruned copies, RESULTS.md, issue 18)."""
        key = _fingerprint(model)
        if key != self._key or (kind is not None and kind not in self._grads):
            kinds = self.kinds if kind is None or kind in self.kinds else (*self.kinds, kind)
            self._grads, self._seen = {}, 0  # the old ones are not needed during the pass
            self._grads, self._seen = _gather(model, self.calibration, kinds, self.on_batch)
            self._key = key
            self.passes += 1

    def gathered_for(self, model: nn.Module, kind: str) -> bool:
        """Whether the ``kind`` gradients of ``model`` (or of a copy of it) are stored."""
        return kind in self._grads and self._key == _fingerprint(model)

    def stored(self, kind: str) -> GradientCache:
        """A cache holding only the stored ``kind`` gradients (the same tensors), without
        images or callback: what a worker process pruning a copy of the same model needs
        (asked for another model or kind, it would fail: it has no images)."""
        light = GradientCache([], (kind,))
        light._key, light._seen, light._grads = self._key, self._seen, {kind: self._grads[kind]}
        return light

    def share_memory(self) -> None:
        """Move the stored gradients to shared memory (once, before worker processes read
        them: moved later, the process would hold both copies at once)."""
        for grads in self._grads.values():
            for g in grads.values():
                g.share_memory_()

    def zero_kinds(self, ignore: Collection[str] = ()) -> tuple[str, ...]:
        """The kinds gathered whose gradients are exactly zero for every parameter but
        those named in ``ignore`` (a classifier's own, which get a gradient whatever its
        weights): no loss gradient passed the classifier (zero-initialised, as torchvision's
        ViT is before training), so a criterion reading them scores every channel
        ``0 / 0`` and prunes nothing."""
        with torch.no_grad():
            return tuple(k for k, g in self._grads.items()
                         if not any(t.any() for n, t in g.items() if n not in ignore))  # fmt: skip

    def forget(self) -> None:
        """Drop the stored gradients (a later request gathers them again)."""
        self._key, self._grads, self._seen = None, {}, 0


def _fingerprint(model: nn.Module) -> tuple[Any, ...]:
    """Names, shapes and sums of the bits of the parameters and buffers: equal for copies
    of one model. Buffers count: the gradients are taken in eval mode, through
    BatchNorm's running statistics (a recalibrated copy of the same weights has other
    gradients). Integer sums are exact in any order, so the fingerprint does not depend
    on the number of threads (a float64 sum did: gathered on two threads, the gradients
    of a ViT-B/16 were gathered again by the first copy pruned on one; RESULTS.md, issue 18)."""
    with torch.no_grad():
        return tuple((n, tuple(t.shape), _bit_sum(t.detach()))
                     for n, t in (*model.named_parameters(), *model.named_buffers()))  # fmt: skip


_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bit_sum(t: Tensor) -> int:
    """The sum of ``t``'s elements read as integers of their width (int64, wrapping)."""
    if t.is_floating_point() and not t.is_complex():
        t = t.view(_BITS[t.element_size()])
    return int(t.to(torch.int64).sum()) if t.numel() else 0


def _gather(
    model: nn.Module,
    calibration: Iterable[tuple[Tensor, Tensor]],
    kinds: Sequence[str],
    on_batch: Callable[[], None] | None = None,
) -> tuple[dict[str, dict[str, Tensor]], int]:
    """The ``kinds`` of gradient of ``model`` on ``calibration``, by kind and parameter."""
    params = dict(model.named_parameters())
    device = next(iter(params.values())).device
    was_training = model.training
    flags = {name: p.requires_grad for name, p in params.items()}
    total = {
        kind: {name: torch.zeros_like(p, dtype=torch.float64) for name, p in params.items()}
        for kind in kinds
    }
    seen = 0
    sample_sums = _per_sample_sums if fisher_estimate(model) == "per-sample" else _micro_batch_sums
    model.eval()
    grad_mode = torch.is_grad_enabled()
    torch.set_grad_enabled(True)  # callers may be inside no_grad (a pruner's step)
    try:
        for p in params.values():
            p.requires_grad_(True)
        for x, y in calibration:
            x, y = x.to(device), y.to(device)
            if "fisher" in kinds:  # the mean comes with it (progress per chunk)
                pair = sample_sums(model, params, x, y, on_batch)
                sums = dict(zip(("mean", "fisher"), pair))
            else:
                sums = {"mean": _mean_sums(model, params, x, y)}
                if on_batch is not None:
                    on_batch()
            for kind in kinds:
                for name, g in sums[kind].items():
                    total[kind][name] += g.double()
            seen += len(y)
    finally:
        torch.set_grad_enabled(grad_mode)
        for name, p in params.items():
            p.requires_grad_(flags[name])
        model.train(was_training)
    if seen == 0:
        raise ValueError("gather_gradients: the calibration set yielded no images")
    # each float64 sum is dropped once converted (a ViT-B/16's are 0.7 GB per kind)
    grads = {
        kind: {name: (total[kind].pop(name) / seen).to(p.dtype) for name, p in params.items()}
        for kind in kinds
    }
    return grads, seen


def _mean_sums(
    model: nn.Module, params: dict[str, nn.Parameter], x: Tensor, y: Tensor
) -> dict[str, Tensor]:
    loss = F.cross_entropy(model(x), y, reduction="sum")
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(params.items(), grads)}


def _per_sample_sums(
    model: nn.Module, params: dict[str, nn.Parameter], x: Tensor, y: Tensor,
    on_chunk: Callable[[], None] | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Sums over the batch of the per-sample gradients and of their squares
    (``on_chunk`` after each chunk of samples: a few images of a large model)."""
    from torch.func import functional_call, grad, vmap

    detached = {n: p.detach() for n, p in params.items()}
    buffers = dict(model.named_buffers())

    def loss_one(ps: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        out = functional_call(model, (ps, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    numel = sum(p.numel() for p in params.values())
    chunk = max(1, MAX_CHUNK_FLOATS // max(numel, 1))  # the stacked output is chunk x numel
    sums = {n: torch.zeros_like(p) for n, p in detached.items()}
    squares = {n: torch.zeros_like(p) for n, p in detached.items()}
    try:
        per_sample_grad = vmap(grad(loss_one), in_dims=(None, 0, 0))
        for start in range(0, len(y), chunk):
            part = per_sample_grad(detached, x[start : start + chunk], y[start : start + chunk])
            for n, g in part.items():
                sums[n] += g.sum(0)
                squares[n] += g.pow(2).sum(0)
            if on_chunk is not None:
                on_chunk()
    except RuntimeError:  # an op vmap cannot batch (e.g. some in-place ops): one at a time
        sums = {n: torch.zeros_like(p) for n, p in detached.items()}
        squares = {n: torch.zeros_like(p) for n, p in detached.items()}
        for i in range(len(y)):
            for n, g in _mean_sums(model, params, x[i : i + 1], y[i : i + 1]).items():
                sums[n] += g
                squares[n] += g.pow(2)
            if on_chunk is not None:
                on_chunk()
    return sums, squares


def _micro_batch_sums(
    model: nn.Module, params: dict[str, nn.Parameter], x: Tensor, y: Tensor,
    on_chunk: Callable[[], None] | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Like :func:`_per_sample_sums`, the squares estimated: each micro-batch's summed
    gradient, squared (exact for the sums; see the module doc for the squares)."""
    sums = {n: torch.zeros_like(p) for n, p in params.items()}
    squares = {n: torch.zeros_like(p) for n, p in params.items()}
    for start in range(0, len(y), MICRO_BATCH):
        part = slice(start, start + MICRO_BATCH)
        for n, g in _mean_sums(model, params, x[part], y[part]).items():
            sums[n] += g
            squares[n] += g.pow(2)
        if on_chunk is not None:
            on_chunk()
    return sums, squares
