"""Domain errors → gRPC status, once per server: the decorators every servicer method uses.

A server gives ``ErrorMapper`` a function naming the status of its own domain
errors (the store's StoreError, the agent's LogNotFound, ...); anything else
that escapes a handler is a bug: logged, and answered INTERNAL. Every status
message is cut to fit gRPC's trailers (mizzen.echo.bounded_status).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc

from mizzen.echo import bounded_status

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
S = TypeVar("S", bound=Callable[..., AsyncIterator[Any]])
Status = tuple[grpc.StatusCode, str] | tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]
"""(code, details) or (code, details, trailing metadata)."""
StatusFor = Callable[[Exception], "Status | None"]


class ErrorMapper:
    def __init__(self, status_for: StatusFor, *, log: Any, internal_prefix: str) -> None:
        self._status_for = status_for
        self._log = log
        self._prefix = internal_prefix

    async def abort(
        self, exc: Exception, context: grpc.aio.ServicerContext, method: str
    ) -> NoReturn:
        """End the call with exc's status; a bug (no status) → INTERNAL, logged."""
        status = self._status_for(exc)
        if status is not None:
            code, message, *trailers = status
            await context.abort(code, bounded_status(message), *trailers)
        if isinstance(exc, grpc.aio.AbortError | grpc.RpcError):
            raise exc
        self._log.exception("rpc_failed", method=method)
        await context.abort(
            grpc.StatusCode.INTERNAL, bounded_status(f"{self._prefix}: internal error: {exc}")
        )
        raise AssertionError("unreachable: abort raises")

    def unary(self, fn: F) -> F:
        """Wrap a unary servicer method."""
        abort = self.abort

        @functools.wraps(fn)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await fn(self, request, context)
            except Exception as exc:
                await abort(exc, context, fn.__name__)

        return wrapper  # type: ignore[return-value]

    def stream(self, fn: S) -> S:
        """Wrap a server-streaming servicer method written as an async generator."""
        abort = self.abort

        @functools.wraps(fn)
        async def wrapper(
            self: Any, request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            try:
                async for item in fn(self, request, context):
                    yield item
            except Exception as exc:
                await abort(exc, context, fn.__name__)

        return wrapper  # type: ignore[return-value]
