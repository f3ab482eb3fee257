"""The byte path's building blocks: the upload sink (hash + write off the event loop,
bounded, errors surfaced) and the one-pass sending reader."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from service.blobs import AsyncHashingWriter, HashingReader, sha256_file

pytestmark = pytest.mark.timeout(60)


def test_the_sink_hashes_and_writes_every_chunk_in_order(tmp_path: Path) -> None:
    chunks = [bytes([i]) * (1000 + i) for i in range(50)]

    async def run() -> str:
        with open(tmp_path / "out", "wb") as f:
            sink = AsyncHashingWriter(f, depth=2)
            try:
                for chunk in chunks:
                    await sink.write(chunk)
                    assert len(sink._pending) <= 2  # bounded: never more in flight
                return await sink.finish()
            finally:
                sink.close()

    digest = asyncio.run(run())
    data = b"".join(chunks)
    assert (tmp_path / "out").read_bytes() == data
    assert digest == hashlib.sha256(data).hexdigest()


def test_a_write_error_reaches_the_receiving_coroutine(tmp_path: Path) -> None:
    async def run() -> None:
        f = open(tmp_path / "out", "wb")  # noqa: SIM115 (closed on purpose below)
        f.close()
        sink = AsyncHashingWriter(f, depth=1)
        try:
            for _ in range(3):
                await sink.write(b"x" * 100)
            await sink.finish()
        finally:
            sink.close()

    with pytest.raises(ValueError, match="closed file"):
        asyncio.run(run())


def test_the_reader_sends_in_one_pass_and_hashes_on_the_side(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(range(256)) * 1000)
    reader = HashingReader(path, chunk_bytes=4096, depth=2)
    chunks = list(reader)
    assert b"".join(chunks) == path.read_bytes() and {len(c) for c in chunks[:-1]} == {4096}
    assert reader.hexdigest() == sha256_file(path)
