"""Progress throttling: a fast stage must not flood the parent, the service or a client."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["ProgressThrottle"]


class ProgressThrottle:
    """Forward at most one event per ``interval`` seconds, never losing a stage's last event.

    An event is sent at once when it starts a new stage, when it completes its stage
    (``step >= total``), or when ``interval`` has passed since the last one sent; otherwise
    it is held, replacing any held event, and sent before the next stage's first event or
    on :meth:`flush` (call it when the task ends).
    """

    def __init__(
        self,
        send: Callable[[dict[str, Any]], None],
        interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send, self._interval, self._clock = send, interval, clock
        self._last_sent = -float("inf")
        self._stage: object = object()  # matches no real stage
        self._held: dict[str, Any] | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        stage = event.get("stage")
        now = self._clock()
        if stage != self._stage:
            self.flush()
            self._stage = stage
        elif not _completes(event) and now - self._last_sent < self._interval:
            self._held = event
            return
        self._held = None
        self._last_sent = now
        self._send(event)

    def flush(self) -> None:
        """Send the held event, if any."""
        if self._held is not None:
            held, self._held = self._held, None
            self._last_sent = self._clock()
            self._send(held)


def _completes(event: dict[str, Any]) -> bool:
    step, total = event.get("step"), event.get("total")
    return isinstance(step, int) and isinstance(total, int) and total > 0 and step >= total
