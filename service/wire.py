"""Chunk messages on the wire without protobuf copies: the byte streams' fast path.

``UploadModelRequest`` and ``DownloadResultResponse`` carry a file as ``bytes chunk = 2``.
Through the protobuf runtime each 1 MiB chunk is copied into a message, copied again to
serialise it, and once more on every read of ``message.chunk``: measured at ~2 ms per MiB,
more than the gRPC transfer itself. A message holding only that field is, on the wire, one
tag byte, the length as a varint, then the bytes, so:

* :func:`frame_chunk` encodes a chunk message with one join (the same bytes protobuf would
  write; any client may still send ordinary messages);
* :func:`chunk_or` decodes: a message that is exactly one ``chunk`` field becomes a
  ``memoryview`` of the received buffer (no copy); anything else (header, trailer, or a
  chunk with other fields) goes through the message class as usual.

:func:`add_servicer` registers the generated servicer with these for ``UploadModel``
requests and ``DownloadResult`` responses (servicer methods then receive a ``memoryview``
for a chunk, and may yield ``bytes`` for one); the client uses the same pair.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from service._generated import pruning_service_pb2 as pb
from service._generated import pruning_service_pb2_grpc as pb_grpc

__all__ = ["add_servicer", "chunk_or", "frame_chunk", "serialize_chunk_or"]

_FIELD = 2
_TAG = bytes([_FIELD << 3 | 2])  # field 2, wire type LEN
for _message in (pb.UploadModelRequest, pb.DownloadResultResponse):
    assert _message.DESCRIPTOR.fields_by_name["chunk"].number == _FIELD
_SERVICE = pb.DESCRIPTOR.services_by_name["PruningService"].full_name


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def frame_chunk(data: bytes | memoryview) -> bytes:
    """The encoded message whose only field is ``chunk = data``."""
    return b"".join((_TAG, _varint(len(data)), data))


def serialize_chunk_or(item: Any) -> bytes:
    """A serializer: ``bytes``/``memoryview`` are framed as a chunk, messages serialised."""
    if isinstance(item, (bytes, bytearray, memoryview)):
        return frame_chunk(item)
    return item.SerializeToString()


def _chunk_view(data: bytes) -> memoryview | None:
    """The chunk of a message that is exactly one ``chunk`` field, else ``None``."""
    if data[:1] != _TAG:
        return None
    length, shift, pos = 0, 0, 1
    while pos < len(data) and pos <= 10:
        byte = data[pos]
        length |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return memoryview(data)[pos:] if pos + length == len(data) else None
        shift += 7
    return None


def chunk_or(message: Any) -> Callable[[bytes], Any]:
    """A deserializer: a lone chunk as a ``memoryview``, anything else as ``message``."""
    parse = message.FromString

    def deserialize(data: bytes) -> Any:
        view = _chunk_view(data)
        return view if view is not None else parse(data)

    return deserialize


class _Collect:
    """Stands in for a server while the generated function registers its handlers."""

    handlers: dict[str, grpc.RpcMethodHandler]

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.handlers = handlers


def add_servicer(servicer: pb_grpc.PruningServiceServicer, server: Any) -> None:
    """``add_PruningServiceServicer_to_server`` with the fast chunk path for the two byte
    streams (the handlers are the generated ones with other (de)serializers)."""
    collect = _Collect()
    pb_grpc.add_PruningServiceServicer_to_server(servicer, collect)
    handlers = dict(collect.handlers)
    handlers["UploadModel"] = handlers["UploadModel"]._replace(
        request_deserializer=chunk_or(pb.UploadModelRequest)
    )
    handlers["DownloadResult"] = handlers["DownloadResult"]._replace(
        response_serializer=serialize_chunk_or
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))
    server.add_registered_method_handlers(_SERVICE, handlers)
