"""Helpers for tests, benchmarks and the demo: tokens, tiny checkpoints and job configs, a
real server on ``127.0.0.1`` port 0 (in this process or as a ``metaprune serve`` subprocess).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from service.process import ServeProcess, serve_process

__all__ = [
    "TOKENS",
    "ServeProcess",
    "make_checkpoint",
    "running_server",
    "serve_process",
    "tiny_config",
    "token_configs",
]

#: name -> (secret, role) of the tokens test servers accept.
TOKENS = {
    "alice": ("alice-secret-token-0001", "user"),
    "bob": ("bob-secret-token-000002", "user"),
    "root": ("root-secret-token-00003", "admin"),
    "viewer": ("viewer-secret-token-004", "viewer"),
}


def token_configs() -> list[dict[str, str]]:
    return [{"name": n, "token": s, "role": r} for n, (s, r) in TOKENS.items()]


def make_checkpoint(
    path: str | os.PathLike[str], *, in_channels: int = 3, num_classes: int = 4,
    width: float = 1.0, seed: int = 0, name: str = "cifar_resnet20",
) -> Path:  # fmt: skip
    """A randomly initialised CIFAR-style ResNet saved as a metaprune checkpoint (~1 MB at
    width 1; fits the ``synthetic`` dataset by default)."""
    import torch

    import metaprune

    kwargs: dict[str, Any] = {"in_channels": in_channels, "num_classes": num_classes}
    if width != 1.0:
        kwargs["width"] = width
    spec = metaprune.ArchSpec(name, kwargs)
    torch.manual_seed(seed)
    return metaprune.save(spec.build(), spec, path)


def tiny_config(**overrides: Any) -> dict[str, Any]:
    """A PruneConfig dict for a job of about a second: no fine-tune before, one epoch
    after, 10 pruning steps, minimal latency timing, a fixed normaliser (the default
    ``"auto"`` search was two thirds of such a job; pass ``importance={"normalizer":
    "auto"}`` for it)."""
    config: dict[str, Any] = {
        "target": {"kind": "macs", "value": 1.5},
        "importance": {"normalizer": "mean"},
        "before_pruning": {"epochs": 0},
        "after_pruning": {"epochs": 1},
        "pruning": {"steps": 10, "curve_points": 1},
        "bn_recalibration_images": 64,
        "batch_size": 64,
        "latency": {"batch_size": 8, "repeats": 1, "warmup": 0},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@contextlib.contextmanager
def running_server(data_dir: str | os.PathLike[str], **overrides: Any) -> Iterator[Any]:
    """A started in-process server on 127.0.0.1:0 with :data:`TOKENS`; stopped on exit."""
    from service.config import load_config
    from service.server import create_server

    settings: dict[str, Any] = {
        "host": "127.0.0.1", "port": 0, "data_dir": str(data_dir), "workers": 1,
        "tokens": token_configs(), "grace_seconds": 5.0, "watch_interval": 0.02,
    }  # fmt: skip
    settings.update(overrides)
    server, _ = create_server(load_config(None, **settings))
    server.start()
    try:
        yield server
    finally:
        server.stop(2.0)
