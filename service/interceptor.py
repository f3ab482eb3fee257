"""The one server interceptor: authentication, error mapping, the per-RPC log line, metrics.

The server is ``grpc.aio``: every RPC handler is a coroutine (or an async generator for
server streams) on the server's event loop, wrapped here so that

1. the bearer token is checked (except for ``grpc.health.v1.Health``, which load
   balancers call without credentials) and the caller's :class:`~service.auth.Principal`
   is available to the servicer as :data:`~service.auth.current_principal` (a context
   variable: each RPC is its own asyncio task, and ``asyncio.to_thread`` copies it);
2. an exception leaving the handler becomes a status code through
   :func:`service.errors.status_for`; anything it does not know is a bug and becomes
   ``INTERNAL`` with an incident id, the traceback going to the server log only;
3. one JSON line is logged: method, status, duration, token name (never the token), and
   the RPC's count and latency go to :class:`~service.metrics.Metrics` by method and code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from service.auth import Authenticator, Principal, current_principal
from service.errors import status_for
from service.logs import log_event
from service.metrics import Metrics

__all__ = ["ServiceInterceptor"]

UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/",)


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, auth: Authenticator, metrics: Metrics | None = None) -> None:
        self._auth, self._metrics = auth, metrics

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        metadata = details.invocation_metadata
        public = method.startswith(UNAUTHENTICATED_PREFIXES)
        if handler.unary_unary:
            factory, behavior = grpc.unary_unary_rpc_method_handler, handler.unary_unary
        elif handler.unary_stream:
            factory, behavior = grpc.unary_stream_rpc_method_handler, handler.unary_stream
        elif handler.stream_unary:
            factory, behavior = grpc.stream_unary_rpc_method_handler, handler.stream_unary
        else:
            factory, behavior = grpc.stream_stream_rpc_method_handler, handler.stream_stream
        wrap = self._wrap_stream if handler.response_streaming else self._wrap_unary
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
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start, who, status = time.perf_counter(), "-", "OK"
            try:
                who = self._enter(metadata, public)
                return await behavior(request, context)
            except asyncio.CancelledError:  # the client went away (or the server stopped)
                status = "CANCELLED"
                raise
            except Exception as err:  # noqa: BLE001 (the one place errors become statuses)
                if _aborted(err):
                    status = _code_name(context)
                    raise
                code, message = _describe(err, method, context)
                status = code.name
            finally:  # logged before the status leaves, so a client never outruns its log line
                self._done(method, status, start, who)
            await context.abort(code, message)

        return call

    def _wrap_stream(
        self, behavior: Callable, method: str, metadata: Any, public: bool
    ) -> Callable:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            start, who, status = time.perf_counter(), "-", "OK"
            try:
                who = self._enter(metadata, public)
                # aclosing: a stream the client dropped is closed now (its slot, its file),
                # not whenever the loop finalizes the abandoned generator
                async with contextlib.aclosing(behavior(request, context)) as stream:
                    async for message in stream:
                        yield message
                return
            except (asyncio.CancelledError, GeneratorExit):  # the client went away mid-stream
                status = "CANCELLED"
                raise
            except Exception as err:  # noqa: BLE001
                if _aborted(err):
                    status = _code_name(context)
                    raise
                code, message = _describe(err, method, context)
                status = code.name
            finally:
                self._done(method, status, start, who)
            await context.abort(code, message)

        return call

    def _done(self, method: str, status: str, start: float, who: str) -> None:
        seconds = time.perf_counter() - start
        log_event("rpc", method=method, status=status, duration_ms=round(1000 * seconds, 2),
                  token=who)  # fmt: skip
        if self._metrics is not None:
            self._metrics.observe_rpc(method, status, seconds)


def _aborted(err: Exception) -> bool:
    """Whether ``err`` is the handler's own ``context.abort`` (already a status)."""
    return isinstance(err, grpc.aio.AbortError)


def _code_name(context: grpc.aio.ServicerContext) -> str:
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else str(code or "UNKNOWN")


def _describe(
    err: Exception, method: str, context: grpc.aio.ServicerContext
) -> tuple[grpc.StatusCode, str]:
    mapped = status_for(err)
    if mapped is not None:
        return mapped
    if context.cancelled():  # the client cancelled; the handler saw a dead stream
        return grpc.StatusCode.CANCELLED, "the client cancelled the call"
    incident = uuid.uuid4().hex[:12]
    log_event(
        "internal_error", logging.ERROR, method=method, incident=incident,
        error=f"{type(err).__name__}: {err}"[:2000], traceback=traceback.format_exc(limit=20),
    )  # fmt: skip
    return grpc.StatusCode.INTERNAL, (
        f"internal server error (incident {incident}); the server log has the details"
    )
