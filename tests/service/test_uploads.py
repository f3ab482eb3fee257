"""UploadModel on a real server: content addressing, and every kind of bad upload refused
with the right status code, a message naming the problem, and nothing stored."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from safetensors.torch import load_file, save_file

import metaprune
from service._generated import pruning_service_pb2 as pb
from service.client import PruningClient

pytestmark = pytest.mark.timeout(120)

SPEC = {
    "format_version": 1,
    "name": "cifar_resnet20",
    "kwargs": {"in_channels": 3, "num_classes": 4},
}


def _messages(
    header: pb.UploadHeader, data: bytes, chunk: int = 256 * 1024
) -> Iterator[pb.UploadModelRequest]:
    yield pb.UploadModelRequest(header=header)
    for i in range(0, len(data), chunk):
        yield pb.UploadModelRequest(chunk=data[i : i + chunk])


def _upload(client: PruningClient, data: bytes, *, spec: Any = SPEC, size: int | None = None,
            sha: str | None = None, send: bytes | None = None,
            trailer: str | None = None) -> pb.UploadModelResponse:  # fmt: skip
    header = pb.UploadHeader(
        spec_json=spec if isinstance(spec, str) else json.dumps(spec),
        total_size=len(data) if size is None else size,
        sha256=hashlib.sha256(data).hexdigest() if sha is None else sha,
    )  # fmt: skip
    messages = list(_messages(header, data if send is None else send))
    if trailer is not None:
        messages.append(pb.UploadModelRequest(trailer=pb.UploadTrailer(sha256=trailer)))
    return client.stub.UploadModel(iter(messages), metadata=client._metadata, timeout=60)


def _stored_files(server: Any) -> list[Path]:
    root = server.config.data_path
    return sorted(p for d in ("blobs", "tmp") for p in (root / d).rglob("*") if p.is_file())


@pytest.fixture
def nothing_stored(server: Any) -> Iterator[None]:
    """Assert that the test's (refused) uploads left no file and no byte of quota behind."""
    before_files, before_bytes = _stored_files(server), server.store.used_bytes()
    yield
    assert _stored_files(server) == before_files
    assert server.store.used_bytes() == before_bytes


def test_upload_is_content_addressed_and_stored_once(
    server: Any, connect: Callable[..., PruningClient], checkpoint: Path
) -> None:
    data = checkpoint.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    first = _upload(connect("alice"), data)
    again = connect("alice").upload(checkpoint)
    bob_had_it = server.store.get_model(f"sha256:{sha}", "bob") is not None
    other = _upload(connect("bob"), data)
    assert first.model.model_id == again.model_id == other.model.model_id == f"sha256:{sha}"
    assert other.created is not bob_had_it  # per owner: alice's upload tells bob nothing
    assert not _upload(connect("bob"), data).created
    assert first.model.size_bytes == len(data) and first.model.params == 272_084
    blobs = [p for p in (server.config.data_path / "blobs").rglob("*") if p.name == sha]
    assert len(blobs) == 1  # one copy (the session's server holds other tests' models too)
    assert blobs[0].read_bytes() == data


def _expect(code: grpc.StatusCode, *needles: str) -> Any:
    return pytest.raises(grpc.RpcError, check=lambda e: e.code() == code and all(
        n in e.details() for n in needles))  # fmt: skip


@pytest.mark.usefixtures("nothing_stored")
class TestRefused:
    def test_truncated_upload(self, connect: Callable, checkpoint: Path) -> None:
        data = checkpoint.read_bytes()
        with _expect(grpc.StatusCode.INVALID_ARGUMENT, "truncated", f"{len(data):,}"):
            _upload(connect(), data, send=data[:-1000])

    def test_more_bytes_than_announced(self, connect: Callable, checkpoint: Path) -> None:
        data = checkpoint.read_bytes()
        with _expect(grpc.StatusCode.INVALID_ARGUMENT, "longer than"):
            _upload(connect(), data, send=data + b"extra")

    def test_sha256_mismatch(self, connect: Callable, checkpoint: Path) -> None:
        with _expect(grpc.StatusCode.INVALID_ARGUMENT, "sha256 mismatch"):
            _upload(connect(), checkpoint.read_bytes(), sha="0" * 64)

    def test_sha256_in_neither_header_nor_trailer(
        self, connect: Callable, checkpoint: Path
    ) -> None:
        with _expect(grpc.StatusCode.INVALID_ARGUMENT, "no sha256", "UploadTrailer"):
            _upload(connect(), checkpoint.read_bytes(), sha="")

    def test_a_wrong_trailer(self, connect: Callable, checkpoint: Path) -> None:
        data = checkpoint.read_bytes()
        with _expect(grpc.StatusCode.INVALID_ARGUMENT, "sha256 mismatch"):
            _upload(connect(), data, sha="", trailer="0" * 64)
        with _expect(grpc.StatusCode.INVALID_ARGUMENT, "differ"):
            _upload(connect(), data, trailer="1" * 64)
        with _expect(grpc.StatusCode.INVALID_ARGUMENT, "UploadTrailer.sha256", "64 lowercase"):
            _upload(connect(), data, sha="", trailer="ABC")

    def test_messages_after_the_trailer(self, connect: Callable, checkpoint: Path) -> None:
        data = checkpoint.read_bytes()
        header = pb.UploadHeader(spec_json=json.dumps(SPEC), total_size=len(data), sha256="")
        messages = [pb.UploadModelRequest(header=header),
                    pb.UploadModelRequest(chunk=data),
                    pb.UploadModelRequest(trailer=pb.UploadTrailer(sha256="0" * 64)),
                    pb.UploadModelRequest(chunk=b"x")]  # fmt: skip
        with _expect(grpc.StatusCode.INVALID_ARGUMENT, "nothing after it"):
            connect().stub.UploadModel(iter(messages), metadata=connect()._metadata, timeout=60)

    def test_oversize_upload_is_refused_from_its_header(self, connect: Callable) -> None:
        with _expect(grpc.StatusCode.RESOURCE_EXHAUSTED, "max_upload_bytes"):
            _upload(connect(), b"x" * 100, size=3 * 1024**3)

    def test_a_pickle_is_never_loaded(self, connect: Callable, tmp_path: Path) -> None:
        path = tmp_path / "m.pt"
        torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
        with _expect(grpc.StatusCode.INVALID_ARGUMENT, "pickle", "never loaded"):
            _upload(connect(), path.read_bytes())

    def test_a_torch_save_zip_is_never_loaded(self, connect: Callable, tmp_path: Path) -> None:
        path = tmp_path / "m.pt"
        torch.save({"w": torch.ones(2)}, path)
        with _expect(grpc.StatusCode.INVALID_ARGUMENT, "zip", "torch.save"):
            _upload(connect(), path.read_bytes())

    def test_a_huge_safetensors_header(self, connect: Callable) -> None:
        data = struct.pack("<Q", 1 << 40) + b"{" + b" " * 100
        with _expect(grpc.StatusCode.RESOURCE_EXHAUSTED, "max_header_bytes"):
            _upload(connect(), data)

    def test_an_unknown_architecture(self, connect: Callable, checkpoint: Path) -> None:
        spec = {**SPEC, "name": "resnet9000"}
        with _expect(grpc.StatusCode.NOT_FOUND, "unknown model 'resnet9000'"):
            _upload(connect(), checkpoint.read_bytes(), spec=spec)

    def test_an_architecture_over_the_parameter_limit(self, connect: Callable) -> None:
        spec = {**SPEC, "kwargs": {"in_channels": 3, "num_classes": 10**9}}
        with _expect(grpc.StatusCode.RESOURCE_EXHAUSTED, "max_params"):
            _upload(connect(), b"x" * 1000, spec=spec)  # refused before the bytes matter

    def test_malformed_spec_json(self, connect: Callable) -> None:
        with _expect(grpc.StatusCode.INVALID_ARGUMENT, "JSON"):
            _upload(connect(), b"x" * 10, spec="{not json")

    def test_a_header_spec_that_differs_from_the_file(
        self, connect: Callable, checkpoint: Path
    ) -> None:
        spec = {**SPEC, "kwargs": {"in_channels": 3, "num_classes": 5}}
        with _expect(grpc.StatusCode.INVALID_ARGUMENT, "differs from the spec stored"):
            _upload(connect(), checkpoint.read_bytes(), spec=spec)

    def test_weights_that_do_not_fit_the_spec(
        self, connect: Callable, checkpoint: Path, tmp_path: Path
    ) -> None:
        state = load_file(checkpoint)
        state["fc.weight"] = torch.zeros(7, 64)
        spec = json.dumps(SPEC, sort_keys=True)
        path = tmp_path / "bad.safetensors"
        save_file(state, path, metadata={"metaprune.spec": spec, "metaprune.format_version": "1"})
        with _expect(grpc.StatusCode.INVALID_ARGUMENT, "fc.weight", "expected shape (4, 64)"):
            _upload(connect(), path.read_bytes(), spec=spec)

    def test_nan_weights(self, connect: Callable, tmp_path: Path) -> None:
        spec = metaprune.ArchSpec("cifar_resnet20", SPEC["kwargs"])
        model = spec.build()
        with torch.no_grad():
            model.fc.weight[0, 0] = float("nan")
        path = metaprune.save(model, spec, tmp_path / "nan.safetensors")
        with _expect(grpc.StatusCode.INVALID_ARGUMENT, "NaN or Inf", "'fc.weight'"):
            _upload(connect(), path.read_bytes())

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
    @pytest.mark.parametrize("bad", [float("nan"), float("inf")])
    def test_non_finite_weights_of_every_float_dtype(
        self, connect: Callable, tmp_path: Path, dtype: torch.dtype, bad: float
    ) -> None:
        spec = metaprune.ArchSpec("cifar_resnet20", {"in_channels": 3, "num_classes": 4})
        model = spec.build().to(dtype)
        with torch.no_grad():  # the last element of a late tensor: every block is read
            model.fc.bias[-1] = bad
        path = metaprune.save(model, spec, tmp_path / "bad.safetensors")
        with _expect(grpc.StatusCode.INVALID_ARGUMENT, "NaN or Inf", "'fc.bias'"):
            connect().upload(path)

    def test_a_header_is_required_first(self, connect: Callable) -> None:
        client = connect()
        stream = iter([pb.UploadModelRequest(chunk=b"abc")])
        with _expect(grpc.StatusCode.INVALID_ARGUMENT, "UploadHeader"):
            client.stub.UploadModel(stream, metadata=client._metadata, timeout=30)

    def test_a_read_only_token_cannot_upload(self, connect: Callable, checkpoint: Path) -> None:
        with _expect(grpc.StatusCode.PERMISSION_DENIED, "read-only"):
            _upload(connect("viewer"), checkpoint.read_bytes())

    def test_no_token(self, connect: Callable, checkpoint: Path) -> None:
        with _expect(grpc.StatusCode.UNAUTHENTICATED):
            _upload(connect(None), checkpoint.read_bytes())


def test_the_sha256_may_come_in_a_trailer(
    server: Any, connect: Callable[..., PruningClient], tmp_path: Path
) -> None:
    """A client may hash while sending: the header's sha256 empty, a trailer carries it."""
    spec = metaprune.ArchSpec("cifar_resnet20", {"in_channels": 3, "num_classes": 4})
    torch.manual_seed(7)
    path = metaprune.save(spec.build().to(torch.bfloat16), spec, tmp_path / "bf16.safetensors")
    data = path.read_bytes()
    reply = _upload(connect("alice"), data, spec=spec.to_json(), sha="",
                    trailer=hashlib.sha256(data).hexdigest())  # fmt: skip
    assert reply.created and reply.model.model_id == f"sha256:{hashlib.sha256(data).hexdigest()}"
    assert server.blobs.blob_path(reply.model.model_id[7:]).read_bytes() == data


def test_delete_model_drops_the_callers_reference_then_the_bytes(
    server: Any, connect: Callable[..., PruningClient], tmp_path: Path
) -> None:
    from service.testing import make_checkpoint

    path = make_checkpoint(tmp_path / "own.safetensors", seed=42)
    alice, bob = connect("alice"), connect("bob")
    model = alice.upload(path)
    assert bob.upload(path).model_id == model.model_id
    blob = server.blobs.blob_path(model.model_id[7:])
    alice.delete_model(model.model_id)
    assert blob.is_file()  # bob still has it
    with pytest.raises(grpc.RpcError) as info:
        alice.create_job(model.model_id, "synthetic", {})
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    bob.delete_model(model.model_id)
    assert not blob.exists()  # nobody references it: the bytes are gone
    with pytest.raises(grpc.RpcError) as info:
        bob.delete_model(model.model_id)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_two_thread_sink_stores_and_checks_the_same(tmp_path: Path, checkpoint: Path) -> None:
    """``sink_threads = 2`` (the sha256 on its own thread, write + NaN scan on the other;
    auto picks it only on 3+ cores, so the suite's usual server never runs it)."""
    from service.testing import TOKENS, running_server

    spec = metaprune.ArchSpec("cifar_resnet20", SPEC["kwargs"])
    model = spec.build()
    with torch.no_grad():
        model.fc.weight[-1, -1] = float("inf")  # in the last tensors: the scan saw every chunk
    bad = metaprune.save(model, spec, tmp_path / "inf.safetensors")
    with running_server(tmp_path / "data", sink_threads=2) as srv:
        assert srv.config.sink_threads == 2
        with PruningClient(f"127.0.0.1:{srv.port}", TOKENS["alice"][0], chunk_bytes=4096) as c:
            stored = c.upload(checkpoint)  # one pass: the sha256 in a trailer
            data = checkpoint.read_bytes()
            assert stored.model_id == f"sha256:{hashlib.sha256(data).hexdigest()}"
            assert srv.blobs.blob_path(stored.model_id[7:]).read_bytes() == data
            with _expect(grpc.StatusCode.INVALID_ARGUMENT, "NaN or Inf", "'fc.weight'"):
                c.upload(bad)
        assert _stored_files(srv) == [srv.blobs.blob_path(stored.model_id[7:])]  # nothing in tmp/
