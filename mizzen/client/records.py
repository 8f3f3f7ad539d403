"""Frozen values the client returns, converted once from the wire messages."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias

from protos import kv_pb2, rpc_pb2


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key's record at a revision (etcd's mvccpb.KeyValue)."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0

    @classmethod
    def from_proto(cls, kv: kv_pb2.KeyValue) -> KeyValue:
        return cls(
            key=bytes(kv.key),
            value=bytes(kv.value),
            create_revision=int(kv.create_revision),
            mod_revision=int(kv.mod_revision),
            version=int(kv.version),
            lease=int(kv.lease),
        )


def optional_kv(msg: rpc_pb2.PutResponse) -> KeyValue | None:
    """PutResponse.prev_kv as a record, None when the server sent none."""
    return KeyValue.from_proto(msg.prev_kv) if msg.HasField("prev_kv") else None


class EventType(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A change to one key. For DELETE, ``kv`` holds the key and the delete's revision."""

    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None = None

    @property
    def revision(self) -> int:
        return self.kv.mod_revision

    @classmethod
    def from_proto(cls, ev: kv_pb2.Event) -> WatchEvent:
        return cls(
            type=EventType.DELETE if ev.type == kv_pb2.Event.DELETE else EventType.PUT,
            kv=KeyValue.from_proto(ev.kv),
            prev_kv=KeyValue.from_proto(ev.prev_kv) if ev.HasField("prev_kv") else None,
        )


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """Events delivered together, in revision order.

    ``revision`` is the response header's revision. An empty batch is a progress
    notification: every event up to ``revision`` has been delivered.
    """

    events: tuple[WatchEvent, ...]
    revision: int

    @property
    def is_progress(self) -> bool:
        return not self.events


@dataclass(frozen=True, slots=True)
class RangeResult:
    kvs: tuple[KeyValue, ...]
    revision: int
    more: bool
    count: int

    @classmethod
    def from_proto(cls, r: rpc_pb2.RangeResponse) -> RangeResult:
        return cls(
            kvs=tuple(KeyValue.from_proto(kv) for kv in r.kvs),
            revision=int(r.header.revision),
            more=bool(r.more),
            count=int(r.count),
        )


@dataclass(frozen=True, slots=True)
class PutResult:
    revision: int
    prev_kv: KeyValue | None

    @classmethod
    def from_proto(cls, r: rpc_pb2.PutResponse) -> PutResult:
        return cls(revision=int(r.header.revision), prev_kv=optional_kv(r))


@dataclass(frozen=True, slots=True)
class DeleteResult:
    deleted: int
    prev_kvs: tuple[KeyValue, ...]
    revision: int

    @classmethod
    def from_proto(cls, r: rpc_pb2.DeleteRangeResponse) -> DeleteResult:
        return cls(
            deleted=int(r.deleted),
            prev_kvs=tuple(KeyValue.from_proto(kv) for kv in r.prev_kvs),
            revision=int(r.header.revision),
        )


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    responses: tuple[OpResult, ...]
    revision: int

    @classmethod
    def from_proto(cls, r: rpc_pb2.TxnResponse) -> TxnResult:
        return cls(
            succeeded=bool(r.succeeded),
            responses=tuple(op_result(op) for op in r.responses),
            revision=int(r.header.revision),
        )


OpResult: TypeAlias = RangeResult | PutResult | DeleteResult | TxnResult
"""The result of one op inside a txn, in the order the ops were given."""


def op_result(op: rpc_pb2.ResponseOp) -> OpResult:
    which = op.WhichOneof("response")
    if which == "response_range":
        return RangeResult.from_proto(op.response_range)
    if which == "response_put":
        return PutResult.from_proto(op.response_put)
    if which == "response_delete_range":
        return DeleteResult.from_proto(op.response_delete_range)
    if which == "response_txn":
        return TxnResult.from_proto(op.response_txn)
    raise ValueError(f"empty ResponseOp in txn response: {op!r}")


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """LeaseTimeToLive: ``ttl`` is the remaining seconds, -1 when the lease does not exist."""

    id: int
    ttl: int
    granted_ttl: int
    keys: tuple[bytes, ...]

    @property
    def exists(self) -> bool:
        return self.ttl >= 0


@dataclass(frozen=True, slots=True)
class Member:
    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool

    @property
    def peer_address(self) -> str:
        """The Raft address host:port (the first peer URL without its scheme)."""
        url = self.peer_urls[0] if self.peer_urls else ""
        return url.split("://", 1)[-1].rstrip("/")

    @classmethod
    def from_proto(cls, m: rpc_pb2.Member) -> Member:
        return cls(
            id=int(m.ID),
            name=str(m.name),
            peer_urls=tuple(m.peerURLs),
            client_urls=tuple(m.clientURLs),
            is_learner=bool(m.isLearner),
        )


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """Maintenance.Status of one endpoint."""

    endpoint: str
    member_id: int
    leader: int
    revision: int
    raft_term: int
    raft_index: int
    raft_applied_index: int
    version: str
    db_size: int
    is_learner: bool
    errors: tuple[str, ...]

    @property
    def is_leader(self) -> bool:
        return self.leader != 0 and self.leader == self.member_id

    @classmethod
    def from_proto(cls, endpoint: str, s: rpc_pb2.StatusResponse) -> MemberStatus:
        return cls(
            endpoint=endpoint,
            member_id=int(s.header.member_id),
            leader=int(s.leader),
            revision=int(s.header.revision),
            raft_term=int(s.raftTerm),
            raft_index=int(s.raftIndex),
            raft_applied_index=int(s.raftAppliedIndex),
            version=str(s.version),
            db_size=int(s.dbSize),
            is_learner=bool(s.isLearner),
            errors=tuple(s.errors),
        )
