"""The server as infrastructure: graceful stop re-queues, TLS and mTLS, reflection, health,
crash recovery of a separate server process, and 8 concurrent clients."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service._generated import pruning_service_pb2 as pb
from service.client import PruningClient
from service.store import Store
from service.testing import (
    TOKENS,
    make_checkpoint,
    running_server,
    serve_process,
    tiny_config,
    token_configs,
)

ALICE = TOKENS["alice"][0]
LONG = tiny_config(after_pruning={"epochs": 200})


def _wait(client: PruningClient, job_id: str, ok: Any, timeout: float = 120.0) -> pb.Job:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get_job(job_id)
        if ok(job):
            return job
        assert time.monotonic() < deadline, f"job {job_id}: {job}"
        time.sleep(0.05)


def _progressing(job: pb.Job) -> bool:
    return job.state == pb.JOB_STATE_RUNNING and job.HasField("latest_event")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_graceful_stop_requeues_the_running_job(tmp_path: Path, checkpoint: Path) -> None:
    with running_server(tmp_path / "data") as server:
        client = PruningClient(f"127.0.0.1:{server.port}", ALICE)
        model = client.upload(checkpoint)
        job = client.create_job(model.model_id, "synthetic", LONG)
        _wait(client, job.job_id, _progressing)
        statuses: list[str] = []
        stopper = threading.Thread(target=server.stop, args=(10.0,))
        stopper.start()
        refused = None
        while stopper.is_alive():
            try:
                statuses.append(client.health())
                client.create_job(model.model_id, "synthetic", tiny_config())
            except grpc.RpcError as err:
                refused = refused or err.code()
            time.sleep(0.02)
        stopper.join()
        client.close()
    assert "NOT_SERVING" in statuses  # health flipped before the server went away
    assert refused in (grpc.StatusCode.UNAVAILABLE, None)
    store = Store(tmp_path / "data" / "metaprune.db")
    record = store.get_job(job.job_id)
    assert record is not None and record.state == "queued" and record.attempts == 1
    assert not [j for j in store.list_jobs(None) if j.job_id != job.job_id and j.state != "queued"]
    store.close()
    with running_server(tmp_path / "data") as server:  # the next start runs it again
        client = PruningClient(f"127.0.0.1:{server.port}", ALICE)
        again = _wait(client, job.job_id, _progressing)
        assert again.attempts == 2
        client.cancel_job(job.job_id)
        client.close()


def _tls_files(tmp_path: Path) -> dict[str, Any]:
    import trustme  # dev extra: test certificates made here, never checked in

    ca = trustme.CA()
    server_cert = ca.issue_cert("localhost", "127.0.0.1")
    client_cert = ca.issue_cert("client@metaprune")
    files = {}
    for name, blob in (
        ("ca.pem", ca.cert_pem), ("server.key", server_cert.private_key_pem),
        ("server.pem", server_cert.cert_chain_pems[0]), ("client.key", client_cert.private_key_pem),
        ("client.pem", client_cert.cert_chain_pems[0]),
    ):  # fmt: skip
        path = tmp_path / name
        blob.write_to_path(str(path))
        files[name] = path
    return files


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_tls_and_mtls_round_trips(tmp_path: Path, checkpoint: Path, mutual: bool) -> None:
    files = _tls_files(tmp_path)
    tls = {"cert_file": str(files["server.pem"]), "key_file": str(files["server.key"])}
    if mutual:
        tls["client_ca_file"] = str(files["ca.pem"])
    with running_server(tmp_path / "data", tls=tls, host="localhost") as server:
        target = f"localhost:{server.port}"
        ca = files["ca.pem"].read_bytes()
        cert = files["client.pem"].read_bytes() if mutual else None
        key = files["client.key"].read_bytes() if mutual else None
        with PruningClient(target, ALICE, root_certificates=ca, client_certificate=cert,
                           client_key=key, timeout=20) as client:  # fmt: skip
            assert client.server_info().token_name == "alice"
            model = client.upload(checkpoint)
            assert model.model_id.startswith("sha256:") and model.size_bytes > 0
        with PruningClient(target, ALICE, timeout=5, retries=0) as plain:  # no TLS at all
            with pytest.raises(grpc.RpcError) as info:
                plain.server_info()
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        if mutual:  # TLS without a client certificate is refused by the handshake
            with PruningClient(target, ALICE, root_certificates=ca, timeout=5, retries=0) as anon:
                with pytest.raises(grpc.RpcError) as info:
                    anon.server_info()
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.timeout(60)
def test_reflection_lists_the_service_and_health_needs_no_token(server: Any) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = list(stub.ServerReflectionInfo(
            iter([request]), metadata=(("authorization", f"Bearer {ALICE}"),), timeout=10))  # fmt: skip
        names = {s.name for s in responses[0].list_services_response.service}
        assert {"metaprune.v1.PruningService", "grpc.health.v1.Health"} <= names
        files = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="metaprune.v1.PruningService")]),
            metadata=(("authorization", f"Bearer {ALICE}"),), timeout=10))  # fmt: skip
        assert files[0].file_descriptor_response.file_descriptor_proto
        with pytest.raises(grpc.RpcError) as info:  # reflection is authenticated
            list(stub.ServerReflectionInfo(iter([request]), timeout=10))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        from grpc_health.v1 import health_pb2_grpc

        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "metaprune.v1.PruningService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _config_file(path: Path) -> Path:
    lines = []
    for entry in token_configs():
        lines += ["[[tokens]]", *(f'{k} = "{v}"' for k, v in entry.items()), ""]
    path.write_text("\n".join(lines))
    return path


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_crash_recovery_of_a_separate_server_process(tmp_path: Path, checkpoint: Path) -> None:
    data, config = tmp_path / "data", _config_file(tmp_path / "service.toml")
    proc = serve_process(data, config)
    try:
        with PruningClient(proc.address, ALICE, timeout=30) as client:
            model = client.upload(checkpoint)
            job = client.create_job(
                model.model_id, "synthetic", tiny_config(after_pruning={"epochs": 8})
            )
            _wait(client, job.job_id, _progressing)
        os.kill(proc.proc.pid, signal.SIGKILL)  # the server, mid-job, by pid
        proc.proc.wait(30)
    finally:
        proc.kill()  # and its orphaned workers (same process group)
    blob = data / "blobs" / model.model_id[7:9] / model.model_id[7:]
    proc = serve_process(data, config)
    try:
        with PruningClient(proc.address, ALICE, timeout=30) as client:
            done = client.watch(job.job_id)
            assert done.state == pb.JOB_STATE_SUCCEEDED, done.error
            assert done.attempts == 2  # re-queued by the restart, run again
            paths = client.download(job.job_id, tmp_path / "out")
            assert paths["checkpoint"].stat().st_size == done.result_size_bytes
            again = client.upload(checkpoint)  # the upload survived intact
            assert again.model_id == model.model_id
            assert blob.read_bytes() == checkpoint.read_bytes()
        assert proc.terminate(60) == 0  # SIGTERM: graceful
    finally:
        proc.kill()
    assert '"event": "server_stopped"' in proc.log.read_text()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_eight_concurrent_clients(tmp_path: Path) -> None:
    checkpoints = [make_checkpoint(tmp_path / f"m{i}.safetensors", seed=i) for i in range(8)]
    with running_server(tmp_path / "data", workers=2) as server:
        address = f"127.0.0.1:{server.port}"
        stop, health, errors = threading.Event(), [], []

        def probe() -> None:
            with PruningClient(address, timeout=5, retries=0) as c:
                while not stop.is_set():
                    t = time.perf_counter()
                    health.append((c.health(), time.perf_counter() - t))
                    time.sleep(0.05)

        finals: dict[int, pb.Job] = {}

        def user(i: int) -> None:
            try:
                with PruningClient(address, ALICE if i % 2 else TOKENS["bob"][0]) as c:
                    model = c.upload(checkpoints[i])
                    job = c.create_job(model.model_id, "synthetic", tiny_config(seed=i),
                                       request_id=f"load-{i}")  # fmt: skip
                    finals[i] = c.watch(job.job_id)
            except Exception as err:  # noqa: BLE001 (reported below)
                errors.append(err)

        prober = threading.Thread(target=probe)
        prober.start()
        users = [threading.Thread(target=user, args=(i,)) for i in range(8)]
        for t in users:
            t.start()
        for t in users:
            t.join(240)
        stop.set()
        prober.join(10)
        assert not errors, errors
        assert sorted(finals) == list(range(8))
        assert all(j.state == pb.JOB_STATE_SUCCEEDED for j in finals.values())
        assert len({j.job_id for j in finals.values()}) == 8
        assert len(server.store.list_jobs(None)) == 8  # none lost, none doubled
        assert health and all(status == "SERVING" for status, _ in health)
