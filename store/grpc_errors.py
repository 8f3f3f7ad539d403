"""The one place where StoreError becomes a gRPC status."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
import structlog

from .errors import StoreError

log = structlog.get_logger("store.api")

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
S = TypeVar("S", bound=Callable[..., AsyncIterator[Any]])


async def abort_for(exc: Exception, context: grpc.aio.ServicerContext, method: str) -> NoReturn:
    """End the call with the status for exc: StoreError -> its code; a bug -> INTERNAL, logged."""
    if isinstance(exc, StoreError):
        await context.abort(exc.code.grpc, exc.message)
    if isinstance(exc, grpc.aio.AbortError | grpc.RpcError):
        raise exc
    log.exception("rpc_failed", method=method)
    await context.abort(grpc.StatusCode.INTERNAL, f"mizzen: internal error: {exc}")
    raise AssertionError("unreachable: abort raises")


def grpc_errors(fn: F) -> F:
    """Wrap a unary servicer method: StoreError -> status; anything else -> INTERNAL, logged."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(self, request, context)
        except Exception as exc:
            await abort_for(exc, context, fn.__name__)

    return wrapper  # type: ignore[return-value]


def grpc_stream_errors(fn: S) -> S:
    """Like grpc_errors, for a server-streaming method written as an async generator."""

    @functools.wraps(fn)
    async def wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        try:
            async for item in fn(self, request, context):
                yield item
        except Exception as exc:
            await abort_for(exc, context, fn.__name__)

    return wrapper  # type: ignore[return-value]
