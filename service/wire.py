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
requests (the servicer receives a ``memoryview`` for a chunk) and ``DownloadResult``
responses (the servicer may yield encoded chunk messages as ``bytes``, made by
:func:`framed_chunks` straight from the file); the client uses the same framing for its
uploads and the same decoding for its downloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc

from service._generated import pruning_service_pb2 as pb
from service._generated import pruning_service_pb2_grpc as pb_grpc

__all__ = [
    "add_servicer",
    "chunk_or",
    "encoded_or",
    "frame_chunk",
    "framed_chunks",
    "serialize_chunk_or",
]

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


def encoded_or(item: Any) -> bytes:
    """A serializer: ``bytes`` are an already encoded message (:func:`framed_chunks`),
    messages are serialised."""
    return item if isinstance(item, bytes) else item.SerializeToString()


def _frame_slice(mapped: mmap.mmap, start: int, stop: int) -> bytes:
    with memoryview(mapped) as view, view[start:stop] as part:
        return frame_chunk(part)


async def framed_chunks(path: Path, chunk_bytes: int) -> AsyncIterator[tuple[bytes, int]]:
    """A file as encoded chunk messages and their payload sizes. Each is framed straight
    from a read-only mapping of the file (one copy, where ``read`` then framing would make
    two) in the event loop's executor, one chunk ahead of the one being sent, so the loop
    never waits on the disk and memory stays two chunks per reader. The file must not
    shrink meanwhile (results and blobs are never rewritten in place)."""
    loop = asyncio.get_running_loop()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    pending: asyncio.Future[bytes] | None = None
    try:
        starts = range(0, size, chunk_bytes)
        frame = lambda start: _frame_slice(mapped, start, min(start + chunk_bytes, size))  # noqa: E731
        pending = loop.run_in_executor(None, frame, starts[0])
        for i in range(len(starts)):
            message = await pending
            pending = (
                loop.run_in_executor(None, frame, starts[i + 1]) if i + 1 < len(starts) else None
            )
            yield message, min(chunk_bytes, size - starts[i])
    finally:
        if pending is not None:  # the reader went away: let a running framing finish first
            with contextlib.suppress(BaseException):
                await asyncio.shield(pending)
        with contextlib.suppress(BufferError):  # still exported if cancelled twice: GC'd later
            mapped.close()


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
    handlers["DownloadResult"] = handlers["DownloadResult"]._replace(response_serializer=encoded_or)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))
    server.add_registered_method_handlers(_SERVICE, handlers)
