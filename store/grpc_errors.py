"""The one place where StoreError becomes a gRPC status."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import structlog

from .errors import StoreError

log = structlog.get_logger("store.api")

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
S = TypeVar("S", bound=Callable[..., AsyncIterator[Any]])


def grpc_errors(fn: F) -> F:
    """Wrap a unary servicer method: StoreError -> status; anything else -> INTERNAL, logged."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(self, request, context)
        except StoreError as err:
            await context.abort(err.code.grpc, err.message)
        except (grpc.aio.AbortError, grpc.RpcError):
            raise
        except Exception as exc:
            log.exception("rpc_failed", method=fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"mizzen: internal error: {exc}")

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
        except StoreError as err:
            await context.abort(err.code.grpc, err.message)
        except (grpc.aio.AbortError, grpc.RpcError):
            raise
        except Exception as exc:
            log.exception("rpc_failed", method=fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"mizzen: internal error: {exc}")

    return wrapper  # type: ignore[return-value]
