"""etcdserverpb.Lease: grant, revoke, keep-alive stream, time-to-live, list.

Expiry is decided by the leader from the deadlines every member keeps (see
StoreNode) and replicated as a ``lease_expire`` command. A keep-alive is itself
a replicated command, so every member learns of it in log order and a new
leader knows each lease's last renewal.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from protos import rpc_pb2, rpc_pb2_grpc

from .grpc_errors import abort_for, grpc_errors
from .node import MIN_LEASE_TTL, StoreNode
from .state_machine import KeepAliveResult


class LeaseService(rpc_pb2_grpc.LeaseServicer):
    def __init__(self, node: StoreNode) -> None:
        self.node = node

    @grpc_errors
    async def LeaseGrant(
        self, request: rpc_pb2.LeaseGrantRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseGrantResponse:
        lease_id = request.ID if request.ID else self.node.new_lease_id()
        ttl = max(request.TTL, MIN_LEASE_TTL)
        resp = await self.node.propose(("lease_grant", lease_id, ttl))
        return self.node.fill_header(resp)

    @grpc_errors
    async def LeaseRevoke(
        self, request: rpc_pb2.LeaseRevokeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseRevokeResponse:
        resp = await self.node.propose(("lease_revoke", request.ID))
        return self.node.fill_header(resp)

    async def LeaseKeepAlive(
        self,
        request_iterator: AsyncIterator[rpc_pb2.LeaseKeepAliveRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[rpc_pb2.LeaseKeepAliveResponse]:
        async for req in request_iterator:
            try:
                res: KeepAliveResult = await self.node.propose(("lease_keepalive", req.ID))
            except Exception as exc:
                await abort_for(exc, context, "LeaseKeepAlive")
            yield self.node.fill_header(rpc_pb2.LeaseKeepAliveResponse(ID=req.ID, TTL=res.ttl))

    @grpc_errors
    async def LeaseTimeToLive(
        self, request: rpc_pb2.LeaseTimeToLiveRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        await self.node.barrier()
        lease = self.node.read(lambda sm: sm.leases.get(request.ID))
        resp = rpc_pb2.LeaseTimeToLiveResponse(ID=request.ID, TTL=-1)
        if lease is not None:
            resp.grantedTTL = lease.ttl
            remaining = self.node.lease_remaining(request.ID)
            resp.TTL = lease.ttl if remaining < 0 else remaining
            if request.keys:
                resp.keys.extend(self.node.read(lambda sm: sm.lease_keys(request.ID)))
        return self.node.fill_header(resp)

    @grpc_errors
    async def LeaseLeases(
        self, request: rpc_pb2.LeaseLeasesRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseLeasesResponse:
        await self.node.barrier()
        ids = self.node.read(lambda sm: sorted(sm.leases))
        resp = rpc_pb2.LeaseLeasesResponse(leases=[rpc_pb2.LeaseStatus(ID=i) for i in ids])
        return self.node.fill_header(resp)
