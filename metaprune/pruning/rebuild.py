"""The last check of a job: the spec it will save rebuilds the model it pruned.

A pruned checkpoint is weights plus a spec (architecture + channel plan); ``load`` builds
the spec and loads the weights. If the plan missed a resized tensor or an attribute, the
job would report success and leave a file nobody can load. :func:`check_rebuild` builds
the spec before the job reports anything: on the meta device first (every state-dict key
and shape, free), then on the CPU with the weights loaded, comparing outputs on the
job's example input.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metaprune.limits import Limits
from metaprune.models import ArchSpec

__all__ = ["PlanRebuildError", "check_rebuild"]


class PlanRebuildError(RuntimeError):
    """The spec of a pruned model does not rebuild it: a bug of metaprune, not of the input
    (the dry run of :func:`~metaprune.pruning.structure.check_prunable` should have caught it)."""


def check_rebuild(
    spec: ArchSpec, model: nn.Module, example: Tensor, limits: Limits | None = None
) -> float:
    """Build ``spec`` and check it is ``model``: same state-dict keys and shapes, and, with
    ``model``'s weights loaded, the same outputs on ``example``.

    Returns:
        The largest absolute difference between the two models' outputs (``0.0`` when
        bit-exact; the ops of a rebuilt model can run on differently laid-out memory).

    Raises:
        PlanRebuildError: a key or shape differs, or the outputs differ beyond float
            rounding (``1e-4`` relative to their scale).
    """
    name = repr(spec.name)
    state = model.state_dict()
    skeleton = spec.skeleton(limits) if limits is not None else spec.skeleton()
    want = {k: tuple(v.shape) for k, v in state.items()}
    got = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    if want != got:
        diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        k = diff[0]
        raise PlanRebuildError(
            f"the spec of the pruned {name} does not rebuild it: {k!r} is "
            f"{got.get(k, 'missing')} in the rebuild and {want.get(k, 'missing')} in the "
            f"pruned model ({len(diff)} tensor(s) differ); the checkpoint would not load"
        )
    device = next((t.device for t in state.values()), torch.device("cpu"))
    with torch.random.fork_rng(devices=[]):  # building initialises: keep the job's RNG
        rebuilt = spec.build(device, limits=None)
    rebuilt.load_state_dict(state)
    was_training = model.training
    model.eval()
    rebuilt.eval()
    try:
        with torch.no_grad():
            expected, found = model(example), rebuilt(example)
    finally:
        model.train(was_training)
    diff = float((expected - found).abs().max()) if expected.numel() else 0.0
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    if not diff <= 1e-4 * max(scale, 1.0):
        raise PlanRebuildError(
            f"the spec of the pruned {name} rebuilds a model whose outputs differ from the "
            f"pruned model's by {diff:.3g} (output scale {scale:.3g}); the checkpoint would "
            "not reproduce it"
        )
    return diff
