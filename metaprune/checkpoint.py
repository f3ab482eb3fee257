"""Safe checkpoints: weights and architecture in one ``.safetensors`` file, no pickle.

Format (``metaprune.format_version`` 1): a standard safetensors file whose

* **tensors** are the model's ``state_dict`` (every persistent parameter and buffer,
  e.g. BatchNorm's ``num_batches_tracked``), stored as contiguous CPU tensors under
  their state-dict keys. Tensors that share memory (tied or aliased weights) are stored
  as independent copies.
* **metadata** (string -> string) holds

  - ``"metaprune.format_version"``: ``"1"``;
  - ``"metaprune.spec"``: the JSON of :meth:`metaprune.models.ArchSpec.to_json`, i.e.
    ``{"format_version": 1, "name": ..., "kwargs": {...}, "channel_plan": {...}}``
    (``channel_plan`` only for pruned models);
  - optionally, caller-supplied keys that do not start with ``"metaprune."``.

Loading reads the file with safetensors only (never ``pickle``/``torch.load``), builds
the architecture from the allow-listed model registry, and checks the tensors against
it: every problem raises :class:`CheckpointError` naming the file, the key, what was
expected and what was found. Floating-point tensors may be stored in any floating
dtype and are loaded as stored; integer/bool tensors must have exactly the dtype of the
architecture.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from metaprune.models import ArchSpec
from metaprune.models.registry import UnknownModelError
from metaprune.models.spec import SpecError

__all__ = [
    "FORMAT_VERSION",
    "SPEC_KEY",
    "VERSION_KEY",
    "CheckpointError",
    "load",
    "load_state",
    "read_spec",
    "save",
]

FORMAT_VERSION = 1
SPEC_KEY = "metaprune.spec"
VERSION_KEY = "metaprune.format_version"

_MAX_LISTED_PROBLEMS = 8


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read; the message names the file and the problem."""


def save(
    model_or_state: nn.Module | Mapping[str, Tensor],
    spec: ArchSpec,
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``model_or_state`` and ``spec`` to ``path`` (atomically) and return the path.

    The state is checked against ``spec`` first, so every saved checkpoint loads.
    For a pruned model, pass ``spec.with_plan_of(model)``.

    Args:
        model_or_state: a module or its ``state_dict``.
        spec: the architecture (with its channel plan if pruned).
        path: destination file, conventionally ``*.safetensors``.
        metadata: extra string metadata (keys must not start with ``"metaprune."``).

    Raises:
        CheckpointError: if the state does not match ``spec`` or is not all tensors.
    """
    path = Path(path)
    where = f"cannot save checkpoint {str(path)!r}"
    if not isinstance(spec, ArchSpec):
        raise CheckpointError(f"{where}: spec must be an ArchSpec (found {type(spec).__name__})")
    state = (
        model_or_state.state_dict()
        if isinstance(model_or_state, nn.Module)
        else dict(model_or_state)
    )
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(
                f"{where}: state entry {key!r} is a {type(value).__name__}, not a tensor"
            )
        if value.is_meta:
            raise CheckpointError(f"{where}: tensor {key!r} is on the meta device (it has no data)")
    _check_state(state, spec, where)
    extra = dict(metadata or {})
    for key, value in extra.items():
        if not isinstance(key, str) or not isinstance(value, str) or key.startswith("metaprune."):
            raise CheckpointError(
                f"{where}: metadata entry {key!r} must map a string key not starting with "
                f"'metaprune.' to a string (found {type(value).__name__})"
            )
    extra[SPEC_KEY] = json.dumps(spec.to_json(), sort_keys=True)
    extra[VERSION_KEY] = str(FORMAT_VERSION)
    # clone: safetensors refuses shared storage; contiguous: it stores dense row-major data
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=extra)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_spec(path: str | os.PathLike[str]) -> ArchSpec:
    """The architecture spec of a checkpoint, read from its header only (no tensor data).

    Raises:
        CheckpointError: if the file is missing, corrupt, or has no valid spec metadata.
    """
    path = Path(path)
    try:
        with safe_open(str(_existing(path)), framework="pt") as f:
            metadata = f.metadata()
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a readable safetensors file: {err}"
        ) from None
    return _parse_spec(path, metadata)


def load_state(
    path: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> tuple[dict[str, Tensor], ArchSpec]:
    """Read and validate a checkpoint; return its state dict (on ``device``, in the
    architecture's ``state_dict`` key order) and spec.

    Raises:
        CheckpointError: file missing, truncated or corrupt; spec metadata missing or
            invalid; unknown architecture; missing/unexpected keys; wrong shapes or dtypes.
    """
    path = Path(path)
    try:
        with safe_open(str(_existing(path)), framework="pt", device=str(device)) as f:
            metadata = f.metadata()
            spec = _parse_spec(path, metadata)
            state = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a readable safetensors file (truncated or corrupt?): {err}"
        ) from None
    order = _check_state(state, spec, f"checkpoint {str(path)!r}")
    return {key: state[key] for key in order}, spec


def load(
    path: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> tuple[nn.Module, ArchSpec]:
    """Rebuild the model of a checkpoint (pruned channels included) with its weights.

    The module is returned in training mode, like any freshly built module; its tensors
    keep the checkpoint's dtypes.

    Raises:
        CheckpointError: see :func:`load_state`.
    """
    state, spec = load_state(path, device)
    model = spec.skeleton()
    model.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        # a non-persistent buffer was not in the checkpoint: build it for real
        model = spec.build()
        model.load_state_dict(state, strict=True, assign=True)
    return model.to(device), spec


def _existing(path: Path) -> Path:
    if not path.exists():
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} is not a file")
    return path


def _parse_spec(path: Path, metadata: Mapping[str, str] | None) -> ArchSpec:
    metadata = metadata or {}
    where = f"checkpoint {str(path)!r}"
    if SPEC_KEY not in metadata:
        raise CheckpointError(
            f"{where} has no {SPEC_KEY!r} metadata, so it is not a metaprune checkpoint "
            f"(found metadata keys {sorted(metadata)})"
        )
    version = metadata.get(VERSION_KEY)
    if version != str(FORMAT_VERSION):
        raise CheckpointError(
            f"{where}: metadata {VERSION_KEY!r} is {version!r}, expected {str(FORMAT_VERSION)!r}"
        )
    try:
        return ArchSpec.from_json(metadata[SPEC_KEY])
    except (SpecError, UnknownModelError) as err:
        raise CheckpointError(f"{where}: metadata {SPEC_KEY!r}: {err}") from None


def _check_state(state: Mapping[str, Tensor], spec: ArchSpec, where: str) -> list[str]:
    """Raise CheckpointError listing every mismatch between ``state`` and ``spec``'s model;
    return the model's state-dict keys in module order."""
    try:
        expected = spec.skeleton().state_dict()
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            f"{where}: cannot build architecture {spec.name!r} with kwargs {spec.kwargs}: {err}"
        ) from None
    problems: list[str] = []
    for key, ref in expected.items():
        if key not in state:
            problems.append(
                f"missing key {key!r} (expected shape {tuple(ref.shape)}, dtype {ref.dtype})"
            )
            continue
        found = state[key]
        if tuple(found.shape) != tuple(ref.shape):
            problems.append(
                f"key {key!r}: expected shape {tuple(ref.shape)}, found {tuple(found.shape)}"
            )
        if ref.is_floating_point() != found.is_floating_point() or (
            not ref.is_floating_point() and ref.dtype != found.dtype
        ):
            kind = "a floating dtype" if ref.is_floating_point() else str(ref.dtype)
            problems.append(f"key {key!r}: expected {kind}, found {found.dtype}")
    problems += [
        f"unexpected key {key!r} (shape {tuple(state[key].shape)})"
        for key in state
        if key not in expected
    ]
    if problems:
        listed = "; ".join(problems[:_MAX_LISTED_PROBLEMS])
        more = len(problems) - _MAX_LISTED_PROBLEMS
        raise CheckpointError(
            f"{where}: tensors do not match architecture {spec.name!r} "
            f"({len(problems)} problem{'s' if len(problems) > 1 else ''}): {listed}"
            + (f"; ... and {more} more" if more > 0 else "")
        )
    return list(expected)
