"""``prune``: the product's main job, from a trained model to a smaller, fine-tuned one.

Stages (METHOD.md section 5), each timed and reported to the progress callback:

0. ``checks``: the model, the data, the classifier, the target's reachability and a
   structural dry run, refused before any work (one event per check).
1. ``evaluate_base``: validation/test accuracy, MACs, parameters, latency of the input.
2. ``before_pruning``: the method's preparation under the shared budget -- metanetwork
   transform + fine-tune (``metanet``), sparse training (``group-l2-sl``) or a plain
   fine-tune (``group-l2``, ``random``).
3. ``prune``: progressive global structural pruning until the target is met, recording
   validation accuracy against speed-up (the curve: both ends and at most
   ``pruning.curve_points`` points between). With the default ``normalizer="auto"`` a
   ``criterion_search`` first prunes copies with each group-L2 normaliser (and, for a
   baseline chosen by a rule, ``method_choice.data_aware``: ``method="auto"``, or
   ``metanet`` auto with no winning record, group-L2 per MAC and the data-aware
   ``taylor`` and ``hessian``; also for a method that asks, ``Method.data_aware``:
   ``metanet``) and
   keeps the best by validation accuracy at the target on a cheap proxy
   (:mod:`metaprune.pruning.choose`); each copy is pruned on the job's own schedule, so
   the winner's copy *is* the job's prune (not pruned again) and ``prune`` only evaluates
   its curve. A method may hand over a ``reference`` model beside the prepared one
   (``metanet`` at 0 epochs: the input beside its rewrite); the search then runs on both
   and the reference is pruned unless the prepared model's best is higher beyond noise
   (``stages.prune.reference``). Pruning counts MACs on the meta device and gathers
   taylor / hessian gradients once per model.
   ``method="auto"`` is resolved once the model (and its family) is known
   (:mod:`metaprune.pruning.auto`, with the advisors registered by packages above);
   the report says which method and criterion ran and why.
4. ``recalibrate_bn``: BatchNorm statistics re-estimated on a fixed training subset.
5. ``after_pruning``: fine-tune, selecting the best epoch on validation.
6. ``evaluate``: the same measurements as stage 1; the test split is used here (and for
   the base model) only, never for a choice.

Every budget is counted in images or seconds (:class:`PruneConfig`), so a job's cost
follows its work, and every stage reports a :class:`ProgressEvent` after each unit of
work (a batch of at most 2**22 input values, a timed pass, a pruning step); the report's
``work`` says what the budgets amounted to. At a large input (3x224x224) the defaults
shrink to what the job needs there: an image budget left at its default holds at most
2**22 input values' worth of work (1,024 recalibration images become 128, 64 gradient
images 32), the curve has one point between its ends, and the criterion search scores
every candidate on half its images and the best two on the other half as well; the
winner's copy is the job's prune. ``importance.adaptive_search`` (opt-in) makes the first
round cheaper: each candidate prunes on a few steps of the schedule, the best two again
on every step. ``importance.search_workers`` (opt-in) prunes the candidates' copies
several at once (the job's process and spawned workers,
:mod:`metaprune.pruning.search_pool`), with the same result as one at a time.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from metaprune import checkpoint
from metaprune.data import DatasetSplits, check_dataset_kwargs, get_dataset, make_loaders
from metaprune.errors import InvalidInputError, describe_exception
from metaprune.limits import DEFAULT_LIMITS, Limits, check_spec
from metaprune.models import ArchSpec
from metaprune.pruning._checks import ConfigError
from metaprune.pruning.auto import resolve_method
from metaprune.pruning.bn import calibration_subset, recalibrate_bn
from metaprune.pruning.budget import BudgetToken
from metaprune.pruning.choose import (
    Candidate,
    choose_criterion,
    criterion_candidates,
    proxy_images,
    within_noise,
)
from metaprune.pruning.config import ImportanceOptions, PruneConfig, PruningOptions
from metaprune.pruning.finetune import evaluate, finetune
from metaprune.pruning.gradients import GradientCache, fisher_estimate
from metaprune.pruning.importance import COST_AWARE, DATA_AWARE, GRADIENT_KIND
from metaprune.pruning.latency import LatencyMeasurement, auto_batch_size, time_forward
from metaprune.pruning.methods import MethodContext, get_method
from metaprune.pruning.normalizer import NORMALIZER_CANDIDATES
from metaprune.pruning.progress import CancelToken, ProgressCallback, StageMeter
from metaprune.pruning.progressive import StepInfo
from metaprune.pruning.reachable import check_reachable
from metaprune.pruning.rebuild import check_rebuild
from metaprune.pruning.report import REPORT_VERSION, plot_curve, write_report
from metaprune.pruning.search_pool import PruneTask, SearchPool
from metaprune.pruning.search_pool import prune_copy as prune_pruned_copy
from metaprune.pruning.structure import check_prunable
from metaprune.pruning.targets import find_classifier, layer_widths, measure_cost
from metaprune.version import __version__

__all__ = ["PruneResult", "prune"]


@dataclasses.dataclass
class PruneResult:
    """The outcome of :func:`prune`.

    Attributes:
        model: the pruned, fine-tuned model (eval mode, on the config's device).
        spec: its architecture with the channel plan (``None`` if the input model came
            without a spec; then :meth:`save` cannot write a checkpoint).
        report: plain JSON data, see :mod:`metaprune.pruning.report`.
        curve: accuracy vs speed-up along the pruning steps (also in ``report``).
        config: the config the job ran with.
    """

    model: nn.Module
    spec: ArchSpec | None
    report: dict[str, Any]
    curve: list[dict[str, Any]]
    config: PruneConfig

    def save(self, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
        """Write ``model.safetensors``, ``report.json`` and ``curve.png`` into ``out_dir``.

        Raises:
            ValueError: if there is no spec (pass ``spec=`` to :func:`prune`).
        """
        if self.spec is None:
            raise ValueError(
                "PruneResult has no architecture spec, so no checkpoint can be written; "
                "prune a checkpoint file or pass spec= to prune()"
            )
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        meta = {"method": self.config.method, "dataset": str(self.report.get("dataset"))}
        if self.report.get("input_shape"):  # what `metaprune export` traces with by default
            meta["input_shape"] = json.dumps(self.report["input_shape"])
        paths = {
            "checkpoint": checkpoint.save(self.model, self.spec, out / "model.safetensors", metadata=meta),
            "report": write_report(self.report, out / "report.json"),
            "plot": plot_curve(
                self.curve, out / "curve.png", chosen_step=self.report.get("chosen_step"),
                target_speedup=self.config.target.value if self.config.target.kind == "macs" else None,
                title=f"{self.config.method}, {self.report.get('dataset')}",
                label="val accuracy after pruning"
                + (" + BN recalibration" if _curve_recalibrates(self.config) else ""),
            ),
        }  # fmt: skip
        return paths


def prune(
    model_or_checkpoint: nn.Module | str | os.PathLike[str],
    dataset: str | DatasetSplits,
    config: PruneConfig | None = None,
    progress: ProgressCallback | None = None,
    *,
    spec: ArchSpec | None = None,
    cancel: CancelToken | None = None,
    metanetwork: nn.Module | None = None,
    data_root: str | os.PathLike[str] | None = None,
    limits: Limits = DEFAULT_LIMITS,
    metanet_paths: bool = True,
    dataset_kwargs: Mapping[str, Any] | None = None,
) -> PruneResult:
    """Prune a trained classifier to ``config.target`` and fine-tune it (see module doc).

    Args:
        model_or_checkpoint: a model (copied, never modified) or a checkpoint path.
        dataset: a registered dataset name or ready :class:`DatasetSplits`.
        config: the job; default ``PruneConfig()``.
        progress: receives :class:`ProgressEvent`\\ s; may return ``CANCEL``.
        spec: the architecture of a model passed as a module (needed to save it).
        cancel: a :class:`CancelToken` checked between steps.
        metanetwork: a metanetwork object for ``method="metanet"`` instead of loading
            ``config.metanet``.
        data_root: local root of file-based datasets.
        dataset_kwargs: options of a dataset given by name (e.g. ``{"image_size": 64}``),
            checked by :func:`~metaprune.data.check_dataset_kwargs` against ``limits``.
        limits: bounds on the job (:meth:`PruneConfig.check_limits`, checked first), on
            the checkpoint and architecture, and the wall-clock budget (the smaller of
            ``config.max_wall_seconds`` and ``limits.max_wall_seconds``), enforced between
            steps like cancellation.
        metanet_paths: whether ``config.metanet`` may be a path to an exported metanetwork
            (local use); ``False`` (what a service passes) accepts registered names only.

    Raises:
        PruneCancelled: when cancelled.
        LimitExceededError: a setting, the model or the input size is over ``limits``, or
            the wall-clock budget ran out (``max_wall_seconds``).
        InvalidInputError: on bad input (ConfigError, DatasetError, CheckpointError,
            SpecError, MetanetUnavailable, NotFoundError for unknown names), with a
            message naming the problem; also for a model whose outputs are not finite.
    """
    config = PruneConfig() if config is None else config
    if not isinstance(config, PruneConfig):
        raise ConfigError(f"config must be a PruneConfig (found {type(config).__name__})")
    if not isinstance(limits, Limits):
        raise ConfigError(f"limits must be a Limits (found {type(limits).__name__})")
    config.check_limits(limits)
    wall = min(config.max_wall_seconds or limits.max_wall_seconds, limits.max_wall_seconds)
    cancel = BudgetToken(wall, cancel)
    requested = config
    early = get_method(resolve_method(config, advise=False).method)
    if early.load is not None and metanetwork is None:  # a bad name fails before any work
        metanetwork = early.load(config, limits, metanet_paths)
    if isinstance(dataset, DatasetSplits) and dataset_kwargs:
        raise ConfigError("dataset_kwargs apply to a dataset given by name, not to DatasetSplits")
    if not isinstance(dataset, DatasetSplits):  # options checked before any work
        dataset_kwargs = check_dataset_kwargs(dataset, dataset_kwargs, limits)
    # the checks before any work (seconds each on a large model at 224) report one event
    # per check, so the job is never silent before its first evaluation
    checks = StageMeter(progress, cancel, "checks", len(_CHECKS))
    checks_started = time.perf_counter()
    checks.start()
    model, spec = _resolve_model(model_or_checkpoint, spec, limits)
    checks.advance(check="model")
    # "auto" -> a concrete method, with the reason; advisors may weigh the model's family
    family = spec.name if spec is not None else None
    choice = resolve_method(config, family, advise=metanetwork is None)
    config = dataclasses.replace(config, method=choice.method)
    method = get_method(config.method)
    if method.data_aware and not choice.data_aware:  # e.g. metanet: never below the baseline
        choice = dataclasses.replace(choice, data_aware=True)
    if method.load is not None and metanetwork is None:  # e.g. "auto" chose metanet
        metanetwork = method.load(config, limits, metanet_paths)
    splits = (
        dataset
        if isinstance(dataset, DatasetSplits)
        else get_dataset(dataset, data_root, config.data_seed, **dataset_kwargs)
    )
    limits.check("max_image_size", splits.image_size, f"dataset {splits.name!r} image size")
    if spec is not None:
        check_spec(spec, limits, (splits.in_channels, splits.image_size, splits.image_size))
    _check_finite_weights(model)
    torch.manual_seed(config.seed)
    device = _available(torch.device(config.device))
    model = model.to(device)
    workers = _data_workers(config.data_workers, splits)
    eval_batch = _eval_batch_size(config.batch_size, splits)
    train, _, _ = make_loaders(splits, config.batch_size, config.seed, workers)
    _, val, test = make_loaders(splits, eval_batch, config.seed, workers)
    # fixed seeded subsets (nested: one permutation per split), so the same weights always
    # get the same statistics and the same scores; sizes are budgets in images (a default
    # one shrinks at a large input: _default_budget)
    values = splits.in_channels * splits.image_size**2

    def subset(split: Any, images: int, key: str) -> Any:
        images = _default_budget(key, images, values)
        return calibration_subset(split, images, eval_batch, config.seed)

    calib = subset(splits.train, config.bn_recalibration_images, "bn_recalibration_images")
    gen = torch.Generator().manual_seed(config.seed)
    example = torch.randn(
        1, splits.in_channels, splits.image_size, splits.image_size, generator=gen
    )
    example = example.to(device)
    checks.advance(check="data")
    with _one_thread():  # single-image forwards and graph traces
        _check_classes(model, example, splits)
        checks.advance(check="classifier")
        check_reachable(model, example, config)  # a target past the floor: refused before work
        checks.advance(check="reachable")
        if not _finite_outputs(model, example):
            raise InvalidInputError(
                "the model's outputs are NaN or Inf on a random input; refusing to prune it"
            )
        # before any work: a model that cannot be pruned structurally is refused here
        structure = check_prunable(model, example, round_to=config.pruning.round_to)
        if structure.frozen:  # groups left whole may put the target out of reach: refused too
            check_reachable(model, example, config, frozen=structure.frozen_modules)
    checks.finish(check="dry_run", frozen_groups=len(structure.frozen))
    input_shape = (splits.in_channels, splits.image_size, splits.image_size)
    timing = config.latency
    latency_batch = timing.batch_size or auto_batch_size(input_shape)

    def latency(m: nn.Module, on_pass: Any = None) -> LatencyMeasurement:
        return time_forward(
            m, input_shape, batch_size=latency_batch, device=device, threads=timing.threads,
            repeats=timing.repeats, warmup=timing.warmup, seconds=timing.seconds, on_pass=on_pass,
        )  # fmt: skip

    seconds = {"checks": time.perf_counter() - checks_started}
    timed = functools.partial(_timed, seconds)
    latency_runs: dict[str, dict[str, Any]] = {}

    def measure(stage: str, m: nn.Module, val_accuracy: float | None = None) -> dict[str, Any]:
        """Accuracy (validation unless known), MACs, parameters and latency, with progress."""
        batches = (len(val) if val_accuracy is None else 0) + len(test)
        meter = StageMeter(progress, cancel, stage, batches + timing.warmup + timing.repeats)
        meter.start()
        out = _measure(m, example, val, test, device, latency, meter, val_accuracy)
        latency_runs[stage] = out.pop("latency")
        meter.finish(**out)
        return out

    with timed("evaluate_base"):
        base = measure("evaluate_base", model)
    pruning, target, opts = config.pruning, config.target, config.importance
    ticks: list[Any] = [None]  # the progress tick of the stage running now

    def tick() -> None:
        if ticks[0] is not None:
            ticks[0]()

    # taylor / hessian gradients: gathered once on the prepared model (below), reused by
    # every copy pruned with a data-aware criterion
    grads: Any = subset(splits.train, opts.calibration_images, "importance.calibration_images")

    prune_options = {"p": opts.p, "group_reduction": opts.group_reduction, "seed": config.seed,
                     "round_to": pruning.round_to, "max_layer_ratio": pruning.max_layer_ratio,
                     "min_channels": pruning.min_channels}  # fmt: skip
    latency_fn = (lambda m: latency(m).median) if target.kind == "latency" else None

    def prune_task(m: nn.Module, cand: Candidate, steps: int, curve: bool, adaptive: bool) -> PruneTask:
        """What pruning a copy of ``m`` with ``cand`` takes (in this process or a worker);
        ``curve``: keep copies at the steps where the curve wants a point."""
        return PruneTask(
            cand.label, m, example, target, cand.criterion, cand.normalizer, steps, grads,
            prune_options, frozen=tuple(structure.frozen_modules), adaptive=adaptive,
            milestones=tuple(_milestones(target.value, curve_points)) if curve else (),
        )  # fmt: skip

    def step_event(label: str, info: StepInfo) -> None:
        if proxy_meter:
            speedup = round(info.value(target.kind), 3)
            proxy_meter[-1].advance(candidate=label, step=info.step, speedup=speedup)

    # the proxy every automatic choice is scored by (metaprune/pruning/choose.py): a copy
    # pruned to the target in search_steps steps, one BatchNorm pass over search_images
    # training images, scored on search_images validation images (fixed subsets; the whole
    # validation split where it is small: 64 images cannot tell close candidates apart)
    search_steps = opts.search_steps or pruning.steps  # None: the job's own schedule
    search_images = _search_images(len(splits.val), opts.search_images, values)
    proxy_calib = subset(splits.train, search_images, "importance.search_images")
    proxy_val = subset(splits.val, search_images, "importance.search_images")
    proxy_meter: list[StageMeter] = []  # the stage currently scoring, for its progress events
    # the curve's intermediate points (fewer at a large input: each costs two image passes)
    curve_images = _default_budget("pruning.curve_images", pruning.curve_images, values)
    curve_points = _curve_points(
        pruning.curve_points, curve_images * (1 + _curve_recalibrates(config)), values
    )

    def prune_copy(
        m: nn.Module, cand: Candidate, steps: int, curve: bool = True, adaptive: bool = _ADAPTIVE
    ) -> tuple[nn.Module, list[StepInfo], dict[int, nn.Module]]:
        """A copy of ``m`` pruned with ``cand``, its steps, and (``curve``) copies of it at
        the steps where the curve wants a point (a search keeps the winner's: no second
        prune)."""
        ticks[0] = proxy_meter[-1].tick if proxy_meter else None
        done = prune_pruned_copy(prune_task(m, cand, steps, curve, adaptive),
                                 functools.partial(step_event, cand.label), latency_fn)  # fmt: skip
        return done.model, done.history, done.snapshots

    def score_copy(m: nn.Module, calib_loader: Any = None, val_loader: Any = None) -> float:
        # recalibrating in place is harmless to a reused winner: every recalibration
        # resets the statistics it estimates (bn.py)
        calib_loader = proxy_calib if calib_loader is None else calib_loader
        val_loader = proxy_val if val_loader is None else val_loader
        recalibrate_bn(m, calib_loader, len(calib_loader), device, exact=False, on_batch=tick)
        return evaluate(m, val_loader, device, on_batch=tick)

    # reg="auto" scores its arms with the group-L2 normalisers the job may use
    reg_candidates = criterion_candidates("group-l2", opts.normalizer, NORMALIZER_CANDIDATES)
    # a prune to 2-3x walks up to about half the grid (adaptive: a handful of its steps)
    step_units = min(search_steps, 8) if _ADAPTIVE else max(1, search_steps // 2)
    proxy_units = step_units + len(proxy_calib) + len(proxy_val)

    def dry_prune(m: nn.Module) -> tuple[float, nn.Module]:
        """The proxy's score of ``m`` and the best of its pruned copies (the first of equals)."""
        proxy_meter[:] = [StageMeter(progress, cancel, "reg_search", proxy_units * len(reg_candidates))]
        best: tuple[float, nn.Module] | None = None
        for c in reg_candidates:
            pruned = prune_copy(m, c, search_steps, curve=False)[0]
            score = score_copy(pruned)
            if best is None or score > best[0]:
                best = (score, pruned)
        assert best is not None
        return best

    ctx = MethodContext(config, train, val, device, example, progress, cancel, metanetwork,
                        calibration_loader=calib, input_val_accuracy=base["val_accuracy"],
                        proxy=lambda m: dry_prune(m)[0], proxy_images=len(proxy_val.dataset),
                        family=family, dry_prune=dry_prune)  # fmt: skip
    with timed("before_pruning"), _encoding_errors_as_input_errors():
        model = method.prepare(model, ctx)
    seconds.update(ctx.info.pop("stage_seconds", {}))  # e.g. reg_search, inside before_pruning
    widths_before = layer_widths(model)

    curve_calib, curve_val = (subset(split, pruning.curve_images, "pruning.curve_images")
                              for split in (splits.train, splits.val))  # fmt: skip

    # the criterion (and its normaliser) by validation accuracy at the target
    extra = COST_AWARE + DATA_AWARE if choice.data_aware and opts.normalizer == "auto" else ()
    candidates = (
        [Candidate(method.importance, "sum")]  # random scores: nothing to normalise
        if method.importance == "random"
        else criterion_candidates(method.importance, opts.normalizer, NORMALIZER_CANDIDATES, extra)
    )  # fmt: skip
    kinds = sorted({GRADIENT_KIND[c.criterion] for c in candidates if c.criterion in GRADIENT_KIND})
    chosen, prune_info = candidates[0], dict[str, Any]()

    def gradient_tick() -> None:  # a batch or micro-batch of the gradient pass
        if proxy_meter:
            proxy_meter[-1].advance(task="gradients")

    if kinds:  # one pass over the images for every data-aware candidate and the prune
        prune_info["gradients"] = {"images": len(grads.dataset), "kinds": kinds,
                                   "fisher": fisher_estimate(model) if "fisher" in kinds else None}  # fmt: skip
        grads = GradientCache(grads, kinds, on_batch=gradient_tick)
    pruned: tuple[nn.Module, list[StepInfo], dict[int, nn.Module]] | None = None
    prepared_val = ctx.info.get("before_pruning", {}).get("val_accuracy")
    if len(candidates) > 1 or ctx.reference is not None:
        # at a large input two rounds: every candidate recalibrated and scored on half
        # the proxy's images, the best _FINALISTS on the other half too (scored over all)
        two_rounds = _second_round(len(proxy_val.dataset), values, len(candidates))
        first, second = zip(*map(_halves, (proxy_calib, proxy_val))) if two_rounds else ((), ())
        # where asked for (importance.adaptive_search), each candidate of the first round
        # prunes adaptively (a few of the schedule's steps); the finalists are then pruned on
        # every step (scored on the other half, if any), and the winner's prune is the job's
        quick = _quick_search(opts) and not _ADAPTIVE
        finals = (two_rounds or quick) and len(candidates) > _FINALISTS
        keep = _FINALISTS if finals else 1
        reusable = search_steps == pruning.steps and not _ADAPTIVE
        search_curve, search_adaptive = reusable and not quick, quick or _ADAPTIVE

        def search(m: nn.Module) -> tuple[Candidate, dict[str, Any], Any]:
            """``m``'s best candidate, the search's record, and the winner's prune (reused)."""
            # the best candidates so far: (-score, order, candidate, result); ties: the earlier
            kept: list[tuple[float, int, Candidate, Any]] = []
            firsts: dict[Candidate, float] = {}  # first-round scores

            curve, adaptive = search_curve, search_adaptive
            pruned_before = 0 if pool is None else len(pool.pruned_in_workers)
            # with workers, the copies are pruned at once (search_pool.py), scored in order
            copies = None if pool is None else pool.results(
                [prune_task(m, c, search_steps, curve, adaptive) for c in candidates], step_event)

            def search_proxy(m: nn.Module, cand: Candidate) -> float:
                if copies is None:
                    result = prune_copy(m, cand, search_steps, curve, adaptive)
                else:
                    ticks[0] = proxy_meter[-1].tick if proxy_meter else None
                    done = next(copies)
                    result = done.model, done.history, done.snapshots
                score = score_copy(result[0], *first)
                firsts[cand] = score
                if (two_rounds or reusable) and not quick:
                    kept.append((-score, candidates.index(cand), cand, result))
                    kept.sort(key=lambda k: k[:2])
                    del kept[keep:]
                return score

            def final_proxy(cand: Candidate) -> float:  # the second round: the other half
                if quick:  # the finalist pruned on the full schedule (reused if it wins)
                    result = prune_copy(m, cand, search_steps)
                    kept.append((-firsts[cand], candidates.index(cand), cand, result))
                    if not second:  # one round of images (a small input): all of them
                        return score_copy(result[0])
                minus, _, _, result = next(k for k in kept if k[2] == cand)
                score = score_copy(result[0], *second)
                n1, n2 = len(first[1].dataset), len(second[1].dataset)
                return (-minus * n1 + score * n2) / (n1 + n2)  # accuracy over all the images

            best, record = choose_criterion(m, candidates, search_proxy,
                                            final=final_proxy if finals else None,
                                            finalists=_FINALISTS)  # fmt: skip
            record["proxy"] = {"steps": search_steps, "calibration_images": len(proxy_calib.dataset),
                               "validation_images": len(proxy_val.dataset),
                               "rounds": 1 + finals, "adaptive": quick or _ADAPTIVE}  # fmt: skip
            record["workers"] = 1 if pool is None else pool.workers  # copies pruned at once
            if pool is not None:
                record["pruned_in_workers"] = pool.pruned_in_workers[pruned_before:]
            winner = [k[3] for k in kept if k[2] == best]
            reused = winner[0] if winner and reusable else None
            record["reused_winner"] = reused is not None
            kept.clear()
            return best, record, reused

        workers = _search_workers(opts.search_workers, len(proxy_val.dataset) * values, device, target)
        with timed("criterion_search"), contextlib.ExitStack() as stack:  # validation only
            # started first: the workers' start-up shares the cores with the gradient pass
            pool = stack.enter_context(SearchPool(workers)) if workers > 1 else None
            if pool is not None:  # the candidates that need no gradients start meanwhile
                pool.share(model)
                pool.prefetch([prune_task(model, c, search_steps, search_curve, search_adaptive)
                               for c in candidates[1 :: pool.workers] if c.criterion not in GRADIENT_KIND])  # fmt: skip
            whole = len(proxy_calib) + len(proxy_val)
            per_candidate = (min(search_steps, 8) if quick else step_units) + (sum(map(len, first)) or whole)
            final_units = (step_units if quick else 0) + (sum(map(len, second)) or whole)
            units = per_candidate * len(candidates) + finals * keep * final_units
            # per-sample gradients report per chunk: at most one unit per image
            units += len(grads.calibration.dataset) if kinds else 0
            units *= 1 + (ctx.reference is not None)
            units += len(val) if ctx.reference is not None else 0  # the reference's accuracy
            meter = StageMeter(progress, cancel, "criterion_search", units)
            proxy_meter[:] = [meter]
            meter.start()
            if kinds:  # before any copy exists: the pass's peak memory shares with nothing
                with _one_thread():  # two threads: 1.1x its CPU idle, 3-4x at load 2-6
                    grads.gather(model)
                    head = {id(p) for p in find_classifier(model, example).parameters()}
                if pool is not None:
                    pool.share(grads)
                # all-zero gradients rank nothing: their candidates would walk the whole
                # schedule without pruning (a random-weight ViT-B/16: ~2 units of steps)
                zero = grads.zero_kinds({n for n, p in model.named_parameters() if id(p) in head})
                if zero and any(GRADIENT_KIND.get(c.criterion) not in zero for c in candidates):
                    candidates = [c for c in candidates if GRADIENT_KIND.get(c.criterion) not in zero]
                    prune_info["gradients"]["zero"] = list(zero)
                    if len(candidates) <= _FINALISTS:  # one round (first, second: unused)
                        two_rounds, finals, keep = False, False, 1
                        first, second = (), ()
            chosen, found, pruned = search(model)
            if ctx.reference is not None:  # the prepared model must beat it beyond noise
                ref_chosen, ref_found, ref_pruned = search(ctx.reference)
                scores = (_best_score(found), _best_score(ref_found))
                keep_prepared = scores[0] > scores[1] and not within_noise(*scores, len(proxy_val.dataset))
                prune_info["reference"] = {"prepared": scores[0], "reference": scores[1],
                                           "kept": "prepared" if keep_prepared else "reference",
                                           "other_search": ref_found if keep_prepared else found}  # fmt: skip
                if not keep_prepared:
                    model, chosen, found, pruned = ctx.reference, ref_chosen, ref_found, ref_pruned
                    prepared_val = evaluate(model, val, device, on_batch=meter.tick)  # curve step 0
            prune_info["criterion_search"] = found  # the search of the model pruned
            stack.close()  # the workers end with the search
            meter.finish(chosen=chosen.label)
        if kinds and pruned is not None:  # the winner's prune is reused: no more gradients
            grads.forget()
    prune_info.update(criterion=chosen.criterion, normalizer=chosen.normalizer)

    # the curve: step 0 (the prepared model's accuracy, measured already), the chosen step
    # (measured by recalibrate_bn below) and at most curve_points steps in between, on the
    # copies the prune kept at the first steps past target ** (i / (curve_points + 1))

    def curve_point(m: nn.Module) -> float:
        if _curve_recalibrates(config):
            m = copy.deepcopy(m)
            # one training-mode pass on the fixed subset: cheap and deterministic
            recalibrate_bn(m, curve_calib, len(curve_calib), device, exact=False, on_batch=tick)
        return evaluate(m, curve_val, device, on_batch=tick)

    with timed("prune"):
        meter = StageMeter(progress, cancel, "prune", step_units + (curve_points + 1)
                           * (len(curve_val) + len(curve_calib) * _curve_recalibrates(config)))  # fmt: skip
        proxy_meter[:] = [meter]
        meter.start(criterion=chosen.label)
        if pruned is None:
            pruned = prune_copy(model, chosen, pruning.steps)
            if kinds:  # no prune after this one
                grads.forget()
        start_model, (model, history, snapshots) = model, pruned
        curve = []
        for info in history:
            if info.step == 0 and not info.reached:
                snapshots[0] = start_model
            accuracy = prepared_val if info.step == 0 and prepared_val is not None else None
            if accuracy is None and info.step in snapshots:
                ticks[0] = functools.partial(meter.advance, task="curve point", step=info.step)
                accuracy = curve_point(snapshots.pop(info.step))
            curve.append(_point(info, accuracy))
        del snapshots, start_model, pruned
        meter.finish(**curve[-1], reached=history[-1].reached)
    final_step = history[-1]
    with timed("recalibrate_bn"):
        meter = StageMeter(progress, cancel, "recalibrate_bn",
                           (1 + _REFINE) * len(calib) + len(val))  # fmt: skip
        meter.start()
        _recalibrate(model, calib, device, meter.tick)
        pruned_val = evaluate(model, val, device, on_batch=meter.tick)
        meter.finish(val_accuracy=pruned_val)
    curve[-1]["val_accuracy"] = pruned_val  # the chosen step: the exact figure
    with timed("after_pruning"):
        after = finetune(model, train, val, config.after_pruning, device, progress,
                         stage="after_pruning", cancel=cancel,
                         initial_val_accuracy=pruned_val)  # fmt: skip
    with timed("evaluate"):
        # the fine-tune kept the recalibrated weights (best epoch 0): validation is known
        final = measure("evaluate", model, pruned_val if after.best_epoch == 0 else None)
    model.eval()
    pruned_spec = spec.with_plan_of(model) if spec is not None else None
    with _one_thread():  # single-image forwards
        outputs_finite = _finite_outputs(model, example)
        if pruned_spec is not None:  # what save() writes must rebuild this model
            check_rebuild(pruned_spec, model, example, limits)
    widths_after = layer_widths(model)
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "metaprune_version": __version__,
        "dataset": splits.name,
        "dataset_kwargs": dataset_kwargs or {},
        "input_shape": list(example.shape[1:]),
        "method": config.method,
        "method_choice": {**choice.to_dict(), "criterion": f"{chosen.criterion}[{chosen.normalizer}]"},
        "epochs_trained": {
            "before_pruning": ctx.info.get("before_pruning", {}).get("epochs_trained"),
            "after_pruning": config.after_pruning.epochs,
        },
        "target": {"kind": config.target.kind, "value": config.target.value},
        # never report success for a model whose outputs are not finite
        "target_reached": bool(final_step.reached and outputs_finite),
        "outputs_finite": outputs_finite,
        "base": base,
        "pruned": {"val_accuracy": pruned_val, "step": final_step.step},
        "final": final,
        "speedup": {
            "macs": base["macs"] / max(final["macs"], 1),
            "params": base["params"] / max(final["params"], 1),
            "latency": base["latency_ms"] / final["latency_ms"],
        },
        "stage_seconds": seconds,
        "work": {  # what the budgets amounted to on this dataset
            "calibration_images": len(calib.dataset),
            "curve_images": [len(curve_calib.dataset), len(curve_val.dataset)],
            "curve_points_evaluated": sum(c["val_accuracy"] is not None for c in curve),
            "eval_batch_size": eval_batch,
            "data_workers": workers,
            "latency": latency_runs,
        },
        "stages": {
            **ctx.info,
            "prune": prune_info,
            "after_pruning": {
                "best_epoch": after.best_epoch,
                "val_accuracy": after.best_val_accuracy,
                "lr": after.lr,  # chosen on validation when the budget tries several
                "lr_trials": list(after.lr_trials),
            },
        },
        "layer_widths": {k: [v, widths_after.get(k)] for k, v in widths_before.items()},
        "structure": structure.to_dict(),  # prunable groups, frozen ones and why
        "curve": curve,
        "chosen_step": final_step.step,
        "config": requested.to_dict(),  # as requested: "auto" resolves the same way again
        "spec": pruned_spec.to_json() if pruned_spec is not None else None,
    }
    return PruneResult(model=model, spec=pruned_spec, report=report, curve=curve, config=config)


def _best_score(search: dict[str, Any]) -> float:
    """The chosen candidate's proxy score (a second round's, over all its images, if any)."""
    chosen = next(t for t in search["trials"] if Candidate(t["criterion"], t["normalizer"]).label == search["chosen"])
    return chosen.get("final_accuracy", chosen["val_accuracy"])


def _available(device: torch.device) -> torch.device:
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(device)!r} is not available on this machine (no CUDA)")
    return device


def _curve_recalibrates(config: PruneConfig) -> bool:
    return config.pruning.curve_bn_recalibration and config.bn_recalibration_images > 0


#: the default image budgets were chosen on 8x8 and 32x32 inputs; at a large input a
#: budget left at its default holds at most _LARGE_INPUT_VALUES input values (2**22: as
#: many as 1,365 CIFAR images, 27 at 3x224x224), but never fewer images than its floor.
#: At 224 px a ResNet-50's proxy, curve and recalibration images were ~20 of the job's
#: ~65 CPU units of a batch-64 forward (benchmarks/RESULTS.md, issue 18)
_LARGE_INPUT_VALUES = 1 << 22
#: config key: (default, floor at a large input, forward passes of work per image); a
#: gradient image costs a forward and a backward (~3 forwards). Gradients keep 32 images
#: at 224 px: with 16 instead of 64 the taylor / hessian proxy scores of held-out digits
#: models fell by 9 points on average (the choice held on 8 jobs; RESULTS.md, issue 18)
_DEFAULT_BUDGETS = {
    "bn_recalibration_images": (PruneConfig.bn_recalibration_images, 128, 1),
    "importance.calibration_images": (ImportanceOptions.calibration_images, 32, 3),
    "importance.search_images": (ImportanceOptions.search_images, 32, 1),
    "pruning.curve_images": (PruningOptions.curve_images, 16, 1),
}


def _default_budget(key: str, images: int, values: int) -> int:
    """``images``, or for a budget left at its default, at most ``_LARGE_INPUT_VALUES``
    input values' worth of forward work (images of ``values`` values each), never below
    its floor."""
    default, floor, forwards = _DEFAULT_BUDGETS[key]
    if images != default:  # set by the user: used as given
        return images
    return max(min(images, floor), min(images, _LARGE_INPUT_VALUES // (values * forwards)))


def _curve_points(points: int, images_per_point: int, values: int) -> int:
    """The curve's intermediate points: ``points``, or for the default, as many as fit
    in twice ``_LARGE_INPUT_VALUES`` input values (each point recalibrates and scores
    ``images_per_point`` images), at least one: at 224 px a ResNet-50's 3 points were
    4.4 of a job's 28.5 units of a batch-64 forward (benchmarks/RESULTS.md, issue 18)."""
    if points != PruningOptions.curve_points:  # set by the user: used as given
        return points
    fit = 2 * _LARGE_INPUT_VALUES // max(1, images_per_point * values)
    return max(1, min(points, fit))


def _second_round(images: int, values: int, candidates: int) -> bool:
    """Whether the criterion search scores its candidates in two rounds (all on half the
    proxy's images, the best :data:`_FINALISTS` on the other half): where one proxy pass
    holds more than ``_LARGE_INPUT_VALUES`` input values (224 px, not ``digits`` or
    CIFAR) and more candidates than finalists compete."""
    return candidates > _FINALISTS and images >= 2 and images * values > _LARGE_INPUT_VALUES


#: candidates of the criterion search's second round (where it has one)
_FINALISTS = 2


def _quick_search(opts: ImportanceOptions) -> bool:
    """Whether the criterion search's candidates prune adaptively
    (``progressive_prune(adaptive=True)``: a handful of the schedule's steps, each
    a ranking and a count, instead of every one) and the best two are pruned again on
    the full schedule: where ``importance.adaptive_search`` asks for it and
    ``importance.search_steps`` is left at its default. A ViT-B/16 at 224 visits 8
    steps instead of 38, but the cheaper first round changes the choice too often to be
    the default (:class:`ImportanceOptions`; benchmarks/RESULTS.md, issue 18)."""
    return opts.adaptive_search and opts.search_steps is None


def _search_workers(requested: int, proxy_values: int, device: torch.device, target: Any) -> int:
    """How many candidates the criterion search prunes at once: ``requested``, or for ``0``
    the job's torch threads where one proxy pass holds more than ``_LARGE_INPUT_VALUES``
    input values (a worker's start-up, ~4 CPU s, outweighs a small search's steps). One
    on a GPU and for a latency target (timings in parallel would disturb each other)."""
    if device.type != "cpu" or target.kind == "latency":
        return 1
    if requested:
        return requested
    return torch.get_num_threads() if proxy_values > _LARGE_INPUT_VALUES else 1


def _search_images(val_images: int, search_images: int, values: int) -> int:
    """The proxy's images: a small validation split whole (choose.proxy_images) where the
    whole split fits the large-input budget, else ``search_images`` (shrunk by
    :func:`_default_budget` at a large input: 180 images at 224 px are ~14 units of work)."""
    if val_images * values <= _LARGE_INPUT_VALUES:
        return proxy_images(val_images, search_images)
    return search_images


#: what the ``checks`` stage reports after (one event each; the last one finishes it)
_CHECKS = ("model", "data", "classifier", "reachable", "dry_run")

#: visit only some steps of the schedule (progressive_prune(adaptive=True)): 6 instead of
#: ~20 steps per prune, but on held-out digits models it lost 2.1 test points on average
#: over 8 default jobs (up to 6.6 on a VGG-11 at 2x with the same criterion), so not yet
_ADAPTIVE = False

#: refinement passes of every reported recalibration (metaprune/pruning/bn.py): none, one
#: training-mode pass over the fixed subset was within 2 test images of the exact
#: per-BatchNorm estimate on held-out digits models, and a refinement costs a whole pass
_REFINE = 0


def _halves(loader: Any) -> tuple[Any, Any]:
    """Loaders over the first and the second half of ``loader``'s fixed subset."""
    data, half = loader.dataset, (len(loader.dataset) + 1) // 2
    return tuple(
        torch.utils.data.DataLoader(torch.utils.data.Subset(data, part), batch_size=loader.batch_size)
        for part in (range(half), range(half, len(data)))
    )  # type: ignore[return-value]


def _recalibrate(model: nn.Module, loader: Any, device: torch.device, tick: Any) -> None:
    """The recalibration behind reported figures: one training-mode pass over the fixed
    calibration set and ``_REFINE`` exact whole-set refinements (``bn.py``)."""
    recalibrate_bn(model, loader, len(loader), device, exact=False, refine=_REFINE, on_batch=tick)


def _finite_outputs(model: nn.Module, example: Tensor) -> bool:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return bool(torch.isfinite(model(example)).all())
    finally:
        model.train(was_training)


def _check_finite_weights(model: nn.Module) -> None:
    bad = [
        name
        for name, t in (*model.named_parameters(), *model.named_buffers())
        if t.is_floating_point() and not torch.isfinite(t).all()
    ]
    if bad:
        raise InvalidInputError(
            f"the model has {len(bad)} tensor(s) with NaN or Inf values, e.g. {bad[0]!r}; "
            "refusing to prune it"
        )


def _resolve_model(
    source: nn.Module | str | os.PathLike[str], spec: ArchSpec | None, limits: Limits
) -> tuple[nn.Module, ArchSpec | None]:
    if isinstance(source, nn.Module):
        if any(t.is_meta for t in (*source.parameters(), *source.buffers())):
            raise InvalidInputError("the model is on the meta device (it has no weights)")
        return copy.deepcopy(source), spec
    if isinstance(source, (str, os.PathLike)):
        model, loaded = checkpoint.load(source, limits=limits)
        return model, spec if spec is not None else loaded
    raise ConfigError(
        f"model_or_checkpoint must be an nn.Module or a checkpoint path (found {type(source).__name__})"
    )


def _check_classes(model: nn.Module, example: Tensor, splits: DatasetSplits) -> None:
    try:
        classifier = find_classifier(model, example)
    except Exception as err:  # noqa: BLE001 (a forward pass on a bad shape raises anything)
        raise ConfigError(
            f"the model does not accept inputs of shape {tuple(example.shape)} from dataset "
            f"{splits.name!r}: {describe_exception(err)}"
        ) from None
    out = getattr(classifier, "out_features", getattr(classifier, "out_channels", None))
    if out != splits.num_classes:
        raise ConfigError(
            f"the model's classifier has {out} outputs but dataset {splits.name!r} has "
            f"{splits.num_classes} classes"
        )


def _measure(model: nn.Module, example: Tensor, val: Any, test: Any, device: torch.device,
             latency: Any, meter: StageMeter, val_accuracy: float | None) -> dict[str, Any]:  # fmt: skip
    cost = measure_cost(model, example)
    if val_accuracy is None:
        val_accuracy = evaluate(model, val, device, on_batch=meter.tick)
    test_accuracy = evaluate(model, test, device, on_batch=meter.tick)
    timing = latency(model, on_pass=lambda done, total: meter.advance(task="latency"))
    return {
        "val_accuracy": val_accuracy,
        "test_accuracy": test_accuracy,
        "macs": cost.macs,
        "params": cost.params,
        "latency_ms": 1000.0 * timing.median,
        "latency": timing.to_dict(),
    }


def _eval_batch_size(batch_size: int, splits: DatasetSplits) -> int:
    """Evaluation and recalibration batches: ``batch_size``, but at most
    ``_LARGE_INPUT_VALUES`` input values per batch (27 images at 3x224x224), so that one
    batch of a large model at a large input is a few seconds of work between two progress
    events, not minutes (13 images per batch cost 25 % more per image than 27 on a
    ResNet-50 at 224: benchmarks/RESULTS.md, issue 18)."""
    values = splits.in_channels * splits.image_size**2
    return max(1, min(batch_size, _LARGE_INPUT_VALUES // values))


def _data_workers(requested: int | None, splits: DatasetSplits) -> int:
    """DataLoader worker processes: ``requested``, or by default none for in-memory tensors
    and two for file datasets (decoding and augmenting in parallel with the model). None
    inside a daemon process (an executor worker), which may not have children."""
    import multiprocessing

    if multiprocessing.current_process().daemon:
        return 0
    if requested is not None:
        return requested
    in_memory = isinstance(splits.train, torch.utils.data.TensorDataset)
    return 0 if in_memory else min(2, os.cpu_count() or 1)


def _milestones(target: float, points: int) -> list[float]:
    """The speed-ups past which the curve wants a point: ``target ** (i / (points + 1))``."""
    return [target ** (i / (points + 1)) for i in range(1, points + 1)]


def _point(info: StepInfo, val_accuracy: float | None) -> dict[str, Any]:
    return {
        "step": info.step, "macs_speedup": info.macs_speedup, "param_ratio": info.param_ratio,
        "latency_speedup": info.latency_speedup, "val_accuracy": val_accuracy,
    }  # fmt: skip


@contextlib.contextmanager
def _encoding_errors_as_input_errors() -> Iterator[None]:
    # graph_encoding does not know metaprune's error types (dependencies point one way):
    # an architecture the encoder cannot handle is the caller's input problem
    from graph_encoding import EncodingError

    try:
        yield
    except EncodingError as err:
        raise InvalidInputError(
            f"the metanetwork cannot encode this model: {describe_exception(err)}"
        ) from None


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Torch on one thread (then restored) for Torch-Pruning's steps, the gradient pass
    and single-image forwards: rankings, index selects, MACs counts and a 1-image forward
    are many small ops between Python calls, where a second thread mostly spins. On the
    shared machine, a ResNet-50 at 224: a 24-step prune to 2x 10 CPU s on one thread, 61
    on two; the taylor / hessian gradients of 16 images 7 CPU s against 20, and no faster
    in wall time; a forward of one image 0.1 CPU s against 0.8-2.5
    (benchmarks/RESULTS.md, issue 18)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[stage] = time.perf_counter() - start
