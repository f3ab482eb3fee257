"""The content-addressed blob directory and atomic file writes.

Layout under the data directory (see ``service/README.md``)::

    blobs/<aa>/<sha256 hex>     an uploaded checkpoint, named by its own sha256
    results/<job id>/           model.safetensors, report.json, curve.png of a finished job
    tmp/                        uploads and results being written (emptied at start)

Nothing is ever written in place: a file is streamed into ``tmp/``, flushed, fsynced and
then renamed into ``blobs/`` (a directory into ``results/``), so after a crash a blob or
result either exists complete or does not exist; ``tmp/`` leftovers are removed at start.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import hashlib
import os
import re
import shutil
import sys
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "AsyncHashingWriter",
    "BlobDir",
    "HashingReader",
    "HashingWriter",
    "commit_dir",
    "sha256_file",
    "sink_threads",
]

Buffer = bytes | memoryview  # a chunk: bytes, or a view of a received message (service.wire)
_HEX = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1024 * 1024


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Lowercase hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class _Sink:
    """Hash chunks and write them to a file in order, on one thread or two.

    With one thread each chunk is hashed, written and shown to ``also`` in turn; with two,
    the sha256 runs on a thread of its own and the write (and ``also``) on the other, on
    the same immutable chunk at once. A sha256 pass (~0.17 CPU s per 200 MB here) is the
    longest part of a chunk's handling, so two threads shorten the critical path to the
    hash alone where a core is free for each; on a 2-core machine already busy with the
    gRPC stream the extra thread buys nothing and costs a hand-off per chunk, hence
    :func:`sink_threads`.
    """

    def __init__(
        self, f: BinaryIO, also: Callable[[Buffer], None] | None, threads: int, writeback: bool
    ) -> None:
        if threads not in (1, 2):
            raise ValueError(f"a sink runs on 1 or 2 threads (found {threads!r})")
        self._f, self._also, self._writeback = f, also, writeback
        self._written = self._flushed = 0  # bytes written / handed to writeback
        self._digest = hashlib.sha256()
        self._pools = [
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"sink-{i}")
            for i in range(threads)
        ]
        self._pending: deque[tuple[concurrent.futures.Future, ...]] = deque()

    def _store(self, chunk: Buffer) -> None:
        self._f.write(chunk)
        if self._also is not None:
            self._also(chunk)
        self._written += len(chunk)
        if self._writeback and self._written - self._flushed >= _WRITEBACK_BYTES:
            self._f.flush()
            _start_writeback(self._f, self._flushed, self._written - self._flushed)
            self._flushed = self._written

    def _both(self, chunk: Buffer) -> None:
        self._digest.update(chunk)
        self._store(chunk)

    def _submit(self, chunk: Buffer) -> None:
        if len(self._pools) == 1:
            self._pending.append((self._pools[0].submit(self._both, chunk),))
        else:
            hashing, storing = self._pools
            self._pending.append(
                (hashing.submit(self._digest.update, chunk), storing.submit(self._store, chunk))
            )

    def _shutdown(self) -> None:
        for futures in self._pending:
            for future in futures:
                future.cancel()
        self._pending.clear()
        for pool in self._pools:
            pool.shutdown(wait=True)


def sink_threads() -> int:
    """Threads for an upload's or a download's sink: 2 (the hash on its own) where this
    process may use 3 or more cores, else 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return 2 if cores >= 3 else 1


class HashingWriter(_Sink):
    """Write chunks to a file and hash them on background threads (:class:`_Sink`).

    The thread that receives chunks from the network only hands them over, so receiving,
    hashing and writing overlap (``hashlib`` and file writes release the GIL on large
    buffers). At most ``depth`` chunks are in flight, so a slow disk slows the sender
    instead of filling memory.
    """

    def __init__(self, f: BinaryIO, depth: int = 4, threads: int | None = None) -> None:
        super().__init__(f, None, threads or sink_threads(), writeback=False)
        self._depth = depth

    def write(self, chunk: Buffer) -> None:
        """Hand ``chunk`` over; re-raises a write error of an earlier chunk."""
        while len(self._pending) >= self._depth:
            for future in self._pending.popleft():
                future.result()
        self._submit(chunk)

    def close(self) -> str:
        """Wait for every chunk; return the hex sha256 (re-raises a write error)."""
        try:
            while self._pending:
                for future in self._pending.popleft():
                    future.result()
        finally:
            self._shutdown()
        self._f.flush()
        return self._digest.hexdigest()


class HashingReader:
    """A file's chunks for sending, hashed on a background thread as they go.

    A client can send an upload in one pass (the sha256 in an ``UploadTrailer``) instead of
    hashing the file first: iterating yields chunks at once while a thread hashes them (at
    most ``depth`` chunks behind); :meth:`hexdigest` then waits for the last one.
    """

    def __init__(self, path: str | os.PathLike[str], chunk_bytes: int, depth: int = 4) -> None:
        self._path, self._chunk, self._depth = Path(path), chunk_bytes, depth
        self._digest = hashlib.sha256()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="send-hash")
        self._pending: deque[concurrent.futures.Future] = deque()

    def __iter__(self) -> Iterator[bytes]:
        try:
            with open(self._path, "rb") as f:
                while chunk := f.read(self._chunk):
                    while len(self._pending) >= self._depth:
                        self._pending.popleft().result()
                    self._pending.append(self._pool.submit(self._digest.update, chunk))
                    yield chunk
        finally:  # the thread ends once the queued chunks are hashed (also if abandoned)
            self._pool.shutdown(wait=False)

    def hexdigest(self) -> str:
        """The sha256 of every chunk yielded so far (waits for the hashing thread)."""
        while self._pending:
            self._pending.popleft().result()
        self._pool.shutdown(wait=True)
        return self._digest.hexdigest()


class AsyncHashingWriter(_Sink):
    """The server's upload sink: hash chunks and write them to a file, from a coroutine.

    Each chunk is hashed and written on the upload's own threads (:class:`_Sink`: one, or
    two where cores allow), in order, overlapping the receive loop (``hashlib`` and file
    writes release the GIL on large buffers). :meth:`write` returns as soon as the chunk
    is handed over unless ``depth`` chunks are in flight, in which case it waits for the
    oldest (``also``, e.g. a scan of the bytes, sees each chunk too, on the writing
    thread): memory per upload is bounded by ``depth`` chunks, a slow disk slows the
    sender (gRPC flow control) instead of filling memory, and the event loop never blocks
    on the disk. Writeback to disk is started every 8 MiB, so the fsync before the commit
    finds little left to do.
    """

    def __init__(
        self, f: BinaryIO, depth: int = 4, also: Callable[[Buffer], None] | None = None,
        threads: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(f, also, threads or sink_threads(), writeback=True)
        self._depth = depth

    async def write(self, chunk: Buffer) -> None:
        """Queue ``chunk``; re-raises a write error of an earlier chunk."""
        while len(self._pending) >= self._depth:
            await self._wait_oldest()
        self._submit(chunk)

    async def _wait_oldest(self) -> None:
        for future in self._pending.popleft():
            if not future.done():  # often done already: no trip through the loop then
                await asyncio.wrap_future(future)
            future.result()  # re-raises a write error

    async def finish(self) -> str:
        """Wait for every queued chunk, flush; return the hex sha256."""
        while self._pending:
            await self._wait_oldest()
        self._f.flush()
        return self._digest.hexdigest()

    def close(self) -> None:
        """Drop what is still queued and join the threads (call in a ``finally``: the file
        must not be closed under a running write)."""
        self._shutdown()


class BlobDir:
    """Content-addressed files plus per-job result directories under ``root``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.results = self.root / "results"
        self.tmp = self.root / "tmp"
        for d in (self.blobs, self.results, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        # anything in tmp/ was being written when the previous process stopped
        for leftover in self.tmp.iterdir():
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)

    def blob_path(self, sha256: str) -> Path:
        if not _HEX.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256[:80]!r}")
        return self.blobs / sha256[:2] / sha256

    def has_blob(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()

    @contextlib.contextmanager
    def temp_file(self) -> Iterator[tuple[Path, BinaryIO]]:
        """A new file in ``tmp/`` open for writing; removed on exit unless committed."""
        path = self.tmp / f"upload-{uuid.uuid4().hex}"
        try:
            with open(path, "wb") as f:
                yield path, f
        finally:
            path.unlink(missing_ok=True)

    def sync_file(self, tmp_path: Path) -> None:
        """fsync a temp file (before :meth:`commit_blob` with ``synced=True``)."""
        _fsync(tmp_path)

    def commit_blob(self, tmp_path: Path, sha256: str, *, synced: bool = False) -> bool:
        """Move a fully written temp file to its content address (fsynced first unless
        ``synced``); False if it was there."""
        dest = self.blob_path(sha256)
        if dest.is_file():
            return False
        if not synced:
            _fsync(tmp_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp_path, dest)
        _fsync_dir(dest.parent)
        return True

    def remove_blob(self, sha256: str) -> None:
        self.blob_path(sha256).unlink(missing_ok=True)

    def temp_dir(self, prefix: str) -> Path:
        path = self.tmp / f"{prefix}-{uuid.uuid4().hex}"
        path.mkdir(parents=True)
        return path

    def result_dir(self, job_id: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{32}", job_id):
            raise ValueError(f"not a job id: {job_id[:80]!r}")
        return self.results / job_id

    def commit_result(self, tmp_dir: Path, job_id: str) -> Path:
        """Rename a fully written result directory into place (replacing an older one)."""
        return commit_dir(tmp_dir, self.result_dir(job_id))

    def remove_result(self, job_id: str) -> None:
        shutil.rmtree(self.result_dir(job_id), ignore_errors=True)


def commit_dir(tmp_dir: Path, dest: Path) -> Path:
    """Make a fully written directory appear at ``dest`` in one rename (fsynced first).

    An older ``dest`` (from an attempt that died after renaming, before the store recorded
    it) is superseded.
    """
    for f in tmp_dir.iterdir():
        _fsync(f)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp_dir, dest)
    _fsync_dir(dest.parent)
    return dest


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's ``sync_file_range(2)`` (not in :mod:`os`), or ``None`` elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2
_WRITEBACK_BYTES = 8 * 1024 * 1024


def _start_writeback(f: BinaryIO, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``length`` bytes of ``f`` from ``offset`` to disk now
    (asynchronously), so the fsync before a commit finds little left to do (measured here:
    fsync of 208 MB 0.10 s after a plain write, 0.01-0.02 s after writeback was started in
    8 MiB steps during it). A no-op where ``sync_file_range`` does not exist."""
    if _SYNC_FILE_RANGE is None:
        return
    try:
        fd = f.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (e.g. BytesIO)
        return
    _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # a hint: result ignored


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
