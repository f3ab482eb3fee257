"""The library's error categories: every failure caused by user input leaves as one of them.

Each public entry point documents which of these it raises. The categories exist so that
front ends map failures without knowing every module: the CLI to exit codes, the gRPC
service to status codes (one interceptor). Module-specific errors (``ConfigError``,
``SpecError``, ``CheckpointError``, ...) subclass a category; ``ValueError`` stays a base of
:class:`InvalidInputError` so existing ``except ValueError`` code keeps working.

==========================  ============================  ==========
category                    meaning                       gRPC code
==========================  ============================  ==========
:class:`InvalidInputError`  malformed or inconsistent     INVALID_ARGUMENT
:class:`NotFoundError`      a named thing does not exist  NOT_FOUND
:class:`LimitExceededError` over a :class:`~metaprune.limits.Limits` bound  RESOURCE_EXHAUSTED
:class:`~metaprune.pruning.progress.PruneCancelled`  the job was cancelled  CANCELLED
==========================  ============================  ==========
"""

from __future__ import annotations

import re
import reprlib

__all__ = [
    "MAX_MESSAGE_BYTES",
    "InvalidInputError",
    "LimitExceededError",
    "MetapruneError",
    "NotFoundError",
    "cap_message",
    "describe_exception",
    "quote",
]

# gRPC status details travel in HTTP/2 trailers; keep every message well under their budget.
MAX_MESSAGE_BYTES = 4096
_QUOTE_CHARS = 200
# room left for a front end's prefix ("metaprune: error: ...") within MAX_MESSAGE_BYTES
_MESSAGE_CHARS = 3000

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple = 3, 8, 8, 8
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = _QUOTE_CHARS, 60, 60

_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{4,}\b")
_ABS_PATH = re.compile(r"(?<![\w.])/(?:[\w.+-]+/)+([\w.+-]+\.(?:py|so|pyx|cpp|h))")


def cap_message(text: str, limit: int = _MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters (and well under :data:`MAX_MESSAGE_BYTES` as
    UTF-8), saying how much was cut."""
    if len(text) <= limit and len(text.encode("utf-8", "replace")) <= limit:
        return text
    head = text[:limit]
    while len(head.encode("utf-8", "replace")) > limit:  # multi-byte characters
        head = head[: len(head) * 3 // 4]
    return f"{head}... ({len(text) - len(head):,} more characters cut)"


class MetapruneError(Exception):
    """Base of every error metaprune raises on purpose.

    The message is capped here, once for every subclass, so no error can carry megabytes
    of client data (see :func:`cap_message`); quote client values with :func:`quote`.
    """

    def __init__(self, *args: object) -> None:
        if args and isinstance(args[0], str):
            args = (cap_message(args[0]), *args[1:])
        super().__init__(*args)


class InvalidInputError(MetapruneError, ValueError):
    """Input is malformed or inconsistent; the message names the object, the expectation
    and what was found."""


class NotFoundError(InvalidInputError, LookupError):
    """A named model, dataset, metanetwork, job or file does not exist."""

    def __str__(self) -> str:  # LookupError/KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class LimitExceededError(InvalidInputError):
    """A request is over one of the configured :class:`~metaprune.limits.Limits`.

    Attributes:
        limit: the limit's name (a field of ``Limits``).
        value: the limit's configured value.
        requested: what was asked for.
    """

    def __init__(self, limit: str, value: float, requested: float, what: str = "") -> None:
        self.limit, self.value, self.requested = limit, value, requested
        subject = f"{what}: " if what else ""
        super().__init__(
            f"{subject}{limit} is {value:,} but {requested:,} was requested "
            f"(an operator can raise it in the Limits configuration)"
        )


def describe_exception(err: BaseException, limit: int = 300) -> str:
    """``"TypeName: first line"`` of a foreign exception, for wrapping it into a metaprune
    error: one line, capped, with memory addresses and install paths removed, so no native
    backtrace, address or path of this machine reaches a user."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    text = _ABS_PATH.sub(r"\1", _ADDRESS.sub("0x...", text))
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text) - limit:,} more characters cut)"
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def quote(value: object, limit: int = _QUOTE_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, saying how much was cut.

    Use it whenever a message quotes client data, so a 5 MB name cannot make a 5 MB error.
    The work is bounded too: a long string is cut before ``repr``, and containers are
    shown a few levels and items deep (``reprlib``), so a 10^6-deep or 10^8-long list costs
    no recursion error and no time.
    """
    if isinstance(value, (str, bytes)):
        text = repr(value[: limit + 1])
        more = len(value) - limit
        if more <= 0 and len(text) <= limit:
            return text
        return f"{text[:limit]}... ({max(more, 1):,} more characters)"
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 (a hostile __repr__)
        text = f"<{type(value).__name__}>"
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters)"
