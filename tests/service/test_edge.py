"""Validation at the edge: every field of a CreatePruneJob request is checked before any
work (non-finite numbers, list lengths, request_id, a target past the pruning floor), and
upload de-duplication never tells one token what another uploaded."""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import torch
from google.protobuf import struct_pb2

import metaprune
from metaprune.errors import InvalidInputError
from metaprune.pruning.config import MAX_LIST
from metaprune.pruning.reachable import max_reachable
from service import convert
from service._generated import prune_config_pb2 as cpb
from service._generated import pruning_service_pb2 as pb
from service.client import PruningClient, read_spec_json
from service.testing import make_checkpoint, tiny_config


def _reg(value: float) -> cpb.PruneConfig:
    message = cpb.PruneConfig()
    message.sparse.reg.CopyFrom(struct_pb2.Value(number_value=value))
    return message


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_refused_naming_the_field(value: float) -> None:
    with pytest.raises(InvalidInputError, match=r"config\.sparse\.reg must be a finite number"):
        convert.config_from_proto(_reg(value))
    grid = cpb.PruneConfig()
    grid.sparse.auto_grid.extend([0.1, value])
    with pytest.raises(InvalidInputError, match=r"config\.sparse\.auto_grid\[1\] must be a finite"):
        convert.config_from_proto(grid)
    budget = cpb.PruneConfig()
    budget.after_pruning.lr = value
    with pytest.raises(InvalidInputError, match=r"config\.after_pruning\.lr must be a finite"):
        convert.config_from_proto(budget)


def test_value_fields_hold_scalars_only() -> None:
    message = cpb.PruneConfig()
    message.sparse.reg.list_value.values.add().number_value = 1.0
    with pytest.raises(InvalidInputError, match="sparse.reg must be a number or a string"):
        convert.config_from_proto(message)
    assert convert.config_from_proto(_reg(0.05)).sparse.reg == 0.05
    auto = cpb.PruneConfig()
    auto.sparse.reg.string_value = "auto"
    assert convert.config_from_proto(auto).sparse.reg == "auto"


def test_repeated_fields_are_bounded() -> None:
    message = cpb.PruneConfig()
    message.sparse.auto_grid.extend([0.1] * 100_000)
    with pytest.raises(InvalidInputError, match=r"sparse\.auto_grid has 100,000 entries \(at most"):
        convert.config_from_proto(message)
    message = cpb.PruneConfig()
    message.after_pruning.milestones.extend(range(1, MAX_LIST + 2))
    with pytest.raises(InvalidInputError, match="milestones has 17 entries"):
        convert.config_from_proto(message)
    message = cpb.PruneConfig()
    message.sparse.auto_grid.extend([0.1] * MAX_LIST)
    assert convert.config_from_proto(message).sparse.auto_grid == (0.1,)


def _create(client: PruningClient, request: pb.CreatePruneJobRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        client.stub.CreatePruneJob(request, metadata=client._metadata, timeout=60)
    return info.value


def _request(
    model_id: str, config: cpb.PruneConfig | None = None, **fields: str
) -> pb.CreatePruneJobRequest:
    request = pb.CreatePruneJobRequest(
        model_id=model_id, dataset="synthetic", request_id=f"edge-{time.time_ns()}"
    )
    if config is not None:
        request.config.CopyFrom(config)
    for key, value in fields.items():
        setattr(request, key, value)
    return request


def test_the_server_answers_invalid_argument_for_each_edge_case(
    connect: Callable[..., PruningClient], model_id: str
) -> None:
    client = connect("alice")
    before = len(client.list_jobs())
    cases = [
        (_request(model_id, _reg(float("nan"))), "config.sparse.reg must be a finite number"),
        (
            _request(model_id, _reg(float("inf"))),
            "config.sparse.reg must be a finite number (found inf)",
        ),
        (_request(model_id, request_id=""), "request_id must be 1-128 printable characters"),
        (_request(model_id, request_id="x" * 129), "found 'xxxxx"),
        (_request(model_id, request_id="a\nb"), "request_id must be 1-128 printable"),
    ]
    grid = cpb.PruneConfig()
    grid.sparse.auto_grid.extend([0.1] * 100_000)
    cases.append((_request(model_id, grid), "config.sparse.auto_grid has 100,000 entries"))
    for request, needle in cases:
        err = _create(client, request)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (needle, err.details())
        assert needle in err.details(), err.details()
    assert len(client.list_jobs()) == before  # nothing was created, nothing was stored


def _at_most(details: str) -> float:
    found = re.search(r"this model reaches at most ([0-9.]+); ask for <= ([0-9.]+)", details)
    assert found is not None, details
    assert found.group(1) == found.group(2)
    return float(found.group(1))


def test_a_target_past_the_floor_is_refused_up_front_with_the_largest_reachable(
    connect: Callable[..., PruningClient], model_id: str, checkpoint: Path
) -> None:
    client = connect("alice")
    before = len(client.list_jobs())
    model, _ = metaprune.load(checkpoint)
    example = torch.zeros(1, 3, 8, 8)  # the synthetic dataset's input
    config = convert.dict_to_config_proto(tiny_config(target={"value": 1e9}))
    err = _create(client, _request(model_id, config))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "target.value 1e+09 (macs ratio) cannot be reached" in err.details()
    assert "pruning.max_layer_ratio 0.75, pruning.min_channels 2" in err.details()
    best = max_reachable(model, example)
    assert 10 < best < 20 and _at_most(err.details()) == math.floor(best * 100) / 100
    looser = convert.dict_to_config_proto(
        tiny_config(target={"value": 1e3}, pruning={"max_layer_ratio": 0.9})
    )
    err = _create(client, _request(model_id, looser))
    assert "pruning.max_layer_ratio 0.9," in err.details()
    assert _at_most(err.details()) > best  # a lower floor reaches further
    params = convert.dict_to_config_proto(tiny_config(target={"kind": "params", "value": 1e3}))
    err = _create(client, _request(model_id, params))
    assert "(params ratio)" in err.details()
    best_params = max_reachable(model, example, kind="params")
    assert _at_most(err.details()) == math.floor(best_params * 100) / 100
    assert len(client.list_jobs()) == before
    reachable = convert.dict_to_config_proto(tiny_config(target={"value": best * 0.99}))
    job = client.stub.CreatePruneJob(_request(model_id, reachable), metadata=client._metadata)
    client.cancel_job(job.job.job_id)  # just below the bound is accepted


def test_upload_created_is_per_owner(connect: Callable[..., PruningClient], tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "shared.safetensors", seed=1919)
    alice, bob = connect("alice"), connect("bob")

    def upload(client: PruningClient) -> pb.UploadModelResponse:
        data = path.read_bytes()
        header = pb.UploadHeader(
            spec_json=read_spec_json(path), total_size=len(data),
            sha256=hashlib.sha256(data).hexdigest(), display_name="shared",
        )  # fmt: skip
        requests = iter([pb.UploadModelRequest(header=header), pb.UploadModelRequest(chunk=data)])
        return client.stub.UploadModel(requests, metadata=client._metadata, timeout=60)

    first = upload(alice)
    assert first.created is True
    assert upload(alice).created is False  # alice's own bytes: she knows them
    bob_first = upload(bob)
    assert bob_first.created is True  # stored once, but bob learns nothing about alice
    assert bob_first.model.model_id == first.model.model_id
    assert bob_first.model.created_at >= first.model.created_at
    assert upload(bob).created is False
