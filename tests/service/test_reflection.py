"""Reflection at both names (service/reflection.py): v1, what current tools try first, and
v1alpha; the same answers, authenticated like every other RPC."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2 as rpb

from service.reflection import V1_SERVICE_NAME
from service.testing import TOKENS

AUTH = (("authorization", f"Bearer {TOKENS['alice'][0]}"),)


def _ask(channel: grpc.Channel, service: str, request: rpb.ServerReflectionRequest,
         metadata: Any = AUTH) -> rpb.ServerReflectionResponse:  # fmt: skip
    call = channel.stream_stream(
        f"/{service}/ServerReflectionInfo",
        request_serializer=rpb.ServerReflectionRequest.SerializeToString,
        response_deserializer=rpb.ServerReflectionResponse.FromString,
    )
    return list(call(iter([request]), metadata=metadata, timeout=10))[0]


@pytest.mark.timeout(60)
def test_v1_and_v1alpha_answer_the_same(server: Any) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        answers = {}
        for service in (V1_SERVICE_NAME, "grpc.reflection.v1alpha.ServerReflection"):
            listed = _ask(channel, service, rpb.ServerReflectionRequest(list_services=""))
            names = {s.name for s in listed.list_services_response.service}
            assert {"metaprune.v1.PruningService", "grpc.health.v1.Health"} <= names, service
            files = _ask(channel, service, rpb.ServerReflectionRequest(
                file_containing_symbol="metaprune.v1.PruningService"))  # fmt: skip
            protos = files.file_descriptor_response.file_descriptor_proto
            assert protos and b"metaprune/v1/pruning_service.proto" in b"".join(protos)
            answers[service] = (names, list(protos))
            with pytest.raises(grpc.RpcError) as info:  # no token: refused like any RPC
                _ask(channel, service, rpb.ServerReflectionRequest(list_services=""), ())
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert len({repr(a) for a in answers.values()}) == 1
