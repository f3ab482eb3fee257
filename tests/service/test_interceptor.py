"""The interceptor on a real gRPC server: one test per status-code mapping, INTERNAL
without a stack trace, authentication, and one JSON log line per RPC without the token."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from metaprune.errors import InvalidInputError, LimitExceededError, NotFoundError
from metaprune.pruning.progress import PruneCancelled
from service.auth import Authenticator, current_principal
from service.config import TokenConfig
from service.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    PermissionDeniedError,
    UnavailableError,
)
from service.interceptor import ServiceInterceptor
from service.logs import JsonFormatter
from service.metrics import Metrics
from service.server import LoopThread

pytestmark = pytest.mark.timeout(60)

TOKEN = "interceptor-test-token-01"
ERRORS: dict[str, BaseException] = {
    "invalid": InvalidInputError("config.batch_size must be >= 1 (found 0)"),
    "not_found": NotFoundError("job 'abc' not found"),
    "exists": AlreadyExistsError("request_id 'r1' already created job x"),
    "precondition": FailedPreconditionError("job x is running; cancel it first"),
    "exhausted": LimitExceededError("max_params", 10, 11, "spec 'big'"),
    "denied": PermissionDeniedError("token 'v' is read-only"),
    "cancelled": PruneCancelled("pruning cancelled during prune"),
    "unavailable": UnavailableError("the server is shutting down"),
    "bug": KeyError("secret internal detail"),
}


METRICS = Metrics()


async def _raise(request: bytes, context: Any) -> bytes:
    name = request.decode()
    if name == "whoami":
        return current_principal.get().name.encode()
    if name == "abort":  # a handler's own abort keeps its status
        await context.abort(grpc.StatusCode.OUT_OF_RANGE, "aborted by the handler")
    raise ERRORS[name]


async def _raise_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield b"first"
    raise ERRORS[request.decode()]


async def _serve(interceptor: ServiceInterceptor) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(interceptors=[interceptor])
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_raise),
        "Stream": grpc.unary_stream_rpc_method_handler(_raise_stream),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Raise", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


@pytest.fixture(scope="module")
def channel() -> Iterator[grpc.Channel]:
    loop = LoopThread(2)  # the aio server on a loop thread, as service.server runs it
    auth = Authenticator([TokenConfig("tester", TOKEN)])
    server, port = loop.run(_serve(ServiceInterceptor(auth, METRICS)))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    loop.run(server.stop(0))
    loop.close()


def _call(channel: grpc.Channel, name: str, token: str | None = TOKEN) -> bytes:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    return channel.unary_unary("/test.Raise/Unary")(name.encode(), metadata=metadata, timeout=10)


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("invalid", grpc.StatusCode.INVALID_ARGUMENT),
        ("not_found", grpc.StatusCode.NOT_FOUND),
        ("exists", grpc.StatusCode.ALREADY_EXISTS),
        ("precondition", grpc.StatusCode.FAILED_PRECONDITION),
        ("exhausted", grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("denied", grpc.StatusCode.PERMISSION_DENIED),
        ("cancelled", grpc.StatusCode.CANCELLED),
        ("unavailable", grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_each_error_category_maps_to_its_status(
    channel: grpc.Channel, name: str, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _call(channel, name)
    assert info.value.code() == code
    assert info.value.details() == str(ERRORS[name])


def test_errors_in_a_stream_map_the_same_way(channel: grpc.Channel) -> None:
    stream = channel.unary_stream("/test.Raise/Stream")(
        b"not_found", metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=10
    )
    assert next(stream) == b"first"
    with pytest.raises(grpc.RpcError) as info:
        next(stream)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_unknown_errors_are_internal_with_an_incident_id_and_no_trace(
    channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.INFO, logger="metaprune.service"),
        pytest.raises(grpc.RpcError) as info,
    ):
        _call(channel, "bug")
    assert info.value.code() == grpc.StatusCode.INTERNAL
    details = info.value.details()
    assert "incident" in details and "Traceback" not in details
    assert "secret internal detail" not in details and "KeyError" not in details
    logged = [r.fields for r in caplog.records if r.fields.get("event") == "internal_error"]
    assert len(logged) == 1 and logged[0]["incident"] in details
    assert "Traceback" in logged[0]["traceback"]  # the trace goes to the server log only


def test_missing_and_wrong_tokens_are_unauthenticated(channel: grpc.Channel) -> None:
    for token in (None, "not-the-token-at-all", TOKEN + "x"):
        with pytest.raises(grpc.RpcError) as info:
            _call(channel, "whoami", token)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "token" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary("/test.Raise/Unary")(b"whoami", metadata=(("authorization", TOKEN),))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Bearer" in info.value.details()


def test_the_handler_sees_the_token_name(channel: grpc.Channel) -> None:
    assert _call(channel, "whoami") == b"tester"


def test_one_json_log_line_per_rpc_with_the_token_name_never_the_token(
    channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="metaprune.service"):
        _call(channel, "whoami")
        with pytest.raises(grpc.RpcError):
            _call(channel, "not_found")
    lines = [JsonFormatter().format(r) for r in caplog.records if r.fields.get("event") == "rpc"]
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["method"] == "/test.Raise/Unary" and first["status"] == "OK"
    assert first["token"] == "tester" and first["duration_ms"] >= 0
    assert second["status"] == "NOT_FOUND"
    assert all(TOKEN not in line for line in lines)


def test_a_handlers_own_abort_keeps_its_status_and_is_counted(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _call(channel, "abort")
    assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert info.value.details() == "aborted by the handler"
    method = "/test.Raise/Unary"
    labels = {"method": method, "code": "OUT_OF_RANGE"}
    # context.abort sends the status at once, so the client may see it before the
    # interceptor's bookkeeping runs: wait for it (bounded)
    for _ in range(100):
        count = METRICS.registry.get_sample_value("metaprune_rpc_duration_seconds_count", labels)
        if count is not None:
            break
        time.sleep(0.05)
    assert count == 1
    _call(channel, "whoami")
    assert METRICS.registry.get_sample_value(
        "metaprune_rpc_duration_seconds_count", {"method": method, "code": "OK"}
    ) >= 1
