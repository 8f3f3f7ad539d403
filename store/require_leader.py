"""Fail fast without a leader, as etcd does for requests carrying ``hasleader=true``.

etcd's clients (and ours: ``mizzen.client`` sends it on every call) set the
gRPC metadata ``hasleader: true``; a member that knows no leader then answers
UNAVAILABLE "etcdserver: no leader" at once instead of queueing the request.
That answer is definite: nothing was proposed, so a client can retry
elsewhere without the write becoming ambiguous, and a partitioned minority
refuses work instead of holding it until the partition heals.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

NO_LEADER = "etcdserver: no leader"
_WANTS_LEADER = ("hasleader", "true")


class RequireLeaderInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every unary-unary handler once; each call checks its metadata."""

    def __init__(self, has_leader: Callable[[], bool]) -> None:
        self._has_leader = has_leader
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

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
        if handler is not None and handler.unary_unary is not None and _guarded(method):
            handler = self._guard(handler)
        if handler is not None:
            self._handlers[method] = handler
        return handler

    def _guard(self, handler: Any) -> grpc.RpcMethodHandler:
        behavior = handler.unary_unary
        has_leader = self._has_leader

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if not has_leader() and _WANTS_LEADER in (context.invocation_metadata() or ()):
                await context.abort(grpc.StatusCode.UNAVAILABLE, NO_LEADER)
            return await behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _guarded(method: str) -> bool:
    """Health, reflection and Maintenance (Status must answer "no leader" itself) pass."""
    service = method.lstrip("/").partition("/")[0]
    if service == "etcdserverpb.Maintenance":
        return False
    return service.startswith(("etcdserverpb.", "mizzen."))
