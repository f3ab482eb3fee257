"""PruneConfig <-> metaprune.v1.PruneConfig: by field name, nested messages mirror
nested dataclasses, unset fields take the library defaults."""

from __future__ import annotations

import dataclasses

import pytest

from metaprune.pruning.config import FinetuneBudget, PruneConfig, Target
from service import convert
from service._generated import prune_config_pb2 as cpb
from service._generated import pruning_service_pb2 as pb


def test_every_prune_config_field_has_a_proto_field() -> None:
    missing = convert.missing_fields()
    assert missing == [], (
        f"PruneConfig fields {missing} are not carried by metaprune.v1.PruneConfig: "
        "add them to protos/metaprune/v1/prune_config.proto and run protos/generate.py"
    )


@dataclasses.dataclass(frozen=True)
class _Extended(PruneConfig):
    brand_new_option: int = 3


@dataclasses.dataclass(frozen=True)
class _NewTarget(Target):
    tolerance: float = 0.1


@dataclasses.dataclass(frozen=True)
class _WithNestedField(PruneConfig):
    target: _NewTarget = dataclasses.field(default_factory=_NewTarget)


@dataclasses.dataclass(frozen=True)
class _RetypedTarget(Target):
    value: float | str = 2.0  # e.g. a number or "auto": needs a google.protobuf.Value


@dataclasses.dataclass(frozen=True)
class _WithRetypedField(PruneConfig):
    target: _RetypedTarget = dataclasses.field(default_factory=_RetypedTarget)
    seed: str = "0"


def test_a_new_dataclass_field_is_detected() -> None:
    assert convert.missing_fields(_Extended) == ["brand_new_option"]
    assert convert.missing_fields(_WithNestedField) == ["target.tolerance"]


def test_a_field_whose_type_changed_is_detected() -> None:
    missing = convert.missing_fields(_WithRetypedField)
    assert [m.split(" ")[0] for m in missing] == ["target.value", "seed"]


def test_round_trip_of_defaults_and_of_every_changed_field() -> None:
    assert convert.config_from_proto(convert.config_to_proto(PruneConfig())) == PruneConfig()
    changed = PruneConfig(
        method="random", target=Target("params", 3.5), metanet="resnet20-digits",
        after_pruning=FinetuneBudget(epochs=3, lr=0.05, schedule="step", milestones=(1, 2)),
        batch_size=32, seed=7, data_seed=2,
    )  # fmt: skip
    message = convert.config_to_proto(changed)
    assert message.target.kind == "params" and message.after_pruning.milestones == [1, 2]
    back = convert.config_from_proto(cpb.PruneConfig.FromString(message.SerializeToString()))
    assert back == changed


def test_unset_fields_take_the_library_defaults() -> None:
    config = convert.config_from_proto(cpb.PruneConfig(target=cpb.Target(value=4.0)))
    assert config.target == Target("macs", 4.0)
    assert config.after_pruning == PruneConfig().after_pruning
    assert config.method == PruneConfig().method
    assert convert.message_to_dict(cpb.PruneConfig(seed=0)) == {"seed": 0}  # presence kept


@pytest.mark.parametrize(
    ("message", "needle"),
    [
        (cpb.PruneConfig(target=cpb.Target(value=0.5)), "target.value"),
        (cpb.PruneConfig(target=cpb.Target(value=float("nan"))), "target.value"),
        (cpb.PruneConfig(method="magic"), "method"),
        (cpb.PruneConfig(pruning=cpb.PruningOptions(steps=0)), "pruning.steps"),
    ],
)
def test_invalid_values_are_refused_by_name(message: cpb.PruneConfig, needle: str) -> None:
    with pytest.raises(ValueError, match=needle.split(".")[-1]) as info:
        convert.config_from_proto(message)
    assert needle.split(".")[-1] in str(info.value)


def test_events_and_metrics_survive_the_wire() -> None:
    event = {"stage": "prune", "step": 3, "total": 10,
             "metrics": {"val_accuracy": 0.5, "reached": False, "note": "x", "bad": float("nan"),
                         "none": None}}  # fmt: skip
    message = pb.ProgressEvent.FromString(convert.event_to_proto(event).SerializeToString())
    back = convert.event_from_proto(message)
    assert back["stage"] == "prune" and back["step"] == 3 and back["total"] == 10
    assert back["metrics"] == {"val_accuracy": 0.5, "reached": False, "note": "x", "bad": "nan",
                               "none": None}  # fmt: skip


def test_job_states_map_both_ways() -> None:
    for name in ("queued", "running", "succeeded", "failed", "cancelled"):
        assert convert.state_from_proto(convert.state_to_proto(name)) == name
    with pytest.raises(ValueError, match="unknown job state 0"):
        convert.state_from_proto(pb.JOB_STATE_UNSPECIFIED)


def test_dataset_kwargs_from_proto_gives_whole_numbers_as_ints() -> None:
    from google.protobuf import struct_pb2

    from service.convert import dataset_kwargs_from_proto

    struct = struct_pb2.Struct()
    struct.update({"image_size": 64, "noise": 0.5, "augment": False, "sizes": [1, 2.5]})
    out = dataset_kwargs_from_proto(struct)
    assert out == {"image_size": 64, "noise": 0.5, "augment": False, "sizes": [1, 2.5]}
    assert type(out["image_size"]) is int and type(out["noise"]) is float
    assert dataset_kwargs_from_proto(struct_pb2.Struct()) == {}
