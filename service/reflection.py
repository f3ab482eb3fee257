"""Server reflection under both names clients look for: ``grpc.reflection.v1`` (what current
grpcurl, Postman and grpc-js clients try first) and ``grpc.reflection.v1alpha``.

grpcio-reflection 1.85 ships only the v1alpha service. The v1 protocol is the same
``reflection.proto`` under a new package (same messages, same field numbers), so the v1
method is served by the v1alpha servicer with the v1alpha message classes: the bytes on the
wire are identical. Works for ``grpc.server`` and ``grpc.aio.server``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as rpb

__all__ = ["V1_SERVICE_NAME", "enable_reflection"]

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"


def enable_reflection(service_names: Iterable[str], server: Any) -> None:
    """Offer reflection of ``service_names`` (plus the reflection service itself) at
    ``grpc.reflection.v1alpha.ServerReflection`` and ``grpc.reflection.v1.ServerReflection``."""
    names = (*service_names, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)  # v1alpha, as grpcio-reflection does it
    is_aio = isinstance(server, grpc.aio.Server)
    servicer = (reflection.aio.ReflectionServicer if is_aio else reflection.ReflectionServicer)(
        names
    )
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=rpb.ServerReflectionRequest.FromString,
        response_serializer=rpb.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {"ServerReflectionInfo": handler}),)
    )
