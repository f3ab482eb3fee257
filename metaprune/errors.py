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

__all__ = [
    "MAX_MESSAGE_BYTES",
    "InvalidInputError",
    "LimitExceededError",
    "MetapruneError",
    "NotFoundError",
    "quote",
]

# gRPC status details travel in HTTP/2 trailers; keep every message well under their budget.
MAX_MESSAGE_BYTES = 4096
_QUOTE_CHARS = 200


class MetapruneError(Exception):
    """Base of every error metaprune raises on purpose."""


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


def quote(value: object, limit: int = _QUOTE_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, saying how much was cut.

    Use it whenever a message quotes client data, so a 5 MB name cannot make a 5 MB error.
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters)"
