"""Every torchvision classifier, encoded and decoded (random init, randomised norms).

    PYTHONPATH=. .venv/bin/python -m metaprune.testing.torchvision_sweep [name ...]

prints a markdown table (model, exact / refused, reason, coverage, seconds). Large models
take minutes and gigabytes; the slow test covers a sample, this script the full list.
"""

from __future__ import annotations

import copy
import sys
import time
import warnings

import torch
import torchvision
from torch import nn

from graph_encoding import EncodingError, decode, encode
from metaprune.testing import randomize_norms

__all__ = ["input_side", "check", "main"]


def input_side(name: str) -> int:
    if name == "inception_v3":
        return 299
    if name.startswith(("vit_", "swin", "maxvit")):
        return 224
    return 64


def check(name: str) -> tuple[str, str, float, float]:
    torch.manual_seed(0)
    t = time.perf_counter()
    model = randomize_norms(torchvision.models.get_model(name, num_classes=10)).eval()
    side = input_side(name)
    x = torch.randn(1, 3, side, side)
    try:
        graph = encode(model, x)
    except EncodingError as exc:
        return "refused", str(exc), 0.0, time.perf_counter() - t
    except Exception as exc:  # a crash is a bug of the encoder: reported, never hidden
        return "CRASH", repr(exc), 0.0, time.perf_counter() - t
    state = decode(graph, model)
    bad = [k for k, v in model.state_dict().items() if not torch.equal(state[k], v)]
    rebuilt = copy.deepcopy(model)
    with torch.no_grad():
        for p in rebuilt.parameters():
            nn.init.zeros_(p)
    rebuilt.load_state_dict(state)
    with torch.no_grad():
        same = torch.equal(rebuilt(x), model(x))
    result = "exact" if not bad and same else "INEXACT"
    return (
        result,
        "" if result == "exact" else f"{bad[:3]} outputs equal={same}",
        graph.coverage,
        time.perf_counter() - t,
    )


def main(names: list[str]) -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    names = names or torchvision.models.list_models(module=torchvision.models)
    print(f"{len(names)} classifiers")
    print("| model | result | reason | coverage | s |")
    print("|---|---|---|---|---|")
    counts: dict[str, int] = {}
    for name in names:
        result, reason, coverage, seconds = check(name)
        counts[result] = counts.get(result, 0) + 1
        print(
            f"| {name} | {result} | {reason[:160]} | {coverage:.4f} | {seconds:.1f} |", flush=True
        )
    print(counts)


if __name__ == "__main__":
    main(sys.argv[1:])
