"""The one server interceptor: authentication, error mapping and the per-RPC log line.

Every RPC handler is wrapped so that

1. the bearer token is checked (except for ``grpc.health.v1.Health``, which load
   balancers call without credentials) and the caller's :class:`~service.auth.Principal`
   is available to the servicer as :data:`~service.auth.current_principal`;
2. an exception leaving the handler becomes a status code through
   :func:`service.errors.status_for`; anything it does not know is a bug and becomes
   ``INTERNAL`` with an incident id, the traceback going to the server log only;
3. one JSON line is logged: method, status, duration, token name (never the token).
"""

from __future__ import annotations

import logging
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from service.auth import Authenticator, Principal, current_principal
from service.errors import status_for
from service.logs import log_event

__all__ = ["ServiceInterceptor"]

UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/",)


class ServiceInterceptor(grpc.ServerInterceptor):
    def __init__(self, auth: Authenticator) -> None:
        self._auth = auth

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method
        metadata = details.invocation_metadata
        public = method.startswith(UNAUTHENTICATED_PREFIXES)
        if handler.unary_unary:
            kind, factory, behavior = (
                "unary_unary",
                grpc.unary_unary_rpc_method_handler,
                handler.unary_unary,
            )
        elif handler.unary_stream:
            kind, factory, behavior = (
                "unary_stream",
                grpc.unary_stream_rpc_method_handler,
                handler.unary_stream,
            )
        elif handler.stream_unary:
            kind, factory, behavior = (
                "stream_unary",
                grpc.stream_unary_rpc_method_handler,
                handler.stream_unary,
            )
        else:
            kind, factory, behavior = (
                "stream_stream",
                grpc.stream_stream_rpc_method_handler,
                handler.stream_stream,
            )
        wrap = self._wrap_stream if kind.endswith("_stream") else self._wrap_unary
        return factory(
            wrap(behavior, method, metadata, public),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _enter(self, metadata: Any, public: bool) -> str:
        """Authenticate (unless the RPC is public), publish the caller to the servicer and
        return its name for the log ("-" for public RPCs)."""
        principal: Principal | None = None if public else self._auth.authenticate(metadata)
        if principal is None:
            return "-"
        current_principal.set(principal)
        return principal.name

    def _wrap_unary(self, behavior: Callable, method: str, metadata: Any, public: bool) -> Callable:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            start, who, status = time.perf_counter(), "-", "OK"
            try:
                who = self._enter(metadata, public)
                return behavior(request, context)
            except Exception as err:  # noqa: BLE001 (the one place errors become statuses)
                code, message = _describe(err, method, context)
                status = code.name
                context.abort(code, message)
            finally:
                _log(method, status, start, who)

        return call

    def _wrap_stream(
        self, behavior: Callable, method: str, metadata: Any, public: bool
    ) -> Callable:
        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            start, who, status = time.perf_counter(), "-", "OK"
            try:
                who = self._enter(metadata, public)
                yield from behavior(request, context)
            except GeneratorExit:  # the client went away mid-stream
                status = "CANCELLED"
                raise
            except Exception as err:  # noqa: BLE001
                code, message = _describe(err, method, context)
                status = code.name
                context.abort(code, message)
            finally:
                _log(method, status, start, who)

        return call


def _describe(
    err: Exception, method: str, context: grpc.ServicerContext
) -> tuple[grpc.StatusCode, str]:
    mapped = status_for(err)
    if mapped is not None:
        return mapped
    if not context.is_active():  # the client cancelled; the handler saw a dead stream
        return grpc.StatusCode.CANCELLED, "the client cancelled the call"
    incident = uuid.uuid4().hex[:12]
    log_event(
        "internal_error", logging.ERROR, method=method, incident=incident,
        error=f"{type(err).__name__}: {err}"[:2000], traceback=traceback.format_exc(limit=20),
    )  # fmt: skip
    return grpc.StatusCode.INTERNAL, (
        f"internal server error (incident {incident}); the server log has the details"
    )


def _log(method: str, status: str, start: float, who: str) -> None:
    log_event(
        "rpc", method=method, status=status,
        duration_ms=round(1000 * (time.perf_counter() - start), 2), token=who,
    )  # fmt: skip
