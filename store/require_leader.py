"""Fail fast without a leader, as etcd does for requests carrying ``hasleader=true``.

etcd's clients (and ours: ``mizzen.client`` sends it on every call) set the
gRPC metadata ``hasleader: true``; a member that knows no leader then answers
UNAVAILABLE "etcdserver: no leader" at once instead of queueing the request.
That answer is definite: nothing was proposed, so a client can retry
elsewhere without the write becoming ambiguous, and a partitioned minority
refuses work instead of holding it until the partition heals.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from .interceptors import UnaryWrappingInterceptor, unary_handler

NO_LEADER = "etcdserver: no leader"
_WANTS_LEADER = ("hasleader", "true")


class RequireLeaderInterceptor(UnaryWrappingInterceptor):
    """Wraps every unary-unary handler once; each call checks its metadata."""

    def __init__(self, has_leader: Callable[[], bool]) -> None:
        super().__init__()
        self._has_leader = has_leader

    def wraps(self, method: str) -> bool:
        return _guarded(method)

    def wrap(self, method: str, handler: Any) -> grpc.RpcMethodHandler:
        behavior = handler.unary_unary
        has_leader = self._has_leader

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if not has_leader() and _WANTS_LEADER in (context.invocation_metadata() or ()):
                await context.abort(grpc.StatusCode.UNAVAILABLE, NO_LEADER)
            return await behavior(request, context)

        return unary_handler(guarded, handler)


def _guarded(method: str) -> bool:
    """The etcd services (KV, Lease, Cluster, Auth, Lock, Election, ...) and Mizzen's are
    guarded; health, reflection and Maintenance (Status must answer "no leader"
    itself) pass."""
    service = method.lstrip("/").partition("/")[0]
    if service == "etcdserverpb.Maintenance":
        return False
    return service.startswith(("etcdserverpb.", "mizzen.", "v3lockpb.", "v3electionpb."))
