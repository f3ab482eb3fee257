"""The one conversion between wire messages and ``metaprune`` objects.

``PruneConfig`` travels as the ``metaprune.v1.PruneConfig`` message, a field-for-field
mirror: each dataclass field maps *by name* to a proto field, a nested dataclass to a
nested message. The conversion is generic (it walks the message and the dataclass), so a
field added to both needs no code here; ``tests/service/test_convert.py`` fails when
``PruneConfig`` has a field the proto does not carry. Unset optional fields are left out
of the dict, so :meth:`PruneConfig.from_dict` gives them their defaults and validates the
rest with messages that name the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Mapping
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.message import Message

from metaprune.errors import InvalidInputError
from metaprune.pruning.config import MAX_LIST, PruneConfig
from service._generated import prune_config_pb2 as cpb
from service._generated import pruning_service_pb2 as pb

__all__ = [
    "config_from_proto",
    "config_to_proto",
    "dataset_kwargs_from_proto",
    "dict_to_config_proto",
    "event_from_proto",
    "event_to_proto",
    "job_to_proto",
    "message_to_dict",
    "metrics_to_struct",
    "missing_fields",
    "model_to_proto",
    "state_from_proto",
    "state_to_proto",
]


_VALUE = "google.protobuf.Value"


def message_to_dict(message: Message, prefix: str = "") -> dict[str, Any]:
    """Fields that are set, by name: nested messages as dicts, repeated fields as lists,
    ``google.protobuf.Value`` fields (a dataclass field of several scalar types, e.g.
    ``float | str``) as the plain value.

    Every value is checked at the edge, before the library sees it: numbers must be finite
    and repeated fields hold at most :data:`~metaprune.pruning.config.MAX_LIST` entries.

    Raises:
        InvalidInputError: naming the field (dotted path), the expectation and what was found.
    """
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        path = prefix + field.name
        if _is_repeated(field):
            if len(value) > MAX_LIST:
                raise InvalidInputError(
                    f"{path} has {len(value):,} entries (at most {MAX_LIST} are accepted)"
                )
            out[field.name] = [_finite(f"{path}[{i}]", v) for i, v in enumerate(value)]
        elif field.message_type is not None and field.message_type.full_name == _VALUE:
            out[field.name] = _value(path, value)
        elif field.message_type is not None:
            out[field.name] = message_to_dict(value, path + ".")
        else:
            out[field.name] = _finite(path, value)
    return out


def _finite(path: str, value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInputError(f"{path} must be a finite number (found {value})")
    return value


def _value(path: str, value: struct_pb2.Value) -> Any:
    """A ``google.protobuf.Value`` holding a scalar, as the plain value (``MessageToDict``
    cannot represent NaN and would fail as an internal error)."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return _finite(path, value.number_value)
    if kind in ("string_value", "bool_value"):
        return getattr(value, kind)
    raise InvalidInputError(
        f"{path} must be a number or a string (found a google.protobuf.Value "
        f"holding {kind or 'nothing'})"
    )


def config_from_proto(message: cpb.PruneConfig) -> PruneConfig:
    """A validated :class:`PruneConfig`; unset fields take the library's defaults.

    Raises:
        ConfigError: a value is out of range or of the wrong kind (the message names it).
    """
    data = message_to_dict(message, "config.")
    for key in ("seed", "data_seed"):  # int64 on the wire, plain int in the config
        if key in data:
            data[key] = int(data[key])
    return PruneConfig.from_dict(data)


def config_to_proto(config: PruneConfig) -> cpb.PruneConfig:
    """Every field of ``config`` set explicitly (so a job shows the defaults it ran with)."""
    message = cpb.PruneConfig()
    _fill(message, config.to_dict())
    return message


def dict_to_config_proto(data: Mapping[str, Any]) -> cpb.PruneConfig:
    """A message with exactly the fields of a (partial) ``PruneConfig.to_dict()``-style dict."""
    message = cpb.PruneConfig()
    _fill(message, data)
    return message


def _fill(message: Message, data: Mapping[str, Any]) -> None:
    fields = message.DESCRIPTOR.fields_by_name
    for key, value in data.items():
        if value is None:
            continue  # unset optional = None in the dataclass
        field = fields.get(key)
        if field is None:
            raise InvalidInputError(
                f"PruneConfig field {key!r} has no counterpart in metaprune.v1."
                f"{message.DESCRIPTOR.name} (extend protos/metaprune/v1/prune_config.proto)"
            )
        if field.message_type is not None and field.message_type.full_name == _VALUE:
            from google.protobuf.json_format import ParseDict

            getattr(message, key).CopyFrom(ParseDict(value, struct_pb2.Value()))
        elif field.message_type is not None and not _is_repeated(field):
            _fill(getattr(message, key), value)
        elif _is_repeated(field):
            getattr(message, key).extend(value)
        else:
            setattr(message, key, value)


def missing_fields(cls: type = PruneConfig, descriptor: Any = None, prefix: str = "") -> list[str]:
    """Dataclass fields (dotted paths) without a same-named proto field of a fitting kind.

    Kinds: a nested dataclass is a message of the same shape; ``bool``, ``int``, ``float``,
    ``str`` (optionally ``| None``) are ``bool``, ``int32``/``int64``, ``double``, ``string``;
    ``tuple[X, ...]`` is ``repeated X``; a union of several scalar types (``float | str``)
    is a ``google.protobuf.Value``.
    """
    descriptor = descriptor or cpb.PruneConfig.DESCRIPTOR
    hints = typing.get_type_hints(cls)
    missing = []
    for f in dataclasses.fields(cls):
        proto = descriptor.fields_by_name.get(f.name)
        path = prefix + f.name
        hint = hints[f.name]
        if proto is None:
            missing.append(path)
        elif dataclasses.is_dataclass(hint):
            if proto.message_type is None or _is_repeated(proto):
                missing.append(path)
            else:
                missing += missing_fields(hint, proto.message_type, path + ".")
        elif not _fits(hint, proto):
            missing.append(f"{path} (type {hint} vs proto field {proto.name} of another kind)")
    return missing


_SCALARS = {
    bool: ("TYPE_BOOL",),
    int: ("TYPE_INT32", "TYPE_INT64", "TYPE_UINT32", "TYPE_UINT64"),
    float: ("TYPE_DOUBLE", "TYPE_FLOAT"),
    str: ("TYPE_STRING",),
}


def _fits(hint: Any, proto: Any) -> bool:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is tuple:
        return _is_repeated(proto) and _scalar_fits(args[0], proto)
    if _is_repeated(proto):
        return False
    kinds = args if args else [hint]
    if len(kinds) > 1:
        return proto.message_type is not None and proto.message_type.full_name == _VALUE
    return _scalar_fits(kinds[0], proto)


def _scalar_fits(kind: Any, proto: Any) -> bool:
    names = _SCALARS.get(kind, ())
    return any(proto.type == getattr(proto, name) for name in names)


def _is_repeated(field: Any) -> bool:
    # protobuf >= 5 has is_repeated; the label enum is the older spelling
    flag = getattr(field, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return field.label == field.LABEL_REPEATED


def dataset_kwargs_from_proto(struct: struct_pb2.Struct) -> dict[str, Any]:
    """``CreatePruneJobRequest.dataset_kwargs`` as plain data; whole numbers become ints
    (``Struct`` numbers are doubles, JSON's ``64`` is an int), so ``image_size: 64`` reaches
    the dataset as the int it checks for. Values are checked by the caller
    (:func:`metaprune.data.check_dataset_kwargs`)."""
    from google.protobuf.json_format import MessageToDict

    def plain(value: Any) -> Any:
        if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
            return int(value)
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(MessageToDict(struct))


def metrics_to_struct(metrics: Mapping[str, Any]) -> struct_pb2.Struct:
    """Plain metrics as a ``Struct``; values it cannot hold (NaN, objects) become strings."""
    struct = struct_pb2.Struct()
    clean: dict[str, Any] = {}
    for key, value in metrics.items():
        if value is None or isinstance(value, (bool, str)):
            clean[str(key)] = value
        elif isinstance(value, (int, float)):
            clean[str(key)] = float(value) if math.isfinite(value) else str(value)
        else:
            clean[str(key)] = json.dumps(value, default=str)[:200]
    struct.update(clean)
    return struct


def event_to_proto(event: Mapping[str, Any]) -> pb.ProgressEvent:
    """A ``ProgressEvent`` dict (``dataclasses.asdict``) as its message."""
    return pb.ProgressEvent(
        stage=str(event.get("stage", "")),
        step=int(event.get("step", 0)),
        total=int(event.get("total", 0)),
        metrics=metrics_to_struct(event.get("metrics") or {}),
    )


_STATES = {
    "queued": pb.JOB_STATE_QUEUED,
    "running": pb.JOB_STATE_RUNNING,
    "succeeded": pb.JOB_STATE_SUCCEEDED,
    "failed": pb.JOB_STATE_FAILED,
    "cancelled": pb.JOB_STATE_CANCELLED,
}
STATE_NAMES = {v: k for k, v in _STATES.items()}


def state_to_proto(state: str) -> int:
    return _STATES[state]


def state_from_proto(value: int) -> str:
    """The store's state name of a ``JobState`` value.

    Raises:
        InvalidInputError: UNSPECIFIED or an unknown number.
    """
    if value not in STATE_NAMES:
        raise InvalidInputError(
            f"unknown job state {value} (expected one of {sorted(STATE_NAMES)})"
        )
    return STATE_NAMES[value]


def job_to_proto(job: Any, latest_event: Mapping[str, Any] | None = None) -> pb.Job:
    """A :class:`~service.store.JobRecord` as its message (``latest_event`` overrides the
    stored one, which is persisted at most once a second)."""
    event = latest_event if latest_event is not None else job.latest_event
    message = pb.Job(
        job_id=job.job_id, state=_STATES[job.state], model_id=job.model_id,
        dataset=job.dataset, config=_stored_config(job.config),
        request_id=job.request_id, owner=job.owner, created_at=job.created_at,
        started_at=job.started_at or 0.0, finished_at=job.finished_at or 0.0,
        error=job.error or "", attempts=job.attempts, result_sha256=job.result_sha256 or "",
        result_size_bytes=job.result_size or 0,
        summary_json=json.dumps(job.summary) if job.summary else "",
    )  # fmt: skip
    if job.dataset_kwargs:
        message.dataset_kwargs.update(job.dataset_kwargs)
    if event:
        message.latest_event.CopyFrom(event_to_proto(event))
    return message


def _stored_config(config: Mapping[str, Any]) -> cpb.PruneConfig:
    """A stored job's config; one accepted before a bound existed (e.g. 100,000 grid values,
    a 40-bit seed) is shown as stored rather than breaking GetJob and ListJobs."""
    try:
        return config_to_proto(PruneConfig.from_dict(config))
    except InvalidInputError:
        try:
            return dict_to_config_proto(config)
        except (InvalidInputError, TypeError, ValueError):
            return cpb.PruneConfig()


def model_to_proto(record: Any) -> pb.Model:
    return pb.Model(
        model_id=record.model_id, display_name=record.display_name, size_bytes=record.size,
        spec_json=record.spec_json, params=record.params, created_at=record.created_at,
    )  # fmt: skip


def event_from_proto(message: pb.ProgressEvent) -> dict[str, Any]:
    """A ``ProgressEvent`` message as the dict :func:`event_to_proto` took (integral numbers
    come back as floats: ``Struct`` numbers are doubles)."""
    from google.protobuf.json_format import MessageToDict

    return {
        "stage": message.stage, "step": int(message.step), "total": int(message.total),
        "metrics": MessageToDict(message.metrics),
    }  # fmt: skip
