"""Validation helpers shared by the pruning config and functions: one clear message each."""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence

from metaprune.errors import InvalidInputError, quote

__all__ = ["ConfigError", "check_choice", "check_int", "check_number"]


class ConfigError(InvalidInputError):
    """A pruning option is invalid; the message names the option, the expectation and the value."""


def check_int(
    name: str, value: object, minimum: int | None = None, maximum: int | None = None
) -> int:
    """``value`` if it is an int (not a bool) in ``[minimum, maximum]``, else :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an int (found {quote(value)})")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be an int >= {minimum} (found {quote(value)})")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be an int <= {maximum} (found {quote(value)})")
    return value


def check_number(
    name: str, value: object, minimum: float | None = None, maximum: float | None = None
) -> float:
    """``value`` as a finite float within ``[minimum, maximum]``, else :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
        raise ConfigError(f"{name} must be a finite number (found {quote(value)})")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        lo = "-inf" if minimum is None else minimum
        hi = "inf" if maximum is None else maximum
        raise ConfigError(f"{name} must be in [{lo}, {hi}] (found {quote(value)})")
    return float(value)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else :class:`ConfigError` with close matches."""
    if not isinstance(value, str) or value not in choices:
        # difflib is quadratic in the length; str() of a deep list would recurse
        text = value[:100] if isinstance(value, str) else ""
        close = difflib.get_close_matches(text, list(choices), n=2, cutoff=0.5) if text else []
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(
            f"{name} must be one of {', '.join(repr(c) for c in choices)} (found {quote(value)}){hint}"
        )
    return value
