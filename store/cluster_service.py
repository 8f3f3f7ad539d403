"""etcdserverpb.Cluster and etcdserverpb.Maintenance: membership and member status."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import structlog

from protos import rpc_pb2, rpc_pb2_grpc

from . import snapshot
from .errors import Code, StoreError
from .grpc_errors import grpc_errors, grpc_stream_errors
from .node import StoreNode, member_id

# The etcd API level this store speaks (etcdctl and client libraries read it).
API_VERSION = "3.5.0"

log = structlog.get_logger(__name__)


def _unimplemented(what: str) -> StoreError:
    return StoreError(Code.UNIMPLEMENTED, f"mizzen: {what} is not implemented yet")


class ClusterService(rpc_pb2_grpc.ClusterServicer):
    def __init__(self, node: StoreNode) -> None:
        self.node = node

    def members(self) -> list[rpc_pb2.Member]:
        client_urls = self.node.read(lambda sm: dict(sm.members))
        out = []
        for name, raft_addr in sorted(self.node.cfg.initial_cluster.items()):
            out.append(
                rpc_pb2.Member(
                    ID=member_id(name),
                    name=name,
                    peerURLs=[f"http://{raft_addr}"],
                    clientURLs=client_urls.get(name, []),
                )
            )
        return out

    @grpc_errors
    async def MemberList(
        self, request: rpc_pb2.MemberListRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberListResponse:
        if request.linearizable:
            await self.node.barrier()
        return self.node.fill_header(rpc_pb2.MemberListResponse(members=self.members()))

    @grpc_errors
    async def MemberAdd(self, request: object, context: grpc.aio.ServicerContext) -> None:
        raise _unimplemented("MemberAdd")

    @grpc_errors
    async def MemberRemove(self, request: object, context: grpc.aio.ServicerContext) -> None:
        raise _unimplemented("MemberRemove")

    @grpc_errors
    async def MemberUpdate(self, request: object, context: grpc.aio.ServicerContext) -> None:
        raise _unimplemented("MemberUpdate")

    @grpc_errors
    async def MemberPromote(self, request: object, context: grpc.aio.ServicerContext) -> None:
        raise _unimplemented("MemberPromote (Mizzen has no learners)")


class MaintenanceService(rpc_pb2_grpc.MaintenanceServicer):
    def __init__(self, node: StoreNode) -> None:
        self.node = node

    @grpc_errors
    async def Status(
        self, request: rpc_pb2.StatusRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.StatusResponse:
        st = self.node.raft_status()
        leader = self.node.leader_id()
        size = self.node.data_size()
        resp = rpc_pb2.StatusResponse(
            version=API_VERSION,
            dbSize=size,
            dbSizeInUse=size,
            leader=leader,
            raftIndex=int(st.get("commit_idx", 0)),
            raftTerm=int(st.get("raft_term", 0)),
            raftAppliedIndex=int(st.get("last_applied", 0)),
        )
        if not leader:
            resp.errors.append("etcdserver: no leader")
        return self.node.fill_header(resp)

    @grpc_errors
    async def Alarm(
        self, request: rpc_pb2.AlarmRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AlarmResponse:
        if request.action != rpc_pb2.AlarmRequest.GET:
            raise _unimplemented("raising or clearing alarms")
        return self.node.fill_header(rpc_pb2.AlarmResponse())  # Mizzen raises no alarms

    @grpc_errors
    async def Defragment(
        self, request: rpc_pb2.DefragmentRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DefragmentResponse:
        # nothing to defragment: the Raft log is compacted into snapshots automatically
        return self.node.fill_header(rpc_pb2.DefragmentResponse())

    @grpc_errors
    async def Hash(
        self, request: rpc_pb2.HashRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.HashResponse:
        h, rev = self.node.read(lambda sm: (sm.hash(), sm.revision))
        return self.node.fill_header(rpc_pb2.HashResponse(hash=h, header={"revision": rev}))

    @grpc_errors
    async def HashKV(
        self, request: rpc_pb2.HashKVRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.HashKVResponse:
        h, rev, compacted = self.node.read(lambda sm: (sm.hash(), sm.revision, sm.compacted))
        if request.revision and request.revision != rev:
            raise _unimplemented("HashKV at an older revision")
        return self.node.fill_header(
            rpc_pb2.HashKVResponse(
                hash=h, compact_revision=compacted, hash_revision=rev, header={"revision": rev}
            )
        )

    @grpc_stream_errors
    async def Snapshot(
        self, request: rpc_pb2.SnapshotRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpc_pb2.SnapshotResponse]:
        """Stream a linearizable copy of the whole state (see store/snapshot.py for the format).

        The barrier makes the copy include every write acknowledged before the
        call; the copy is taken under the state lock, so it is one revision.
        """
        await self.node.barrier()
        data, revision = self.node.read(lambda sm: (snapshot.encode(sm), sm.revision))
        log.info("snapshot_sent", bytes=len(data), revision=revision)
        header = self.node.header(revision)
        for blob, remaining in snapshot.chunks(data):
            yield rpc_pb2.SnapshotResponse(
                header=header, remaining_bytes=remaining, blob=blob, version=API_VERSION
            )

    @grpc_errors
    async def MoveLeader(self, request: object, context: grpc.aio.ServicerContext) -> None:
        raise _unimplemented("MoveLeader")
