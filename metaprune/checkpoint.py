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

Loading reads the file with safetensors only (never ``pickle``/``torch.load``) and treats
it as untrusted: the file size and the JSON header size are checked against
:class:`~metaprune.limits.Limits` before the header is parsed; the spec is sized on the
meta device and checked against the limits before anything is built; the tensors'
shapes and dtypes (from the header) are compared with the architecture before any tensor
data is read; and non-finite (NaN/Inf) weights are refused unless explicitly allowed.
Every problem raises :class:`CheckpointError` (or :class:`~metaprune.errors.LimitExceededError`)
naming the file, the key, what was expected and what was found.

Floating-point tensors may be stored in any floating dtype (float16, bfloat16, float32,
float64); integer/bool tensors must have exactly the dtype of the architecture.
:func:`load` returns the model in **float32** by default (``dtype=None`` keeps the stored
dtypes): half-precision CPU kernels are missing or slow, and fine-tuning in float16
without loss scaling underflows, so ``info``, ``eval`` and ``prune`` compute in float32 and
``prune`` writes a float32 checkpoint. :func:`load_state` always returns tensors as stored.
"""

from __future__ import annotations

import json
import os
import struct
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from metaprune.errors import InvalidInputError, LimitExceededError, NotFoundError, quote
from metaprune.limits import DEFAULT_LIMITS, Limits
from metaprune.models import ArchSpec

__all__ = [
    "FORMAT_VERSION",
    "SPEC_KEY",
    "VERSION_KEY",
    "CheckpointError",
    "aligned",
    "check_layout",
    "check_safetensors_file",
    "CheckpointNotFoundError",
    "describe_foreign_file",
    "import_hint",
    "load",
    "load_state",
    "read_spec",
    "save",
]

FORMAT_VERSION = 1
SPEC_KEY = "metaprune.spec"
VERSION_KEY = "metaprune.format_version"

_MAX_LISTED_PROBLEMS = 8


_SAFETENSORS_DTYPES = {
    "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
    "I8": torch.int8, "U8": torch.uint8, "I16": torch.int16, "I32": torch.int32,
    "I64": torch.int64, "BOOL": torch.bool,
}  # fmt: skip


class CheckpointError(InvalidInputError):
    """A checkpoint cannot be written or read; the message names the file and the problem."""


class CheckpointNotFoundError(CheckpointError, NotFoundError):
    """The checkpoint file does not exist."""


def save(
    model_or_state: nn.Module | Mapping[str, Tensor],
    spec: ArchSpec | Mapping[str, Any] | str,
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``model_or_state`` and ``spec`` to ``path`` (atomically) and return the path.

    The state is checked against ``spec`` first, so every saved checkpoint loads.
    For a pruned model, pass ``spec.with_plan_of(model)``.

    Args:
        model_or_state: a module or its ``state_dict``.
        spec: the architecture (with its channel plan if pruned): an :class:`ArchSpec`, or
            its JSON form as a dict or text, ``format_version`` optional
            (``{"name": "cifar_resnet20", "kwargs": {"num_classes": 4}}``), validated the same way.
        path: destination file, conventionally ``*.safetensors``.
        metadata: extra string metadata (keys must not start with ``"metaprune."``).

    Raises:
        CheckpointError: if the state does not match ``spec`` or is not all tensors.
        InvalidInputError: a malformed spec (``SpecError``, ``UnknownModelError``).
    """
    path = Path(path)
    where = f"cannot save checkpoint {str(path)!r}"
    if isinstance(spec, (Mapping, str)):
        spec = ArchSpec.from_json(spec, require_version=False)
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
    _check_state(_describe_tensors(state), spec, where, DEFAULT_LIMITS)
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


def read_spec(path: str | os.PathLike[str], *, limits: Limits = DEFAULT_LIMITS) -> ArchSpec:
    """The architecture spec of a checkpoint, read from its header only (no tensor data).

    Raises:
        CheckpointError: if the file is missing, corrupt, or has no valid spec metadata.
        LimitExceededError: the file or its header is over ``limits``.
    """
    path = _checkpoint_file(Path(path), limits)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a readable safetensors file: {_reason(err)}"
        ) from None
    return _parse_spec(path, metadata, limits)


def load_state(
    path: str | os.PathLike[str],
    device: torch.device | str = "cpu",
    *,
    limits: Limits = DEFAULT_LIMITS,
    allow_non_finite: bool = False,
) -> tuple[dict[str, Tensor], ArchSpec]:
    """Read and validate a checkpoint; return its state dict (on ``device``, in the
    architecture's ``state_dict`` key order, dtypes as stored) and spec.

    Args:
        path: a checkpoint file, or a directory holding exactly one ``*.safetensors`` file
            (e.g. the output directory of ``metaprune prune``).
        device: where the tensors go (a real device; not ``"meta"``).
        limits: bounds on the file, its header and the architecture it names.
        allow_non_finite: accept NaN/Inf weights (refused by default).

    Raises:
        CheckpointError: file missing, truncated or corrupt; spec metadata missing or
            invalid; unknown architecture; missing/unexpected keys; wrong shapes or dtypes;
            non-finite values; a bad device.
        LimitExceededError: file, header or architecture over ``limits``.
    """
    path = _checkpoint_file(Path(path), limits)
    device = _real_device(device, f"checkpoint {str(path)!r}")
    where = f"checkpoint {str(path)!r}"
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            spec = _parse_spec(path, f.metadata(), limits)
            # shapes and dtypes from the header first: no tensor data is read for a mismatch
            found = {key: _describe_slice(f.get_slice(key)) for key in f.keys()}  # noqa: SIM118
            order = _check_state(found, spec, where, limits)
            state = {key: aligned(f.get_tensor(key)) for key in order}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"{where} is not a readable safetensors file (truncated or corrupt?): {_reason(err)}"
        ) from None
    if not allow_non_finite:
        _check_finite(state, where)
    return state, spec


#: the CPU allocator's alignment (bytes); vector kernels take other paths on less
_ALIGNMENT = 64


def aligned(tensor: Tensor) -> Tensor:
    """``tensor`` in memory of its own, aligned as a fresh allocation is. safetensors hands
    out views at the file's offsets, and on an AVX-512 machine a convolution over such a
    view can differ in the last bit from the same weights at an aligned address, so a
    loaded model would not compute exactly what the saved one did."""
    return tensor if tensor.data_ptr() % _ALIGNMENT == 0 else tensor.clone()


def load(
    path: str | os.PathLike[str],
    device: torch.device | str = "cpu",
    *,
    limits: Limits = DEFAULT_LIMITS,
    allow_non_finite: bool = False,
    dtype: torch.dtype | None = torch.float32,
) -> tuple[nn.Module, ArchSpec]:
    """Rebuild the model of a checkpoint (pruned channels included) with its weights.

    The module is returned in training mode, like any freshly built module. Floating
    tensors are converted to ``dtype`` (float32 by default, see the module doc; ``None``
    keeps the checkpoint's dtypes).

    Raises:
        CheckpointError: see :func:`load_state`.
        LimitExceededError: file, header or architecture over ``limits``.
    """
    state, spec = load_state(path, device, limits=limits, allow_non_finite=allow_non_finite)
    if dtype is not None:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise CheckpointError(f"dtype must be a floating torch dtype or None (found {dtype!r})")
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    model = spec.skeleton(limits)
    model.load_state_dict(_versioned(state, model), strict=True, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        # a non-persistent buffer was not in the checkpoint: build it for real (within limits)
        model = spec.build(limits=limits)
        model.load_state_dict(_versioned(state, model), strict=True, assign=True)
    return model.to(device), spec


def _versioned(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """``state`` with the module versions of ``model``'s code, as ``state_dict()`` carries
    them: some modules refuse a state without (torchvision's MNASNet)."""
    out = OrderedDict(state)
    out._metadata = getattr(model.state_dict(), "_metadata", None)  # type: ignore[attr-defined]
    return out


def _reason(err: BaseException) -> str:
    from metaprune.errors import describe_exception

    return describe_exception(err).partition(": ")[2] or type(err).__name__


def _real_device(device: torch.device | str, where: str) -> torch.device:
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise CheckpointError(
            f"{where}: device {quote(device)} is not a torch device (e.g. 'cpu', 'cuda:0')"
        ) from None
    if parsed.type == "meta":
        raise CheckpointError(f"{where}: device 'meta' holds no data; load onto 'cpu' or 'cuda'")
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }
    if not available.get(parsed.type, False):
        raise CheckpointError(
            f"{where}: device {str(parsed)!r} is not available on this machine "
            f"(available: {', '.join(k for k, v in available.items() if v)})"
        )
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise CheckpointError(f"{where}: device {str(parsed)!r} does not exist on this machine")
    return parsed


def _checkpoint_file(path: Path, limits: Limits) -> Path:
    """The file to read: ``path`` itself, or the one ``*.safetensors`` in directory ``path``;
    its size and safetensors header size are checked before any parser sees it."""
    try:
        return _find_checkpoint_file(path, limits)
    except OSError as err:  # e.g. a name too long for the file system, permissions
        raise CheckpointError(
            f"checkpoint {quote(str(path))} cannot be opened: {err.strerror or _reason(err)}"
        ) from None


def _find_checkpoint_file(path: Path, limits: Limits) -> Path:
    if path.is_dir():
        found = sorted(path.glob("*.safetensors"))
        if len(found) != 1:
            names = ", ".join(repr(p.name) for p in found[:5]) + (", ..." if len(found) > 5 else "")
            raise CheckpointError(
                f"checkpoint {str(path)!r} is a directory with {len(found)} *.safetensors files"
                + (f" ({names}); pass one of them" if found else "; pass a checkpoint file")
            )
        path = found[0]
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint file {quote(str(path), 1000)} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} is not a file")
    return check_safetensors_file(path, limits, f"checkpoint {str(path)!r}")


def check_safetensors_file(path: Path, limits: Limits, where: str) -> Path:
    """Check an existing safetensors file's size and header length against ``limits``
    (and that the header fits in the file) before any parser reads it.

    Raises:
        CheckpointError: not a file, or a header length the file cannot hold.
        LimitExceededError: over ``max_upload_bytes`` or ``max_header_bytes``.
    """
    if not path.is_file():
        raise CheckpointNotFoundError(f"{where}: no such file")
    size = path.stat().st_size
    limits.check("max_upload_bytes", size, f"{where} file size")
    with path.open("rb") as f:
        head = f.read(9)
    foreign = describe_foreign_file(head, size)
    if foreign is not None:
        raise CheckpointError(
            f"{where} is not a readable safetensors file: it is {foreign}, not a metaprune "
            f"checkpoint, and metaprune never unpickles files here. {import_hint(path)}"
        )
    if len(head) < 8:
        raise CheckpointError(f"{where} is not a readable safetensors file: only {size} bytes")
    (header,) = struct.unpack("<Q", head[:8])  # safetensors: little-endian u64 header length
    if header > size - 8:
        raise CheckpointError(
            f"{where} is not a readable safetensors file (truncated or corrupt?): its header "
            f"claims {header:,} bytes but the file has {size - 8:,} after the length field"
        )
    limits.check("max_header_bytes", header, f"{where} safetensors header")
    return path


def describe_foreign_file(head: bytes, size: int) -> str | None:
    """What a file that is not safetensors is, from its first 9 bytes (magic numbers only,
    nothing is parsed), or ``None`` if it may be safetensors (a header length the file can
    hold, then ``{``).

    ``torch.save`` writes a zip archive (``PK\\x03\\x04``) holding a pickle; older
    ``torch.save`` and ``pickle`` write a bare pickle (``\\x80`` and a protocol byte 2-5).
    """
    if len(head) >= 9 and head[8:9] == b"{":
        (header,) = struct.unpack("<Q", head[:8])
        if header <= size - 8:
            return None
    if head[:4] == b"PK\x03\x04":
        return "a zip archive as torch.save writes .pt/.pth/.bin files (a pickle inside)"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return f"a Python pickle (protocol {head[1]}, e.g. an old-style torch.save file)"
    return None


def import_hint(path: Path) -> str:
    """How to turn weights the user trusts into a metaprune checkpoint (for messages)."""
    import shlex

    path = Path(path)
    if (path.parent / "config.json").is_file():  # a hub folder: its config names the model
        folder = shlex.quote(path.parent.name[:120] or ".")
        return (
            f"It sits in a hub folder with config.json: convert it on your own machine with "
            f"'metaprune import {folder} -o {shlex.quote(path.parent.name[:100] + '.safetensors')}' "
            "(see 'metaprune import --help')"
        )
    name = shlex.quote(path.name[:120] or "WEIGHTS")
    out = shlex.quote(f"{path.stem[:100] or 'model'}-metaprune.safetensors")
    return (
        "Convert weights you trust, on your own machine, with metaprune import, e.g. "
        f"'metaprune import {name} --arch torchvision/resnet18 -o {out}' "
        "(a hub folder with config.json needs no --arch; see 'metaprune import --help')"
    )


def _check_finite(state: Mapping[str, Tensor], where: str) -> None:
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        listed = ", ".join(repr(k) for k in bad[:_MAX_LISTED_PROBLEMS])
        more = len(bad) - _MAX_LISTED_PROBLEMS
        raise CheckpointError(
            f"{where}: {len(bad)} tensor(s) hold NaN or Inf values ({listed}"
            + (f", ... and {more} more" if more > 0 else "")
            + "); pass allow_non_finite=True to load them anyway"
        )


def _parse_spec(path: Path, metadata: Mapping[str, str] | None, limits: Limits) -> ArchSpec:
    metadata = metadata or {}
    where = f"checkpoint {str(path)!r}"
    if SPEC_KEY not in metadata:
        raise CheckpointError(
            f"{where} has no {SPEC_KEY!r} metadata, so it is not a metaprune checkpoint "
            f"(found metadata keys {quote(sorted(metadata))}): a plain state dict, as timm, "
            f"torchvision and the hub write, carries no architecture. {import_hint(path)}"
        )
    version = metadata.get(VERSION_KEY)
    if version != str(FORMAT_VERSION):
        raise CheckpointError(
            f"{where}: metadata {VERSION_KEY!r} is {quote(version)}, expected {str(FORMAT_VERSION)!r}"
        )
    try:
        return ArchSpec.from_json(metadata[SPEC_KEY], limits=limits)
    except LimitExceededError:
        raise
    except InvalidInputError as err:  # SpecError, UnknownModelError
        raise CheckpointError(f"{where}: metadata {SPEC_KEY!r}: {err}") from None


_TensorInfo = tuple[tuple[int, ...], torch.dtype]


def _describe_tensors(state: Mapping[str, Tensor]) -> dict[str, _TensorInfo]:
    return {key: (tuple(t.shape), t.dtype) for key, t in state.items()}


def _describe_slice(view: Any) -> _TensorInfo:
    dtype = _SAFETENSORS_DTYPES.get(view.get_dtype())
    return tuple(int(d) for d in view.get_shape()), dtype if dtype is not None else torch.uint8


def _check_state(
    found: Mapping[str, _TensorInfo], spec: ArchSpec, where: str, limits: Limits
) -> list[str]:
    """Raise CheckpointError listing every mismatch between the tensors described by
    ``found`` (shape, dtype) and ``spec``'s model (built on the meta device, within
    ``limits``); return the model's state-dict keys in module order."""
    try:
        expected = spec.skeleton(limits).state_dict()
    except LimitExceededError:
        raise
    except InvalidInputError as err:
        raise CheckpointError(f"{where}: {err}") from None
    problems: list[str] = []
    for key, ref in expected.items():
        if key not in found:
            problems.append(
                f"missing key {quote(key, 100)} (expected shape {tuple(ref.shape)}, dtype {ref.dtype})"
            )
            continue
        shape, dtype = found[key]
        if shape != tuple(ref.shape):
            problems.append(
                f"key {quote(key, 100)}: expected shape {tuple(ref.shape)}, found {shape}"
            )
        if ref.is_floating_point() != dtype.is_floating_point or (
            not ref.is_floating_point() and ref.dtype != dtype
        ):
            kind = "a floating dtype" if ref.is_floating_point() else str(ref.dtype)
            problems.append(f"key {quote(key, 100)}: expected {kind}, found {dtype}")
    problems += [
        f"unexpected key {quote(key, 100)} (shape {quote(found[key][0], 100)})"
        for key in found
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


def check_layout(path: str | os.PathLike[str], *, limits: Limits = DEFAULT_LIMITS) -> ArchSpec:
    """Check a checkpoint from its header alone: spec metadata, and every tensor's key,
    shape and dtype against the architecture (built on the meta device); no tensor data is
    read, so memory stays flat whatever the file size. Returns the spec.

    Raises:
        CheckpointError, LimitExceededError: as :func:`load_state`, except non-finite values
            (which need the data: the caller checks them as it sees fit).
    """
    path = _checkpoint_file(Path(path), limits)
    where = f"checkpoint {str(path)!r}"
    try:
        with safe_open(str(path), framework="pt") as f:
            spec = _parse_spec(path, f.metadata(), limits)
            found = {key: _describe_slice(f.get_slice(key)) for key in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"{where} is not a readable safetensors file (truncated or corrupt?): {_reason(err)}"
        ) from None
    _check_state(found, spec, where, limits)
    return spec
