"""A server interceptor that wraps each method's unary-unary handler once and caches it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc


class UnaryWrappingInterceptor(grpc.aio.ServerInterceptor):
    """Subclasses say which methods to wrap and how; a call then costs one dict lookup."""

    def __init__(self) -> None:
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def wraps(self, method: str) -> bool:
        return True

    def wrap(self, method: str, handler: Any) -> grpc.RpcMethodHandler:
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        if handler.unary_unary is not None and self.wraps(method):
            handler = self.wrap(method, handler)
        self._handlers[method] = handler
        return handler


def unary_handler(behavior: Any, like: Any) -> grpc.RpcMethodHandler:
    """A unary-unary handler running behavior with like's (de)serializers."""
    return grpc.unary_unary_rpc_method_handler(
        behavior,
        request_deserializer=like.request_deserializer,
        response_serializer=like.response_serializer,
    )
