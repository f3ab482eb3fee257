"""Restarts as an operator does them: graceful stops (SIGTERM) re-queue a job without
using up its crash allowance, and a watcher of an unfinished job is told UNAVAILABLE
(retryable) when the server stops, never OK (which would read as "the job ended")."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from service._generated import pruning_service_pb2 as pb
from service.client import PruningClient
from service.store import Store
from service.testing import TOKENS, running_server, tiny_config

ALICE = TOKENS["alice"][0]
LONG = tiny_config(after_pruning={"epochs": 200})


def _wait(client: PruningClient, job_id: str, ok: Any, timeout: float = 120.0) -> pb.Job:
    deadline = time.monotonic() + timeout
    while not ok(job := client.get_job(job_id)):
        assert time.monotonic() < deadline, f"job {job_id}: {job}"
        time.sleep(0.05)
    return job


def _progressing(job: pb.Job) -> bool:
    return job.state == pb.JOB_STATE_RUNNING and job.HasField("latest_event")


def _watch(client: PruningClient, job_id: str, outcome: dict[str, Any]) -> None:
    outcome["states"] = []
    try:
        for message in client.stub.WatchJob(
            pb.WatchJobRequest(job_id=job_id), metadata=client._metadata, timeout=60
        ):
            outcome["states"].append(message.job.state)
        outcome["code"] = grpc.StatusCode.OK
    except grpc.RpcError as err:
        outcome["code"], outcome["details"] = err.code(), err.details()


def _run_until_progress_then_stop(
    data: Path, job_id: str | None, checkpoint: Path
) -> tuple[str, dict]:
    """Start a server (max_attempts 2), run the job until it reports progress, stop the
    server gracefully while a watcher follows the job; return the job id and what the
    watcher saw."""
    with running_server(data, max_attempts=2) as server:
        client = PruningClient(f"127.0.0.1:{server.port}", ALICE, timeout=30)
        if job_id is None:
            model = client.upload(checkpoint)
            job_id = client.create_job(model.model_id, "synthetic", LONG).job_id
        _wait(client, job_id, _progressing)
        outcome: dict[str, Any] = {}
        watcher = threading.Thread(target=_watch, args=(client, job_id, outcome))
        watcher.start()
        deadline = time.monotonic() + 30
        while not outcome.get("states") and time.monotonic() < deadline:
            time.sleep(0.02)  # the watcher has its first message: it is in its loop
        server.stop(10.0)
        watcher.join(30)
        client.close()
    return job_id, outcome


def _crash_during_next_start(data: Path, job_id: str) -> Store:
    """What SIGKILL during the next start leaves in the database: the job running, with
    one more attempt (the in-process test server cannot be SIGKILLed; the real-process
    crash path is tests/service/test_server.py's)."""
    store = Store(data / "metaprune.db")
    job = store.get_job(job_id)
    assert job is not None and job.state == "queued"
    store.update_job(job_id, state="running", attempts=job.attempts + 1)
    return store


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_graceful_stops_do_not_count_and_watchers_get_unavailable(
    tmp_path: Path, checkpoint: Path
) -> None:
    data = tmp_path / "data"
    job_id, outcome = _run_until_progress_then_stop(data, None, checkpoint)
    assert outcome["code"] == grpc.StatusCode.UNAVAILABLE, outcome
    assert f"the server is stopping; job {job_id} is still" in outcome["details"]
    assert pb.JOB_STATE_SUCCEEDED not in outcome["states"]

    store = Store(data / "metaprune.db")
    job = store.get_job(job_id)
    assert job is not None and (job.state, job.attempts, job.graceful_stops) == ("queued", 1, 1)
    store.close()
    _crash_during_next_start(data, job_id).close()  # attempts 2 = max_attempts, 1 crash

    # the old rule (attempts >= max_attempts) failed the job here; 1 crash < 2 re-queues it
    job_id, outcome = _run_until_progress_then_stop(data, job_id, checkpoint)
    assert outcome["code"] == grpc.StatusCode.UNAVAILABLE
    store = Store(data / "metaprune.db")
    job = store.get_job(job_id)
    assert job is not None
    assert (job.state, job.attempts, job.graceful_stops, job.crashes) == ("queued", 3, 2, 1)
    store.close()

    _crash_during_next_start(data, job_id).close()  # a second crash: 2 = max_attempts
    with running_server(data, max_attempts=2) as server:
        client = PruningClient(f"127.0.0.1:{server.port}", ALICE, timeout=30)
        failed = client.get_job(job_id)
        assert failed.state == pb.JOB_STATE_FAILED
        assert "died while running this job 2 times (max_attempts 2" in failed.error
        assert "graceful stops not counted" in failed.error
        done = client.watch(job_id)  # a finished job's stream ends OK at once
        assert done.state == pb.JOB_STATE_FAILED
        client.close()
