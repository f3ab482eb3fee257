"""The rich progress display of a batch: counts, failures, ETA, and a line per running task."""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["BatchDisplay"]


class BatchDisplay:
    """A context manager drawing the batch's progress on stderr; silent when not ``enabled``."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.enabled, self.total, self.done = enabled, total, done
        self.failed = 0
        self._done_here = 0
        self._start = time.monotonic()
        self._rows: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> BatchDisplay:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=Console(stderr=True),
            )  # fmt: skip
            self._bar.__enter__()
            self._main = self._bar.add_task("batch", total=self.total, completed=self.done, info="")
            self._refresh()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._bar.__exit__(*exc)

    def handler(self, key: str):  # -> Callable[[dict], None]
        """The ``on_progress`` of task ``key``: one line with its stage and step."""

        def on_progress(event: dict[str, Any]) -> None:
            if not self.enabled:
                return
            with self._lock:
                row = self._rows.get(key)
                if row is None:
                    row = self._rows[key] = self._bar.add_task(f"  {key}", total=1, info="")
            total = max(int(event.get("total") or 1), 1)
            self._bar.update(row, total=total, completed=min(int(event.get("step") or 0), total),
                             info=str(event.get("stage", "")))  # fmt: skip

        return on_progress

    def finished(
        self, key: str, *, ok: bool, error: str | None = None, retry: bool = False
    ) -> None:
        with self._lock:
            row = self._rows.pop(key, None)
            if ok:
                self.done += 1
                self._done_here += 1
            elif not retry:
                self.failed += 1
        if not self.enabled:
            return
        if row is not None:
            self._bar.remove_task(row)
        if not ok:
            again = " (will retry)" if retry else ""
            self._bar.console.print(f"[red]failed[/red] {key}: {error}{again}")
        self._refresh()

    def _refresh(self) -> None:
        remaining = self.total - self.done - self.failed
        eta = ""
        if self._done_here and remaining > 0:
            per_task = (time.monotonic() - self._start) / self._done_here
            eta = f"eta {_duration(per_task * remaining)}"
        info = f"[green]{self.done} done[/green] [red]{self.failed} failed[/red] {remaining} to go {eta}"
        self._bar.update(self._main, completed=self.done + self.failed, info=info)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
