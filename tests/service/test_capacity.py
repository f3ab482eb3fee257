"""The server under hostile load: streams held open by one token cost it no capacity,
per-token caps answer RESOURCE_EXHAUSTED, a silent upload is cut and leaves no file, and a
watcher of an unfinished job gets UNAVAILABLE when the server stops. Real server on
127.0.0.1 port 0; assertions on behaviour, never on timings (deadlines are generous)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from metaprune.checkpoint import read_spec
from service._generated import pruning_service_pb2 as pb
from service.client import PruningClient
from service.testing import TOKENS, running_server, tiny_config

pytestmark = pytest.mark.timeout(180)

WATCHERS = 40  # more than the 32 RPC threads the synchronous server had
LONG = tiny_config(after_pruning={"epochs": 200})


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with running_server(
        tmp_path_factory.mktemp("capped"), max_uploads_per_token=2,
        max_streams_per_token=WATCHERS, upload_idle_seconds=2.0,
    ) as server:  # fmt: skip
        yield server


def _client(server: Any, name: str = "alice", **kwargs: Any) -> PruningClient:
    return PruningClient(f"127.0.0.1:{server.port}", TOKENS[name][0], timeout=20, **kwargs)


def _open(server: Any, kind: str) -> float:
    value = server.metrics.registry.get_sample_value("metaprune_open_streams", {"kind": kind})
    return value or 0.0


def _until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _silent_upload(client: PruningClient, checkpoint: Path, release: threading.Event) -> Any:
    """An upload that sends its header, then nothing until ``release`` (returns the future)."""
    data = checkpoint.read_bytes()
    header = pb.UploadHeader(
        spec_json=json.dumps(read_spec(checkpoint).to_json()), total_size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )  # fmt: skip

    def messages() -> Iterator[pb.UploadModelRequest]:
        yield pb.UploadModelRequest(header=header)
        release.wait(60)

    return client.stub.UploadModel.future(messages(), metadata=client._metadata, timeout=60)


def _health_and_info(client: PruningClient) -> None:
    assert client.health() == "SERVING"
    assert client.server_info().token_name == "alice"


def test_upload_cap_refuses_the_next_upload_and_idle_uploads_are_cut(
    capped: Any, checkpoint: Path
) -> None:
    tmp = capped.config.data_path / "tmp"
    release = threading.Event()
    with _client(capped) as alice, _client(capped, "bob") as bob:
        info = alice.server_info().limits
        assert info["max_uploads_per_token"] == 2 and info["upload_idle_seconds"] == 2.0
        assert info["max_streams_per_token"] == WATCHERS
        silent = [_silent_upload(alice, checkpoint, release) for _ in range(2)]
        # each silent upload holds a slot and, its header accepted, a temp file
        _until(lambda: len(list(tmp.iterdir())) == 2, "two uploads writing temp files")
        assert _open(capped, "upload") == 2
        with pytest.raises(grpc.RpcError) as info_:
            alice.upload(checkpoint)
        assert info_.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_uploads_per_token" in info_.value.details()
        assert "'alice'" in info_.value.details()
        _health_and_info(alice)
        assert bob.upload(checkpoint).size_bytes == checkpoint.stat().st_size  # own cap
        for future in silent:  # cut after upload_idle_seconds
            err = future.exception(timeout=60)
            assert err is not None and err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "upload_idle_seconds" in err.details()
        release.set()
        assert list(tmp.iterdir()) == []  # the temp files went with them
        assert _open(capped, "upload") == 0
        assert alice.upload(checkpoint).model_id.startswith("sha256:")  # slots are back
    idle = capped.metrics.registry.get_sample_value("metaprune_rpc_duration_seconds_count", {
        "method": "/metaprune.v1.PruningService/UploadModel", "code": "DEADLINE_EXCEEDED"})  # fmt: skip
    assert idle == 2


def test_watchers_beyond_the_thread_count_leave_the_server_answering(
    capped: Any, checkpoint: Path
) -> None:
    with _client(capped) as alice, _client(capped, "bob") as bob:
        model = alice.upload(checkpoint)
        job = alice.create_job(model.model_id, "synthetic", LONG)
        request = pb.WatchJobRequest(job_id=job.job_id)
        calls = [alice.stub.WatchJob(request, metadata=alice._metadata) for _ in range(WATCHERS)]
        try:
            for call in calls:  # every stream is open: its first message (the job now) came
                assert next(call).job.job_id == job.job_id
            assert _open(capped, "stream") == WATCHERS
            _health_and_info(alice)
            assert alice.get_job(job.job_id).job_id == job.job_id
            with pytest.raises(grpc.RpcError) as info:  # one more from the same token
                next(alice.stub.WatchJob(request, metadata=alice._metadata, timeout=20))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_streams_per_token" in info.value.details()
            with pytest.raises(grpc.RpcError) as info:  # bob may not see alice's job at all
                next(bob.stub.WatchJob(request, metadata=bob._metadata, timeout=20))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            calls.pop().cancel()  # a watcher goes away: its slot comes back
            _until(lambda: _open(capped, "stream") == WATCHERS - 1, "a freed stream slot")
            calls.append(alice.stub.WatchJob(request, metadata=alice._metadata))
            assert next(calls[-1]).job.job_id == job.job_id
        finally:
            for call in calls:
                call.cancel()
            alice.cancel_job(job.job_id)
        _until(lambda: _open(capped, "stream") == 0, "every stream slot back")


@pytest.mark.timeout(240)
def test_a_watcher_of_an_unfinished_job_gets_unavailable_when_the_server_stops(
    tmp_path: Path, checkpoint: Path
) -> None:
    with running_server(tmp_path / "data") as server, _client(server) as alice:
        model = alice.upload(checkpoint)
        job = alice.create_job(model.model_id, "synthetic", LONG)
        stream = alice.stub.WatchJob(
            pb.WatchJobRequest(job_id=job.job_id), metadata=alice._metadata
        )
        assert next(stream).job.state in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING)
        server.stop(5.0)
        with pytest.raises(grpc.RpcError) as info:
            for _ in stream:  # progress messages until the server stops
                pass
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "watch it again" in info.value.details()
