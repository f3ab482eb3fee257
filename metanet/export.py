"""Exported metanetworks: ``NAME.safetensors`` (weights) + ``NAME.json`` (config), no pickle.

``NAME.json`` holds ``{"format_version": 1, "config": MetaNetwork.config, "info": {...}}``
(``info`` is free-form provenance: source checkpoint, epoch, selection score, zoo...) and,
if given, ``"summary"``: what it was trained on (:func:`metanet.summary.training_summary`,
read by :func:`read_document` for automatic choice, :mod:`metanet.choice`);
the safetensors file carries the same config in its metadata (``metanet.config``), so it
also loads on its own.

Names and paths are distinct (:func:`load`): a bare **name** (``"resnet20-digits"``)
resolves only in the registry directories (:func:`registry_dirs`: ``metanet/pretrained/``
and the directories in ``$METAPRUNE_METANET_PATH``), never against the working
directory; a **path** (anything with a ``/`` or a ``.safetensors``/``.json`` suffix) is
for local use and can be refused (``allow_paths=False``, what a service does).

Jobs never make the library unpickle anything: :func:`load` reads only exported
safetensors files, with their size, header size, JSON depth and tensor shapes checked
against :class:`~metaprune.limits.Limits` before the network is built. Reading a
Lightning ``.ckpt`` (``torch.load(weights_only=True)``) happens only in
:func:`read_fit_checkpoint` / :func:`export_checkpoint`, i.e. ``metaprune metanet
export``, for checkpoints you produced yourself.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from metaprune.checkpoint import check_safetensors_file
from metaprune.documents import parse_json
from metaprune.errors import (
    InvalidInputError,
    LimitExceededError,
    NotFoundError,
    describe_exception,
    quote,
)
from metaprune.limits import DEFAULT_LIMITS, Limits
from metaprune.models.size import build_guard

from .network import MetaNetwork

__all__ = [
    "EXPORT_FORMAT_VERSION",
    "PRETRAINED_DIR",
    "ExportError",
    "MetanetNotFoundError",
    "export",
    "export_checkpoint",
    "list_pretrained",
    "load",
    "read_document",
    "read_fit_checkpoint",
    "registry_dirs",
]

EXPORT_FORMAT_VERSION = 1
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
_CONFIG_KEY = "metanet.config"
_VERSION_KEY = "metanet.format_version"
_PATH_ENV = "METAPRUNE_METANET_PATH"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class ExportError(InvalidInputError):
    """A metanetwork file is missing, malformed, or does not match its config."""


class MetanetNotFoundError(ExportError, NotFoundError):
    """No registered metanetwork has this name (or no export is at this path)."""


def _base(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".safetensors", ".json") else path


def export(
    metanet: MetaNetwork,
    path: str | os.PathLike[str],
    *,
    info: dict[str, Any] | None = None,
    summary: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``metanet`` as ``path.safetensors`` + ``path.json`` (atomically); return both paths.

    ``summary`` (optional): what it was trained on, from
    :func:`metanet.summary.training_summary` over the zoo graphs; stored in the JSON.
    """
    base = _base(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    weights, config_path = (
        base.with_name(base.name + ".safetensors"),
        base.with_name(base.name + ".json"),
    )
    config = metanet.config
    tensors = {
        k: v.detach().to("cpu").contiguous().clone() for k, v in metanet.state_dict().items()
    }
    meta = {
        _CONFIG_KEY: json.dumps(config, sort_keys=True),
        _VERSION_KEY: str(EXPORT_FORMAT_VERSION),
    }
    document = {"format_version": EXPORT_FORMAT_VERSION, "config": config, "info": info or {}}
    if summary is not None:
        document["summary"] = summary
    for target, write in (
        (weights, lambda p: save_file(tensors, str(p), metadata=meta)),
        (
            config_path,
            lambda p: p.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n"),
        ),
    ):
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            write(tmp)
            os.chmod(tmp, 0o644)  # a shipped file: readable by everyone, like any source file
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return weights, config_path


def registry_dirs() -> list[Path]:
    """Directories searched for metanetwork names: the shipped ``metanet/pretrained/``, then
    those listed in ``$METAPRUNE_METANET_PATH`` (``os.pathsep``-separated, absolute)."""
    extra = [Path(p) for p in os.environ.get(_PATH_ENV, "").split(os.pathsep) if p]
    return [PRETRAINED_DIR, *(p for p in extra if p.is_absolute())]


def list_pretrained() -> list[str]:
    """Names of the registered metanetworks (in :func:`registry_dirs`)."""
    return sorted({p.stem for d in registry_dirs() for p in d.glob("*.safetensors")})


def _is_name(text: str) -> bool:
    return (
        "/" not in text
        and os.sep not in text
        and not text.endswith((".safetensors", ".json", ".ckpt"))
    )


def _resolve(path_or_name: str | os.PathLike[str], allow_paths: bool) -> Path:
    text = os.fspath(path_or_name) if isinstance(path_or_name, (str, os.PathLike)) else None
    if not isinstance(text, str) or not text:
        raise ExportError(f"a metanetwork must be a name or a path (found {quote(path_or_name)})")
    if _is_name(text):
        if _NAME.fullmatch(text) and ".." not in text:
            for directory in registry_dirs():
                found = directory / f"{text}.safetensors"
                if found.is_file():
                    return found
        # the same words whether or not some file of that name exists anywhere else
        raise MetanetNotFoundError(
            f"metanetwork {quote(text)} is not registered "
            f"(registered: {', '.join(list_pretrained()) or 'none'})"
        )
    if not allow_paths:
        raise ExportError(
            f"metanetwork {quote(text)} is a path; only registered names are accepted here"
        )
    path = Path(text)
    if path.suffix == ".ckpt":
        raise ExportError(
            f"metanetwork {quote(text)} is a Lightning checkpoint; jobs read only exported "
            "safetensors metanetworks: export it first with "
            "`metaprune metanet export --ckpt FILE --out NAME` (for checkpoints you produced)"
        )
    weights = (
        path
        if path.suffix == ".safetensors"
        else _base(path).with_name(_base(path).name + ".safetensors")
    )
    if weights != path and _is_file(path) and path.suffix != ".json":
        raise ExportError(f"{quote(text)} is not a metanetwork export ({_EXPORT_SHAPE})")
    if not _is_file(weights):
        raise MetanetNotFoundError(
            f"metanetwork export {quote(str(weights))} does not exist ({_EXPORT_SHAPE})"
        )
    return weights


_EXPORT_SHAPE = (
    "an export is NAME.safetensors with 'metanet.config' metadata beside NAME.json, "
    "written by `metaprune metanet export`; pass either file, NAME, or a registered name"
)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a name too long for the file system
        return False


def load(
    path_or_name: str | os.PathLike[str],
    device: torch.device | str = "cpu",
    *,
    limits: Limits = DEFAULT_LIMITS,
    allow_paths: bool = True,
) -> MetaNetwork:
    """A :class:`MetaNetwork` from a registered name or an exported file (never a pickle).

    Accepts ``NAME`` (registered, see :func:`registry_dirs`) or, if ``allow_paths``, a path
    to an exported pair: ``X.safetensors``, ``X.json`` or ``X``. Returned in eval mode.
    The shapes recorded in the file are compared with the config (built on the meta
    device, within ``limits``) before anything real is allocated.

    Raises:
        MetanetNotFoundError: unknown name, or no export at the path (a NotFoundError).
        ExportError: a ``.ckpt`` or (with ``allow_paths=False``) any path; unreadable or
            malformed file; weights that do not fit the config; non-finite weights.
        LimitExceededError: file, header, JSON or network over ``limits``.
    """
    weights = _resolve(path_or_name, allow_paths)
    document, shapes, reader = _read_export(_base(weights), limits)
    config = document["config"]
    where = f"metanetwork {str(weights)!r}"
    skeleton = _build(config, "meta", limits, where)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    if expected != shapes:
        missing = sorted(set(expected) - set(shapes))
        extra = sorted(set(shapes) - set(expected))
        wrong = sorted(k for k in set(expected) & set(shapes) if expected[k] != shapes[k])
        raise ExportError(
            f"{where} does not match its config: missing {quote(missing[:5])}, unexpected "
            f"{quote(extra[:5])}, wrong shape {quote(wrong[:5])}"
        )
    state = reader()
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ExportError(f"{where}: {len(bad)} tensor(s) hold NaN or Inf, e.g. {bad[0]!r}")
    metanet = _build(config, None, limits, where)
    try:
        metanet.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as err:
        raise ExportError(f"{where} does not match its config: {describe_exception(err)}") from None
    return metanet.to(device).eval()


def read_document(
    path_or_name: str | os.PathLike[str],
    *,
    limits: Limits = DEFAULT_LIMITS,
    allow_paths: bool = True,
) -> dict[str, Any]:
    """The JSON document of an export (``config``, ``info``, ``summary`` if recorded, and
    ``path``: where its weights are), read and checked like :func:`load` but without
    reading any tensor. Raises as :func:`load` does."""
    weights = _resolve(path_or_name, allow_paths)
    document, _, _ = _read_export(_base(weights), limits)
    return {**document, "path": str(weights)}


def _build(config: dict[str, Any], device: str | None, limits: Limits, where: str) -> MetaNetwork:
    try:
        with build_guard(limits, where), torch.device(device or "cpu"):
            return MetaNetwork.from_config(config)
    except LimitExceededError:
        raise
    except Exception as err:  # noqa: BLE001 (a malformed config breaks the constructor anyhow)
        raise ExportError(f"{where} has an invalid config: {describe_exception(err)}") from None


def _read_export(
    base: Path, limits: Limits
) -> tuple[dict[str, Any], dict[str, tuple[int, ...]], Any]:
    """The document (``config`` always, ``info``/``summary`` if in the JSON), the tensor
    shapes from the header, and a function reading the tensors."""
    weights, config_path = (
        base.with_name(base.name + ".safetensors"),
        base.with_name(base.name + ".json"),
    )
    where = f"metanetwork {str(weights)!r}"
    check_safetensors_file(weights, limits, where)
    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as err:  # noqa: BLE001 (safetensors raises several error types)
        raise ExportError(f"cannot read {where}: {describe_exception(err)}") from None
    if config_path.exists():
        limits.check("max_spec_bytes", config_path.stat().st_size, f"{config_path.name}")
        document = parse_json(
            config_path.read_bytes(), limits, f"metanetwork config {str(config_path)!r}"
        )
        if not isinstance(document, dict):
            raise ExportError(
                f"metanetwork config {str(config_path)!r} must be a JSON object "
                f"(found {type(document).__name__})"
            )
        version, config = document.get("format_version"), document.get("config")
    else:
        document = {}
        version = meta.get(_VERSION_KEY)
        config = (
            parse_json(meta[_CONFIG_KEY], limits, f"{where} metadata")
            if _CONFIG_KEY in meta
            else None
        )
    if str(version) != str(EXPORT_FORMAT_VERSION) or not isinstance(config, dict):
        raise ExportError(
            f"{where}: expected format_version {EXPORT_FORMAT_VERSION} and a config "
            f"(found format_version {quote(version)}, config {type(config).__name__})"
        )

    def read() -> dict[str, torch.Tensor]:
        try:
            with safe_open(str(weights), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        except Exception as err:  # noqa: BLE001
            raise ExportError(f"cannot read {where}: {describe_exception(err)}") from None

    return {**document, "config": config}, shapes, read


def read_fit_checkpoint(ckpt: str | os.PathLike[str]) -> MetaNetwork:
    """The metanetwork of a Lightning checkpoint written by ``metaprune metanet fit``.

    Uses ``torch.load(weights_only=True)``: call it only on checkpoints you produced
    yourself, never on a file from anyone else (jobs never call it; they read exports).
    """
    config, state, _ = _read_lightning(Path(ckpt))
    try:
        metanet = MetaNetwork.from_config(config)
        metanet.load_state_dict(state, strict=True)
    except Exception as err:  # noqa: BLE001
        raise ExportError(
            f"checkpoint {str(ckpt)!r} does not match its config: {describe_exception(err)}"
        ) from None
    return metanet.eval()


def _read_lightning(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    # weights_only=True: plain containers and tensors only; still, only for the user's own files
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise ExportError(
            f"cannot read Lightning checkpoint {str(path)!r}: {describe_exception(err)}"
        ) from None
    config = ckpt.get("metanet_config") if isinstance(ckpt, dict) else None
    if not isinstance(config, dict):
        raise ExportError(
            f"checkpoint {str(path)!r} was not written by MetaPruneModule (no 'metanet_config')"
        )
    prefix = "metanet."
    state = {
        k[len(prefix) :]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith(prefix)
    }
    return config, state, ckpt


def export_checkpoint(
    ckpt: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    info: dict[str, Any] | None = None,
    summary: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Export the metanetwork of a fit checkpoint, recording its epoch, step and score (and
    ``summary``, what it was trained on: see :func:`export`)."""
    ckpt = Path(ckpt)
    _, _, raw = _read_lightning(ckpt)
    provenance: dict[str, Any] = {
        "source": ckpt.name,
        "epoch": raw.get("epoch"),
        "global_step": raw.get("global_step"),
    }
    for key, state in (raw.get("callbacks") or {}).items():
        if "ModelCheckpoint" in str(key) and isinstance(state, dict):
            score = state.get("best_model_score")
            provenance["monitor"] = state.get("monitor", "val/auc")
            provenance["best_score"] = float(score) if score is not None else None
    provenance["hyper_parameters"] = raw.get("hyper_parameters")
    info = {**provenance, **(info or {})}
    return export(read_fit_checkpoint(ckpt), path, info=info, summary=summary)
