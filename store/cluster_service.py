"""etcdserverpb.Cluster and etcdserverpb.Maintenance: membership and member status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import structlog

from protos import rpc_pb2, rpc_pb2_grpc

from . import snapshot
from .errors import Code, StoreError
from .grpc_errors import grpc_errors, grpc_stream_errors
from .membership import NAME_METADATA, parse_peer_url
from .node import StoreNode
from .state_machine import Member

# The etcd API level this store speaks (etcdctl and client libraries read it).
API_VERSION = "3.5.0"

log = structlog.get_logger(__name__)


NO_LEARNERS = (
    "mizzen: learners are not supported: pysyncobj, Mizzen's Raft, has no non-voting "
    "member in its replicated configuration (add a voting member instead)"
)


def _one_peer_addr(urls: object) -> str:
    """etcd allows several peer URLs; a Mizzen member has exactly one Raft address."""
    if len(urls) != 1:  # type: ignore[arg-type]
        raise StoreError(
            Code.INVALID_ARGUMENT, "mizzen: peerURLs: exactly one Raft address is needed"
        )
    return str(urls[0])  # type: ignore[index]


def _unimplemented(what: str) -> StoreError:
    return StoreError(Code.UNIMPLEMENTED, f"mizzen: {what} is not implemented yet")


class ClusterService(rpc_pb2_grpc.ClusterServicer):
    def __init__(self, node: StoreNode) -> None:
        self.node = node

    def members(self) -> list[rpc_pb2.Member]:
        return [_member_proto(m) for m in self.node.membership.members()]

    @grpc_errors
    async def MemberList(
        self, request: rpc_pb2.MemberListRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberListResponse:
        if request.linearizable:
            await self.node.barrier()
        return self.node.fill_header(rpc_pb2.MemberListResponse(members=self.members()))

    @grpc_errors
    async def MemberAdd(
        self, request: rpc_pb2.MemberAddRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberAddResponse:
        """Add a voting member. etcd's request has no name, and neither need Mizzen's:
        without one the member is listed unnamed (``unstarted``) until it starts and
        publishes its name, as in etcd. A name can also come in the gRPC metadata
        ``mizzen-member-name`` (the mizzen CLI) or the peer URL's user part,
        ``http://NAME@host:port``."""
        if request.isLearner:
            raise StoreError(Code.UNIMPLEMENTED, NO_LEARNERS)
        url_name, addr = parse_peer_url(_one_peer_addr(request.peerURLs))
        md = {k: v for k, v in (context.invocation_metadata() or ())}
        name = str(md.get(NAME_METADATA, "")) or url_name or None
        added, members = await self.node.membership.add(name, addr)
        log.info("member_added", name=name or "", id=f"{added.id:x}", peer=addr)
        return self.node.fill_header(
            rpc_pb2.MemberAddResponse(
                member=_member_proto(added), members=[_member_proto(m) for m in members]
            )
        )

    @grpc_errors
    async def MemberRemove(
        self, request: rpc_pb2.MemberRemoveRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberRemoveResponse:
        removed, members = await self.node.membership.remove(int(request.ID))
        log.info("member_removed", name=removed.name, peer=removed.peer_addr)
        return self.node.fill_header(
            rpc_pb2.MemberRemoveResponse(members=[_member_proto(m) for m in members])
        )

    @grpc_errors
    async def MemberUpdate(
        self, request: rpc_pb2.MemberUpdateRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberUpdateResponse:
        _, addr = parse_peer_url(_one_peer_addr(request.peerURLs))
        members = await self.node.membership.update(int(request.ID), addr)
        log.info("member_updated", id=f"{request.ID:x}", peer=addr)
        return self.node.fill_header(
            rpc_pb2.MemberUpdateResponse(members=[_member_proto(m) for m in members])
        )

    @grpc_errors
    async def MemberPromote(
        self, request: rpc_pb2.MemberPromoteRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberPromoteResponse:
        """Every Mizzen member votes (there are no learners), so this answers what
        etcd answers for a voting member, or for an unknown id."""
        if not any(m.id == request.ID for m in self.node.membership.members()):
            raise StoreError(Code.NOT_FOUND, "etcdserver: member not found")
        raise StoreError(Code.FAILED_PRECONDITION, "etcdserver: can only promote a learner member")


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
        resp.errors.extend(alarm_text(m, k) for m, k in self.node.read(lambda sm: sm.alarm_list()))
        return self.node.fill_header(resp)

    @grpc_errors
    async def Alarm(
        self, request: rpc_pb2.AlarmRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AlarmResponse:
        """etcd's answers: GET lists the raised alarms of the requested type (all for
        NONE; the memberID is ignored, as etcd ignores it); ACTIVATE and DEACTIVATE
        go through Raft and list the alarm they changed. Like etcd's, the answer
        has no header."""
        if request.action == rpc_pb2.AlarmRequest.GET:
            await self.node.barrier()  # etcd's GET goes through Raft too
            alarms = self.node.read(lambda sm: sm.alarm_list(int(request.alarm)))
            return rpc_pb2.AlarmResponse(
                alarms=[rpc_pb2.AlarmMember(memberID=m, alarm=k) for m, k in alarms]  # type: ignore[arg-type]
            )
        if request.action not in (
            rpc_pb2.AlarmRequest.ACTIVATE,
            rpc_pb2.AlarmRequest.DEACTIVATE,
        ):
            raise StoreError(
                Code.INVALID_ARGUMENT,
                f"mizzen: action: unknown alarm action {request.action} (GET, ACTIVATE or "
                "DEACTIVATE)",
            )
        resp = await self.node.propose(
            ("alarm", int(request.action), int(request.memberID), int(request.alarm))
        )
        log.warning(
            "alarm_raised" if request.action == rpc_pb2.AlarmRequest.ACTIVATE else "alarm_disarmed",
            alarm=rpc_pb2.AlarmType.Name(request.alarm)
            if request.alarm in rpc_pb2.AlarmType.values()
            else int(request.alarm),
            member=f"{request.memberID:x}",
        )
        return resp

    @grpc_errors
    async def Defragment(
        self, request: rpc_pb2.DefragmentRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DefragmentResponse:
        # nothing to defragment: the Raft log is compacted into snapshots automatically,
        # and the size Status reports drops with compaction. etcd's answer has no header.
        return rpc_pb2.DefragmentResponse()

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
        Only the copy (references to immutable records) holds the lock;
        encoding runs in a worker thread after.
        """
        await self.node.barrier()
        captured = self.node.read(snapshot.capture)
        data = await asyncio.to_thread(snapshot.encode_captured, captured)
        revision = captured.revision
        log.info("snapshot_sent", bytes=len(data), revision=revision)
        header = self.node.header(revision)
        for blob, remaining in snapshot.chunks(data):
            yield rpc_pb2.SnapshotResponse(
                header=header, remaining_bytes=remaining, blob=blob, version=API_VERSION
            )

    @grpc_errors
    async def MoveLeader(
        self, request: rpc_pb2.MoveLeaderRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MoveLeaderResponse:
        await self.node.membership.move_leader(int(request.targetID))
        log.info("leadership_moved", target=f"{request.targetID:x}")
        return self.node.fill_header(rpc_pb2.MoveLeaderResponse())


def alarm_text(member: int, kind: int) -> str:
    """An alarm as etcd's Status lists it in ``errors`` (Go's compact text format)."""
    out = f"memberID:{member} " if member else ""
    if kind:
        name = rpc_pb2.AlarmType.Name(kind) if kind in rpc_pb2.AlarmType.values() else str(kind)
        out += f"alarm:{name} "
    return out


def _member_proto(m: Member) -> rpc_pb2.Member:
    return rpc_pb2.Member(
        ID=m.id, name=m.name, peerURLs=[f"http://{m.peer_addr}"], clientURLs=list(m.client_urls)
    )
