"""The batch manifest: which checkpoints to prune to which targets, validated before any work.

A manifest is YAML::

    version: 1
    dataset: digits                 # a registered name, or {name, root, kwargs}
    targets: [2.0, {kind: params, value: 1.5}]   # a bare number is a MACs speed-up
    config:                         # PruneConfig fields (except target) for every model
      method: group-l2
      after_pruning: {epochs: 5}
    max_attempts: 2                 # a failed task runs at most this often (all runs)
    limits: {max_epochs: 50}        # metaprune.limits.Limits fields (default: DEFAULT_LIMITS)
    resources: {num_cpus: 1}        # per task (executor Resources)
    models:
      - path: zoo/*.safetensors     # a path or a glob, relative to the manifest
      - path: big.safetensors
        name: big                   # only for a single file (default: the file's stem)
        targets: [3.0]              # overrides
        config: {after_pruning: {epochs: 10}}   # merged over the top-level config
        dataset: {name: digits, kwargs: {val_fraction: 0.2}}

Every (model, target) pair becomes one :class:`BatchTask`. :func:`load_manifest` checks
everything (unknown keys, bad values, missing files, unknown datasets, duplicate names)
and raises one :class:`ManifestError` listing every problem.
"""

from __future__ import annotations

import copy
import dataclasses
import glob
import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metaprune.errors import InvalidInputError, quote
from metaprune.limits import DEFAULT_LIMITS, Limits

__all__ = [
    "MANIFEST_VERSION",
    "BatchTask",
    "Manifest",
    "ManifestError",
    "load_manifest",
    "parse_manifest",
]

MANIFEST_VERSION = 1
_TOP_KEYS = {
    "version",
    "dataset",
    "targets",
    "config",
    "max_attempts",
    "resources",
    "limits",
    "models",
}
_ENTRY_KEYS = {"path", "name", "targets", "config", "dataset"}
_DATASET_KEYS = {"name", "root", "kwargs"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_RESERVED = {"batch.json", "summary.csv", "summary.json", "pareto.png"}
_MAX_MANIFEST_BYTES = 1024**2
_MAX_PROBLEMS = 50


class ManifestError(InvalidInputError):
    """The manifest has problems; the message lists every one (up to a cap)."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        shown = problems[:_MAX_PROBLEMS]
        more = f"; and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        listing = "; ".join(f"({i}) {p}" for i, p in enumerate(shown, 1))
        n = len(problems)
        super().__init__(f"manifest {source}: {n} problem{'s' * (n != 1)}: {listing}{more}")


@dataclasses.dataclass(frozen=True)
class BatchTask:
    """One (model, target) pair of a batch.

    Attributes:
        model: the model's name (its output directory ``OUT/<model>/``).
        target: the target's label (``OUT/<model>/<target>/``), e.g. ``"macs-2x"``.
        checkpoint: absolute path of the input checkpoint.
        dataset: ``{"name", "root", "kwargs"}``.
        config: ``PruneConfig.to_dict()`` of the job, target included.
        digest: hash of everything above and the checkpoint's size and mtime; a finished
            output with another digest is stale and recomputed.
    """

    model: str
    target: str
    checkpoint: str
    dataset: dict[str, Any]
    config: dict[str, Any]
    digest: str

    @property
    def key(self) -> str:
        return f"{self.model}/{self.target}"

    def args(self, out: Path) -> dict[str, Any]:
        """The executor args of the task (plain data) writing below ``out``."""
        return {
            "checkpoint": self.checkpoint, "dataset": self.dataset, "config": self.config,
            "out_dir": str(out / self.model / self.target), "model": self.model,
            "target": self.target, "digest": self.digest,
        }  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A validated manifest: its tasks and batch-wide settings."""

    source: str
    tasks: tuple[BatchTask, ...]
    max_attempts: int
    resources: dict[str, Any]
    limits: dict[str, Any] = dataclasses.field(default_factory=dict)


def target_label(kind: str, value: float) -> str:
    """``"macs-2x"``, ``"params-1.5x"``: a target as a directory name."""
    return f"{kind}-{value:g}x"


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and validate the manifest at ``path`` (relative paths are relative to it).

    Raises:
        ManifestError: listing every problem found.
    """
    import yaml

    source = quote(str(path))
    try:
        size = os.path.getsize(path)
        if size > _MAX_MANIFEST_BYTES:
            raise ManifestError(source, [f"is {size:,} bytes, more than {_MAX_MANIFEST_BYTES:,}"])
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ManifestError(source, [f"cannot be read: {exc.strerror or exc}"]) from None
    except yaml.YAMLError as exc:
        raise ManifestError(source, [f"is not valid YAML: {' '.join(str(exc).split())}"]) from None
    return parse_manifest(data, base=Path(path).resolve().parent, source=source)


def parse_manifest(data: Any, *, base: Path, source: str = "<manifest>") -> Manifest:
    """Validate manifest ``data`` (parsed YAML); relative paths are relative to ``base``."""
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise ManifestError(source, [f"must be a mapping (found {type(data).__name__})"])
    _unknown(data, _TOP_KEYS, "", problems)
    if data.get("version", MANIFEST_VERSION) != MANIFEST_VERSION:
        problems.append(f"version must be {MANIFEST_VERSION} (found {quote(data.get('version'))})")
    max_attempts = data.get("max_attempts", 2)
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        problems.append(f"max_attempts must be an int >= 1 (found {quote(max_attempts)})")
        max_attempts = 1
    resources = _resources(data.get("resources", {}), problems)
    limits = _limits(data.get("limits", {}), problems)
    top_config = data.get("config", {})
    if not isinstance(top_config, Mapping):
        problems.append(
            f"config must be a mapping of PruneConfig fields (found {type(top_config).__name__})"
        )
        top_config = {}
    elif "target" in top_config:
        problems.append("config.target is not allowed: list targets under 'targets'")
    top_targets = data.get("targets")
    top_dataset = data.get("dataset")
    models = data.get("models")
    if not isinstance(models, list) or not models:
        problems.append(f"models must be a non-empty list (found {quote(models)})")
        models = []

    tasks: list[BatchTask] = []
    names: dict[str, str] = {}
    for i, entry in enumerate(models):
        where = f"models[{i}]"
        if not isinstance(entry, Mapping):
            problems.append(f"{where} must be a mapping with a 'path' (found {quote(entry)})")
            continue
        _unknown(entry, _ENTRY_KEYS, f"{where}.", problems)
        files = _files(entry.get("path"), base, where, problems)
        if entry.get("name") is not None and len(files) > 1:
            problems.append(
                f"{where}.name is only allowed for a single file (path matches {len(files)})"
            )
        dataset = _dataset(
            entry.get("dataset", top_dataset),
            f"{where}.dataset" if "dataset" in entry else "dataset",
            problems,
            limits,
        )
        targets = _targets(
            entry.get("targets", top_targets),
            f"{where}.targets" if "targets" in entry else "targets",
            problems,
        )
        entry_config = entry.get("config", {})
        if not isinstance(entry_config, Mapping):
            problems.append(
                f"{where}.config must be a mapping (found {type(entry_config).__name__})"
            )
            entry_config = {}
        elif "target" in entry_config:
            problems.append(f"{where}.config.target is not allowed: use {where}.targets")
        configs = _configs(_merge(top_config, entry_config), targets, where, problems, limits)
        for file in files:
            name = entry.get("name") or _stem(file)
            if not isinstance(name, str) or not _NAME.match(name):
                problems.append(
                    f"{where}: model name {quote(name)} must be 1-128 letters, digits, '.', '_' or '-' "
                    "(set 'name' or rename the file)"
                )
                continue
            if name in _RESERVED:
                problems.append(
                    f"{where}: model name {name!r} is reserved for a batch output file (set 'name')"
                )
                continue
            if name in names:
                problems.append(
                    f"{where}: model name {name!r} is also used by {names[name]} (set 'name')"
                )
                continue
            names[name] = f"{where} ({file})"
            if dataset is None:
                continue
            for label, config in configs:
                tasks.append(_task(name, label, file, dataset, config))
    if problems:
        raise ManifestError(source, problems)
    return Manifest(source, tuple(tasks), max_attempts, resources, limits.to_dict())


def _unknown(data: Mapping[str, Any], allowed: set[str], prefix: str, problems: list[str]) -> None:
    for key in data:
        if key not in allowed:
            problems.append(
                f"unknown key {quote(prefix + str(key))} (expected one of {sorted(allowed)})"
            )


def _files(pattern: Any, base: Path, where: str, problems: list[str]) -> list[str]:
    if not isinstance(pattern, str) or not pattern:
        problems.append(f"{where}.path must be a file path or glob (found {quote(pattern)})")
        return []
    full = str(base / os.path.expanduser(pattern))
    if glob.has_magic(pattern):
        files = sorted(f for f in glob.glob(full, recursive=True) if os.path.isfile(f))
        if not files:
            problems.append(f"{where}.path {quote(pattern)} matches no file")
        return [os.path.abspath(f) for f in files]
    if not os.path.isfile(full):
        problems.append(f"{where}.path {quote(pattern)} does not exist (looked for {quote(full)})")
        return []
    return [os.path.abspath(full)]


def _stem(file: str) -> str:
    name = os.path.basename(file)
    return (
        name[: -len(".safetensors")] if name.endswith(".safetensors") else os.path.splitext(name)[0]
    )


def _dataset(
    value: Any, where: str, problems: list[str], limits: Limits = DEFAULT_LIMITS
) -> dict[str, Any] | None:
    from metaprune.data import check_dataset_kwargs, list_datasets

    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, Mapping):
        problems.append(
            f"{where} must be a dataset name or {{name, root, kwargs}} (found {quote(value)})"
        )
        return None
    bad = len(problems)
    _unknown(value, _DATASET_KEYS, f"{where}.", problems)
    name, root, kwargs = value.get("name"), value.get("root"), value.get("kwargs", {})
    if name not in list_datasets():
        problems.append(f"{where}: unknown dataset {quote(name)} (registered: {list_datasets()})")
    if root is not None and not (isinstance(root, str) and os.path.isdir(root)):
        problems.append(f"{where}.root {quote(root)} is not a directory")
    if not isinstance(kwargs, Mapping):
        problems.append(f"{where}.kwargs must be a mapping (found {quote(kwargs)})")
    elif len(problems) == bad:
        try:  # the same check as --dataset-kwargs and the service: known options, bounds
            kwargs = check_dataset_kwargs(name, kwargs, limits)
        except InvalidInputError as err:
            problems.append(f"{where}.kwargs: {' '.join(str(err).split())}")
    if len(problems) > bad:
        return None
    return {"name": name, "root": os.path.abspath(root) if root else None, "kwargs": dict(kwargs)}


def _targets(value: Any, where: str, problems: list[str]) -> list[dict[str, Any]]:
    from metaprune.pruning import Target

    if not isinstance(value, list) or not value:
        problems.append(
            f"{where} must be a non-empty list of speed-ups or {{kind, value}} (found {quote(value)})"
        )
        return []
    targets, labels = [], set()
    for j, item in enumerate(value):
        spec = {"kind": "macs", "value": item} if not isinstance(item, Mapping) else dict(item)
        try:
            t = Target(**spec)
        except (TypeError, ValueError) as exc:
            problems.append(f"{where}[{j}]: {' '.join(str(exc).split())}")
            continue
        label = target_label(t.kind, t.value)
        if label in labels:
            problems.append(f"{where}[{j}]: target {label} is listed twice")
            continue
        labels.add(label)
        targets.append({"kind": t.kind, "value": t.value})
    return targets


def _configs(
    config: dict[str, Any],
    targets: list[dict[str, Any]],
    where: str,
    problems: list[str],
    limits: Limits,
) -> list[tuple[str, dict[str, Any]]]:
    from metaprune.pruning import PruneConfig

    out = []
    for target in targets:
        try:
            parsed = PruneConfig.from_dict({**config, "target": target})
            parsed.check_limits(limits)
        except (TypeError, ValueError) as exc:
            problems.append(f"{where}.config: {' '.join(str(exc).split())}")
            return []
        if parsed.method == "metanet" and parsed.metanet is None:
            problems.append(f"{where}.config: method 'metanet' needs 'metanet' (a name or path)")
            return []
        out.append((target_label(target["kind"], target["value"]), parsed.to_dict()))
    return out


def _limits(value: Any, problems: list[str]) -> Limits:
    try:
        return Limits.from_dict(value)
    except InvalidInputError as exc:
        problems.append(f"limits: {' '.join(str(exc).split())}")
        return DEFAULT_LIMITS


def _resources(value: Any, problems: list[str]) -> dict[str, Any]:
    from metaprune.executor import Resources

    if not isinstance(value, Mapping):
        problems.append(f"resources must be a mapping (found {quote(value)})")
        return {}
    try:
        Resources(**value)
    except TypeError as exc:
        problems.append(f"resources: {exc} (expected keys num_cpus, num_gpus, memory_bytes)")
        return {}
    except InvalidInputError as exc:
        problems.append(f"resources: {exc}")
        return {}
    return dict(value)


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _task(
    model: str, label: str, file: str, dataset: dict[str, Any], config: dict[str, Any]
) -> BatchTask:
    stat = os.stat(file)
    payload = json.dumps(
        [model, label, file, stat.st_size, stat.st_mtime_ns, dataset, config], sort_keys=True
    )
    digest = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return BatchTask(model, label, file, dataset, config, digest)
