"""``PruneConfig``: everything one pruning job needs, as a typed, frozen, versioned dataclass.

The same object is used by the Python API, the CLI, YAML files and (later) the gRPC
service, which convert to and from it in one place: :meth:`PruneConfig.to_dict` gives
plain JSON data and :meth:`PruneConfig.from_dict` parses it back, rejecting unknown
keys and bad values with a message that names the key, the expectation and what was
found. Nested groups (target, fine-tune budgets, pruning schedule, latency timing) are
frozen dataclasses of their own, so ``dataclasses.replace`` works at every level.

Example::

    config = PruneConfig(method="group-l2", target=Target("macs", 3.0),
                         after_pruning=FinetuneBudget(epochs=20))
    assert PruneConfig.from_dict(config.to_dict()) == config
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Mapping
from typing import Any

from metaprune.errors import quote
from metaprune.limits import DEFAULT_LIMITS, Limits
from metaprune.pruning._checks import ConfigError, check_choice, check_int, check_number

__all__ = [
    "CONFIG_VERSION",
    "METHODS",
    "TARGET_KINDS",
    "ConfigError",
    "FinetuneBudget",
    "ImportanceOptions",
    "LatencyOptions",
    "MAX_LIST",
    "MAX_SEED",
    "PruneConfig",
    "PruningOptions",
    "SparseTraining",
    "Target",
]

#: 2: budgets in images (``bn_recalibration_images``, ``pruning.curve_points`` /
#: ``curve_images``, ``importance.search_images`` / ``search_steps``) and a latency time
#: budget; version-1 data is migrated by :meth:`PruneConfig.from_dict` (see ``_migrate``)
CONFIG_VERSION = 2
TARGET_KINDS = ("macs", "params", "latency")
METHODS = (
    "auto", "metanet", "group-l2", "group-l2-sl", "growing-reg", "group-l2-macs", "taylor", "hessian",
    "random",
)
SCHEDULES = ("cosine", "step", "constant")
NORMALIZERS = ("max", "mean", "sum", "lamp", "none")
#: ``"auto"``: chosen per job on validation (metaprune/pruning/normalizer.py)
IMPORTANCE_NORMALIZERS = ("auto", *NORMALIZERS)
REDUCTIONS = ("mean", "sum", "max", "first")
#: most entries of a list setting (``milestones``, ``sparse.auto_grid``: each grid value is a
#: whole sparse training, so the grid is a cost as much as a setting)
MAX_LIST = 16
#: seeds reach NumPy and scikit-learn, which take 32-bit seeds
MAX_SEED = 2**32 - 1
_DEVICE = re.compile(r"(cpu|cuda|mps)(:[0-9]{1,4})?")


@dataclasses.dataclass(frozen=True)
class Target:
    """What "small enough" means; pruning stops at the first step that reaches it.

    Args:
        kind: ``"macs"`` (base MACs / pruned MACs, as in the paper), ``"params"`` (base
            parameters / pruned parameters) or ``"latency"`` (base / pruned median
            latency, measured with :class:`LatencyOptions`).
        value: the ratio to reach, ``>= 1`` (``2.0`` = twice as fast / half the params).
    """

    kind: str = "macs"
    value: float = 2.0

    def __post_init__(self) -> None:
        check_choice("target.kind", self.kind, TARGET_KINDS)
        object.__setattr__(self, "value", check_number("target.value", self.value, minimum=1.0))


@dataclasses.dataclass(frozen=True)
class FinetuneBudget:
    """One fine-tuning stage: SGD with momentum, model selection on the validation split.

    Args:
        epochs: passes over the training split (``0`` skips the stage).
        lr: initial learning rate.
        schedule: ``"cosine"`` (per iteration, to zero), ``"step"`` (times ``gamma`` at
            each epoch in ``milestones``; none given = at 50 % and 75 % of the epochs)
            or ``"constant"``.
        momentum, weight_decay: SGD options.
        milestones: epochs at which the ``"step"`` schedule decays.
        gamma: the ``"step"`` schedule's decay factor.
        lr_alternatives: other initial learning rates to try beside ``lr``: each rate
            fine-tunes a copy for an equal share of ``epochs`` (``lr`` takes the remainder)
            and the best on validation is kept, ``lr`` on ties (:mod:`metaprune.pruning.finetune`).
            Empty for ``lr`` alone. ``PruneConfig``'s default after-pruning budget tries
            0.05 beside 0.01 (a budget given in part takes this class's defaults).
    """

    epochs: int = 10
    lr: float = 0.01
    schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    lr_alternatives: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        check_int("epochs", self.epochs, minimum=0)
        object.__setattr__(self, "lr", check_number("lr", self.lr, minimum=0.0))
        check_choice("schedule", self.schedule, SCHEDULES)
        object.__setattr__(self, "momentum", check_number("momentum", self.momentum, 0.0, 1.0))
        object.__setattr__(
            self, "weight_decay", check_number("weight_decay", self.weight_decay, minimum=0.0)
        )
        milestones = _check_list("milestones", self.milestones, "epochs")
        for m in milestones:
            check_int("milestones[]", m, minimum=1)
        object.__setattr__(self, "milestones", tuple(sorted(milestones)))
        object.__setattr__(self, "gamma", check_number("gamma", self.gamma, 0.0, 1.0))
        rates = tuple(
            check_number("lr_alternatives[]", r, minimum=0.0)
            for r in _check_list("lr_alternatives", self.lr_alternatives, "learning rates")
        )
        object.__setattr__(self, "lr_alternatives", rates)


@dataclasses.dataclass(frozen=True)
class ImportanceOptions:
    """Group magnitude importance (Torch-Pruning ``GroupMagnitudeImportance``).

    L2 norm (``p=2``) of each channel's weights, averaged over the coupled layers of a
    group, divided by a per-group normaliser so that groups of different scale can be
    ranked globally. The default normaliser is ``"auto"``, not the paper's ``"max"``: no
    fixed normaliser was best on every held-out ``digits`` family (``max`` was worse
    than random on ResNet-20s whose stage-1 residual stream has one dominant channel;
    ``sum`` beat ``max`` and ``mean`` by ~15 points on VGG-11 but lost ~10 to ``mean``
    on other ResNet-20s; ``benchmarks/RESULTS.md``), so ``"auto"`` prunes a copy with
    each of ``sum``, ``mean``, ``max`` and keeps the best on the validation split
    (:mod:`metaprune.pruning.normalizer`). A fixed name skips that search; ``"lamp"``
    (Torch-Pruning's layer-adaptive normaliser) can be named but is not searched.

    The search is a cheap proxy of the real prune: each candidate prunes a copy to the
    target in ``search_steps`` progressive steps (``None``: ``pruning.steps``, the real
    schedule), its BatchNorm statistics are re-estimated in one pass over
    ``search_images`` training images, and it is scored on ``search_images`` validation
    images (fixed seeded subsets), or on the whole validation split (and as many training
    images) when it has at most 512 images: on 64 images two candidates 8 points apart
    are within one standard error of each other (issue 20). Fewer steps overshoot the target by up to a step, and
    candidates compared at different speed-ups are not compared fairly: with 20 steps the
    proxy disagreed with the full search at 3 of 4 targets on a held-out ResNet-20
    (candidates landed at 1.58-1.74x for a 1.5x target; ``benchmarks/RESULTS.md``).
    The same proxy scores ``reg="auto"``'s trials and the criterion choice of
    ``method="auto"`` (:mod:`metaprune.pruning.choose`).

    ``adaptive_search`` (off by default): with ``search_steps`` left at ``None``, the
    candidates prune adaptively (a few steps of the schedule) and the best two again on
    every step before the final choice. Cheaper (ViT-B/16 at 224: 12.9 against 13.9
    wall units of a batch-64 forward), but on held-out ``digits`` models it changed the
    choice in 3 of 8 jobs, 1.25 test points worse on average and 8.6 at worst
    (``benchmarks/RESULTS.md``, issue 18), so the default searches on every step.

    ``search_workers``: how many candidates of the search prune at once, each in its own
    spawned worker process (the job's process is one of them). ``1`` (default) is one at
    a time; ``0`` is the job's torch threads at a large input (3x224x224; below it a
    worker's start-up, ~4 CPU s, outweighs a search's steps); ``N`` is N. Opt-in because,
    measured side by side on an idle machine (benchmarks/RESULTS.md, issue 18), two at
    once cut a ViT-B/16 job at 224 from 18.2 to 15.4 batch-64 forwards but raised the
    job's memory with its worker from 5.0 to 7.5 GB (PSS), and made ResNet-50 slower (10.6
    -> 13.6: its scoring forwards share the cores with the worker); on a loaded machine
    it is slower everywhere. The result is the same whatever the number: every copy is
    pruned by the same function on one thread and scored in the job's process in
    candidate order (:mod:`metaprune.pruning.search_pool`). Candidates pruned on Python
    threads were slower than one after the other (Torch-Pruning's steps hold the GIL).

    ``calibration_images``: how many training images (a fixed seeded subset, never
    validation or test) the data-aware criteria ``taylor`` and ``hessian`` compute their
    loss gradients on, once per job (one per-sample pass serves both, every candidate
    and the final prune). 64 by default: an image's per-sample gradient costs about three
    forward passes, so 256 images alone were ~12 batch-64 forwards of a ResNet-50 at 224.
    """

    p: int = 2
    group_reduction: str = "mean"
    normalizer: str = "auto"
    search_steps: int | None = None
    search_images: int = 64
    calibration_images: int = 64
    adaptive_search: bool = False
    search_workers: int = 1

    def __post_init__(self) -> None:
        check_int("importance.p", self.p, minimum=1)
        check_int("importance.calibration_images", self.calibration_images, minimum=1)
        check_choice("importance.group_reduction", self.group_reduction, REDUCTIONS)
        check_choice("importance.normalizer", self.normalizer, IMPORTANCE_NORMALIZERS)
        if self.search_steps is not None:
            check_int("importance.search_steps", self.search_steps, minimum=1)
        check_int("importance.search_images", self.search_images, minimum=1)
        _check_bool("importance.adaptive_search", self.adaptive_search)
        check_int("importance.search_workers", self.search_workers, minimum=0)


@dataclasses.dataclass(frozen=True)
class PruningOptions:
    """The progressive global pruning schedule and its per-layer floor.

    Args:
        steps: resolution of the schedule: step ``k`` removes the globally least
            important ``k / steps`` of all prunable channels, so pruning everything
            prunable takes ``steps`` steps; the target is normally met long before. Every
            step costs an importance estimate over all weights and a MACs count (on the
            meta device, ~0.15 s at 224x224). The default is 50 (2 % of the channels per
            step), the resolution the quality benchmark measured (40 steps).
        round_to: keep every pruned layer's width a multiple of this (``None`` = off).
        min_channels, max_layer_ratio: the layer-collapse guard. Every prunable layer keeps
            at least ``max(min_channels, ceil((1 - max_layer_ratio) * original width))``
            channels (never more than it had). Global ranking with the max normaliser can
            otherwise shrink a whole stage to 1-5 channels (seen on ``digits`` ResNet-20
            at 8x), after which the result depends on luck rather than on the method.
            The default keeps a quarter of each layer: a balanced 8x MACs reduction keeps
            about 1/sqrt(8) = 35 % of every layer, so the floor does not bind on sane
            solutions, yet speed-ups up to 1/0.25^2 = 16x stay reachable; two channels
            at least, because a single channel is a bottleneck nothing recovers from.
        curve_points: the accuracy-vs-speed-up curve has validation accuracy at step 0
            and at the chosen step (both measured anyway) and at most this many points in
            between: the first steps to pass ``target ** (i / (curve_points + 1))``, so its
            cost does not grow with ``steps``. ``0`` evaluates the end points only.
        curve_images: each intermediate point re-estimates BatchNorm statistics on (a copy
            of the model with) this many training images and is scored on this many
            validation images (fixed seeded subsets).
        curve_bn_recalibration: recalibrate BatchNorm statistics (on a copy) before each
            curve evaluation; without it accuracy right after pruning is near chance.
    """

    steps: int = 50
    round_to: int | None = None
    min_channels: int = 2
    max_layer_ratio: float = 0.75
    curve_points: int = 3
    curve_images: int = 32
    curve_bn_recalibration: bool = True

    def __post_init__(self) -> None:
        check_int("pruning.steps", self.steps, minimum=1)
        if self.round_to is not None:
            check_int("pruning.round_to", self.round_to, minimum=1)
        check_int("pruning.min_channels", self.min_channels, minimum=1)
        ratio = check_number("pruning.max_layer_ratio", self.max_layer_ratio, 0.0, 1.0)
        if ratio >= 1.0:
            raise ConfigError(
                f"pruning.max_layer_ratio must be < 1 (found {ratio}); 1 would let a layer vanish"
            )
        object.__setattr__(self, "max_layer_ratio", ratio)
        check_int("pruning.curve_points", self.curve_points, minimum=0)
        check_int("pruning.curve_images", self.curve_images, minimum=1)
        _check_bool("pruning.curve_bn_recalibration", self.curve_bn_recalibration)


@dataclasses.dataclass(frozen=True)
class SparseTraining:
    """DepGraph-style group sparsity for ``group-l2-sl`` (Torch-Pruning ``GroupNormPruner``).

    ``reg`` scales the group-norm gradient added after every backward pass. DepGraph's
    5e-4 is meant for hundreds of epochs and barely acts in 10; 0.1 works on ``digits``
    ResNet-20s while 0.2 destroys them, so no single number is right for every model.
    The number of epochs is the ``before_pruning`` budget.

    Args:
        reg: a number ``>= 0``, or ``"auto"`` (default): chosen per job by the accuracy
            it delivers at the target (:mod:`metaprune.pruning.sparse`): a prior strength
            of ``auto_grid`` (its middle; one step stronger from ~2.8x) trains the budget,
            its grid neighbours (see ``search_fraction``) train an epoch each from the same
            weights, and one of those
            checkpoints (or the model as given) replaces the prior's only when it scores
            better beyond noise on validation after pruning a copy to the target (BN
            recalibrated). The whole search fits in ``before_pruning.epochs`` (the
            report's ``epochs_trained``). Only the training and validation splits are used.
        search_fraction: at most this fraction of the ``before_pruning`` iterations trains
            the challengers (an epoch each; 0.2: two in 10 epochs, none below 5). ``None``
            (default): 0.2 from ~2.8x, where the prior is the stronger strength and a weaker
            challenger is its fallback, and 0 below, where the prior trained alone was
            better (issue 20, eighth pass in benchmarks/RESULTS.md: validation of a fitting
            set, then held-out models).
        step_down: ``0`` (default) or a number of standard errors ``z``: the prior's run
            is scored by the proxy after every epoch, and from epoch 2 on, the first time
            its score falls more than ``z`` standard errors below its best so far, its
            strength steps down to the next weaker one of ``auto_grid`` for the rest of
            the same schedule (once). Costs a proxy per epoch, no training.
        auto_grid: candidate values, tried largest first.
        growing_ceiling: ``method="growing-reg"`` (:mod:`metaprune.pruning.growing_reg`):
            the largest per-channel L2 coefficient on the channels a dry prune to the
            target removes (kept channels get none). Capped at ``0.5 / before_pruning.lr``
            (SGD shrinks a weight by ``lr`` times it per step; the report says when it
            was capped). 10 (``lr * c = 0.1`` at the default rate) was best of 1 and 10 on
            a fitting set's validation (issue 20, session 10).
        growing_ramp: the share of the ``before_pruning`` iterations over which that
            coefficient grows linearly from 0 to ``growing_ceiling``; it is then held
            (0.25 and 0.5 were within noise on the fitting set; 0.25 led).
    """

    reg: float | str = "auto"
    search_fraction: float | None = None
    step_down: float = 0.0
    auto_grid: tuple[float, ...] = (0.3, 0.1, 0.03, 0.01, 0.003, 0.001)
    growing_ceiling: float = 10.0
    growing_ramp: float = 0.25

    def __post_init__(self) -> None:
        if self.reg != "auto":
            if isinstance(self.reg, str):
                raise ConfigError(
                    f"sparse.reg must be a number >= 0 or 'auto' (found {self.reg!r})"
                )
            object.__setattr__(self, "reg", check_number("sparse.reg", self.reg, minimum=0.0))
        if self.search_fraction is not None:
            object.__setattr__(
                self,
                "search_fraction",
                check_number("sparse.search_fraction", self.search_fraction, 0.0, 1.0),
            )
        object.__setattr__(
            self, "step_down", check_number("sparse.step_down", self.step_down, minimum=0.0)
        )
        grid = tuple(
            check_number("sparse.auto_grid[]", g, minimum=0.0)
            for g in _check_list("sparse.auto_grid", self.auto_grid, "numbers")
        )
        if not grid:
            raise ConfigError("sparse.auto_grid must not be empty")
        object.__setattr__(self, "auto_grid", tuple(sorted(set(grid), reverse=True)))
        object.__setattr__(self, "growing_ceiling",
                           check_number("sparse.growing_ceiling", self.growing_ceiling, minimum=0.0))
        object.__setattr__(self, "growing_ramp",
                           check_number("sparse.growing_ramp", self.growing_ramp, 0.0, 1.0))


@dataclasses.dataclass(frozen=True)
class LatencyOptions:
    """How latency is measured: the median of timed forward passes of one batch.

    After ``warmup`` untimed passes, passes are timed until ``repeats`` were timed or
    ``seconds`` were spent timing, whichever comes first (at least one). One thread by
    default: on a shared machine two threads make timings swing widely. ``batch_size``
    ``None`` (default) suits the input size: 64 images at 32x32 or below, fewer above
    (one at 224x224), see :func:`metaprune.pruning.latency.auto_batch_size`.
    """

    batch_size: int | None = None
    threads: int = 1
    repeats: int = 10
    warmup: int = 1
    seconds: float = 2.0

    def __post_init__(self) -> None:
        if self.batch_size is not None:
            check_int("latency.batch_size", self.batch_size, minimum=1)
        check_int("latency.threads", self.threads, minimum=1)
        check_int("latency.repeats", self.repeats, minimum=1)
        check_int("latency.warmup", self.warmup, minimum=0)
        seconds = check_number("latency.seconds", self.seconds, minimum=0.0)
        if seconds <= 0:
            raise ConfigError(f"latency.seconds must be > 0 (found {seconds})")
        object.__setattr__(self, "seconds", seconds)


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """One pruning job (see :func:`metaprune.pruning.prune` for the stages).

    Args:
        version: config format version (``2``; :meth:`from_dict` migrates ``1``).
        method: ``"auto"`` (default: a documented rule picks the method the evidence
            supports, see :mod:`metaprune.pruning.auto`), ``"metanet"`` (metanetwork
            transform first), ``"group-l2"`` (no metanetwork), ``"group-l2-sl"`` (sparse
            training first) or ``"random"``.
        target: the ratio to reach.
        metanet: metanetwork name or path, used by ``method="metanet"`` (unless a
            metanetwork object is passed to :func:`~metaprune.pruning.prune`); ``None`` or
            ``"auto"`` chooses among the registered ones by the model's graph
            (``metanet.choice``; the report's ``stages.before_pruning.metanet`` says which).
        importance, pruning: importance criterion and progressive schedule.
        before_pruning: the fine-tune before pruning; every method gets the same budget
            (after the metanetwork for ``metanet``, sparse training for ``group-l2-sl``,
            a plain fine-tune for the others), so methods are compared fairly.
        after_pruning: the fine-tune that recovers accuracy after pruning (by default 20
            epochs choosing between rates 0.01 and 0.05 on validation, 10 epochs each).
        sparse: options of ``group-l2-sl``'s sparse training.
        bn_recalibration_images: training images (a fixed seeded subset) used to
            re-estimate BatchNorm statistics right after pruning and after the
            preparation (``0`` disables; on by default because accuracy right after
            pruning is near chance without it). It bounds the cost in images, whatever
            the batch size; see :mod:`metaprune.pruning.bn` for the estimate.
        batch_size: training and evaluation batch size.
        seed: seeds data order, initialisation of random choices and the random method.
        data_seed: seed of a built-in dataset's train / validation / test split; kept apart
            from ``seed`` because it must match the split the model was trained on, or
            "test" would contain training images.
        device: torch device string for training, evaluation and latency.
        data_workers: DataLoader worker processes (spawned, never forked) for the
            training, validation and test passes; ``None`` (default): none for in-memory
            datasets, two for file datasets (ImageFolder, CIFAR, SVHN); always none
            inside an executor worker process (a daemon, which may not have children).
        latency: latency measurement options.
        max_wall_seconds: wall-clock budget of the whole job (``None``: only the
            ``Limits.max_wall_seconds`` bound); checked between steps, like cancellation.

    Upper bounds (epochs, steps, batch sizes, latency settings, the wall-clock budget) are
    not fixed here but checked against a :class:`~metaprune.limits.Limits` by
    :meth:`check_limits`, which :func:`~metaprune.pruning.prune` calls first.
    """

    version: int = CONFIG_VERSION
    method: str = "auto"
    target: Target = dataclasses.field(default_factory=Target)
    metanet: str | None = None
    importance: ImportanceOptions = dataclasses.field(default_factory=ImportanceOptions)
    pruning: PruningOptions = dataclasses.field(default_factory=PruningOptions)
    before_pruning: FinetuneBudget = dataclasses.field(default_factory=FinetuneBudget)
    after_pruning: FinetuneBudget = dataclasses.field(
        default_factory=lambda: FinetuneBudget(epochs=20, lr_alternatives=(0.05,))
    )
    sparse: SparseTraining = dataclasses.field(default_factory=SparseTraining)
    bn_recalibration_images: int = 1024
    batch_size: int = 128
    seed: int = 0
    data_seed: int = 0
    device: str = "cpu"
    data_workers: int | None = None
    latency: LatencyOptions = dataclasses.field(default_factory=LatencyOptions)
    max_wall_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.version != CONFIG_VERSION:
            raise ConfigError(
                f"PruneConfig version must be {CONFIG_VERSION} (found {quote(self.version)}); "
                "it was written by an incompatible metaprune version"
            )
        check_choice("method", self.method, METHODS)
        for name, cls in _nested_types().items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(
                    f"{name} must be a {cls.__name__} (found {type(getattr(self, name)).__name__})"
                )
        if self.metanet is not None and (not isinstance(self.metanet, str) or not self.metanet):
            raise ConfigError(
                f"metanet must be a non-empty string or None (found {quote(self.metanet)})"
            )
        check_int("bn_recalibration_images", self.bn_recalibration_images, minimum=0)
        check_int("batch_size", self.batch_size, minimum=1)
        check_int("seed", self.seed, minimum=0, maximum=MAX_SEED)
        check_int("data_seed", self.data_seed, minimum=0, maximum=MAX_SEED)
        if self.data_workers is not None:
            check_int("data_workers", self.data_workers, minimum=0)
        if not isinstance(self.device, str):
            raise ConfigError(f"device must be a string such as 'cpu' (found {quote(self.device)})")
        if not _DEVICE.fullmatch(self.device):  # torch's syntax, without importing torch
            raise ConfigError(
                f"device {quote(self.device)} cannot run a job (expected 'cpu', 'cuda[:N]' or 'mps')"
            )
        if self.max_wall_seconds is not None:
            object.__setattr__(
                self,
                "max_wall_seconds",
                check_number("max_wall_seconds", self.max_wall_seconds, minimum=0.0),
            )
            if self.max_wall_seconds <= 0:
                raise ConfigError(f"max_wall_seconds must be > 0 (found {self.max_wall_seconds})")

    def check_limits(self, limits: Limits = DEFAULT_LIMITS) -> None:
        """Check every job setting against ``limits`` (the upper bounds; ``__post_init__``
        checks the lower ones). :func:`~metaprune.pruning.prune` calls this first.

        Raises:
            LimitExceededError: naming the setting, the limit, its value and what was asked.
        """
        if not isinstance(limits, Limits):
            raise ConfigError(f"limits must be a Limits (found {type(limits).__name__})")
        checks = [
            ("max_epochs", "before_pruning.epochs", self.before_pruning.epochs),
            ("max_epochs", "after_pruning.epochs", self.after_pruning.epochs),
            ("max_steps", "pruning.steps", self.pruning.steps),
            ("max_batch_size", "batch_size", self.batch_size),
            ("max_images", "bn_recalibration_images", self.bn_recalibration_images),
            ("max_images", "pruning.curve_images", self.pruning.curve_images),
            ("max_steps", "pruning.curve_points", self.pruning.curve_points),
            ("max_images", "importance.search_images", self.importance.search_images),
            ("max_steps", "importance.search_steps", self.importance.search_steps or 1),
            ("max_images", "importance.calibration_images", self.importance.calibration_images),
            ("max_batch_size", "latency.batch_size", self.latency.batch_size or 1),
            ("max_threads", "latency.threads", self.latency.threads),
            ("max_threads", "data_workers", self.data_workers or 0),
            ("max_threads", "importance.search_workers", self.importance.search_workers),
            ("max_repeats", "latency.repeats", self.latency.repeats),
            ("max_repeats", "latency.warmup", self.latency.warmup),
            ("max_latency_seconds", "latency.seconds", self.latency.seconds),
        ]
        for milestone in self.before_pruning.milestones + self.after_pruning.milestones:
            checks.append(("max_epochs", "milestones[]", milestone))
        if self.max_wall_seconds is not None:
            checks.append(("max_wall_seconds", "max_wall_seconds", self.max_wall_seconds))
        for limit, setting, value in checks:
            limits.check(limit, value, f"PruneConfig.{setting}")

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON/YAML data (nested dicts, lists, numbers, strings)."""
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruneConfig:
        """Parse :meth:`to_dict` output; missing keys take their defaults.

        Version-1 data (``version: 1``, or any of its retired keys) is migrated first:
        ``bn_recalibration_batches`` becomes ``bn_recalibration_images`` (batches times
        ``batch_size``, the images it used), and ``pruning.curve_every`` is dropped (the
        curve now has a bounded number of points, ``pruning.curve_points``).

        Raises:
            ConfigError: on unknown keys (named with their full path), wrong types or
                invalid values.
        """
        return _from_dict(cls, _migrate(data), "")


def _migrate(data: Any) -> Any:
    """Version-1 data as version 2 (anything else is returned as is, for ``_from_dict``)."""
    if not isinstance(data, Mapping):
        return data
    pruning = data.get("pruning")
    retired = "bn_recalibration_batches" in data or (
        isinstance(pruning, Mapping) and "curve_every" in pruning
    )
    if data.get("version") != 1 and not (retired and "version" not in data):
        return data
    out = dict(data)
    out["version"] = CONFIG_VERSION
    if isinstance(pruning, Mapping):
        out["pruning"] = {k: v for k, v in pruning.items() if k != "curve_every"}
    sparse = data.get("sparse")
    if isinstance(sparse, Mapping):  # reg="auto" no longer judges pre-pruning accuracy
        out["sparse"] = {k: v for k, v in sparse.items() if k != "auto_tolerance"}
    if "bn_recalibration_batches" in out:
        batches = out.pop("bn_recalibration_batches")
        if "bn_recalibration_images" in out:
            raise ConfigError(
                "give bn_recalibration_images or the retired bn_recalibration_batches, not both"
            )
        check_int("bn_recalibration_batches", batches, minimum=0)
        batch_size = out.get("batch_size", PruneConfig.batch_size)
        check_int("batch_size", batch_size, minimum=1)
        out["bn_recalibration_images"] = batches * batch_size
    return out


def _check_list(name: str, values: object, what: str) -> tuple:
    """``values`` as a tuple, if it is a list or tuple of at most ``MAX_LIST`` entries."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise ConfigError(f"{name} must be a list of {what} (found {quote(values)})")
    if len(values) > MAX_LIST:
        raise ConfigError(f"{name} has {len(values):,} entries (at most {MAX_LIST} are accepted)")
    return tuple(values)


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false (found {quote(value)})")


def _nested_types() -> dict[str, type]:
    hints = typing.get_type_hints(PruneConfig)
    return {k: v for k, v in hints.items() if dataclasses.is_dataclass(v)}


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _from_dict(cls: type, data: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or cls.__name__
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping (found {type(data).__name__})")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(k)[:1000] for k in data if k not in fields)
    if unknown:
        listed = ", ".join(quote(prefix + k, 100) for k in unknown[:8])
        more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
        raise ConfigError(
            f"{where}: unknown key(s) {listed}{more} (expected a subset of {sorted(fields)})"
        )
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _from_dict(hint, value, f"{prefix}{key}.")
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except ConfigError as err:
        if prefix and not str(err).startswith(prefix.rstrip(".")):
            raise ConfigError(f"{prefix.rstrip('.')}: {err}") from None
        raise
