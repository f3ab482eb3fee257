"""Helpers for the hostile-input tests (``tests/metaprune/untrusted/``).

:func:`check_error` is the one assertion every hostile input must pass: the failure left
as one of the documented types, with a short, one-line message that names the problem;
:func:`raw_checkpoint` writes a safetensors file with arbitrary metadata (what an attacker
uploads); :func:`files_under` lists what a directory holds (to assert nothing was written).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from metaprune.errors import MAX_MESSAGE_BYTES, MetapruneError

__all__ = ["check_error", "files_under", "generated", "raises", "raw_checkpoint"]


def check_error(
    err: BaseException,
    types: type[BaseException] | tuple[type[BaseException], ...],
    *words: str,
) -> str:
    """Assert ``err`` is one of ``types`` (and a :class:`MetapruneError`), with a message
    under :data:`MAX_MESSAGE_BYTES` (UTF-8), without a traceback, a memory address or an
    install path, containing every one of ``words``; return the message."""
    assert isinstance(err, types), f"{type(err).__name__}: {str(err)[:500]}"
    assert isinstance(err, MetapruneError), type(err).__mro__
    message = str(err)
    assert 0 < len(message.encode("utf-8")) < MAX_MESSAGE_BYTES, len(message.encode("utf-8"))
    assert "Traceback" not in message and "site-packages" not in message, message[:500]
    assert " at 0x" not in message, message[:500]
    for word in words:
        assert word in message, f"{word!r} not in {message[:500]!r}"
    return message


def raises(fn: Callable[[], Any]) -> BaseException:
    """The exception ``fn()`` raises (assertion error if it returns)."""
    try:
        fn()
    except Exception as err:  # noqa: BLE001 (the caller checks the type)
        return err
    raise AssertionError(f"{fn} did not raise")


def raw_checkpoint(
    path: str | os.PathLike[str],
    spec_json: Any,
    tensors: Mapping[str, torch.Tensor] | None = None,
    version: str | None = "1",
) -> Path:
    """A safetensors file whose ``metaprune.spec`` metadata is ``spec_json`` (dumped to JSON
    unless a string), bypassing every check :func:`metaprune.save` makes."""
    metadata: dict[str, str] = {}
    if spec_json is not None:
        metadata["metaprune.spec"] = (
            spec_json if isinstance(spec_json, str) else json.dumps(spec_json)
        )
    if version is not None:
        metadata["metaprune.format_version"] = version
    tensors = dict(tensors or {"w": torch.zeros(1)})
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return Path(path)


def files_under(root: str | os.PathLike[str]) -> list[str]:
    """Every file and directory under ``root``, relative, sorted."""
    base = Path(root)
    return sorted(str(p.relative_to(base)) for p in base.rglob("*"))


def generated(max_examples: int) -> Any:
    """Hypothesis settings for the untrusted-input tests: ``max_examples`` derandomised
    examples (the same every run, also in bounded child processes that load no conftest),
    no deadline (children and model builds are slow on a shared machine), no database."""
    from hypothesis import HealthCheck, settings  # a dev dependency: only tests call this

    return settings(
        max_examples=max_examples, deadline=None, database=None, derandomize=True,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
