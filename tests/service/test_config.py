"""Service configuration: defaults, TOML/YAML files, tokens (generated once, mode 0600), and
the queue / per-token / quota limits enforced by a server configured with small ones."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from metaprune.errors import InvalidInputError
from service.auth import Authenticator
from service.client import PruningClient
from service.config import ServiceConfig, load_config
from service.errors import UnauthenticatedError
from service.testing import TOKENS, make_checkpoint, running_server, tiny_config

pytestmark = pytest.mark.timeout(120)


def test_embedded_defaults() -> None:
    config = load_config()
    assert config.address == "127.0.0.1:50051"
    assert config.data_path == Path("~/.local/share/metaprune").expanduser()
    assert config.datasets == ("digits", "synthetic") and config.metanetworks is None
    limits = config.public_limits()
    for name in ("max_params", "max_macs", "max_upload_bytes", "max_message_bytes",
                 "max_concurrent_jobs", "max_queued_jobs", "max_jobs_per_token",
                 "blob_quota_bytes", "max_header_bytes", "max_spec_bytes",
                 "max_streams_per_token", "max_uploads_per_token", "upload_idle_seconds"):  # fmt: skip
        assert limits[name] > 0, name
    assert config.metrics_port is None  # /metrics is off by default


def test_toml_and_yaml_files(tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text('port = 0\nworkers = 2\n[limits]\nmax_params = 1000\n'
                    '[[tokens]]\nname = "ci"\ntoken = "ci-token-0123456789"\nrole = "admin"\n')  # fmt: skip
    config = load_config(toml, workers=None, host="0.0.0.0")  # None = flag not given
    assert (config.port, config.workers, config.host) == (0, 2, "0.0.0.0")
    assert config.limits.max_params == 1000 and config.tokens[0].role == "admin"
    yaml = tmp_path / "s.yaml"
    yaml.write_text("datasets: [digits]\ntls:\n  cert_file: a.pem\n  key_file: a.key\n")
    config = load_config(yaml)
    assert (
        config.datasets == ("digits",)
        and config.tls is not None
        and config.tls.client_ca_file is None
    )


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("prot = 1\n", "unknown key(s) ['prot']"),
        ("[limits]\nmax_parms = 1\n", "max_parms"),
        ('[[tokens]]\nname = "x"\ntoken = "short"\n', "at least 16"),
        ('[[tokens]]\nname = "x"\ntoken = "0123456789abcdef"\nrole = "god"\n', "role"),
        ("workers = 0\n", "workers"),
        ("port = 1e9\n", "port"),
        ("metrics_port = 70000\n", "metrics_port"),
        ("max_streams_per_token = 0\n", "max_streams_per_token"),
        ("max_uploads_per_token = true\n", "max_uploads_per_token"),
        ("upload_idle_seconds = 0\n", "upload_idle_seconds"),
        ("upload_idle_seconds = nan\n", "upload_idle_seconds"),
        ("sink_threads = 3\n", "sink_threads must be 0 (auto), 1 or 2 (found 3)"),
        ("sink_threads = true\n", "sink_threads"),
        ("= broken", "not valid"),
    ],
)
def test_bad_config_files_are_refused_by_name(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(InvalidInputError, match=None) as info:
        load_config(path)
    assert needle in str(info.value)


def test_the_generated_admin_token_is_stored_0600_and_printed_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = ServiceConfig(data_dir=str(tmp_path))
    (first,) = config.resolved_tokens()
    printed = capsys.readouterr().err
    assert first.name == "admin" and first.role == "admin" and first.token in printed
    path = tmp_path / "admin.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (second,) = config.resolved_tokens()
    assert second.token == first.token and capsys.readouterr().err == ""  # once


def test_authenticator_matches_every_token_by_its_own_secret() -> None:
    config = load_config(
        None, tokens=[{"name": n, "token": s, "role": r} for n, (s, r) in TOKENS.items()]
    )
    auth = Authenticator(config.tokens)
    for name, (secret, role) in TOKENS.items():
        principal = auth.authenticate([("authorization", f"Bearer {secret}")])
        assert (principal.name, principal.role) == (name, role)
    with pytest.raises(UnauthenticatedError):
        auth.authenticate([("authorization", "Bearer " + TOKENS["alice"][0][:-1])])


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    root = tmp_path_factory.mktemp("small")
    ckpt = make_checkpoint(root / "m.safetensors")
    quota = int(ckpt.stat().st_size * 2.5)  # alice's model, then bob's copy of it
    with running_server(root / "data", max_queued_jobs=2, max_jobs_per_token=2,
                        blob_quota_bytes=quota) as server:  # fmt: skip
        yield server, ckpt


def test_the_quota_does_not_tell_who_stored_what(tmp_path: Path) -> None:
    alices = make_checkpoint(tmp_path / "a.safetensors")
    nobodys = make_checkpoint(tmp_path / "n.safetensors", seed=1)
    size = alices.stat().st_size
    assert nobodys.stat().st_size == size and nobodys.read_bytes() != alices.read_bytes()
    with running_server(tmp_path / "data", blob_quota_bytes=int(size * 1.5)) as server:
        address = f"127.0.0.1:{server.port}"
        with PruningClient(address, TOKENS["alice"][0], timeout=30) as alice, \
                PruningClient(address, TOKENS["bob"][0], timeout=30, retries=0) as bob:  # fmt: skip
            model = alice.upload(alices)
            answers = []
            for path in (alices, nobodys):  # bytes alice stored, bytes nobody stored
                with pytest.raises(grpc.RpcError) as info:
                    bob.upload(path)
                answers.append((info.value.code(), info.value.details()))
            assert answers[0] == answers[1]  # the same refusal: bob learns nothing of alice
            assert answers[0][0] == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "blob_quota_bytes" in answers[0][1] and f"{2 * size:,}" in answers[0][1]
            assert alice.upload(alices).model_id == model.model_id  # her own: no new charge
            assert server.store.used_bytes() == size
            assert server.store.get_model(model.model_id, "bob") is None


def test_queue_token_and_quota_limits(small: tuple[Any, Path], tmp_path: Path) -> None:
    server, ckpt = small
    alice = PruningClient(f"127.0.0.1:{server.port}", TOKENS["alice"][0], timeout=30)
    bob = PruningClient(f"127.0.0.1:{server.port}", TOKENS["bob"][0], timeout=30)
    model = alice.upload(ckpt)
    long = tiny_config(after_pruning={"epochs": 200})
    jobs = [alice.create_job(model.model_id, "synthetic", long) for _ in range(2)]
    with pytest.raises(grpc.RpcError) as info:  # alice has 2 unfinished jobs
        alice.create_job(model.model_id, "synthetic", long)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_jobs_per_token" in info.value.details()
    bob.upload(ckpt)  # alice's bytes: charged to the quota as bob's own copy (2 of 2.5)
    other = make_checkpoint(tmp_path / "other.safetensors", seed=1)
    with pytest.raises(grpc.RpcError) as info:
        bob.upload(other)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "blob_quota_bytes" in info.value.details()
    try:
        queued = bob.create_job(model.model_id, "synthetic", long)  # 1 running + 1 queued
        with pytest.raises(grpc.RpcError) as info:
            bob.create_job(model.model_id, "synthetic", long)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_queued_jobs" in info.value.details()
        jobs.append(queued)
    finally:
        for job in jobs:
            (alice if job.owner == "alice" else bob).cancel_job(job.job_id)
        alice.close()
        bob.close()
