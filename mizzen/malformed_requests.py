"""Requests whose bytes are not a valid message get INVALID_ARGUMENT, not gRPC's UNKNOWN.

gRPC Python deserializes a request before any handler runs and answers a
parse failure with UNKNOWN "Unexpected <class 'DecodeError'>" (etcd says
INTERNAL "grpc: error unmarshalling request"). Both hide that the caller sent
bad input. This interceptor, the outermost on store and agent servers, swaps in a
deserializer that returns a ``Malformed`` marker instead of raising, and
answers the marker with INVALID_ARGUMENT naming the method and the parse
error — for unary requests and for every message of a client stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from mizzen.echo import bounded_status
from mizzen.grpc_intercept import CachingInterceptor


class Malformed:
    """What the tolerant deserializer returns for bytes that do not parse."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as err:  # DecodeError, or anything a parser raises on garbage
            return Malformed(str(err) or type(err).__name__)

    return parse


def _message(method: str, bad: Malformed) -> str:
    name = method.lstrip("/").replace("/", ".")
    return bounded_status(f"mizzen: malformed {name} request: {bad.error}")


class MalformedRequestInterceptor(CachingInterceptor):
    def rewrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.request_deserializer is None:
            return handler
        return _wrap(method, handler)


def _wrap(method: str, handler: Any) -> grpc.RpcMethodHandler:
    kwargs = {
        "request_deserializer": tolerant(handler.request_deserializer),
        "response_serializer": handler.response_serializer,
    }

    async def refuse(bad: Malformed, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(method, bad))

    if handler.unary_unary is not None:
        unary = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, Malformed):
                await refuse(request, context)
            return await unary(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **kwargs)
    if handler.unary_stream is not None:
        server_stream = handler.unary_stream

        async def unary_stream(
            request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            if isinstance(request, Malformed):
                await refuse(request, context)
            async for item in server_stream(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(unary_stream, **kwargs)

    async def checked(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, Malformed):
                await refuse(request, context)
            yield request

    if handler.stream_unary is not None:
        client_stream = handler.stream_unary

        async def stream_unary(requests: AsyncIterator[Any], context: Any) -> Any:
            return await client_stream(checked(requests, context), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **kwargs)
    bidi = handler.stream_stream

    async def stream_stream(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for item in bidi(checked(requests, context), context):
            yield item

    return grpc.stream_stream_rpc_method_handler(stream_stream, **kwargs)
