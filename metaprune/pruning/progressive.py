"""Progressive global structural pruning until a target is met (METHOD.md section 5).

Torch-Pruning's ``BasePruner`` ranks the channels of all coupled groups globally and
removes a growing fraction of them, step by step; :func:`progressive_prune` measures the
model after every step and stops at the first step that reaches the target. It is the
one core shared by the pruning pipeline and the metanetwork's training (which uses it
to select checkpoints), so it knows nothing about datasets or fine-tuning: accuracy is
whatever the caller's ``on_step`` callback measures.

Invariants: the classifier's outputs are never pruned (it is found automatically and
ignored unless ``ignored_layers`` is given); attention modules (``nn.MultiheadAttention``
and fused-qkv ones such as timm's) keep their number of heads and every head loses the
same dimensions (:mod:`metaprune.pruning.structure`); layers named in ``frozen`` (the
groups :func:`~metaprune.pruning.structure.check_prunable` found unprunable) are left
alone; every prunable layer keeps at least its floor (see
:class:`metaprune.pruning.PruningOptions` for why a floor is needed), and no step takes
more than :data:`STEP_CAP` times its share of the schedule from any layer (a group whose
scores tie would otherwise fall to its floor in one step, far past the target).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch_pruning as tp
from torch import Tensor, nn

from metaprune.pruning._checks import ConfigError, check_int, check_number
from metaprune.pruning.config import TARGET_KINDS, Target
from metaprune.pruning.importance import make_importance
from metaprune.pruning.structure import make_pruner, sync_heads
from metaprune.pruning.targets import find_classifier, measure_cost

__all__ = ["JUMP", "STEP_CAP", "StepInfo", "next_step", "progressive_prune"]

#: the share of the predicted distance to the target an adaptive step covers: short of
#: it, because the prediction assumes no layer reaches its floor (which slows pruning)
JUMP = 0.7
#: the longest adaptive step, as a share of the schedule: the ranking is refreshed at
#: least this often (unbounded jumps to 3x lost 13 points on a held-out digits VGG-11,
#: this bound 1.4: 93.6 % test against 95.0 % with every step, visiting 10 steps, not 29)
MAX_JUMP = 0.1
#: the most of a layer's initial width one step may remove, as a multiple of the step's
#: nominal share (``(step - previous) / steps``): a group whose scores are flat (a ViT's
#: residual stream at random init) otherwise falls to its floor in one step, far past the
#: target; a multiple above 1 leaves the global ranking free to prune a layer faster than
#: the average (see ``FlooredPruner.prune_step``)
STEP_CAP = 2.0


@dataclasses.dataclass(frozen=True)
class StepInfo:
    """The model after ``step`` pruning steps (step ``0`` is the unpruned model).

    ``macs_speedup`` is base MACs / MACs, ``param_ratio`` base params / params and
    ``latency_speedup`` base latency / latency (``None`` unless a latency function was
    given); ``reached`` says whether this step meets the target.
    """

    step: int
    macs: int
    params: int
    macs_speedup: float
    param_ratio: float
    latency_speedup: float | None = None
    reached: bool = False

    def value(self, kind: str) -> float:
        """The ratio a target of ``kind`` is compared with."""
        if kind == "latency":
            if self.latency_speedup is None:
                raise ValueError("latency_speedup was not measured (no latency_fn)")
            return self.latency_speedup
        return self.macs_speedup if kind == "macs" else self.param_ratio


def progressive_prune(
    model: nn.Module,
    example_inputs: Tensor | tuple[Tensor, ...],
    target: float | Target,
    *,
    importance: str | tp.importance.Importance = "group-l2",
    steps: int = 200,
    ignored_layers: Sequence[nn.Module] | None = None,
    round_to: int | None = None,
    max_layer_ratio: float = 0.75,
    min_channels: int = 2,
    p: int = 2,
    group_reduction: str = "mean",
    normalizer: str = "max",
    seed: int = 0,
    latency_fn: Callable[[nn.Module], float] | None = None,
    on_step: Callable[[StepInfo, nn.Module], None] | None = None,
    should_stop: Callable[[StepInfo], bool] | None = None,
    frozen: Sequence[str] = (),
    adaptive: bool = False,
) -> list[StepInfo]:
    """Prune ``model`` in place, step by step, until ``target`` is reached.

    Args:
        model: pruned in place (keep a copy if you need the original).
        example_inputs: inputs for tracing and for counting MACs (batch of one is enough).
        target: a MACs speed-up (a float) or a :class:`Target` (kind and value).
        importance: a registered name (``"group-l2"``, ``"random"``) or an instance.
        steps: step ``k`` removes the ``k / steps`` least important prunable channels.
        ignored_layers: layers whose outputs are never pruned (default: the classifier).
        round_to: keep widths multiples of this.
        max_layer_ratio, min_channels: the per-layer floor,
            ``max(min_channels, ceil((1 - max_layer_ratio) * original width))``.
        p, group_reduction, normalizer, seed: options of the importance by name.
        latency_fn: seconds per forward pass of a model; required for a latency target
            and, if given, measured at every step.
        on_step: called with the :class:`StepInfo` and the model after step 0 (before any
            pruning) and after every step; e.g. evaluates accuracy for a curve. It may
            raise (e.g. ``PruneCancelled``) to abort. It may change weights only in ways
            their version counters see (not through ``.data``): a group whose layers
            hold the same tensors is not scored again (``FlooredPruner``'s ``reuse_scores``).
        should_stop: an extra stop condition, checked after every step.
        frozen: paths of layers whose coupled groups are never pruned
            (:attr:`~metaprune.pruning.structure.PruningStructure.frozen_modules`).
        adaptive: visit only some steps of the schedule: from the speed-up measured so
            far, predict the step that meets the target and go :data:`JUMP` of the way
            there in one step (at most :data:`MAX_JUMP` of the schedule), then on one
            step at a time (see :func:`next_step`). The model still stops at a step of
            the ``steps`` grid, normally the first one that meets the target; each
            visited step costs a ranking and a count, so 3x on a VGG-11 takes 10
            instead of 29.

    Returns:
        One :class:`StepInfo` per step, step 0 first; the last one is the final model.
        Its ``reached`` is ``False`` if every layer hit its floor before the target.

    Raises:
        ConfigError: on invalid options (e.g. a latency target without ``latency_fn``).
    """
    target = target if isinstance(target, Target) else Target("macs", float(target))
    if target.kind not in TARGET_KINDS:  # pragma: no cover (Target validates)
        raise ConfigError(f"unknown target kind {target.kind!r}")
    if target.kind == "latency" and latency_fn is None:
        raise ConfigError("a latency target needs latency_fn (seconds per forward pass)")
    check_int("steps", steps, minimum=1)
    check_int("min_channels", min_channels, minimum=1)
    max_layer_ratio = check_number("max_layer_ratio", max_layer_ratio, 0.0, 1.0)
    if round_to is not None:
        check_int("round_to", round_to, minimum=1)
    if isinstance(importance, str):
        importance = make_importance(
            importance, p=p, group_reduction=group_reduction, normalizer=normalizer, seed=seed
        )
    if ignored_layers is None:
        ignored_layers = [find_classifier(model, example_inputs)]
    base = measure_cost(model, example_inputs)
    base_latency = latency_fn(model) if latency_fn is not None else None

    def measure(step: int) -> StepInfo:
        cost = measure_cost(model, example_inputs)
        latency = None
        if latency_fn is not None and base_latency is not None:
            latency = base_latency / latency_fn(model)
        info = StepInfo(
            step=step, macs=cost.macs, params=cost.params,
            macs_speedup=base.macs / max(cost.macs, 1), param_ratio=base.params / max(cost.params, 1),
            latency_speedup=latency,
        )  # fmt: skip
        return dataclasses.replace(info, reached=info.value(target.kind) >= target.value)

    info = measure(0)
    history = [info]
    if on_step is not None:
        on_step(info, model)
    if info.reached:
        return history
    pruner = make_pruner(
        model, example_inputs, importance, ignored_layers=ignored_layers, frozen=frozen,
        min_channels=min_channels, max_layer_ratio=max_layer_ratio,
        global_pruning=True, pruning_ratio=1.0, iterative_steps=steps, round_to=round_to,
    )  # fmt: skip
    step = 0
    while step < steps:
        previous = step
        step = next_step(step, info.value(target.kind), target.value, steps) if adaptive else step + 1
        pruner.current_step = step - 1  # prune_step goes to this step's cumulative ratio
        pruner.prune_step(max_loss=STEP_CAP * (step - previous) / steps)
        sync_heads(model)
        info = measure(step)
        history.append(info)
        if on_step is not None:
            on_step(info, model)
        if info.reached or pruner.saturated or (should_stop is not None and should_stop(info)):
            break
    return history


def next_step(step: int, value: float, target: float, steps: int) -> int:
    """The next step an adaptive schedule visits, after ``step`` reached ``value``.

    A width ratio ``r`` of every layer costs ``(1 - r) ** 2`` of the MACs (and parameters),
    so ``value`` after removing ``step / steps`` of the channels gives the speed-up per
    step; the step predicted to reach ``target`` is approached by :data:`JUMP` of the
    remaining distance, and never by less than one step. Before any measurement
    (``value <= 1``) that model alone predicts.
    """
    rate = (1.0 - value**-0.5) / step if step > 0 and value > 1.0 else 1.0 / steps
    predicted = (1.0 - target**-0.5) / max(rate, 1e-12)
    longest = max(1, round(MAX_JUMP * steps))
    return min(steps, step + min(longest, max(1, int(JUMP * (predicted - step)))))
