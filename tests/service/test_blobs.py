"""The byte path's building blocks: the upload sink (hash + write off the event loop, on one
thread or two, bounded, errors surfaced), the download sink, and the one-pass sending
reader."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from service.blobs import (
    AsyncHashingWriter,
    HashingReader,
    HashingWriter,
    sha256_file,
    sink_threads,
)

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_sink_hashes_and_writes_every_chunk_in_order(tmp_path: Path, threads: int) -> None:
    chunks = [bytes([i]) * (1000 + i) for i in range(50)]
    seen: list[int] = []

    async def run() -> str:
        with open(tmp_path / "out", "wb") as f:
            sink = AsyncHashingWriter(
                f, depth=2, also=lambda c: seen.append(len(c)), threads=threads
            )
            assert len(sink._pools) == threads
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
    assert seen == [len(c) for c in chunks]  # ``also`` saw every chunk, in order


@pytest.mark.parametrize("threads", [1, 2])
def test_a_write_error_reaches_the_receiving_coroutine(tmp_path: Path, threads: int) -> None:
    async def run() -> None:
        f = open(tmp_path / "out", "wb")  # noqa: SIM115 (closed on purpose below)
        f.close()
        sink = AsyncHashingWriter(f, depth=1, threads=threads)
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


@pytest.mark.parametrize("threads", [1, 2])
def test_the_download_sink_writes_hashes_and_surfaces_errors(tmp_path: Path, threads: int) -> None:
    chunks = [bytes([i % 7]) * (3000 + 17 * i) for i in range(40)]
    with open(tmp_path / "out", "wb") as f:
        sink = HashingWriter(f, depth=3, threads=threads)
        for chunk in chunks:
            sink.write(memoryview(chunk))
            assert len(sink._pending) <= 3
        digest = sink.close()
    data = b"".join(chunks)
    assert (tmp_path / "out").read_bytes() == data
    assert digest == hashlib.sha256(data).hexdigest()
    assert all(not pool._threads or not any(t.is_alive() for t in pool._threads)
               for pool in sink._pools)  # fmt: skip
    f = open(tmp_path / "closed", "wb")  # noqa: SIM115 (closed on purpose)
    f.close()
    broken = HashingWriter(f, depth=1, threads=threads)
    with pytest.raises(ValueError, match="closed file"):
        try:
            for _ in range(3):
                broken.write(b"x" * 100)
        finally:
            broken.close()


def test_a_sink_runs_on_one_or_two_threads() -> None:
    assert sink_threads() in (1, 2)
    with pytest.raises(ValueError, match="1 or 2 threads"):
        HashingWriter(None, threads=3)  # type: ignore[arg-type]
