"""Store snapshots: a point-in-time copy of the store's data, and restoring one.

File layout, format version 2 (integers big-endian; field by field in
docs/store.md)::

    header  magic b"MIZZSNP\\0" | u32 format version (2) | u32 flags (0)
            | u64 revision | u64 body length
    body    records, each a u32 length and one protos/snapshot.proto
            SnapshotRecord: the SnapshotHeader, then every live key
            (mvccpb.KeyValue, ascending), every lease (ascending id), and the
            watch history (mvccpb.Event with prev_kv, ascending revision),
            then etcd's users and roles (authpb, ascending name)
    padding zero bytes up to a multiple of 512
    trailer sha256 of everything before it (32 bytes)

The padding and trailer follow etcd's convention (a file whose size is
``32 mod 512`` ends in a sha256), so ``etcdctl snapshot save`` accepts the
stream; its content is Mizzen's, not a bbolt database.

A snapshot file is untrusted input (anyone can hand one to ``mizzen snapshot
status`` or ``restore``, and ``save`` reads what a server streams): decoding
parses plain protobuf records and never runs anything from the file, bounds
every length by what remains of it, checks every value it keeps, and turns
every malformation into ``SnapshotError``. Version 1 files (the format
before this one, whose body was a pickle) are refused, never unpickled.

Restore is offline and writes ``raft.snapshot`` (a Raft snapshot as
store/raft_dump.py writes them, ending at entries 1-2) into an empty data
directory. That file is the store's own, in a directory only the store's user
can write (mode 0700). pysyncobj loads it on start as if it had compacted its
log up to index 2, so a member started on the directory begins with exactly
the saved state and continues the log from there. Every member of the new
cluster is restored from the same file with the same
``--initial-cluster``, so all logs agree on entries 1-2.

One file because it is one file format: capture, encode, decode with its
checks, and restore into a data directory are the writer and the readers of
the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import struct
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError
from pysyncobj.node import TCPNode

from protos import auth_pb2, kv_pb2, snapshot_pb2

from .raft_dump import encode_dump
from .state_machine import MAX_LEASE_TTL, Event, Lease, Record, StateMachine

MAGIC = b"MIZZSNP\x00"
FORMAT_VERSION = 2
PICKLE_FORMAT_VERSION = 1  # the old format: refused, never unpickled
_HEADER = struct.Struct(">8sIIQQ")
_LENGTH = struct.Struct(">I")
_ALIGN = 512
_HASH_SIZE = hashlib.sha256().digest_size
CHUNK_SIZE = 1 << 20
_INT64_MAX = (1 << 63) - 1

# pysyncobj's NO_OP command (``_COMMAND_TYPE.NO_OP``) and the dump's log entries
_NO_OP = struct.pack("B", 1)
_DUMP_TERM = 0
RAFT_SNAPSHOT_FILE = "raft.snapshot"
FILE_MODE = 0o600
DIR_MODE = 0o700


class SnapshotError(ValueError):
    """The bytes are not a valid Mizzen snapshot (truncated, corrupted, other format)."""


@dataclass(frozen=True)
class SnapshotInfo:
    revision: int
    keys: int
    leases: int
    compacted: int
    size: int
    sha256: str


@dataclass(frozen=True)
class Captured:
    """What a snapshot holds, copied out of a StateMachine (immutable records only)."""

    revision: int
    compacted: int
    history_limit: int
    records: list[Record]  # live keys, ascending
    leases: list[tuple[int, int]]  # (id, ttl), ascending id
    history: list[Event]  # ascending revision
    users: list[bytes] = field(default_factory=list)  # serialized authpb.User, by name
    roles: list[bytes] = field(default_factory=list)  # serialized authpb.Role, by name
    auth_enabled: bool = False


def capture(sm: StateMachine) -> Captured:
    """The state to snapshot; cheap (list copies of immutable records), call under the lock.

    Encoding (``encode_captured``) can then run without the lock.
    """
    state = sm.__getstate__()
    kv: dict[bytes, Record] = state["_kv"]
    return Captured(
        revision=sm.revision,
        compacted=sm.compacted,
        history_limit=sm.history_limit,
        records=[kv[k] for k in state["_keys"]],
        leases=sorted((lease.id, lease.ttl) for lease in sm.leases.values()),
        history=list(state["_history"]),
        users=[sm.auth_users[n] for n in sorted(sm.auth_users)],
        roles=[sm.auth_roles[n] for n in sorted(sm.auth_roles)],
        auth_enabled=sm.auth_enabled,
    )


def _frame(body: bytes, revision: int) -> bytes:
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, 0, revision, len(body))
    unpadded = len(head) + len(body)
    data = head + body + b"\0" * (-unpadded % _ALIGN)
    return data + hashlib.sha256(data).digest()


def encode_captured(c: Captured) -> bytes:
    """The snapshot file of ``c``."""
    header = snapshot_pb2.SnapshotHeader(
        revision=c.revision,
        compacted=c.compacted,
        history_limit=c.history_limit,
        keys=len(c.records),
        leases=len(c.leases),
        events=len(c.history),
        users=len(c.users),
        roles=len(c.roles),
        auth_enabled=c.auth_enabled,
    )
    records = [snapshot_pb2.SnapshotRecord(header=header)]
    records += [snapshot_pb2.SnapshotRecord(kv=r.to_proto()) for r in c.records]
    records += [
        snapshot_pb2.SnapshotRecord(lease=snapshot_pb2.SnapshotLease(id=i, ttl=t))
        for i, t in c.leases
    ]
    records += [snapshot_pb2.SnapshotRecord(event=e.to_proto(with_prev=True)) for e in c.history]
    records += [snapshot_pb2.SnapshotRecord(user=auth_pb2.User.FromString(u)) for u in c.users]
    records += [snapshot_pb2.SnapshotRecord(role=auth_pb2.Role.FromString(r)) for r in c.roles]
    parts: list[bytes] = []
    for record in records:
        raw = record.SerializeToString()
        parts.append(_LENGTH.pack(len(raw)))
        parts.append(raw)
    return _frame(b"".join(parts), c.revision)


def encode(sm: StateMachine) -> bytes:
    """Serialize ``sm`` (the caller holds the state lock, so the copy is point-in-time)."""
    return encode_captured(capture(sm))


# ------------------------------------------------------------------ decoding


def _unframe(data: bytes) -> tuple[int, memoryview]:
    """(revision, body) of a snapshot file whose size, checksum, header and padding are valid."""
    if len(data) < _HEADER.size + _HASH_SIZE or len(data) % _ALIGN != _HASH_SIZE:
        raise SnapshotError(f"not a Mizzen snapshot: size {len(data)} is not 32 mod 512")
    view = memoryview(data)
    payload, digest = view[:-_HASH_SIZE], view[-_HASH_SIZE:]
    if hashlib.sha256(payload).digest() != digest:
        raise SnapshotError("snapshot checksum mismatch: the file is corrupted")
    magic, version, flags, revision, body_len = _HEADER.unpack_from(payload)
    if magic != MAGIC:
        raise SnapshotError("not a Mizzen snapshot: bad magic")
    if version == PICKLE_FORMAT_VERSION:
        raise SnapshotError(
            "snapshot format version 1 (a pickle, written by an older Mizzen) is not "
            "loaded: unpickling a file can run code; save the snapshot again"
        )
    if version != FORMAT_VERSION:
        raise SnapshotError(f"unsupported snapshot format version {version}")
    if flags != 0:
        raise SnapshotError(f"unsupported snapshot flags {flags:#x}")
    if body_len > len(payload) - _HEADER.size:
        raise SnapshotError(
            f"snapshot body length {body_len} exceeds the file "
            f"({len(payload) - _HEADER.size} bytes after the header)"
        )
    end = _HEADER.size + body_len
    if len(payload) - end != -end % _ALIGN:
        raise SnapshotError("snapshot padding is not what the body length implies")
    if any(payload[end:]):
        raise SnapshotError("snapshot padding is not zero")
    return revision, payload[_HEADER.size : end]


def _records(body: memoryview) -> Iterator[tuple[int, str, snapshot_pb2.SnapshotRecord]]:
    """Yield (index, where, record) for each record of body; SnapshotError on damage."""
    pos, index = 0, 0
    while pos < len(body):
        where = f"record {index} (body offset {pos})"
        if len(body) - pos < _LENGTH.size:
            raise SnapshotError(f"snapshot {where}: truncated length")
        (length,) = _LENGTH.unpack_from(body, pos)
        start = pos + _LENGTH.size
        if length > len(body) - start:
            raise SnapshotError(
                f"snapshot {where}: length {length} exceeds the {len(body) - start} bytes left"
            )
        record = snapshot_pb2.SnapshotRecord()
        try:
            record.ParseFromString(bytes(body[start : start + length]))
        except (DecodeError, RecursionError, ValueError) as err:
            raise SnapshotError(f"snapshot {where}: not a valid record ({err})") from None
        yield index, where, record
        pos, index = start + length, index + 1


class _Checker:
    """Builds the StateMachine from records, checking every value it keeps."""

    def __init__(self, revision: int, header: snapshot_pb2.SnapshotHeader, where: str) -> None:
        if header.revision != revision:
            raise SnapshotError(
                f"snapshot {where}: revision {header.revision} but the file header says {revision}"
            )
        if revision < 1 or revision > _INT64_MAX:
            raise SnapshotError(f"snapshot {where}: revision {revision} out of range")
        if not -1 <= header.compacted <= revision:
            raise SnapshotError(
                f"snapshot {where}: compacted revision {header.compacted} not within -1..{revision}"
            )
        if header.history_limit < 1:
            raise SnapshotError(f"snapshot {where}: history_limit {header.history_limit} < 1")
        for what in ("keys", "leases", "events", "users", "roles"):
            if getattr(header, what) < 0:
                raise SnapshotError(f"snapshot {where}: negative count of {what}")
        self.header = header
        self.revision = revision
        self.kv: dict[bytes, Record] = {}
        self.keys: list[bytes] = []
        self.leases: dict[int, Lease] = {}
        self.last_lease = 0
        self.history: list[Event] = []
        self.users: dict[str, bytes] = {}
        self.roles: dict[str, bytes] = {}

    def _record(self, kv: kv_pb2.KeyValue, where: str, what: str) -> Record:
        if not kv.key:
            raise SnapshotError(f"snapshot {where}: {what} with an empty key")
        if not 1 <= kv.create_revision <= kv.mod_revision <= self.revision:
            raise SnapshotError(
                f"snapshot {where}: {what} {bytes(kv.key)!r}: revisions create "
                f"{kv.create_revision}, mod {kv.mod_revision} not within 1..{self.revision} "
                "in order"
            )
        if kv.version < 1:
            raise SnapshotError(f"snapshot {where}: {what} {bytes(kv.key)!r}: version {kv.version}")
        if kv.lease < 0:
            raise SnapshotError(f"snapshot {where}: {what} {bytes(kv.key)!r}: lease {kv.lease}")
        return Record(
            key=bytes(kv.key),
            value=bytes(kv.value),
            create_revision=kv.create_revision,
            mod_revision=kv.mod_revision,
            version=kv.version,
            lease=kv.lease,
        )

    def add_kv(self, kv: kv_pb2.KeyValue, where: str) -> None:
        rec = self._record(kv, where, "key")
        if self.keys and rec.key <= self.keys[-1]:
            raise SnapshotError(
                f"snapshot {where}: key {rec.key!r} is not after {self.keys[-1]!r} "
                "(keys must be unique and ascending)"
            )
        self.keys.append(rec.key)
        self.kv[rec.key] = rec

    def add_lease(self, lease: snapshot_pb2.SnapshotLease, where: str) -> None:
        if lease.id <= 0:
            raise SnapshotError(f"snapshot {where}: lease id {lease.id} is not positive")
        if lease.id <= self.last_lease:
            raise SnapshotError(
                f"snapshot {where}: lease {lease.id} is not after {self.last_lease} "
                "(leases must be unique and ascending)"
            )
        self.last_lease = lease.id
        if not 0 <= lease.ttl <= MAX_LEASE_TTL:
            raise SnapshotError(f"snapshot {where}: lease {lease.id}: ttl {lease.ttl} out of range")
        self.leases[lease.id] = Lease(lease.id, lease.ttl)

    def add_event(self, ev: kv_pb2.Event, where: str) -> None:
        key, rev = bytes(ev.kv.key), ev.kv.mod_revision
        if not key:
            raise SnapshotError(f"snapshot {where}: event with an empty key")
        if not self.header.compacted < rev <= self.revision:
            raise SnapshotError(
                f"snapshot {where}: event revision {rev} not within "
                f"{self.header.compacted + 1}..{self.revision}"
            )
        if self.history and rev < self.history[-1].revision:
            raise SnapshotError(
                f"snapshot {where}: event revision {rev} before {self.history[-1].revision} "
                "(history must be in revision order)"
            )
        if ev.type == kv_pb2.Event.PUT:
            record: Record | None = self._record(ev.kv, where, "event")
        elif ev.type == kv_pb2.Event.DELETE:
            record = None
        else:
            raise SnapshotError(f"snapshot {where}: unknown event type {ev.type}")
        prev = None
        if ev.HasField("prev_kv"):
            prev = self._record(ev.prev_kv, where, "event's previous record")
            if prev.key != key or prev.mod_revision >= rev:
                raise SnapshotError(
                    f"snapshot {where}: previous record of {key!r} at {rev} is "
                    f"{prev.key!r} at {prev.mod_revision}"
                )
        self.history.append(Event(rev, key, record, prev))

    def _name(self, raw: bytes, what: str, have: dict[str, bytes], where: str) -> str:
        try:
            name = raw.decode()
        except UnicodeDecodeError:
            raise SnapshotError(f"snapshot {where}: {what} name is not UTF-8") from None
        if not name:
            raise SnapshotError(f"snapshot {where}: {what} with an empty name")
        if have and name <= max(have):
            raise SnapshotError(
                f"snapshot {where}: {what} {name!r} is not after {max(have)!r} "
                f"({what}s must be unique and ascending)"
            )
        return name

    def add_user(self, user: auth_pb2.User, where: str) -> None:
        name = self._name(user.name, "user", self.users, where)
        self.users[name] = user.SerializeToString()

    def add_role(self, role: auth_pb2.Role, where: str) -> None:
        name = self._name(role.name, "role", self.roles, where)
        for perm in role.keyPermission:
            if perm.permType not in auth_pb2.Permission.Type.values():
                raise SnapshotError(
                    f"snapshot {where}: role {name!r}: unknown permission type {perm.permType}"
                )
        self.roles[name] = role.SerializeToString()

    def state_machine(self) -> StateMachine:
        if self.header.auth_enabled:
            root = self.users.get("root")
            if root is None or "root" not in auth_pb2.User.FromString(root).roles:
                raise SnapshotError(
                    "snapshot: etcd auth is enabled but no user root with the root role"
                )
        for rec in self.kv.values():
            if rec.lease:
                lease = self.leases.get(rec.lease)
                if lease is None:
                    raise SnapshotError(
                        f"snapshot: key {rec.key!r} is attached to lease {rec.lease}, "
                        "which the snapshot does not hold"
                    )
                lease.keys.add(rec.key)
        sm = StateMachine(history_limit=self.header.history_limit)
        state = sm.__getstate__()
        state.update(
            revision=self.revision,
            compacted=self.header.compacted,
            _kv=self.kv,
            _keys=self.keys,
            _history=self.history,
            leases=self.leases,
            members={},
            cluster_id=0,
            _sessions=OrderedDict(),
            auth_users=self.users,
            auth_roles=self.roles,
            auth_enabled=self.header.auth_enabled,
            auth_secret=b"",  # a new one at the first Authenticate (store/auth_service.py)
        )
        sm.__setstate__(state)
        return sm


def decode(data: bytes) -> StateMachine:
    """The state in snapshot ``data``; SnapshotError for anything but a valid snapshot.

    The result holds keys, leases, history, revision and compaction point;
    no members or proposer sessions (they belong to the old cluster).
    """
    revision, body = _unframe(data)
    records = _records(body)
    first = next(records, None)
    if first is None:
        raise SnapshotError("snapshot body is empty: no header record")
    _, where, record = first
    if record.WhichOneof("record") != "header":
        raise SnapshotError(f"snapshot {where}: the first record is not the header")
    checker = _Checker(revision, record.header, where)
    h = checker.header
    total = h.keys + h.leases + h.events + h.users + h.roles
    ends = [
        ("kv", h.keys),
        ("lease", h.keys + h.leases),
        ("event", h.keys + h.leases + h.events),
        ("user", h.keys + h.leases + h.events + h.users),
        ("role", total),
    ]
    count = 0
    for _, where, record in records:
        kind = record.WhichOneof("record")
        if count >= total:
            raise SnapshotError(f"snapshot {where}: more records than the header counts ({total})")
        want = next(kind for kind, end in ends if count < end)
        if kind != want:
            raise SnapshotError(f"snapshot {where}: expected a {want} record, found {kind}")
        if kind == "kv":
            checker.add_kv(record.kv, where)
        elif kind == "lease":
            checker.add_lease(record.lease, where)
        elif kind == "event":
            checker.add_event(record.event, where)
        elif kind == "user":
            checker.add_user(record.user, where)
        else:
            checker.add_role(record.role, where)
        count += 1
    if count != total:
        raise SnapshotError(f"snapshot body ends after {count} records; the header counts {total}")
    return checker.state_machine()


def info(data: bytes) -> SnapshotInfo:
    """Decode and summarize ``data`` (verifies the checksum)."""
    return _summary(decode(data), data)


def _summary(sm: StateMachine, data: bytes) -> SnapshotInfo:
    return SnapshotInfo(
        revision=sm.revision,
        keys=sm.key_count(),
        leases=len(sm.leases),
        compacted=sm.compacted,
        size=len(data),
        sha256=data[-_HASH_SIZE:].hex(),
    )


def chunks(data: bytes, size: int = CHUNK_SIZE) -> list[tuple[bytes, int]]:
    """``(blob, remaining_bytes after it)`` pairs covering ``data`` in order."""
    out = []
    for start in range(0, len(data), size):
        blob = data[start : start + size]
        out.append((blob, len(data) - start - len(blob)))
    return out or [(b"", 0)]


def for_new_cluster(sm: StateMachine) -> StateMachine:
    """``sm`` without what belongs to the old cluster: its members and proposer sessions.

    The new cluster's members seed the member set from their --initial-cluster.
    """
    state = sm.__getstate__()
    state["members"] = {}
    state["cluster_id"] = 0
    state["_sessions"] = type(state["_sessions"])()
    fresh = StateMachine.__new__(StateMachine)
    fresh.__setstate__(state)
    return fresh


def raft_dump(sm: StateMachine, cluster_addrs: list[str]) -> bytes:
    """``raft.snapshot`` bytes (store/raft_dump.py) whose only consumer (ReplicatedState)
    holds ``sm``."""
    self_data: dict[str, Any] = {"_SyncObj__enabledCodeVersion": 0}
    consumer_data: dict[str, Any] = {"state": sm}
    prev_entry = (_NO_OP, 1, _DUMP_TERM)
    last_entry = (_NO_OP, 2, _DUMP_TERM)
    cluster = {TCPNode(a) for a in cluster_addrs}
    return encode_dump(([self_data, consumer_data], last_entry, prev_entry, cluster))


def restore(data: bytes, data_dir: str, initial_cluster: dict[str, str]) -> SnapshotInfo:
    """Build a data directory from snapshot ``data`` for a member of ``initial_cluster``.

    Refuses a non-empty ``data_dir`` (it would mix two histories). The
    directory is created mode 0700 and the dump written 0600, to a temporary
    file, fsynced and renamed into place.
    """
    sm = decode(data)
    summary = _summary(sm, data)
    if os.path.isdir(data_dir) and os.listdir(data_dir):
        raise FileExistsError(f"data directory {data_dir} is not empty")
    if not os.path.isdir(data_dir):
        os.makedirs(data_dir, mode=DIR_MODE)
        os.chmod(data_dir, DIR_MODE)  # makedirs' mode is filtered by the umask
    dump = raft_dump(for_new_cluster(sm), sorted(initial_cluster.values()))
    write_atomic(os.path.join(data_dir, RAFT_SNAPSHOT_FILE), dump)
    return summary


def write_atomic(path: str, data: bytes, mode: int = FILE_MODE) -> None:
    """Write ``data`` to ``path`` (``mode``, default 0600) so a crash leaves the old file or
    the new one.

    The temporary file next to ``path`` is created exclusively (never through
    an existing file or symlink) with ``mode`` from the start, so the data is
    never readable by others, not even for a moment.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(
        directory, f".{os.path.basename(path)}.tmp.{os.getpid()}.{secrets.token_hex(4)}"
    )
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # os.open's mode is filtered by the umask
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
