"""Per-token caps on open streams: what one token may hold open at once.

With ``grpc.aio`` an open stream costs the server no thread, but it still costs memory, a
file descriptor (an upload's temporary file) and a share of the event loop; one token must
not be able to take an unbounded share. Two kinds are counted per token:

* ``upload``: ``UploadModel`` streams in progress (``max_uploads_per_token``);
* ``stream``: ``WatchJob`` and ``DownloadResult`` streams (``max_streams_per_token``).

A call over its token's cap is refused at once with RESOURCE_EXHAUSTED naming the cap;
a slot is given back when its stream ends for any reason (done, error, client gone,
idle timeout). All calls happen on the server's event loop, so no lock is needed.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

from metaprune.errors import LimitExceededError
from service.metrics import Metrics

__all__ = ["TokenSlots"]

_WHAT = {
    "upload": ("max_uploads_per_token", "UploadModel streams in progress"),
    "stream": ("max_streams_per_token", "open WatchJob/DownloadResult streams"),
}


class TokenSlots:
    """Counts open streams per (kind, token) against ``caps`` (kind -> limit)."""

    def __init__(self, caps: dict[str, int], metrics: Metrics | None = None) -> None:
        unknown = set(caps) - set(_WHAT)
        if unknown:
            raise ValueError(f"unknown slot kinds {sorted(unknown)} (expected {sorted(_WHAT)})")
        self._caps, self._metrics = dict(caps), metrics
        self._open: Counter[tuple[str, str]] = Counter()

    def open(self, kind: str, token: str) -> int:
        """How many ``kind`` slots ``token`` holds now."""
        return self._open[kind, token]

    @contextlib.contextmanager
    def hold(self, kind: str, token: str) -> Iterator[None]:
        """Hold one ``kind`` slot of ``token`` for the ``with`` block.

        Raises:
            LimitExceededError: ``token`` already holds its cap of ``kind`` slots.
        """
        cap, (name, what) = self._caps[kind], _WHAT[kind]
        held = self._open[kind, token]
        if held >= cap:
            if self._metrics is not None:
                self._metrics.refused_slots.labels(kind).inc()
            raise LimitExceededError(name, cap, held + 1, f"{what} of token {token!r}")
        self._open[kind, token] += 1
        if self._metrics is not None:
            self._metrics.open_streams.labels(kind).inc()
        try:
            yield
        finally:
            self._open[kind, token] -= 1
            if not self._open[kind, token]:
                del self._open[kind, token]
            if self._metrics is not None:
                self._metrics.open_streams.labels(kind).dec()
