"""Scale benchmark (issue 18): a job's cost at 224x224, in units of the model's own forward.

    nice python benchmarks/scale.py --models resnet50                 # the 0-epoch job
    nice python benchmarks/scale.py --models convnext_tiny vit_b_16
    nice python benchmarks/scale.py --finetune                        # 1 epoch, 1,000 images

Per torchvision model (random weights, 10 classes; no downloads), in a fresh process so
peak RSS is the job's: seeded ``synthetic`` data at 224 (256 train / 64 val / 64 test,
10 classes), then

* **unit**: one batch-64 eval forward of the base model, timed before and after the job
  in the same process (the mean is the unit; the machine is shared, so only ratios
  measured in one run mean anything), in wall and in CPU seconds of the process (the
  CPU ratio is the one that survives other processes' load);
* **our job**: ``prune(..., PruneConfig(target 2x MACs, 0 epochs before and after))``,
  all other settings default: wall time in units, the stage split, the longest silence
  between two progress events, the number of events, peak RSS (``ru_maxrss``) and the
  peak resident memory per stage (sampled every 50 ms; per candidate in the search);
* **Torch-Pruning's plain one-shot ``MagnitudePruner``** on a copy of the base model
  (L2 magnitude, uniform ratio ``1 - 1/sqrt(2)``: about 2x MACs), plus one validation
  pass: our job's overhead is the ratio of the two wall times. For torchvision's ViT it
  follows Torch-Pruning's own recipe (attention heads as channel groups, ``hidden_dim``
  set after the step); without it the pruned baseline crashed in its evaluation.

``--finetune``: 1,112 JPEG files (10 classes) written to a temp dir as an ImageFolder
(10 % carved for validation: ~1,000 training images) at 224; the decode + augment cost
per image with 0 and 2 DataLoader workers, and one fine-tune epoch of ResNet-50 through
``finetune`` (batch 32, decoding in-process): seconds per 1,000 training images
(``--finetune-images`` writes fewer files on a busy machine; the figure is per 1,000).

Results: ``benchmarks/scale/results.json`` (one entry per model / the fine-tune).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # benchmarks/metanet.py
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OUT = ROOT / "benchmarks" / "scale"
MODELS = ("resnet50", "convnext_tiny", "vit_b_16")


def log(*args: Any) -> None:
    print(time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def _rss_gb() -> float:
    """Resident memory of this process now (``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 1024**3


def _tree_memory_gb() -> tuple[float, float]:
    """(RSS, PSS) of this process and its children (the search's worker processes),
    summed: the RSS sum counts pages shared between them (the model in shared memory)
    once per process, the PSS sum divides them among the processes that map them."""
    pids = ["self"]
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            pids += (task / "children").read_text().split()
    rss = pss = 0.0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(("Rss:", "Pss:")):
                    kb = int(line.split()[1]) / 1024**2
                    rss, pss = (rss + kb, pss) if line.startswith("Rss:") else (rss, pss + kb)
    return rss, pss


class _RssByStage:
    """Samples the resident memory every 50 ms and keeps the peak per job stage (the stage
    of the last progress event; ``what`` adds the candidate or task inside a search)."""

    def __init__(self) -> None:
        import threading

        self.label, self.peaks, self.tree = "start", dict[str, float](), [0.0, 0.0]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ticks = 0
        while not self._stop.wait(0.05):
            rss = _rss_gb()
            self.peaks[self.label] = max(self.peaks.get(self.label, 0.0), rss)
            ticks += 1
            if ticks % 10 == 0:  # every 0.5 s: reading smaps costs more than statm
                self.tree = [max(a, b) for a, b in zip(self.tree, _tree_memory_gb())]

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {k: round(v, 3) for k, v in self.peaks.items()}


def _cpu() -> float:
    """CPU seconds of this process (all threads) and of its children that ended (the
    search's worker processes, counted when the search stops them): robust to other
    processes' load."""
    return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def _unit(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(wall, CPU) seconds of one eval forward of ``x``."""
    model.eval()
    with torch.no_grad():
        start, cpu = time.perf_counter(), _cpu()
        model(x)
        return time.perf_counter() - start, _cpu() - cpu


def _tp_attention_options(model: torch.nn.Module) -> dict[str, Any]:
    """What Torch-Pruning's torchvision examples pass for ``nn.MultiheadAttention``: its
    embedding pruned whole heads' worth at a time, so ``embed_dim`` stays divisible by
    ``num_heads`` (without it, ViT-B/16 fails after the step)."""
    heads = {
        m: m.num_heads for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)
    }
    if not heads:
        return {}
    return {"out_channel_groups": heads, "round_to": math.lcm(*heads.values())}


def _cpu_split(marks: list[tuple[float, str, str]], start: float, key: Any,
               cpu_unit: float) -> dict[str, float]:  # fmt: skip
    """CPU units between consecutive progress events, summed by ``key(stage, what)`` of
    the later event (the work that event reports); ``None`` keys are skipped."""
    out: dict[str, float] = {}
    last = start
    for cpu, stage, what in marks:
        k = key(stage, what)
        if k is not None:
            out[k] = out.get(k, 0.0) + (cpu - last) / cpu_unit
        last = cpu
    return out


def run_model(
    name: str, size: int = 224, search_steps: int | None = None, head_std: float = 0.0,
    search_workers: int | None = None,
) -> dict[str, Any]:
    """One model: unit, our job, Torch-Pruning's one-shot baseline (in this process)."""
    import torch_pruning as tp

    from metaprune.data import get_dataset, make_loaders
    from metaprune.models import ArchSpec
    from metaprune.pruning import (
        FinetuneBudget,
        ImportanceOptions,
        PruneConfig,
        Target,
        evaluate,
        prune,
    )
    from metaprune.pruning.targets import find_classifier, measure_cost

    torch.manual_seed(0)
    spec = ArchSpec(f"torchvision/{name}", {"num_classes": 10})
    model = spec.build().eval()
    if head_std:  # torchvision's ViT zero-initialises its head: no loss gradient passes it
        torch.nn.init.normal_(find_classifier(model, torch.zeros(1, 3, size, size)).weight, std=head_std)
    splits = get_dataset("synthetic", seed=0, num_classes=10, image_size=size)
    x = torch.randn(64, 3, size, size, generator=torch.Generator().manual_seed(1))
    _unit(model, x[:4])  # warm-up
    unit_before, cpu_unit_before = _unit(model, x)
    log(f"{name}: unit {unit_before:.1f} s")

    events: list[tuple[float, str, int, int, dict[str, Any]]] = []
    cpu_marks: list[tuple[float, str, str]] = []  # (CPU s, stage, what: candidate or task)
    t0 = time.perf_counter()

    def progress(event: Any) -> None:
        metrics = {k: v for k, v in event.metrics.items() if isinstance(v, (str, int, float))}
        events.append((time.perf_counter() - t0, event.stage, event.step, event.total, metrics))
        what = event.metrics.get("task") or event.metrics.get("candidate") or ""
        cpu_marks.append((_cpu(), event.stage, str(what)))
        rss.label = f"{event.stage}:{what}" if event.stage == "criterion_search" else event.stage

    config = PruneConfig(
        target=Target("macs", 2.0),
        before_pruning=FinetuneBudget(epochs=0), after_pruning=FinetuneBudget(epochs=0),
        importance=ImportanceOptions(search_steps=search_steps, **(
            {} if search_workers is None else {"search_workers": search_workers})),
    )  # fmt: skip
    load_before = os.getloadavg()
    start, cpu = time.perf_counter(), _cpu()
    job_cpu_start = cpu
    rss_before = _rss_gb()
    rss = _RssByStage()
    result = prune(model, splits, config, progress=progress, spec=spec)
    job, job_cpu = time.perf_counter() - start, _cpu() - cpu
    rss_stages = rss.stop()
    rss_job = _peak_rss_gb()
    cpu_marks.append((_cpu(), "end", ""))
    log(f"{name}: job {job:.0f} s")
    times = [0.0] + [e[0] for e in events] + [job]
    gaps = [b - a for a, b in zip(times, times[1:])]
    worst = max(range(len(gaps)), key=gaps.__getitem__)
    after_event = events[worst - 1][1:] if worst > 0 else ("start",)
    ended_by = events[worst][1:] if worst < len(events) else ("end",)
    cpu_times = [job_cpu_start] + [c for c, _, _ in cpu_marks]  # the last mark: the job's end
    cpu_gaps = [b - a for a, b in zip(cpu_times, cpu_times[1:])]
    cpu_worst = max(range(len(cpu_gaps)), key=cpu_gaps.__getitem__)

    # Torch-Pruning's plain one-shot magnitude pruner + one validation pass
    base = copy.deepcopy(model)
    example = torch.randn(1, 3, size, size)
    _, val, _ = make_loaders(splits, 64, 0)
    start, cpu = time.perf_counter(), _cpu()
    pruner = tp.pruner.MagnitudePruner(
        base, example, tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=1 - 1 / math.sqrt(2), ignored_layers=[find_classifier(base, example)],
        **_tp_attention_options(base),
    )  # fmt: skip
    pruner.step()
    if hasattr(base, "hidden_dim") and hasattr(base, "conv_proj"):
        # torchvision's ViT reshapes its input to this width (Torch-Pruning's own recipe)
        base.hidden_dim = base.conv_proj.out_channels
    tp_val = evaluate(base, val)
    tp_seconds, tp_cpu = time.perf_counter() - start, _cpu() - cpu
    tp_speedup = measure_cost(model, example).macs / measure_cost(base, example).macs

    unit_after, cpu_unit_after = _unit(model, x)
    unit = (unit_before + unit_after) / 2
    cpu_unit = (cpu_unit_before + cpu_unit_after) / 2
    report = result.report
    return {
        "model": name,
        "unit_seconds": [unit_before, unit_after],
        "unit_cpu_seconds": [cpu_unit_before, cpu_unit_after],
        "job_cpu_seconds": job_cpu,
        "job_cpu_units": job_cpu / cpu_unit,
        "job_seconds": job,
        "job_units": job / unit,
        "stage_units": {k: v / unit for k, v in report["stage_seconds"].items()},
        "stage_cpu_units": _cpu_split(cpu_marks, job_cpu_start, lambda stage, what: stage, cpu_unit),
        "search_cpu_units": _cpu_split(
            cpu_marks, job_cpu_start, lambda stage, what: what if stage == "criterion_search" else None,
            cpu_unit,
        ),
        "longest_silence_seconds": gaps[worst],
        "longest_silence_units": gaps[worst] / unit,
        "longest_silence_after": list(after_event),
        "longest_silence_ended_by": list(ended_by),
        "longest_silence_cpu_units": cpu_gaps[cpu_worst] / cpu_unit,
        "longest_silence_cpu_ended_by": list(cpu_marks[cpu_worst][1:]),
        "events": len(events),
        "peak_rss_gb_after_job": rss_job,
        "rss_gb_before_job": rss_before,
        "peak_rss_gb_by_stage": rss_stages,  # sampled every 50 ms, by the last event's stage
        # this process and its children (search workers), summed, sampled every 0.5 s
        "peak_rss_gb_with_workers": round(rss.tree[0], 3),
        "peak_pss_gb_with_workers": round(rss.tree[1], 3),
        "macs_speedup": report["speedup"]["macs"],
        "target_reached": report["target_reached"],
        "normalizer": report["stages"]["prune"]["normalizer"],
        "criterion": report["method_choice"]["criterion"],
        "criterion_search": report["stages"]["prune"].get("criterion_search"),
        "work": report["work"],
        "torch_pruning": {"seconds": tp_seconds, "units": tp_seconds / unit,
                          "cpu_seconds": tp_cpu, "cpu_units": tp_cpu / cpu_unit,
                          "macs_speedup": tp_speedup, "val_accuracy": tp_val},  # fmt: skip
        "overhead_vs_torch_pruning": job / tp_seconds,
        "overhead_vs_torch_pruning_cpu": job_cpu / tp_cpu,
        "threads": torch.get_num_threads(),
        "load_average_before_after": [load_before, os.getloadavg()],  # 1, 5, 15 min
    }


def run_finetune(images: int = 1112) -> dict[str, Any]:
    """Decode cost and one fine-tune epoch of ResNet-50 on a 1,000-image ImageFolder at 224."""
    import numpy as np
    from PIL import Image

    from metaprune.data import get_dataset, make_loaders
    from metaprune.models import ArchSpec
    from metaprune.pruning import FinetuneBudget, finetune

    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        for split, n in (("train", images), ("val", 20)):
            for i in range(n):
                cls = Path(tmp, split, f"c{i % 10}")
                cls.mkdir(parents=True, exist_ok=True)
                pixels = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)  # camera-like size
                Image.fromarray(pixels).save(cls / f"{i}.jpg", quality=90)
        splits = get_dataset("imagefolder", tmp, seed=0, image_size=224)
        out: dict[str, Any] = {"train_images": len(splits.train), "val_images": len(splits.val)}
        for workers in (0, 2):
            train, _, _ = make_loaders(splits, 32, 0, num_workers=workers)
            start, cpu = time.perf_counter(), _cpu()
            n = sum(len(labels) for _, labels in train)
            out[f"decode_ms_per_image_{workers}_workers"] = 1000 * (time.perf_counter() - start) / n
            if workers == 0:  # in this process: its CPU time is the decode + augment work
                out["decode_cpu_ms_per_image"] = 1000 * (_cpu() - cpu) / n
            log(f"decode, {workers} workers: {out[f'decode_ms_per_image_{workers}_workers']:.1f} ms/image")
        torch.manual_seed(0)
        model = ArchSpec("torchvision/resnet50", {"num_classes": 10}).build()
        # in-process decoding (measured above; a spawned worker's start-up would weigh on a
        # short epoch)
        train, val, _ = make_loaders(splits, 32, 0)
        x = torch.randn(64, 3, 224, 224, generator=torch.Generator().manual_seed(1))
        _unit(model, x[:4])
        unit, cpu_unit = _unit(model, x)  # the load-proof yardstick, as for the jobs
        start, cpu = time.perf_counter(), _cpu()
        finetune(model, train, val, FinetuneBudget(epochs=1), initial_val_accuracy=0.0)
        seconds, cpu_seconds = time.perf_counter() - start, _cpu() - cpu
        per_1000 = 1000 / len(splits.train)
        out.update(unit_seconds=unit, unit_cpu_seconds=cpu_unit,
                   units_per_1000_images=per_1000 * seconds / unit,
                   cpu_units_per_1000_images=per_1000 * cpu_seconds / cpu_unit,
                   cpu_seconds_per_1000_images=per_1000 * cpu_seconds)  # fmt: skip
        out.update(epoch_seconds=seconds, seconds_per_1000_images=per_1000 * seconds,
                   threads=torch.get_num_threads(), peak_rss_gb=_peak_rss_gb())  # fmt: skip
        return out


def _save(key: str, rec: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = {**rec, "date": time.strftime("%Y-%m-%d %H:%M")}
    path.write_text(json.dumps(data, indent=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", default=["resnet50"], choices=MODELS)
    p.add_argument("--finetune", action="store_true", help="also the ImageFolder fine-tune epoch")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--image-size", type=int, default=224, help=argparse.SUPPRESS)  # smoke runs
    p.add_argument("--finetune-images", type=int, default=1112,
                   help="ImageFolder train/ images (10 %% become validation)")  # fmt: skip
    p.add_argument("--search-steps", type=int, default=None,
                   help="importance.search_steps (50: every candidate on the full schedule)")  # fmt: skip
    p.add_argument("--head-std", type=float, default=0.0,
                   help="re-initialise the classifier N(0, std): gradients reach a zero-init head's inputs")  # fmt: skip
    p.add_argument("--search-workers", type=int, default=None,
                   help="importance.search_workers (default: the library's, 1 = one candidate at a time; "
                        "0 = the job's threads at 224 px)")  # fmt: skip
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    if a.child:  # one measurement in this (fresh) process; JSON on stdout
        rec = (run_finetune(a.finetune_images) if a.child == "finetune"
               else run_model(a.child, a.image_size, a.search_steps, a.head_std, a.search_workers))  # fmt: skip
        print(json.dumps(rec))
        return 0
    for name in [*a.models, *(["finetune"] if a.finetune else [])]:
        args = ["--child", name, "--finetune-images", str(a.finetune_images)]
        args += ["--search-steps", str(a.search_steps)] if a.search_steps else []
        args += ["--head-std", str(a.head_std)] if a.head_std else []
        args += ["--search-workers", str(a.search_workers)] if a.search_workers is not None else []
        proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
        sys.stderr.write(proc.stderr[-3000:] if proc.returncode else "")
        if proc.returncode:
            rec = {"pending": True, "error": proc.stderr.strip().splitlines()[-1:]}
        else:
            rec = json.loads(proc.stdout.strip().splitlines()[-1])
        _save(name, rec, a.out)
        print(name, json.dumps(rec, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
