"""A job's wall-clock budget, enforced the way cancellation is: between steps.

:class:`BudgetToken` is a :class:`~metaprune.pruning.progress.CancelToken` that also counts
as cancelled once its time is up, and wraps the caller's token (if any) so that both
stop the job. The pipeline's existing cancellation points (every training batch, every
pruning step, every stage) therefore enforce the budget too, and
:func:`~metaprune.pruning.progress.check_cancel` raises
:class:`~metaprune.errors.LimitExceededError` (``max_wall_seconds``) instead of
``PruneCancelled`` when the budget, not a person, stopped the job.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from metaprune.errors import LimitExceededError
from metaprune.pruning.progress import CancelToken

__all__ = ["BudgetToken"]


class BudgetToken(CancelToken):
    """Cancelled when ``outer`` is, when :meth:`cancel` is called, or after ``seconds``.

    Args:
        seconds: the wall-clock budget, from construction.
        outer: the caller's token, honoured as well.
        clock: monotonic clock (tests pass a fake one).
    """

    def __init__(
        self,
        seconds: float,
        outer: CancelToken | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.seconds, self.outer, self._clock = float(seconds), outer, clock
        self._start = clock()

    def cancel(self) -> None:
        super().cancel()
        if self.outer is not None:
            self.outer.cancel()

    @property
    def elapsed(self) -> float:
        return self._clock() - self._start

    @property
    def expired(self) -> bool:
        return self.elapsed > self.seconds

    @property
    def cancelled(self) -> bool:
        explicit = self._event.is_set() or (self.outer is not None and self.outer.cancelled)
        return explicit or self.expired

    def expired_error(self, where: str = "") -> LimitExceededError | None:
        """The error to raise if the budget (and not a cancellation) stopped the job."""
        explicit = self._event.is_set() or (self.outer is not None and self.outer.cancelled)
        if explicit or not self.expired:
            return None
        during = f" (stopped during {where})" if where else ""
        return LimitExceededError(
            "max_wall_seconds", self.seconds, round(self.elapsed, 3), f"pruning job{during}"
        )
