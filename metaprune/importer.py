"""``metaprune import``: the one door for weights people already have.

A metaprune checkpoint carries its architecture; the weights timm, torchvision and the hub
write do not. :func:`import_weights` reads

* a plain state dict in **safetensors** (what timm, torchvision and the hub write);
* a **hub folder** as timm writes it: ``config.json`` (``architecture``, ``num_classes``,
  optionally ``model_args`` and ``pretrained_cfg``) beside ``model.safetensors`` (or
  ``pytorch_model.bin``); the architecture is ``timm/<architecture>`` unless ``arch`` says
  otherwise;
* a ``torch.save``\\ d state dict (``.pt``/``.pth``/``.bin``). That is a pickle: it is read
  here and only here, with ``torch.load(weights_only=True)`` (tensors and plain containers,
  no code), because this runs on the user's own machine on the user's own file. Nothing a
  client sends (the service, batch inputs, ``prune``, ``eval``) ever reaches this module.

The tensors are matched **strictly** against the architecture built on the meta device:
missing, unexpected and differently shaped keys are listed by name (bounded lists), and a
common prefix such as ``module.`` (DataParallel) or ``model.`` (Lightning) is *offered*
(``strip_prefix``), never stripped silently; a state dict nested in a training checkpoint
is offered the same way (``state_key``). The one repair made without asking is the one
PyTorch itself makes: BatchNorm ``num_batches_tracked`` counters that old checkpoints lack
are filled with 0 (and reported). Non-finite weights are refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metaprune import checkpoint
from metaprune.checkpoint import CheckpointError, describe_foreign_file
from metaprune.documents import parse_json
from metaprune.errors import InvalidInputError, LimitExceededError, describe_exception, quote
from metaprune.limits import DEFAULT_LIMITS, Limits, check_spec
from metaprune.models import ArchSpec, UnknownModelError

__all__ = ["ImportResult", "WeightsImportError", "import_weights", "read_weights"]

_LISTED = 8  # names listed per kind of problem
_PREFIXES = ("module.", "model.", "_orig_mod.", "state_dict.", "net.", "backbone.")
_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema", "model_ema", "net")
_HUB_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


class WeightsImportError(CheckpointError):
    """Weights cannot be imported; the message names the file, the keys and the fix."""


@dataclasses.dataclass(frozen=True)
class ImportResult:
    """What :func:`import_weights` wrote.

    Attributes:
        path: the metaprune checkpoint.
        spec: its architecture.
        source_format: ``"safetensors"``, ``"torch.save"`` or ``"hub folder (...)"``.
        tensors: number of tensors written.
        notes: repairs made (e.g. filled ``num_batches_tracked``), for the user to see.
    """

    path: Path
    spec: ArchSpec
    source_format: str
    tensors: int
    notes: tuple[str, ...] = ()


def import_weights(
    weights: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    strip_prefix: str | None = None,
    state_key: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> ImportResult:
    """Turn a state dict file (or hub folder) into the metaprune checkpoint ``out``.

    Args:
        weights: a safetensors or ``torch.save`` file, or a hub folder.
        out: the checkpoint to write (``*.safetensors``).
        arch: a registered architecture name; optional for a hub folder.
        arch_kwargs: constructor kwargs (for a hub folder: merged over its ``config.json``).
        strip_prefix: remove this prefix from every key (all keys must have it).
        state_key: the entry of a ``torch.save``\\ d dict that holds the state dict.
        limits: bounds on the file and the architecture.

    Raises:
        WeightsImportError: unreadable file, no architecture, keys or shapes that do not
            match (listed), non-finite values.
        LimitExceededError: the file or the architecture is over ``limits``.
        InvalidInputError: a malformed spec (``SpecError``), unknown architecture
            (``UnknownModelError``).
    """
    source = Path(weights)
    state, kind, hub = read_weights(source, state_key=state_key, limits=limits)
    spec = _spec(source, arch, arch_kwargs, hub, limits)
    state = _strip(source, state, strip_prefix)
    state, notes = _match(source, state, spec, limits)
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise WeightsImportError(
            f"weights {str(source)!r}: {len(bad)} tensor(s) hold NaN or Inf values "
            f"({_listing(bad)}); metaprune refuses non-finite weights"
        )
    meta = {"imported_from": source.name[:200], "imported_format": kind}
    if hub and isinstance(hub.get("pretrained_cfg"), Mapping):
        meta["pretrained_cfg"] = json.dumps(hub["pretrained_cfg"], sort_keys=True, default=str)
    path = checkpoint.save(state, spec, out, metadata=meta)
    checkpoint.load(path, limits=limits)  # what was written loads (and builds) as the user will
    return ImportResult(path, spec, kind, len(state), tuple(notes))


def read_weights(
    path: Path, *, state_key: str | None = None, limits: Limits = DEFAULT_LIMITS
) -> tuple[dict[str, Tensor], str, dict[str, Any] | None]:
    """The tensors of a weights file or hub folder: ``(state, format, hub config or None)``.

    Raises:
        WeightsImportError: missing or unreadable file, not a state dict.
        LimitExceededError: the file (or a hub ``config.json``) is over ``limits``.
    """
    hub = None
    kind = ""
    if path.is_dir():
        hub = _hub_config(path, limits)
        found = [path / name for name in _HUB_WEIGHTS if (path / name).is_file()]
        if not found:
            raise WeightsImportError(
                f"folder {str(path)!r} holds no {' or '.join(_HUB_WEIGHTS)} (a hub folder as "
                "timm writes it has config.json and model.safetensors)"
            )
        path, kind = found[0], f"hub folder ({found[0].name})"
    if not path.is_file():
        raise WeightsImportError(f"weights file {quote(str(path))} does not exist")
    limits.check("max_upload_bytes", path.stat().st_size, f"weights {str(path)!r} file size")
    with path.open("rb") as f:
        head = f.read(9)
    foreign = describe_foreign_file(head, path.stat().st_size)
    if foreign is not None:
        return _read_torch_save(path, head, state_key), kind or "torch.save", hub
    if state_key is not None:
        raise WeightsImportError(
            f"weights {str(path)!r}: --state-key applies to torch.save files only; "
            "a safetensors file is a flat state dict"
        )
    return _read_safetensors(path, limits), kind or "safetensors", hub


def _read_safetensors(path: Path, limits: Limits) -> dict[str, Tensor]:
    from safetensors import SafetensorError, safe_open

    checkpoint.check_safetensors_file(path, limits, f"weights {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: checkpoint.aligned(f.get_tensor(key)) for key in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as err:
        raise WeightsImportError(
            f"weights {str(path)!r} is not a readable safetensors file: {describe_exception(err)}"
        ) from None


def _read_torch_save(path: Path, head: bytes, state_key: str | None) -> dict[str, Tensor]:
    # the user's own file on the user's own machine; weights_only: tensors and containers only
    zipped = head[:4] == b"PK\x03\x04"
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        raise WeightsImportError(
            f"weights {str(path)!r} cannot be read with torch.load(weights_only=True): "
            f"{describe_exception(err, 200)}; if it holds a whole pickled model, load it in "
            "your own code and torch.save(model.state_dict(), ...) or use metaprune.save"
        ) from None
    where = f"weights {str(path)!r}"
    if not isinstance(data, Mapping):
        raise WeightsImportError(
            f"{where} holds a {type(data).__name__}, not a state dict (a mapping of names to tensors)"
        )
    if state_key is not None:
        if state_key not in data or not isinstance(data[state_key], Mapping):
            raise WeightsImportError(
                f"{where}: --state-key {quote(state_key)} is not a mapping in the file "
                f"(its keys: {_listing(list(map(str, data)))})"
            )
        data = data[state_key]
    others = [str(k) for k, v in data.items() if not isinstance(v, Tensor)]
    if others:
        nested = [
            str(k) for k, v in data.items()
            if isinstance(v, Mapping) and v and all(isinstance(t, Tensor) for t in v.values())
        ]  # fmt: skip
        offer = next((k for k in _NESTED_KEYS if k in nested), nested[0] if nested else None)
        hint = (
            f"; the tensors look nested under {offer!r} (a training checkpoint?): pass "
            f"--state-key {offer}"
            if offer
            else ""
        )
        raise WeightsImportError(
            f"{where} is not a flat state dict: {len(others)} entr{'ies' if len(others) > 1 else 'y'} "
            f"are not tensors ({_listing(others)}){hint}"
        )
    return {str(k): v for k, v in data.items()}


def _hub_config(folder: Path, limits: Limits) -> dict[str, Any] | None:
    config = folder / "config.json"
    if not config.is_file():
        return None
    limits.check("max_spec_bytes", config.stat().st_size, f"{str(config)!r}")
    data = parse_json(config.read_bytes(), limits, f"hub config {str(config)!r}")
    if not isinstance(data, dict):
        raise WeightsImportError(f"hub config {str(config)!r} must be a JSON object")
    return data


def _spec(
    source: Path,
    arch: str | None,
    arch_kwargs: Mapping[str, Any] | None,
    hub: Mapping[str, Any] | None,
    limits: Limits,
) -> ArchSpec:
    kwargs: dict[str, Any] = {}
    if arch is None:
        if hub is None:
            raise WeightsImportError(
                f"weights {str(source)!r} carry no architecture: pass --arch NAME (see "
                "metaprune.models.list_models(); e.g. torchvision/resnet18, cifar_resnet20); "
                "a hub folder with config.json names its own"
            )
        name = hub.get("architecture")
        if not isinstance(name, str) or not name:
            raise WeightsImportError(
                f"hub config in {str(source)!r} has no 'architecture' string "
                f"(found {quote(name)}); pass --arch NAME"
            )
        arch = "timm/" + name.split(".", 1)[0]  # "resnet18.a1_in1k": the tag names weights
        model_args = hub.get("model_args")
        if isinstance(model_args, Mapping):
            kwargs.update(model_args)
        if isinstance(hub.get("num_classes"), int):
            kwargs["num_classes"] = hub["num_classes"]
        try:
            ArchSpec(arch)
        except UnknownModelError as err:
            raise WeightsImportError(
                f"hub config in {str(source)!r} names architecture {quote(name, 100)}, read "
                f"as {quote(arch, 100)}: {err}; pass --arch NAME to choose one"
            ) from None
    kwargs.update(arch_kwargs or {})
    spec = ArchSpec(arch, kwargs)
    try:
        check_spec(spec, limits)  # sized on the meta device before anything is built
    except LimitExceededError:
        raise
    except InvalidInputError as err:
        raise WeightsImportError(f"weights {str(source)!r}: {err}") from None
    return spec


def _strip(source: Path, state: dict[str, Tensor], prefix: str | None) -> dict[str, Tensor]:
    if not prefix:
        return state
    missing = [k for k in state if not k.startswith(prefix)]
    if missing:
        raise WeightsImportError(
            f"weights {str(source)!r}: --strip-prefix {quote(prefix)}: {len(missing)} of "
            f"{len(state)} keys do not start with it ({_listing(missing)})"
        )
    return {k[len(prefix) :]: v for k, v in state.items()}


def _match(
    source: Path, state: dict[str, Tensor], spec: ArchSpec, limits: Limits
) -> tuple[dict[str, Tensor], list[str]]:
    """``state`` in the architecture's key order, or an error listing every mismatch."""
    expected = spec.skeleton(limits).state_dict()
    notes = []
    counters = [k for k in expected if k.endswith("num_batches_tracked")]
    # a file without any counter predates them; one that has them under other names does not
    old_file = not any(k.endswith("num_batches_tracked") for k in state)
    filled = [k for k in counters if k not in state] if old_file else []
    for key in filled:  # what BatchNorm._load_from_state_dict does for old checkpoints
        state[key] = torch.zeros((), dtype=expected[key].dtype)
    if filled:
        notes.append(
            f"filled {len(filled)} missing BatchNorm num_batches_tracked counter(s) with 0"
        )
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shaped = [
        k for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]  # fmt: skip
    if not (missing or unexpected or shaped):
        return {k: state[k] for k in expected}, notes
    parts = []
    if missing:
        parts.append(
            f"missing {_listing(missing, lambda k: f'{quote(k, 100)} {tuple(expected[k].shape)}')}"
        )
    if unexpected:
        parts.append(
            f"unexpected {_listing(unexpected, lambda k: f'{quote(k, 100)} {tuple(state[k].shape)}')}"
        )
    if shaped:
        parts.append(
            "other shape "
            + _listing(
                shaped,
                lambda k: (
                    f"{quote(k, 100)} expected {tuple(expected[k].shape)} "
                    f"found {tuple(state[k].shape)}"
                ),
            )
        )
    hints = _offers(state, expected, shaped)  # first: long listings are cut at the end
    raise WeightsImportError(
        f"weights {str(source)!r} do not match architecture {spec.name!r} "
        f"{quote(spec.kwargs)}: {len(missing)} missing, {len(unexpected)} unexpected, "
        f"{len(shaped)} with another shape of {len(expected)} expected keys. "
        + "".join(f"{h} " for h in hints)
        + "; ".join(parts)
    )


def _offers(
    state: Mapping[str, Tensor], expected: Mapping[str, Tensor], shaped: list[str]
) -> list[str]:
    """Fixes worth suggesting: a prefix every key carries, a different class count."""
    hints = []
    matched = sum(k in expected for k in state)
    candidates = {k[: k.index(".") + 1] for k in state if "." in k} | set(_PREFIXES)
    for prefix in sorted(candidates):
        if all(k.startswith(prefix) for k in state):
            after = sum(k[len(prefix) :] in expected for k in state)
            if after > matched:
                hints.append(
                    f"Every key starts with {prefix!r}: pass --strip-prefix {prefix} "
                    f"({after} of {len(expected)} keys match then)."
                )
    firsts = {tuple(state[k].shape)[0] for k in shaped if state[k].dim() >= 1}
    if (
        shaped
        and len(firsts) == 1
        and all(state[k].shape[1:] == expected[k].shape[1:] for k in shaped)
    ):
        first = firsts.pop()
        hints.append(
            f"Only the first dimension differs ({first} in the file): a different "
            f"class count? pass --arch-kwargs '{{\"num_classes\": {first}}}'."
        )
    return hints


def _listing(keys: list[str], show: Any = None) -> str:
    shown = ", ".join((show or (lambda k: quote(k, 100)))(k) for k in keys[:_LISTED])
    return shown + (f", ... and {len(keys) - _LISTED} more" if len(keys) > _LISTED else "")
