"""The store's replicated state: a revisioned key-value map, leases and event history.

A pure, deterministic object. Every change arrives as a command (plain tuples of
builtins and serialized protobuf requests, so the Raft log never pickles our own
classes) and is applied in log order by ``apply_batch``. Apply never reads the
clock, the network or the disk, and never raises: a bad command yields a
``StoreError`` value, because an exception inside a replicated apply would wedge
every replica on the same log entry forever.

Revisions follow etcd: the store starts at revision 1; every Put, every
DeleteRange that deletes something and every Txn that writes bumps it by one
(all writes of one Txn share a revision); reads, compactions and lease grants
do not.

One file because everything here is applied by ``apply_batch`` in one
deterministic step on every replica, and pickled Raft snapshots name its
classes (``store.state_machine.Record`` ...): moving them would need aliases
both ways, or a member of the previous version could not load a snapshot a
newer leader sends. What holds no pickled state lives apart: the request
checks and quota costs (``store.requests``), etcd's users and roles
(``store.etcd_auth``), lease deadlines (``store.lease_clock``).
"""

from __future__ import annotations

import bisect
import copy
import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from protos import kv_pb2, rpc_pb2

from . import etcd_auth
from .errors import Code, StoreError
from .keyspace import in_range, range_bounds
from .requests import (
    check_key,
    check_put,
    check_txn,
    txn_cost,
    txn_is_read_only,
)

DEFAULT_HISTORY_BYTES = 256 * 1024 * 1024
MAX_LEASE_TTL = 9_000_000_000
DEDUP_BATCHES_PER_PROPOSER = 256
DEDUP_PROPOSERS = 1024
NO_SPACE = "etcdserver: mvcc: database space exceeded"
CORRUPT = "etcdserver: corrupt cluster"


@dataclass(frozen=True, slots=True)
class Record:
    """One version of one key, shared by the live map and the event history."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    def to_proto(self, keys_only: bool = False) -> kv_pb2.KeyValue:
        return kv_pb2.KeyValue(
            key=self.key,
            value=b"" if keys_only else self.value,
            create_revision=self.create_revision,
            mod_revision=self.mod_revision,
            version=self.version,
            lease=self.lease,
        )


@dataclass(frozen=True, slots=True)
class Event:
    """A change at ``revision``: ``record`` is the new version (None for a delete)."""

    revision: int
    key: bytes
    record: Record | None
    prev: Record | None

    @property
    def is_delete(self) -> bool:
        return self.record is None

    def to_proto(self, with_prev: bool) -> kv_pb2.Event:
        if self.record is not None:
            ev = kv_pb2.Event(type=kv_pb2.Event.PUT, kv=self.record.to_proto())
        else:
            kv = kv_pb2.KeyValue(key=self.key, mod_revision=self.revision)
            ev = kv_pb2.Event(type=kv_pb2.Event.DELETE, kv=kv)
        if with_prev and self.prev is not None:
            ev.prev_kv.CopyFrom(self.prev.to_proto())
        return ev


@dataclass(frozen=True, slots=True)
class Member:
    """One member of the store cluster as the replicated state records it.

    ``id`` is computed by the proposer (``store.node.member_id(name)``) so apply
    stays pure; ``peer_addr`` is the Raft address (host:port, no scheme).
    """

    name: str
    id: int
    peer_addr: str
    client_urls: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """Its key in ``StateMachine.members``: the name, or ``@`` + the Raft address for a
        member added without a name (etcdctl's ``member add``) that has not yet started
        and published it (``@`` is never part of a name)."""
        return self.name or "@" + self.peer_addr


@dataclass(slots=True)
class Lease:
    id: int
    ttl: int
    keys: set[bytes] = field(default_factory=set)


@dataclass(slots=True)
class Session:
    """What the store remembers of one proposer: its floor and recent batch results."""

    floor: int = 0
    results: dict[int, list[Any]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class KeepAliveResult:
    lease_id: int
    ttl: int  # 0 when the lease does not exist (etcd answers TTL=0 then)


class StateMachine:
    """Applies commands; answers reads. Not thread-safe: the Raft glue holds a lock."""

    # etcd's auth store (store/etcd_auth.py), set by etcd_auth.init_fields
    auth_enabled: bool
    auth_revision: int
    auth_secret: bytes
    auth_users: dict[str, bytes]
    auth_roles: dict[str, bytes]

    def __init__(
        self, history_limit: int = 100_000, history_bytes_limit: int = DEFAULT_HISTORY_BYTES
    ) -> None:
        self.revision = 1
        self.compacted = -1  # history below this revision is gone; -1 like etcd's fresh store
        self.history_limit = history_limit
        self.history_bytes_limit = history_bytes_limit  # 0: no limit
        self.history_bytes = 0  # event_bytes of every event in _history
        self._kv: dict[bytes, Record] = {}
        self._keys: list[bytes] = []  # sorted; mirrors _kv for range scans
        self._history: list[Event] = []
        self.leases: dict[int, Lease] = {}
        self.members: dict[str, Member] = {}  # Member.key -> member; empty until seeded
        self.cluster_id = 0  # set by the seed; 0 before
        # raised alarms (member id, etcdserverpb.AlarmType), like etcd's alarm store
        self.alarms: set[tuple[int, int]] = set()
        self.live_bytes = 0  # key + value bytes of the live records
        self.superseded_bytes = 0  # key + previous value bytes of the history's events
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._pending: list[Event] = []  # events produced by the command being applied
        etcd_auth.init_fields(self)  # etcd's users, roles and auth switch (store/etcd_auth.py)

    # ------------------------------------------------------------------ apply

    def apply_batch(
        self, proposer: str, seq: int, floor: int, commands: list[tuple[Any, ...]]
    ) -> list[Any]:
        """Apply a batch proposed by ``proposer``; one result per command.

        This is a Raft client session: ``seq`` numbers the proposer's batches and
        ``floor`` is the lowest seq it still waits for. A batch seen before (the
        proposer retried after an ambiguous outcome) is not applied again: its
        recorded results are returned. A batch older than the floor was given up
        by its proposer and is refused, so a late duplicate can never apply twice.
        """
        session = self._sessions.get(proposer)
        if session is None:
            session = self._sessions[proposer] = Session()
            while len(self._sessions) > DEDUP_PROPOSERS:
                self._sessions.popitem(last=False)
        self._sessions.move_to_end(proposer)
        if seq < session.floor:
            stale = StoreError(Code.UNAVAILABLE, "mizzen: request abandoned by its proposer")
            return [stale] * len(commands)
        if seq in session.results:
            return session.results[seq]
        if floor > session.floor:
            session.floor = floor
            for old in [s for s in session.results if s < floor]:
                del session.results[old]
        results = [self.apply(cmd) for cmd in commands]
        session.results[seq] = results
        while len(session.results) > DEDUP_BATCHES_PER_PROPOSER:
            del session.results[min(session.results)]
        return results

    def apply(self, cmd: tuple[Any, ...]) -> Any:
        """Apply one command; never raises."""
        try:
            op = cmd[0]
            if self.alarms and op in _CAPPED_COMMANDS:
                refused = self._refused_by_alarm(cmd)
                if refused is not None:
                    return refused
            if op == "put":
                return self._write(lambda: self._put(_parse(rpc_pb2.PutRequest, cmd[1])))
            if op == "delete":
                return self._write(lambda: self._delete(_parse(rpc_pb2.DeleteRangeRequest, cmd[1])))
            if op == "txn":
                return self._write(lambda: self._txn(_parse(rpc_pb2.TxnRequest, cmd[1])))
            if op == "compact":
                return self._compact(int(cmd[1]))
            if op == "lease_grant":
                return self._lease_grant(int(cmd[1]), int(cmd[2]))
            if op in ("lease_revoke", "lease_expire"):
                return self._write(lambda: self._lease_revoke(int(cmd[1])))
            if op == "lease_keepalive":
                lease = self.leases.get(int(cmd[1]))
                return KeepAliveResult(int(cmd[1]), lease.ttl if lease else 0)
            if isinstance(op, str) and op in _MEMBER_COMMANDS:
                return self._member_command(cmd)
            if op == "barrier":
                return self.revision
            if op == "alarm":
                return self._alarm(int(cmd[1]), int(cmd[2]), int(cmd[3]))
            if op == "auth":
                return self._auth(cmd)
            return StoreError(Code.INVALID_ARGUMENT, f"mizzen: unknown command {op!r}")
        except StoreError as err:
            self._rollback()
            return err
        except Exception as exc:  # a bug must not wedge the cluster
            self._rollback()
            return StoreError(Code.INTERNAL, f"mizzen: apply failed: {type(exc).__name__}: {exc}")

    def _write(self, fn: Any) -> Any:
        """Run a mutating operation as one revision: commit its events, or undo them all."""
        self._pending = []
        self._undo: list[tuple[bytes, Record | None]] = []
        self._lease_undo: list[tuple[int, Lease | None]] = []
        result = fn()  # a StoreError raised here is rolled back by apply()
        if self._pending:
            self.revision += 1
            self._history.extend(self._pending)
            self.history_bytes += sum(event_bytes(e) for e in self._pending)
            self.superseded_bytes += sum(superseded_bytes(e) for e in self._pending)
            self._pending = []
            self._trim_history()
        self._undo = []
        self._lease_undo = []
        if isinstance(result, rpc_pb2.TxnResponse):
            _stamp_txn(result, self.revision)
        elif isinstance(result, rpc_pb2.PutResponse | rpc_pb2.DeleteRangeResponse):
            result.header.revision = self.revision
        return result

    def _rollback(self) -> None:
        for lid, lease in reversed(getattr(self, "_lease_undo", [])):
            if lease is None:
                self.leases.pop(lid, None)
            else:
                self.leases[lid] = lease
        for key, rec in reversed(getattr(self, "_undo", [])):
            self._set(key, rec)
        self._pending = []
        self._undo = []
        self._lease_undo = []

    # ------------------------------------------------------------ primitives

    def _set(self, key: bytes, rec: Record | None) -> None:
        """Replace the live record of key (None deletes), keeping _keys sorted."""
        old = self._kv.get(key)
        self.live_bytes += (len(key) + len(rec.value) if rec else 0) - (
            len(key) + len(old.value) if old else 0
        )
        if rec is None:
            if old is not None:
                del self._kv[key]
                i = bisect.bisect_left(self._keys, key)
                del self._keys[i]
        else:
            if old is None:
                bisect.insort(self._keys, key)
            self._kv[key] = rec
        old_lease = old.lease if old else 0
        new_lease = rec.lease if rec else 0
        if old_lease != new_lease:
            if old_lease and old_lease in self.leases:
                self.leases[old_lease].keys.discard(key)
            if new_lease and new_lease in self.leases:
                self.leases[new_lease].keys.add(key)

    def _record_write(self, key: bytes, rec: Record | None) -> None:
        prev = self._kv.get(key)
        self._undo.append((key, prev))
        self._set(key, rec)
        self._pending.append(Event(self.revision + 1, key, rec, prev))

    def _put(self, req: rpc_pb2.PutRequest) -> rpc_pb2.PutResponse:
        check_put(req)
        prev = self._kv.get(req.key)
        if (req.ignore_value or req.ignore_lease) and prev is None:
            raise StoreError(Code.INVALID_ARGUMENT, "etcdserver: key not found")
        lease = prev.lease if (req.ignore_lease and prev) else req.lease
        if lease and lease not in self.leases:
            raise StoreError(Code.NOT_FOUND, "etcdserver: requested lease not found")
        value = prev.value if (req.ignore_value and prev) else req.value
        rev = self.revision + 1
        rec = Record(
            key=req.key,
            value=value,
            create_revision=prev.create_revision if prev else rev,
            mod_revision=rev,
            version=prev.version + 1 if prev else 1,
            lease=lease,
        )
        self._record_write(req.key, rec)
        resp = rpc_pb2.PutResponse()
        if req.prev_kv and prev is not None:
            resp.prev_kv.CopyFrom(prev.to_proto())
        return resp

    def _delete(self, req: rpc_pb2.DeleteRangeRequest) -> rpc_pb2.DeleteRangeResponse:
        check_key(req.key)
        resp = rpc_pb2.DeleteRangeResponse()
        for key in self._scan(req.key, req.range_end):
            prev = self._kv[key]
            if req.prev_kv:
                resp.prev_kvs.append(prev.to_proto())
            self._record_write(key, None)
            resp.deleted += 1
        return resp

    def _txn(self, req: rpc_pb2.TxnRequest, depth: int = 0) -> rpc_pb2.TxnResponse:
        if depth == 0:
            check_txn(req)
        ok = all(self._compare(c) for c in req.compare)
        resp = rpc_pb2.TxnResponse(succeeded=ok)
        for op in req.success if ok else req.failure:
            which = op.WhichOneof("request")
            r = resp.responses.add()
            if which == "request_range":
                r.response_range.CopyFrom(self._range_live(op.request_range))
            elif which == "request_put":
                r.response_put.CopyFrom(self._put(op.request_put))
            elif which == "request_delete_range":
                r.response_delete_range.CopyFrom(self._delete(op.request_delete_range))
            elif which == "request_txn":
                r.response_txn.CopyFrom(self._txn(op.request_txn, depth + 1))
        return resp

    def _compare(self, c: rpc_pb2.Compare) -> bool:
        keys = self._scan(c.key, c.range_end) if c.range_end else [c.key]
        if c.range_end and not keys:
            return self._compare_one(c, None)  # etcd: as a missing key (VERSION == 0 holds)
        return all(self._compare_one(c, self._kv.get(k)) for k in keys)

    @staticmethod
    def _compare_one(c: rpc_pb2.Compare, rec: Record | None) -> bool:
        t = c.target
        have: Any
        want: Any
        if t == rpc_pb2.Compare.VALUE:
            if rec is None:
                return False  # etcd: a value compare on a missing key fails
            have, want = rec.value, c.value
        elif t == rpc_pb2.Compare.VERSION:
            have, want = (rec.version if rec else 0), c.version
        elif t == rpc_pb2.Compare.CREATE:
            have, want = (rec.create_revision if rec else 0), c.create_revision
        elif t == rpc_pb2.Compare.MOD:
            have, want = (rec.mod_revision if rec else 0), c.mod_revision
        elif t == rpc_pb2.Compare.LEASE:
            have, want = (rec.lease if rec else 0), c.lease
        else:
            return False
        r = c.result
        if r == rpc_pb2.Compare.EQUAL:
            return bool(have == want)
        if r == rpc_pb2.Compare.NOT_EQUAL:
            return bool(have != want)
        if r == rpc_pb2.Compare.GREATER:
            return bool(have > want)
        if r == rpc_pb2.Compare.LESS:
            return bool(have < want)
        return False

    def _compact(self, rev: int) -> Any:
        if rev <= self.compacted:
            return StoreError(
                Code.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted"
            )
        if rev > self.revision:
            return StoreError(
                Code.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision"
            )
        self._drop_history_through(rev)
        resp = rpc_pb2.CompactionResponse()
        resp.header.revision = self.revision
        return resp

    def _drop_history_through(self, rev: int) -> None:
        i = bisect.bisect_right(self._history, rev, key=lambda e: e.revision)
        self.history_bytes -= sum(event_bytes(e) for e in self._history[:i])
        self.superseded_bytes -= sum(superseded_bytes(e) for e in self._history[:i])
        del self._history[:i]
        self.compacted = max(self.compacted, rev)

    def _trim_history(self) -> None:
        """Keep at most ``history_limit`` events and ``history_bytes_limit`` bytes of them.

        Whole revisions only, so a revision is either fully kept or gone; the
        bytes rule never drops the newest revision (one larger than the limit
        goes with the next write). A pure function of the state, so every
        member given the same limits trims the same way.
        """
        excess = len(self._history) - self.history_limit
        if excess > 0:
            self._drop_history_through(self._history[excess - 1].revision)
        limit = self.history_bytes_limit
        if limit <= 0 or self.history_bytes <= limit:
            return
        over, dropped, rev = self.history_bytes - limit, 0, self.compacted
        for ev in self._history:
            if dropped >= over or ev.revision == self.revision:
                break
            dropped += event_bytes(ev)
            rev = ev.revision
        if rev > self.compacted:
            self._drop_history_through(rev)

    def _lease_grant(self, lease_id: int, ttl: int) -> Any:
        if lease_id <= 0:
            return StoreError(Code.INVALID_ARGUMENT, "etcdserver: lease ID must be positive")
        if lease_id in self.leases:
            return StoreError(Code.FAILED_PRECONDITION, "etcdserver: lease already exists")
        if ttl > MAX_LEASE_TTL:
            return StoreError(Code.OUT_OF_RANGE, "etcdserver: too large lease TTL")
        self.leases[lease_id] = Lease(lease_id, ttl)
        resp = rpc_pb2.LeaseGrantResponse(ID=lease_id, TTL=ttl)
        resp.header.revision = self.revision
        return resp

    def _lease_revoke(self, lease_id: int) -> rpc_pb2.LeaseRevokeResponse:
        lease = self.leases.get(lease_id)
        if lease is None:
            raise StoreError(Code.NOT_FOUND, "etcdserver: requested lease not found")
        for key in sorted(lease.keys):
            self._record_write(key, None)
        self._lease_undo.append((lease_id, lease))
        del self.leases[lease_id]
        return rpc_pb2.LeaseRevokeResponse()

    # ---------------------------------------------------------------- alarms

    def _refused_by_alarm(self, cmd: tuple[Any, ...]) -> StoreError | None:
        """etcd's capped and corrupt appliers, decided on the raised alarms.

        CORRUPT (checked first, as etcd wraps it outermost) refuses every write,
        compaction and lease grant or revoke; a Txn only when it is not made of
        top-level Range ops alone (etcd serves those without Raft). NOSPACE
        refuses Put, LeaseGrant and a Txn whose branches put something at the
        top level (etcd's quota cost; DeleteRange, Compact and revokes pass).
        Keep-alives pass both (etcd's never go through Raft).
        """
        op = cmd[0]
        kinds = {kind for _, kind in self.alarms}
        if rpc_pb2.CORRUPT in kinds and (
            op != "txn" or not txn_is_read_only(_parse(rpc_pb2.TxnRequest, cmd[1]))
        ):
            return StoreError(Code.DATA_LOSS, CORRUPT)
        if rpc_pb2.NOSPACE in kinds:
            if op in ("put", "lease_grant"):
                return StoreError(Code.RESOURCE_EXHAUSTED, NO_SPACE)
            if op == "txn" and txn_cost(_parse(rpc_pb2.TxnRequest, cmd[1])) > 0:
                return StoreError(Code.RESOURCE_EXHAUSTED, NO_SPACE)
        return None

    def _alarm(self, action: int, member: int, kind: int) -> Any:
        """ACTIVATE or DEACTIVATE one alarm; etcd's answer (it lists the alarm changed).

        Like etcd 3.4, any alarm type is recorded, NONE and unknown ones included
        (they only show in the list); deactivating an alarm that is not raised
        answers an empty list.
        """
        resp = rpc_pb2.AlarmResponse()
        alarm = (member, kind)
        if action == rpc_pb2.AlarmRequest.ACTIVATE:
            self.alarms.add(alarm)
        elif action == rpc_pb2.AlarmRequest.DEACTIVATE:
            if alarm not in self.alarms:
                return resp
            self.alarms.discard(alarm)
        else:
            return StoreError(
                Code.INVALID_ARGUMENT, f"mizzen: action: unknown alarm action {action}"
            )
        resp.alarms.add(memberID=member, alarm=kind)
        return resp

    def alarm_list(self, kind: int = rpc_pb2.NONE) -> list[tuple[int, int]]:
        """Raised alarms, by type then member id; only type ``kind`` unless NONE (etcd's GET)."""
        found = [a for a in self.alarms if kind == rpc_pb2.NONE or a[1] == kind]
        return sorted(found, key=lambda a: (a[1], a[0]))

    def size_bytes(self) -> int:
        """What the store holds, as the quota and Status's dbSize count it: every
        version of every key still kept, live or in the history, as key + value."""
        return self.live_bytes + self.superseded_bytes

    # ------------------------------------------------------------------ auth

    def _auth(self, cmd: tuple[Any, ...]) -> Any:
        """etcd's auth store (store/etcd_auth.py): a response stamped with the revision."""
        result = etcd_auth.apply_auth(self, cmd)
        if not isinstance(result, StoreError):
            result.header.revision = self.revision
        return result

    # --------------------------------------------------------------- members

    def _member_command(self, cmd: tuple[Any, ...]) -> Any:
        """Membership records. Raft's own member set follows them (store/membership.py).

        ``member_add`` and ``member_remove`` carry the member names their proposer
        saw: when the set changed in between, the command is refused, so two
        concurrent changes cannot both pass the proposer's checks.
        """
        op = cmd[0]
        if op == "member_seed":
            return self._member_seed(int(cmd[1]), cmd[2])
        if op == "member_attrs":
            # ("member_attrs", name, client URLs[, Raft address]): a member publishes its
            # name and URLs; with the address it claims the unnamed record added for it
            name, urls = str(cmd[1]), tuple(str(u) for u in cmd[2])
            m = self.members.get(name)
            if m is None and len(cmd) > 3:
                m = self.members.pop("@" + str(cmd[3]), None)
            if m is None:
                return StoreError(Code.NOT_FOUND, "etcdserver: member not found")
            self.members[name] = Member(name, m.id, m.peer_addr, urls)
            return self.members[name]
        if op == "member_add":
            name, mid, addr = str(cmd[1]), int(cmd[2]), str(cmd[3])
            err = self._member_change_allowed(cmd[4])
            if err is None:
                err = self._member_add_conflict(name, mid, addr)
            if err is not None:
                return err
            added = Member(name, mid, addr)
            self.members[added.key] = added
            return added
        if op == "member_update":
            # ("member_update", id, new Raft address, expected keys): etcd's MemberUpdate
            mid, addr = int(cmd[1]), str(cmd[2])
            found = [m for m in self.members.values() if m.id == mid]
            if not found:
                return StoreError(Code.NOT_FOUND, "etcdserver: member not found")
            err = self._member_change_allowed(cmd[3])
            if err is not None:
                return err
            if any(m.peer_addr == addr and m.id != mid for m in self.members.values()):
                return StoreError(Code.FAILED_PRECONDITION, PEER_URL_EXISTS)
            old = self.members.pop(found[0].key)
            updated = Member(old.name, old.id, addr, old.client_urls)
            self.members[updated.key] = updated
            return updated
        if op == "member_remove":
            mid = int(cmd[1])
            found = [m for m in self.members.values() if m.id == mid]
            if not found:
                return StoreError(Code.NOT_FOUND, "etcdserver: member not found")
            err = self._member_change_allowed(cmd[2])
            if err is not None:
                return err
            if len(self.members) == 1:
                return StoreError(Code.FAILED_PRECONDITION, "mizzen: cannot remove the only member")
            return self.members.pop(found[0].key)
        return StoreError(Code.INVALID_ARGUMENT, f"mizzen: unknown command {op!r}")

    def _member_seed(self, cluster_id: int, seed: Any) -> bool:
        """Record the first boot's --initial-cluster; a no-op once any member is recorded."""
        if self.members:
            return False
        members = [Member(str(n), int(i), str(a)) for n, i, a in seed]
        if not members:
            return False
        self.members = {m.name: m for m in sorted(members, key=lambda m: m.name)}
        self.cluster_id = cluster_id
        return True

    def _member_change_allowed(self, expected: Any) -> StoreError | None:
        if not self.members:
            return StoreError(
                Code.FAILED_PRECONDITION, "mizzen: the member set is not initialized yet; retry"
            )
        if tuple(sorted(self.members)) != tuple(sorted(str(n) for n in expected)):
            return StoreError(
                Code.FAILED_PRECONDITION,
                "mizzen: another membership change was applied concurrently; "
                "check the member list and retry",
            )
        return None

    def _member_add_conflict(self, name: str, mid: int, addr: str) -> StoreError | None:
        if name and name in self.members:
            return StoreError(Code.ALREADY_EXISTS, f"mizzen: member name {name!r} already exists")
        for m in self.members.values():
            if m.peer_addr == addr:
                return StoreError(Code.FAILED_PRECONDITION, PEER_URL_EXISTS)
            if m.id == mid:
                return StoreError(Code.ALREADY_EXISTS, "etcdserver: ID exists")
        return None

    # ----------------------------------------------------------------- reads

    def _scan(self, key: bytes, range_end: bytes) -> list[bytes]:
        lo, hi = range_bounds(key, range_end)
        if hi is None:
            return [key] if key in self._kv else []
        i = bisect.bisect_left(self._keys, lo)
        j = len(self._keys) if hi == b"" else bisect.bisect_left(self._keys, hi)
        return self._keys[i:j] if i < j else []

    def range(self, req: rpc_pb2.RangeRequest) -> rpc_pb2.RangeResponse:
        """Answer a Range at the newest or an older revision; raises StoreError."""
        check_key(req.key)
        if req.revision > self.revision:
            raise StoreError(
                Code.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision"
            )
        if 0 < req.revision < self.compacted:
            raise StoreError(
                Code.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted"
            )
        if req.revision <= 0 or req.revision == self.revision:
            records = [self._kv[k] for k in self._scan(req.key, req.range_end)]
        else:
            records = self._records_at(req.key, req.range_end, req.revision)
        return self._range_response(req, records)

    def _range_live(self, req: rpc_pb2.RangeRequest) -> rpc_pb2.RangeResponse:
        check_key(req.key)
        return self._range_response(req, [self._kv[k] for k in self._scan(req.key, req.range_end)])

    def _records_at(self, key: bytes, range_end: bytes, rev: int) -> list[Record]:
        """Records of [key, range_end) as of ``rev``, by undoing later events."""
        view: dict[bytes, Record | None] = {}
        start = bisect.bisect_right(self._history, rev, key=lambda e: e.revision)
        for ev in reversed(self._history[start:]):
            if in_range(ev.key, key, range_end):
                view[ev.key] = ev.prev
        live = {k: self._kv[k] for k in self._scan(key, range_end)}
        for k, rec in view.items():
            if rec is None:
                live.pop(k, None)
            else:
                live[k] = rec
        return [live[k] for k in sorted(live)]

    @staticmethod
    def _range_response(req: rpc_pb2.RangeRequest, records: list[Record]) -> rpc_pb2.RangeResponse:
        resp = rpc_pb2.RangeResponse(count=len(records))  # etcd counts before the filters
        if req.min_mod_revision:
            records = [r for r in records if r.mod_revision >= req.min_mod_revision]
        if req.max_mod_revision:
            records = [r for r in records if r.mod_revision <= req.max_mod_revision]
        if req.min_create_revision:
            records = [r for r in records if r.create_revision >= req.min_create_revision]
        if req.max_create_revision:
            records = [r for r in records if r.create_revision <= req.max_create_revision]
        sort_order, sort_target = req.sort_order, req.sort_target
        if sort_order != rpc_pb2.RangeRequest.NONE or sort_target != rpc_pb2.RangeRequest.KEY:
            records = _sorted(records, req.sort_target, req.sort_order)
        if req.count_only:
            return resp
        if req.limit > 0 and len(records) > req.limit:
            records = records[: req.limit]
            resp.more = True
        resp.kvs.extend(r.to_proto(req.keys_only) for r in records)
        return resp

    def get(self, key: bytes) -> Record | None:
        return self._kv.get(key)

    def events_after(self, rev: int) -> list[Event]:
        """History events with revision > rev (caller checks rev >= compacted)."""
        i = bisect.bisect_right(self._history, rev, key=lambda e: e.revision)
        return self._history[i:]

    def puts_at(self, rev: int, key: bytes, range_end: bytes) -> list[Event]:
        """The PUT events of revision ``rev`` in [key, range_end) that the state at
        ``rev`` still shows (keys whose version at ``rev`` was written at ``rev``), in
        key order, without previous values: what etcd's compaction at ``rev`` keeps
        of that revision. For a watch from the compacted revision (caller checks
        rev >= compacted; deletes at ``rev`` are gone, as after etcd's compaction)."""
        return [
            Event(rev, r.key, r, None)
            for r in self._records_at(key, range_end, rev)
            if r.mod_revision == rev
        ]

    def lease_keys(self, lease_id: int) -> list[bytes]:
        lease = self.leases.get(lease_id)
        return sorted(lease.keys) if lease else []

    def key_count(self) -> int:
        return len(self._kv)

    def hash(self) -> int:
        """A digest of the live key space, equal on replicas with equal state."""
        h = hashlib.blake2b(digest_size=4)
        for k in self._keys:
            r = self._kv[k]
            h.update(b"%d:%b%d:%b" % (len(k), k, len(r.value), r.value))
            h.update(b"%d,%d,%d,%d" % (r.create_revision, r.mod_revision, r.version, r.lease))
        return int.from_bytes(h.digest(), "big")

    def __getstate__(self) -> dict[str, Any]:
        state = {k: getattr(self, k) for k in _SNAPSHOT_FIELDS}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k in _SNAPSHOT_FIELDS:
            setattr(self, k, state[k] if k in state else copy.copy(_OPTIONAL_FIELDS[k]))
        self.history_bytes = sum(event_bytes(e) for e in self._history)
        self.superseded_bytes = sum(superseded_bytes(e) for e in self._history)
        self.live_bytes = sum(len(k) + len(r.value) for k, r in self._kv.items())
        self.alarms = set(self.alarms)  # never the shared default
        # states written before member records held {name: [client URLs]}: dropped,
        # the members re-seed and re-publish them (see StoreNode)
        self.members = {n: m for n, m in self.members.items() if isinstance(m, Member)}
        self._pending = []
        self._undo = []
        self._lease_undo = []


_SNAPSHOT_FIELDS = (
    "revision",
    "compacted",
    "history_limit",
    "history_bytes_limit",
    "_kv",
    "_keys",
    "_history",
    "leases",
    "members",
    "cluster_id",
    "_sessions",
    "alarms",
    *etcd_auth.FIELDS,
)
_MEMBER_COMMANDS = frozenset(
    {"member_seed", "member_attrs", "member_add", "member_remove", "member_update"}
)
PEER_URL_EXISTS = "etcdserver: Peer URLs already exists"
# fields a state written by an older version may lack, with their defaults
_OPTIONAL_FIELDS: dict[str, Any] = {
    "cluster_id": 0,
    "history_bytes_limit": DEFAULT_HISTORY_BYTES,
    "alarms": set(),
    **etcd_auth.FIELDS,
}
# commands an alarm may refuse (see StateMachine._refused_by_alarm)
_CAPPED_COMMANDS = frozenset(
    {"put", "delete", "txn", "compact", "lease_grant", "lease_revoke", "lease_expire"}
)


def event_bytes(ev: Event) -> int:
    """What one history event is counted as: its key, new value and previous value.

    Generous (a value is shared with the event that wrote it, and with the live
    map), so the bytes really held are at most this.
    """
    size = len(ev.key)
    if ev.record is not None:
        size += len(ev.record.value)
    if ev.prev is not None:
        size += len(ev.prev.value)
    return size


def superseded_bytes(ev: Event) -> int:
    """The bytes an event keeps of the version it replaced (its key and previous value)."""
    return len(ev.key) + len(ev.prev.value) if ev.prev is not None else 0


def _sorted(records: list[Record], target: int, order: int) -> list[Record]:
    keyfs: dict[int, Any] = {
        rpc_pb2.RangeRequest.KEY: lambda r: r.key,
        rpc_pb2.RangeRequest.VERSION: lambda r: r.version,
        rpc_pb2.RangeRequest.CREATE: lambda r: r.create_revision,
        rpc_pb2.RangeRequest.MOD: lambda r: r.mod_revision,
        rpc_pb2.RangeRequest.VALUE: lambda r: r.value,
    }
    keyf = keyfs.get(target)
    if keyf is None:
        raise StoreError(Code.INVALID_ARGUMENT, f"mizzen: unknown sort_target {target}")
    return sorted(records, key=keyf, reverse=order == rpc_pb2.RangeRequest.DESCEND)


def _stamp_txn(resp: rpc_pb2.TxnResponse, revision: int) -> None:
    """Like etcd, every response inside a Txn carries the Txn's revision."""
    resp.header.revision = revision
    for r in resp.responses:
        which = r.WhichOneof("response")
        if which == "response_txn":
            _stamp_txn(r.response_txn, revision)
        elif which is not None:
            getattr(r, which).header.revision = revision


def _parse(cls: Any, data: bytes) -> Any:
    msg = cls()
    msg.ParseFromString(data)
    return msg
