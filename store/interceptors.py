"""A server interceptor that wraps each method's unary-unary handler once and caches it."""

from __future__ import annotations

from typing import Any

import grpc

from mizzen.grpc_intercept import CachingInterceptor


class UnaryWrappingInterceptor(CachingInterceptor):
    """Subclasses say which unary-unary methods to wrap and how."""

    def wraps(self, method: str) -> bool:
        return True

    def wrap(self, method: str, handler: Any) -> grpc.RpcMethodHandler:
        raise NotImplementedError

    def rewrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.unary_unary is not None and self.wraps(method):
            return self.wrap(method, handler)
        return handler


def unary_handler(behavior: Any, like: Any) -> grpc.RpcMethodHandler:
    """A unary-unary handler running behavior with like's (de)serializers."""
    return grpc.unary_unary_rpc_method_handler(
        behavior,
        request_deserializer=like.request_deserializer,
        response_serializer=like.response_serializer,
    )
