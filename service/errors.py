"""Service-only error categories and the one mapping from exceptions to gRPC status codes.

The library's categories (:mod:`metaprune.errors`) cover bad input, unknown names and
limits; the service adds the states only a server has (a reused request id, a job that
is not finished, a missing token, a read-only token, shutting down). :func:`status_for`
is the single place where an exception becomes a status code; the interceptor
(:mod:`service.interceptor`) calls it for every RPC.
"""

from __future__ import annotations

import grpc

from metaprune.errors import (
    MAX_MESSAGE_BYTES,
    InvalidInputError,
    LimitExceededError,
    MetapruneError,
    NotFoundError,
)
from metaprune.pruning.progress import PruneCancelled

__all__ = [
    "AlreadyExistsError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "PermissionDeniedError",
    "UnauthenticatedError",
    "UnavailableError",
    "status_for",
]


class AlreadyExistsError(MetapruneError):
    """A client-chosen id (``request_id``) is already taken by a different request."""


class FailedPreconditionError(MetapruneError):
    """The object exists but is not in a state that allows the call (e.g. a running job)."""


class UnauthenticatedError(MetapruneError):
    """No bearer token, or one the server does not know."""


class PermissionDeniedError(MetapruneError):
    """The token is known but may not make this call (a read-only token)."""


class DeadlineExceededError(MetapruneError):
    """The client went silent for longer than the server waits (an idle upload)."""


class UnavailableError(MetapruneError):
    """The server is shutting down; retry against the next instance."""


# most specific first: NotFoundError and LimitExceededError are InvalidInputErrors
_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (LimitExceededError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (PruneCancelled, grpc.StatusCode.CANCELLED),
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
)


def _library_value_errors() -> tuple[type[BaseException], ...]:
    # module errors that predate the categories (ConfigError, SpecError, ...): bad input too
    from metaprune.checkpoint import CheckpointError
    from metaprune.data import DatasetError
    from metaprune.models.registry import UnknownModelError
    from metaprune.models.spec import SpecError
    from metaprune.pruning._checks import ConfigError

    return CheckpointError, ConfigError, DatasetError, SpecError, UnknownModelError


def status_for(err: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The status code and message for an error the service raises on purpose, or
    ``None`` for anything else (a bug: the interceptor answers INTERNAL with an incident id)."""
    message = " ".join(str(err).split())[:MAX_MESSAGE_BYTES] or type(err).__name__
    for cls, code in _CODES:
        if isinstance(err, cls):
            return code, message
    if isinstance(err, _library_value_errors()):
        return grpc.StatusCode.INVALID_ARGUMENT, message
    return None
