"""The parts of a large job's cost, in CPU seconds of this process (issue 18).

    nice python benchmarks/scale_parts.py            # ResNet-50 at 224 (random weights)

CPU seconds, not wall (the machine is shared):

* **gradients**: one forward, one batched backward and the per-sample ``vmap`` pass
  (:mod:`metaprune.pruning.gradients`) over 8 images at 224 on one thread, and the same
  over 64 images of a ``cifar_vgg11_bn`` at 8x8 (a model whose per-sample chunks are small);
* **steps**: a group-L2 progressive prune of the ResNet-50 to 2x MACs (50-step schedule)
  on 1 and on 2 torch threads, and one ``measure_cost``;
* **batch**: an eval forward of 64 images in batches of 64, 27 and 13 (2 threads);
* **threads**: the job's taylor + hessian gradient pass (``GradientCache``, 16 images at
  224) and an eval forward of 27 images, each on 1 and on 2 torch threads, twice, in CPU
  and wall seconds (``--parts threads`` runs this part alone; ``--model vit_b_16`` on
  another torchvision model), with the load average before and after;
* **count** (``--parts count``): one ``measure_cost`` against Torch-Pruning's
  ``count_ops_and_params`` on ResNet-50, ConvNeXt-T and ViT-B/16 at 224 (CPU s per count,
  one thread, equal counts checked), and a group-L2 prune of each to 2x MACs (50-step
  schedule) with the CPU seconds its counts took;
* **concurrent** (``--parts concurrent --model vit_b_16``): two search candidates' prunes
  to 2x MACs (group-L2 ``sum`` and ``max``, 50-step schedule, torch on one thread each)
  one after the other, then at once on two Python threads, then at once in two spawned
  worker processes (model in shared memory, pruned copies back through it): CPU
  (this process and its workers) and wall s, equal pruned models checked;
* **prune** (``--parts prune --model vit_b_16``): one search candidate's prune to 2x MACs
  (group-L2 ``sum``, 50-step schedule, one thread) and nothing else: CPU and wall s, steps;
  run it from two checkouts, alternating, to compare them on a shared machine;
* **search** (``--parts search --model vit_b_16``): one search candidate's prune to 2x
  MACs (group-L2 ``sum``, one thread) on the full 50-step schedule, adaptively
  (``progressive_prune(adaptive=True)``) and on coarser schedules: CPU and wall s, steps
  visited, speed-up reached, and the CPU s of building the pruner (its dependency graph).

Prints one JSON object; the figures are in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # benchmarks/metanet.py
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _gradient_costs(name: str, kwargs: dict[str, Any], size: int, n: int, ch: int) -> dict[str, float]:
    from metaprune.models import ArchSpec
    from metaprune.pruning import gradients

    model = ArchSpec(name, kwargs).build().eval()
    x, y = torch.randn(n, ch, size, size), torch.randint(0, 10, (n,))
    params = dict(model.named_parameters())
    out = {}
    with torch.no_grad():
        start = _cpu()
        model(x)
        out["forward"] = _cpu() - start
    with torch.enable_grad():
        start = _cpu()
        gradients._mean_sums(model, params, x, y)
        out["batched_gradient"] = _cpu() - start
        start = _cpu()
        gradients._per_sample_sums(model, params, x, y)
        out["per_sample_vmap"] = _cpu() - start
    out["fisher_estimate"] = gradients.fisher_estimate(model)  # type: ignore[assignment]
    return out


def _step_costs(model: torch.nn.Module, threads: int) -> dict[str, float]:
    from metaprune.pruning import Target, progressive_prune
    from metaprune.pruning.importance import make_importance
    from metaprune.pruning.targets import measure_cost

    torch.set_num_threads(threads)
    example = torch.randn(1, 3, 224, 224)
    measure_cost(model, example)
    start = _cpu()
    measure_cost(model, example)
    count = _cpu() - start
    copy_ = copy.deepcopy(model)
    start = _cpu()
    history = progressive_prune(
        copy_, example, Target("macs", 2.0), steps=50,
        importance=make_importance("group-l2", normalizer="sum"),
    )  # fmt: skip
    return {"prune": _cpu() - start, "steps": len(history) - 1, "measure_cost": count}


def _count_costs(model: torch.nn.Module) -> dict[str, Any]:
    """CPU s of one count (ours, Torch-Pruning's) and of a prune to 2x with its counts."""
    import torch_pruning as tp

    import metaprune.pruning.progressive as progressive
    from metaprune.pruning import Target, progressive_prune
    from metaprune.pruning.importance import make_importance
    from metaprune.pruning.targets import measure_cost

    example = torch.randn(1, 3, 224, 224)
    out: dict[str, Any] = {}
    for name, count in (("measure_cost", measure_cost),
                        ("torch_pruning", tp.utils.count_ops_and_params)):  # fmt: skip
        count(model, example)  # warm-up
        start = _cpu()
        result = [count(model, example) for _ in range(3)][-1]
        out[f"{name}_cpu_s"] = (_cpu() - start) / 3
        out[f"{name}_macs"] = int(result.macs if name == "measure_cost" else result[0])
    counting = [0.0, 0]

    def timed(*args: Any) -> Any:
        start = _cpu()
        try:
            return measure_cost(*args)
        finally:
            counting[0] += _cpu() - start
            counting[1] += 1

    original, progressive.measure_cost = progressive.measure_cost, timed
    try:
        start = _cpu()
        progressive_prune(copy.deepcopy(model), example, Target("macs", 2.0), steps=50,
                          importance=make_importance("group-l2", normalizer="sum"))  # fmt: skip
        out.update(prune_cpu_s=_cpu() - start, counts=counting[1], counts_cpu_s=counting[0])
    finally:
        progressive.measure_cost = original
    return out


def _search_costs(model: torch.nn.Module) -> dict[str, Any]:
    """One candidate's prune to 2x: the full schedule against cheaper ones (one thread)."""
    from metaprune.pruning import Target, progressive_prune
    from metaprune.pruning.importance import make_importance
    from metaprune.pruning.structure import make_pruner
    from metaprune.pruning.targets import find_classifier

    torch.set_num_threads(1)
    example = torch.randn(1, 3, 224, 224)
    start = _cpu()
    make_pruner(copy.deepcopy(model), example, make_importance("group-l2"),
                ignored_layers=[find_classifier(model, example)])  # fmt: skip
    out: dict[str, Any] = {"make_pruner_and_copy_cpu_s": _cpu() - start}
    for name, steps, adaptive in (("full_50", 50, False), ("adaptive_50", 50, True),
                                  ("steps_12", 12, False), ("steps_8", 8, False)):  # fmt: skip
        start, wall = _cpu(), time.perf_counter()
        history = progressive_prune(copy.deepcopy(model), example, Target("macs", 2.0), steps=steps,
                                    importance=make_importance("group-l2", normalizer="sum"),
                                    adaptive=adaptive)  # fmt: skip
        out[name] = {"cpu_s": _cpu() - start, "wall_s": time.perf_counter() - wall,
                     "visited": len(history) - 1, "last_step": history[-1].step,
                     "speedup": history[-1].macs_speedup}  # fmt: skip
        log = f"{name}: {out[name]}"
        print(log, file=sys.stderr, flush=True)
    return out


def _prune_one(model: torch.nn.Module, normalizer: str) -> tuple[torch.nn.Module, list[Any]]:
    from metaprune.pruning import Target, progressive_prune
    from metaprune.pruning.importance import make_importance

    torch.set_num_threads(1)
    model = copy.deepcopy(model)
    history = progressive_prune(model, torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)),
                                Target("macs", 2.0), steps=50,
                                importance=make_importance("group-l2", normalizer=normalizer))  # fmt: skip
    return model, history


def _prune_costs(model: torch.nn.Module) -> dict[str, Any]:
    start, wall = _cpu(), time.perf_counter()
    _, history = _prune_one(model, "sum")
    return {"cpu_s": round(_cpu() - start, 2), "wall_s": round(time.perf_counter() - wall, 2),
            "steps": len(history) - 1}  # fmt: skip


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _concurrent_costs(model: torch.nn.Module) -> dict[str, Any]:
    """Two candidates' prunes: one after the other, on two threads, in two processes."""
    import concurrent.futures as cf
    import multiprocessing

    norms = ("sum", "max")
    out: dict[str, Any] = {}
    results: dict[str, list[Any]] = {}
    for how in ("sequential", "threads", "processes"):
        start, wall, child = _cpu(), time.perf_counter(), _children_cpu()
        if how == "sequential":
            got = [_prune_one(model, n) for n in norms]
        elif how == "threads":
            with cf.ThreadPoolExecutor(2) as pool:
                got = list(pool.map(_prune_one, [model] * 2, norms))
        else:
            ctx = multiprocessing.get_context("spawn")
            with cf.ProcessPoolExecutor(2, mp_context=ctx) as pool:
                list(pool.map(_import_only, range(2)))  # start-up, timed apart
                ready, ready_cpu = time.perf_counter() - wall, _cpu() - start + _children_cpu() - child
                got = list(pool.map(_prune_one, [model] * 2, norms))
            out["processes_start_up"] = [ready_cpu, ready]
        out[how] = [_cpu() - start + _children_cpu() - child, time.perf_counter() - wall]
        results[how] = got
        print(how, out[how], file=sys.stderr, flush=True)
    for how in ("threads", "processes"):
        out[f"{how}_equal"] = all(
            [h.macs for h in a[1]] == [h.macs for h in b[1]]
            and all(torch.equal(x, y) for x, y in zip(a[0].state_dict().values(), b[0].state_dict().values()))
            for a, b in zip(results["sequential"], results[how])
        )
    return out


def _import_only(_: int) -> int:
    import metaprune.pruning  # noqa: F401

    return os.getpid()


def _thread_costs(model: torch.nn.Module, threads: int) -> dict[str, list[float]]:
    """[CPU s, wall s] of the gradient pass over 16 images and of a 27-image forward."""
    from metaprune.pruning.gradients import GradientCache

    torch.set_num_threads(threads)
    x, y = torch.randn(27, 3, 224, 224), torch.randint(0, 10, (27,))
    out = {}
    for name in ("gradients_16_images", "forward_27_images"):
        start, wall = _cpu(), time.perf_counter()
        if name.startswith("gradients"):
            GradientCache([(x[:16], y[:16])], ("fisher", "mean")).apply(model, "mean")
        else:
            with torch.no_grad():
                model(x)
        out[name] = [_cpu() - start, time.perf_counter() - wall]
    return out


def main(argv: list[str] | None = None) -> int:
    from metaprune.models import ArchSpec

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", default=["all"], choices=["all", "threads", "count", "prune", "search", "concurrent"])
    p.add_argument("--model", default="resnet50", help="torchvision model of --parts threads / prune / search / concurrent")
    a = p.parse_args(argv)
    threads = torch.get_num_threads()
    one_model = {"threads": lambda m: {f"{n}_threads_run_{r}": _thread_costs(m, n) for r in (1, 2) for n in (1, 2)},
                 "concurrent": _concurrent_costs, "prune": _prune_costs, "search": _search_costs}  # fmt: skip
    for part, costs in one_model.items():  # a part on one model: its JSON, and done
        if part in a.parts:
            model = ArchSpec(f"torchvision/{a.model}", {"num_classes": 10}).build().eval()
            out = {"model": a.model, "load_before": os.getloadavg(), **costs(model)}
            out["load_after"] = os.getloadavg()
            print(json.dumps(out, indent=1))
            return 0
    torch.set_num_threads(1)
    if "count" in a.parts:
        names = ("resnet50", "convnext_tiny", "vit_b_16")
        print(json.dumps({n: _count_costs(ArchSpec(f"torchvision/{n}", {"num_classes": 10}).build().eval())
                          for n in names}, indent=1))  # fmt: skip
        return 0
    out: dict[str, Any] = {
        "gradients_resnet50_224_8_images": _gradient_costs(
            "torchvision/resnet50", {"num_classes": 10}, 224, 8, 3),
        "gradients_vgg11_8x8_64_images": _gradient_costs(
            "cifar_vgg11_bn", {"num_classes": 10, "in_channels": 1}, 8, 64, 1),
    }  # fmt: skip
    model = ArchSpec("torchvision/resnet50", {"num_classes": 10}).build().eval()
    out["steps_1_thread"] = _step_costs(model, 1)
    out["steps_2_threads"] = _step_costs(model, max(2, threads))
    x = torch.randn(64, 3, 224, 224)
    with torch.no_grad():
        model(x[:2])
        for batch in (64, 27, 13):
            start = _cpu()
            for i in range(0, 64, batch):
                model(x[i : i + batch])
            out[f"forward_64_images_batch_{batch}"] = _cpu() - start
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
