"""Progress events and cancellation for long-running pruning jobs.

Every stage reports :class:`ProgressEvent`\\ s to a caller-supplied callback: the CLI
draws a progress bar from them and the service streams them to clients. A job is
cancelled cooperatively, between steps (training batches, pruning steps), in either of
two ways:

* the callback returns :data:`CANCEL` (or raises :class:`PruneCancelled` itself);
* a :class:`CancelToken` passed to the job is cancelled from another thread.

Either way the job raises :class:`PruneCancelled` and leaves no partial output behind.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any, Final

from metaprune.errors import MetapruneError

__all__ = [
    "CANCEL",
    "CancelToken",
    "ProgressCallback",
    "ProgressEvent",
    "PruneCancelled",
    "StageMeter",
    "check_cancel",
    "notify",
]


class PruneCancelled(MetapruneError, RuntimeError):
    """The job was cancelled through its progress callback or its :class:`CancelToken`."""


class _Cancel:
    def __repr__(self) -> str:
        return "CANCEL"


#: Return this from a progress callback to cancel the job.
CANCEL: Final = _Cancel()


@dataclasses.dataclass(frozen=True)
class ProgressEvent:
    """One progress report.

    Attributes:
        stage: the pipeline stage, e.g. ``"before_pruning"``, ``"prune"``, ``"after_pruning"``.
        step: steps done in this stage (``0`` announces the stage).
        total: steps the stage will take at most (pruning may stop earlier).
        metrics: plain numbers/strings for display, e.g. ``{"val_accuracy": 0.93}``.
    """

    stage: str
    step: int
    total: int
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)


ProgressCallback = Callable[[ProgressEvent], object]


class CancelToken:
    """A thread-safe flag that cancels a job at its next step."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


def check_cancel(cancel: CancelToken | None, where: str = "") -> None:
    """Raise :class:`PruneCancelled` if ``cancel`` was cancelled (or the token's own error,
    e.g. ``LimitExceededError`` when a wall-clock budget ran out)."""
    if cancel is not None and cancel.cancelled:
        expired_error = getattr(cancel, "expired_error", None)
        error = expired_error(where) if expired_error is not None else None
        if error is not None:
            raise error
        raise PruneCancelled(f"pruning cancelled{f' during {where}' if where else ''}")


def notify(
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
    stage: str,
    step: int,
    total: int,
    /,
    **metrics: Any,
) -> None:
    """Send one event to ``progress`` and honour a cancellation request.

    Raises:
        PruneCancelled: if the callback returned :data:`CANCEL` or ``cancel`` is set.
    """
    if progress is not None and progress(ProgressEvent(stage, step, total, metrics)) is CANCEL:
        if cancel is not None:
            cancel.cancel()
        raise PruneCancelled(f"pruning cancelled by the progress callback during {stage}")
    check_cancel(cancel, stage)


class StageMeter:
    """A stage's progress counted in units of work (batches, timed passes, pruning steps).

    Every :meth:`advance` reports one :class:`ProgressEvent` (``step`` = units done,
    ``total`` = the stage's planned units) and honours cancellation, so a stage reports
    after every unit of work, however long a unit takes: a bounded amount of work, not
    of time, separates two events. ``total`` is a plan: a stage that stops early (a prune
    that meets its target) jumps to it with :meth:`finish`.
    """

    def __init__(
        self, progress: ProgressCallback | None, cancel: CancelToken | None, stage: str, total: int
    ) -> None:
        self.progress, self.cancel, self.stage = progress, cancel, stage
        self.total, self.done = max(int(total), 1), 0

    def start(self, **metrics: Any) -> None:
        """Announce the stage (step 0)."""
        notify(self.progress, self.cancel, self.stage, 0, self.total, **metrics)

    def advance(self, units: int = 1, **metrics: Any) -> None:
        """``units`` more done (capped below ``total``: only :meth:`finish` completes)."""
        self.done = min(self.done + units, self.total - 1)
        notify(self.progress, self.cancel, self.stage, self.done, self.total, **metrics)

    def tick(self) -> None:
        """One unit done, no metrics (a callback for loops that know nothing of stages)."""
        self.advance()

    def finish(self, **metrics: Any) -> None:
        """The stage is done (step = total)."""
        self.done = self.total
        notify(self.progress, self.cancel, self.stage, self.total, self.total, **metrics)
