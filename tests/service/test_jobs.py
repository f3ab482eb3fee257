"""Jobs on a real server with one warm worker process: the round trip, idempotency,
cancellation, watchers, ownership, bad job requests, a worker killed mid-job."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

import metaprune
from metaprune.data import get_dataset, make_loaders
from metaprune.pruning import evaluate
from service._generated import pruning_service_pb2 as pb
from service.client import PruningClient
from service.testing import tiny_config

pytestmark = pytest.mark.timeout(240)

LONG = tiny_config(after_pruning={"epochs": 200})  # minutes unless cancelled


def _wait(
    client: PruningClient, job_id: str, states: tuple[int, ...], timeout: float = 120.0
) -> pb.Job:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get_job(job_id)
        if job.state in states:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {pb.JobState.Name(job.state)}"
        time.sleep(0.05)


def _running_with_progress(client: PruningClient, job_id: str) -> pb.Job:
    """Wait until the job runs and has reported an event (its worker is inside prune())."""
    deadline = time.monotonic() + 120
    while True:
        job = client.get_job(job_id)
        if job.state == pb.JOB_STATE_RUNNING and job.HasField("latest_event"):
            return job
        assert job.state in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING), job
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_round_trip(connect: Callable[..., PruningClient], model_id: str, tmp_path: Path) -> None:
    client = connect("alice")
    job = client.create_job(model_id, "synthetic", tiny_config(), request_id="round-trip")
    assert job.state == pb.JOB_STATE_QUEUED and job.owner == "alice"
    assert job.config.target.value == 1.5 and job.config.method == metaprune.PruneConfig().method
    messages: list[tuple[int, str | None]] = []
    last: dict[str, Any] = {}  # the last event seen of each stage

    def on_message(j: pb.Job, e: Any) -> None:
        messages.append((j.state, e.stage if e else None))
        if e is not None:
            last[e.stage] = e

    final = client.watch(job.job_id, on_message)
    assert final.state == pb.JOB_STATE_SUCCEEDED, final.error
    assert final.attempts == 1 and final.finished_at >= final.started_at >= final.created_at
    stages = [s for _, s in messages if s]
    assert stages[0] == "checks" and stages[-1] == "evaluate"
    assert "evaluate_base" in stages
    assert {"prune", "after_pruning"} <= set(stages)
    assert [s for s, _ in messages][-1] == pb.JOB_STATE_SUCCEEDED
    # events within a stage may coalesce, but every stage's last event arrives
    for stage in ("evaluate_base", "recalibrate_bn", "evaluate"):  # counted in batches/passes
        assert last[stage].step == last[stage].total >= 1, stage
    assert last["prune"].metrics["reached"] is True

    paths = client.download(job.job_id, tmp_path / "out")
    assert paths["checkpoint"].stat().st_size == final.result_size_bytes
    report = json.loads(paths["report"].read_text())
    assert report["target_reached"] and report["speedup"]["macs"] >= 1.5
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(final.summary_json)["speedup"]["macs"] == report["speedup"]["macs"]
    model, spec = metaprune.load(paths["checkpoint"])
    assert spec.channel_plan  # pruned
    splits = get_dataset("synthetic", seed=0)
    _, _, test = make_loaders(splits, 64, 0)
    assert evaluate(model, test) == pytest.approx(report["final"]["test_accuracy"], abs=1e-9)
    assert sum(p.numel() for p in model.parameters()) == report["final"]["params"]


def test_create_is_idempotent_per_request_id(
    connect: Callable[..., PruningClient], model_id: str
) -> None:
    client = connect("alice")
    config = tiny_config()
    first = client.create_job(model_id, "synthetic", config, request_id="idem-1")
    again = client.create_job(model_id, "synthetic", config, request_id="idem-1")
    assert again.job_id == first.job_id
    with pytest.raises(grpc.RpcError) as info:
        client.create_job(model_id, "synthetic", tiny_config(seed=3), request_id="idem-1")
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert first.job_id in info.value.details()
    _wait(client, first.job_id, (pb.JOB_STATE_SUCCEEDED,))
    assert [j.job_id for j in client.list_jobs() if j.request_id == "idem-1"] == [first.job_id]


def test_cancel_a_queued_and_a_running_job(
    connect: Callable[..., PruningClient], model_id: str
) -> None:
    client = connect("alice")
    running = client.create_job(model_id, "synthetic", LONG)
    _running_with_progress(client, running.job_id)
    queued = client.create_job(model_id, "synthetic", tiny_config())
    assert client.get_job(queued.job_id).state == pb.JOB_STATE_QUEUED  # the one worker is busy
    cancelled = client.cancel_job(queued.job_id)
    assert cancelled.state == pb.JOB_STATE_CANCELLED and "queued" in cancelled.error

    start = time.monotonic()
    client.cancel_job(running.job_id)
    job = _wait(client, running.job_id, (pb.JOB_STATE_CANCELLED, pb.JOB_STATE_FAILED), timeout=60)
    assert job.state == pb.JOB_STATE_CANCELLED, job.error
    assert "cancelled by 'alice' while running" in job.error
    assert time.monotonic() - start < 30  # within seconds (cooperative, killed after a grace)
    # the worker is free again: the next job runs to completion
    after = client.create_job(model_id, "synthetic", tiny_config())
    assert _wait(client, after.job_id, (pb.JOB_STATE_SUCCEEDED,)).state == pb.JOB_STATE_SUCCEEDED
    assert client.cancel_job(after.job_id).state == pb.JOB_STATE_SUCCEEDED  # no-op when done


def test_several_watchers_and_a_late_watcher(
    connect: Callable[..., PruningClient], model_id: str
) -> None:
    client = connect("alice")
    job = client.create_job(model_id, "synthetic", tiny_config())
    seen: list[list[Any]] = [[] for _ in range(3)]

    def watch(i: int) -> None:
        seen[i].append(connect("alice").watch(job.job_id, lambda j, e: seen[i].append(e)))

    threads = [threading.Thread(target=watch, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for messages in seen:
        assert messages[-1].state == pb.JOB_STATE_SUCCEEDED
        assert any(e is not None and e.stage == "prune" for e in messages[:-1])
    late: list[tuple[pb.Job, Any]] = []
    final = client.watch(job.job_id, lambda j, e: late.append((j, e)))
    assert len(late) == 1  # the job has ended: current state + latest event, then the end
    assert late[0][0].state == final.state == pb.JOB_STATE_SUCCEEDED
    assert late[0][1] is not None and late[0][1].stage == "evaluate"


def test_a_job_belongs_to_its_token(connect: Callable[..., PruningClient], model_id: str) -> None:
    alice, bob, root = connect("alice"), connect("bob"), connect("root")
    job = alice.create_job(model_id, "synthetic", tiny_config())
    for call in (
        lambda: bob.get_job(job.job_id), lambda: bob.cancel_job(job.job_id),
        lambda: bob.delete_job(job.job_id), lambda: bob.watch(job.job_id),
        lambda: bob.download(job.job_id, "/nonexistent"),
        lambda: bob.create_job(model_id, "synthetic", tiny_config()),  # alice's model
    ):  # fmt: skip
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert job.job_id not in {j.job_id for j in bob.list_jobs()}
    assert root.get_job(job.job_id).owner == "alice"  # an admin sees every job
    assert job.job_id in {j.job_id for j in root.list_jobs()}
    viewer = connect("viewer")
    with pytest.raises(grpc.RpcError) as info:
        viewer.create_job(model_id, "synthetic", tiny_config())
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    _wait(alice, job.job_id, (pb.JOB_STATE_SUCCEEDED,))


@pytest.mark.parametrize(
    ("dataset", "config", "code", "needle"),
    [
        ("imagenet", {}, grpc.StatusCode.NOT_FOUND, "unknown dataset 'imagenet'"),
        ("/data/cifar10", {}, grpc.StatusCode.INVALID_ARGUMENT, "not a path"),
        ("../digits", {}, grpc.StatusCode.INVALID_ARGUMENT, "not a path"),
        (
            "synthetic",
            {"method": "metanet", "metanet": "nope"},
            grpc.StatusCode.NOT_FOUND,
            "unknown metanetwork 'nope'",
        ),
        (
            "synthetic",
            {"metanet": "/tmp/evil.safetensors"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "not a path",
        ),
        ("synthetic", {"target": {"value": 1.0}}, grpc.StatusCode.INVALID_ARGUMENT, "target.value"),
        ("synthetic", {"target": {"value": 0.5}}, grpc.StatusCode.INVALID_ARGUMENT, "target.value"),
        (
            "synthetic",
            {"target": {"value": float("nan")}},
            grpc.StatusCode.INVALID_ARGUMENT,
            "target.value",
        ),
        (
            "synthetic",
            {"after_pruning": {"epochs": 10**6}},
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "max_epochs",
        ),
        ("synthetic", {"method": "magic"}, grpc.StatusCode.INVALID_ARGUMENT, "magic"),
    ],
)
def test_bad_job_requests_are_refused(
    connect: Callable[..., PruningClient], model_id: str, dataset: str, config: dict,
    code: grpc.StatusCode, needle: str,
) -> None:  # fmt: skip
    client = connect("alice")
    before = len(client.list_jobs())
    request = pb.CreatePruneJobRequest(
        model_id=model_id, dataset=dataset, request_id=f"bad-{time.time_ns()}"
    )
    from service.convert import dict_to_config_proto

    request.config.CopyFrom(dict_to_config_proto(config))
    with pytest.raises(grpc.RpcError) as info:
        client.stub.CreatePruneJob(request, metadata=client._metadata, timeout=30)
    assert info.value.code() == code
    assert needle in info.value.details()
    assert len(client.list_jobs()) == before  # nothing created


def test_a_metanet_job_with_auto_reports_why_it_ran_the_baseline(
    connect: Callable[..., PruningClient], model_id: str, tmp_path: Path
) -> None:
    """No shipped metanetwork has a winning held-out record on the model's family (issue
    21): the job runs the strongest baseline and its report says so."""
    client = connect("alice")
    config = tiny_config(method="metanet", metanet="auto", importance={"normalizer": "sum"})
    job = client.create_job(model_id, "synthetic", config)
    final = client.watch(job.job_id, lambda j, e: None)
    assert final.state == pb.JOB_STATE_SUCCEEDED, final.error
    report = json.loads(client.download(job.job_id, tmp_path / "out")["report"].read_text())
    choice = report["method_choice"]
    assert report["method"] == "group-l2" and choice["requested"] == "metanet"
    assert choice["reason"].startswith("no registered metanetwork has a winning held-out record")
    assert "resnet20-digits: 'loses'" in choice["reason"]  # its held-out record (issue 21)
    assert "metanet" not in report["stages"]["before_pruning"]


def test_unknown_model_and_job(connect: Callable[..., PruningClient]) -> None:
    client = connect("alice")
    for call in (
        lambda: client.create_job("sha256:" + "0" * 64, "synthetic", {}),
        lambda: client.get_job("0" * 32),
        lambda: client.delete_model("sha256:" + "1" * 64),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_delete_and_list(connect: Callable[..., PruningClient], model_id: str, server: Any) -> None:
    client = connect("alice")
    job = client.create_job(model_id, "synthetic", LONG)
    for call in (lambda: client.delete_job(job.job_id), lambda: client.delete_model(model_id)):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as info:
        client.download(job.job_id, "/nonexistent")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    client.cancel_job(job.job_id)
    _wait(client, job.job_id, (pb.JOB_STATE_CANCELLED,))
    client.delete_job(job.job_id)
    with pytest.raises(grpc.RpcError) as info:
        client.get_job(job.job_id)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

    for _ in range(2):
        _wait(client, client.create_job(model_id, "synthetic", tiny_config()).job_id,
              (pb.JOB_STATE_SUCCEEDED,))  # fmt: skip
    jobs = client.list_jobs()
    paged = client.list_jobs(page_size=1)  # one page per job
    assert [j.job_id for j in paged] == [j.job_id for j in jobs] and len(jobs) >= 2
    assert [j.created_at for j in jobs] == sorted((j.created_at for j in jobs), reverse=True)
    done = client.list_jobs(states=(pb.JOB_STATE_SUCCEEDED,))
    assert done and all(j.state == pb.JOB_STATE_SUCCEEDED for j in done)
    result = server.blobs.result_dir(done[0].job_id)
    assert (result / "model.safetensors").is_file()
    client.delete_job(done[0].job_id)
    assert not result.exists()


def test_a_worker_killed_mid_job_fails_the_job_and_the_server_carries_on(
    connect: Callable[..., PruningClient], model_id: str, server: Any
) -> None:
    client = connect("alice")
    job = client.create_job(model_id, "synthetic", LONG)
    _running_with_progress(client, job.job_id)
    pid = server.jobs.worker_pid(job.job_id)
    assert pid is not None and pid != os.getpid()
    os.kill(pid, signal.SIGKILL)
    failed = _wait(client, job.job_id, (pb.JOB_STATE_FAILED,), timeout=60)
    assert "SIGKILL" in failed.error or "signal 9" in failed.error, failed.error
    assert client.health() == "SERVING"
    after = client.create_job(model_id, "synthetic", tiny_config())
    assert _wait(client, after.job_id, (pb.JOB_STATE_SUCCEEDED,)).state == pb.JOB_STATE_SUCCEEDED


def test_listings(connect: Callable[..., PruningClient]) -> None:
    client = connect("viewer")  # read-only tokens may list
    assert [d.name for d in client.list_datasets()] == ["digits", "synthetic"]
    digits = client.list_datasets()[0]
    assert (digits.num_classes, digits.in_channels, digits.image_size) == (10, 1, 8)
    assert "resnet20-digits" in [m.name for m in client.list_metanetworks()]
    info = client.server_info()
    assert info.token_name == "viewer" and info.version == metaprune.__version__
    assert info.limits["max_params"] == 200_000_000 and info.limits["max_queued_jobs"] == 100
    assert "max_upload_bytes" in info.limits and "blob_quota_bytes" in info.limits
    assert set(info.methods) >= {"group-l2", "metanet"} and "macs" in info.target_kinds
    assert json.loads(info.default_config_json) == metaprune.PruneConfig().to_dict()
    assert list(info.architecture_sources) == metaprune.models.list_sources()
    assert list(info.architecture_sources)[:2] == ["builtin", "torchvision"]


def test_a_job_that_raises_is_failed_with_its_reason(
    connect: Callable[..., PruningClient], tmp_path: Path
) -> None:
    from service.testing import make_checkpoint

    client = connect("alice")
    # a 10-class model on the 4-class synthetic set: the worker's prune() raises
    model = client.upload(make_checkpoint(tmp_path / "ten.safetensors", num_classes=10))
    job = client.create_job(model.model_id, "synthetic", tiny_config())
    final = client.watch(job.job_id)
    assert final.state == pb.JOB_STATE_FAILED
    assert "10 outputs" in final.error and "4 classes" in final.error, final.error
    assert "Traceback" not in final.error and final.attempts == 1
    assert client.health() == "SERVING"


def test_dataset_kwargs_reach_the_job(
    connect: Callable[..., PruningClient], tmp_path: Path
) -> None:
    from service.testing import make_checkpoint

    client = connect("alice")
    path = make_checkpoint(tmp_path / "c10.safetensors", num_classes=10, in_channels=1, width=0.25)
    model_id = client.upload(path).model_id
    options = {"image_size": 16, "num_classes": 10, "in_channels": 1}
    job = client.create_job(model_id, "synthetic", tiny_config(), dataset_kwargs=options,
                            request_id="options-1")  # fmt: skip
    from service.convert import dataset_kwargs_from_proto

    assert dataset_kwargs_from_proto(job.dataset_kwargs) == options
    again = client.create_job(model_id, "synthetic", tiny_config(), dataset_kwargs=options,
                              request_id="options-1")  # fmt: skip
    assert again.job_id == job.job_id
    with pytest.raises(grpc.RpcError) as info:  # the options are part of the request
        client.create_job(model_id, "synthetic", tiny_config(), request_id="options-1",
                          dataset_kwargs={**options, "image_size": 12})  # fmt: skip
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    final = _wait(client, job.job_id, (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED))
    assert final.state == pb.JOB_STATE_SUCCEEDED, final.error
    assert dataset_kwargs_from_proto(final.dataset_kwargs) == options
    report = json.loads(client.download(job.job_id, tmp_path / "out")["report"].read_text())
    assert report["dataset_kwargs"] == options
    model, _ = metaprune.load(tmp_path / "out" / "model.safetensors")
    splits = get_dataset("synthetic", seed=0, **options)
    _, _, test = make_loaders(splits, 64, 0)
    assert evaluate(model, test) == pytest.approx(report["final"]["test_accuracy"], abs=1e-9)
    with pytest.raises(grpc.RpcError) as info:
        client.download(job.job_id, tmp_path / "bad", format="tflite")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "format must be one of safetensors, onnx, pt2 (found 'tflite')" in info.value.details()


@pytest.mark.slow  # a torch.export in a worker: ~10-30 s on 2 shared cores
def test_download_as_pt2_is_converted_once_at_the_jobs_input(
    connect: Callable[..., PruningClient], model_id: str, tmp_path: Path
) -> None:
    client = connect("alice")
    job = client.create_job(model_id, "synthetic", tiny_config(),
                            dataset_kwargs={"image_size": 12})  # fmt: skip
    assert _wait(client, job.job_id, (pb.JOB_STATE_SUCCEEDED,)).state == pb.JOB_STATE_SUCCEEDED
    model, _ = metaprune.load(client.download(job.job_id, tmp_path / "st")["checkpoint"])
    paths = client.download(job.job_id, tmp_path / "pt2", format="pt2")
    assert paths["checkpoint"].name == "model.pt2" and set(paths) == {
        "checkpoint",
        "report",
        "plot",
    }
    exported = torch.export.load(str(paths["checkpoint"])).module()  # our own server's file
    x = torch.randn(3, 3, 12, 12)  # the job's input size, another batch than the trace's
    with torch.no_grad():
        assert torch.equal(exported(x), model.eval()(x))
    again = client.download(job.job_id, tmp_path / "again", format="pt2")  # from the cache
    assert again["checkpoint"].read_bytes() == paths["checkpoint"].read_bytes()


@pytest.mark.parametrize(
    ("options", "code", "needle"),
    [
        ({"imagesize": 64}, grpc.StatusCode.INVALID_ARGUMENT,
         "dataset 'synthetic' has no option 'imagesize' (did you mean 'image_size'?)"),
        ({"image_size": 5000}, grpc.StatusCode.RESOURCE_EXHAUSTED, "max_image_size"),
        ({"image_size": 64.5}, grpc.StatusCode.INVALID_ARGUMENT, "image_size must be an int"),
        ({"in_channels": 1}, grpc.StatusCode.INVALID_ARGUMENT,
         "does not accept inputs of shape (1, 8, 8)"),  # sized at the job's input shape
    ],
)  # fmt: skip
def test_bad_dataset_kwargs_are_refused(
    connect: Callable[..., PruningClient], model_id: str, options: dict,
    code: grpc.StatusCode, needle: str,
) -> None:  # fmt: skip
    client = connect("alice")
    before = len(client.list_jobs())
    with pytest.raises(grpc.RpcError) as info:
        client.create_job(model_id, "synthetic", tiny_config(), dataset_kwargs=options)
    assert info.value.code() == code, info.value.details()
    assert needle in info.value.details()
    assert len(client.list_jobs()) == before  # nothing created
