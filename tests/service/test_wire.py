"""service.wire: chunk messages framed and read without protobuf copies, byte-identical to
what protobuf writes, and every other message left to protobuf."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from service._generated import pruning_service_pb2 as pb
from service.wire import chunk_or, encoded_or, frame_chunk, framed_chunks, serialize_chunk_or


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16_383, 16_384, (1 << 21) + 3])
@pytest.mark.parametrize("message", [pb.UploadModelRequest, pb.DownloadResultResponse])
def test_a_chunk_is_framed_as_protobuf_would_and_read_as_a_view(message, size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    framed = frame_chunk(data)
    assert framed == message(chunk=data).SerializeToString()
    assert serialize_chunk_or(memoryview(data)) == framed == serialize_chunk_or(data)
    view = chunk_or(message)(framed)
    assert isinstance(view, memoryview) and view == data and view.obj is framed  # no copy


def test_other_messages_go_through_protobuf() -> None:
    parse = chunk_or(pb.UploadModelRequest)
    header = pb.UploadModelRequest(header=pb.UploadHeader(spec_json="{}", total_size=3))
    assert serialize_chunk_or(header) == header.SerializeToString()
    assert parse(header.SerializeToString()) == header
    trailer = pb.UploadModelRequest(trailer=pb.UploadTrailer(sha256="a" * 64))
    assert parse(trailer.SerializeToString()) == trailer
    # a chunk followed by another field is not a lone chunk: protobuf decides (last one wins)
    both = frame_chunk(b"abc") + trailer.SerializeToString()
    parsed = parse(both)
    assert isinstance(parsed, pb.UploadModelRequest) and parsed.WhichOneof("part") == "trailer"
    assert parse(b"") == pb.UploadModelRequest()  # an empty message stays one
    with pytest.raises(Exception, match="(?i)pars|decod|truncat"):
        parse(b"\x12\x05ab")  # shorter than its length: protobuf's own error


def test_a_file_is_sent_as_encoded_chunk_messages(tmp_path: Path) -> None:
    data = bytes(range(256)) * 1000 + b"tail"
    (tmp_path / "f").write_bytes(data)
    (tmp_path / "empty").write_bytes(b"")

    async def read(name: str, stop: int | None = None) -> list[tuple[bytes, int]]:
        out = []
        async for item in framed_chunks(tmp_path / name, 5000):
            out.append(item)
            if len(out) == stop:
                break  # a reader that goes away mid-file: the mapping is closed cleanly
        return out

    items = asyncio.run(read("f"))
    parse = chunk_or(pb.DownloadResultResponse)
    assert b"".join(bytes(parse(m)) for m, _ in items) == data
    assert [n for _, n in items] == [5000] * 51 + [len(data) - 51 * 5000]
    assert all(encoded_or(m) is m for m, _ in items)  # sent as they are
    assert asyncio.run(read("empty")) == []
    assert len(asyncio.run(read("f", stop=2))) == 2
    header = pb.DownloadResultResponse(header=pb.DownloadHeader(total_size=3))
    assert encoded_or(header) == header.SerializeToString()
