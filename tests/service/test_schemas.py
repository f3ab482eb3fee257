"""The JSON Schemas every client can rely on (protos/metaprune/v1/*.schema.json), checked
against a real job's ``report_json`` and ``summary_json`` from a real server."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest

from service._generated import pruning_service_pb2 as pb
from service.client import PruningClient
from service.testing import tiny_config

SCHEMAS = Path(__file__).resolve().parents[2] / "protos" / "metaprune" / "v1"

pytestmark = pytest.mark.timeout(240)


def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="module")
def real_job(connect: Callable[..., PruningClient], model_id: str, tmp_path_factory) -> tuple:
    client = connect("alice")
    job = client.create_job(model_id, "synthetic", tiny_config(after_pruning={"epochs": 0}, importance={"normalizer": "auto"}))
    job = client.watch(job.job_id)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error
    paths = client.download(job.job_id, tmp_path_factory.mktemp("schema"))
    return json.loads(paths["report"].read_text()), json.loads(job.summary_json)


def test_a_real_report_and_summary_follow_their_schemas(real_job: tuple) -> None:
    report, summary = real_job
    validator("report").validate(report)
    validator("summary").validate(summary)
    assert summary["speedup"] == report["speedup"] and summary["macs"][1] == report["final"]["macs"]


@pytest.mark.parametrize(
    ("name", "path", "value", "needle"),
    [
        ("report", ("target_reached",), None, "'target_reached' is a required property"),
        ("report", ("final", "test_accuracy"), 1.5, "1.5 is greater than the maximum of 1"),
        ("report", ("target", "kind"), "flops", "'flops' is not one of"),
        ("report", ("report_version",), 2, "1 was expected"),
        ("report", ("curve", 0, "step"), -1, "-1 is less than the minimum of 0"),
        ("summary", ("macs",), [1, 2, 3], "is too long"),
        ("summary", ("final_test_accuracy",), "93%", "'93%' is not of type 'number', 'null'"),
    ],
)
def test_the_schemas_reject_what_they_do_not_describe(
    real_job: tuple, name: str, path: tuple, value: object, needle: str
) -> None:
    document = copy.deepcopy(real_job[0] if name == "report" else real_job[1])
    node = document
    for key in path[:-1]:
        node = node[key]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    errors = [e.message for e in validator(name).iter_errors(document)]
    assert any(needle in e for e in errors), errors
    extended = copy.deepcopy(real_job[0] if name == "report" else real_job[1])
    extended["added_later"] = {"any": "thing"}  # unknown keys are allowed (forward compatible)
    validator(name).validate(extended)
