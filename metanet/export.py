"""Exported metanetworks: ``NAME.safetensors`` (weights) + ``NAME.json`` (config), no pickle.

``NAME.json`` holds ``{"format_version": 1, "config": MetaNetwork.config, "info": {...}}``
(``info`` is free-form provenance: source checkpoint, epoch, selection score, zoo...);
the safetensors file carries the same config in its metadata (``metanet.config``), so it
also loads on its own. :func:`load` resolves bare names against ``metanet/pretrained/``
(e.g. ``load("resnet20-digits")``) and also reads the Lightning ``.ckpt`` files that
``metaprune metanet fit`` writes, with ``torch.load(weights_only=True)``: only ever call
it on checkpoints you produced yourself, never on uploaded files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .network import MetaNetwork

__all__ = [
    "EXPORT_FORMAT_VERSION",
    "PRETRAINED_DIR",
    "ExportError",
    "export",
    "export_checkpoint",
    "list_pretrained",
    "load",
]

EXPORT_FORMAT_VERSION = 1
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
_CONFIG_KEY = "metanet.config"
_VERSION_KEY = "metanet.format_version"


class ExportError(ValueError):
    """A metanetwork file is missing, malformed, or does not match its config."""


def _base(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".safetensors", ".json") else path


def export(
    metanet: MetaNetwork, path: str | os.PathLike[str], *, info: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write ``metanet`` as ``path.safetensors`` + ``path.json`` (atomically); return both paths."""
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


def list_pretrained() -> list[str]:
    """Names of the metanetworks shipped in ``metanet/pretrained/``."""
    return sorted(p.stem for p in PRETRAINED_DIR.glob("*.safetensors"))


def _resolve(path_or_name: str | os.PathLike[str]) -> Path:
    path = Path(path_or_name)
    if path.is_file():
        return path
    paired = path.with_name(path.name + ".safetensors")  # an export's base path
    if paired.is_file():
        return paired
    name = str(path_or_name)
    if os.sep not in name and "/" not in name:
        shipped = PRETRAINED_DIR / f"{_base(name).name}.safetensors"
        if shipped.exists():
            return shipped
    raise ExportError(
        f"metanetwork {name!r} is neither a file nor a shipped name (shipped: {', '.join(list_pretrained()) or 'none'})"
    )


def load(path_or_name: str | os.PathLike[str], device: torch.device | str = "cpu") -> MetaNetwork:
    """A :class:`MetaNetwork` from an exported file, a shipped name or a fit checkpoint.

    Accepts ``NAME`` (shipped), ``X.safetensors`` / ``X.json`` (exported pair) or ``X.ckpt``
    (a Lightning checkpoint written by ``metaprune metanet fit``). Returned in eval mode.

    Raises:
        ExportError: unknown name, unreadable file, or weights that do not fit the config.
    """
    path = _resolve(path_or_name)
    if path.suffix == ".ckpt":
        config, state = _read_lightning(path)
    else:
        config, state = _read_export(_base(path))
    try:
        metanet = MetaNetwork.from_config(config)
        metanet.load_state_dict(state, strict=True)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ExportError(f"metanetwork {str(path)!r} does not match its config: {err}") from None
    return metanet.to(device).eval()


def _read_export(base: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    weights, config_path = (
        base.with_name(base.name + ".safetensors"),
        base.with_name(base.name + ".json"),
    )
    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as err:  # safetensors raises several error types
        raise ExportError(f"cannot read metanetwork weights {str(weights)!r}: {err}") from None
    if config_path.exists():
        try:
            document = json.loads(config_path.read_text())
        except ValueError as err:
            raise ExportError(
                f"metanetwork config {str(config_path)!r} is not valid JSON: {err}"
            ) from None
        version, config = document.get("format_version"), document.get("config")
    else:
        version, config = (
            meta.get(_VERSION_KEY),
            json.loads(meta[_CONFIG_KEY]) if _CONFIG_KEY in meta else None,
        )
    if str(version) != str(EXPORT_FORMAT_VERSION) or not isinstance(config, dict):
        raise ExportError(
            f"metanetwork {str(weights)!r}: expected format_version {EXPORT_FORMAT_VERSION} and a config "
            f"(found format_version {version!r}, config {type(config).__name__})"
        )
    return config, state


def _read_lightning(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    # weights_only=True: plain containers and tensors only, no arbitrary unpickling
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ExportError(f"cannot read Lightning checkpoint {str(path)!r}: {err}") from None
    config = ckpt.get("metanet_config")
    if not isinstance(config, dict):
        raise ExportError(
            f"checkpoint {str(path)!r} was not written by MetaPruneModule (no 'metanet_config')"
        )
    prefix = "metanet."
    state = {
        k[len(prefix) :]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith(prefix)
    }
    return config, state


def export_checkpoint(
    ckpt: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    info: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Export the metanetwork of a fit checkpoint, recording its epoch, step and score."""
    ckpt = Path(ckpt)
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
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
    return export(load(ckpt), path, info={**provenance, **(info or {})})
