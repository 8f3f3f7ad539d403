"""Store snapshots: a point-in-time copy of the whole state machine, and restoring one.

File layout (all integers big-endian)::

    header  magic b"MIZZSNP\\0" | u32 format version | u32 flags (0)
            | u64 revision | u64 body length
    body    pickle of the StateMachine's snapshot fields (keys with their
            revisions, history, leases, compaction point, revision)
    padding zero bytes up to a multiple of 512
    trailer sha256 of everything before it (32 bytes)

The padding and trailer follow etcd's convention (a file whose size is
``32 mod 512`` ends in a sha256), so ``etcdctl snapshot save`` accepts the
stream; its content is Mizzen's, not a bbolt database. The checksum is
verified before the body is unpickled: only restore files you saved.

Restore is offline and writes ``raft.snapshot`` (a Raft snapshot as
store/raft_dump.py writes them, ending at entries 1-2) into an empty data
directory. pysyncobj loads that dump on start as if it had
compacted its log up to index 2, so a member started on the directory begins
with exactly the saved state and continues the log from there. Every member
of the new cluster is restored from the same file with the same
``--initial-cluster``, so all logs agree on entries 1-2.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
from dataclasses import dataclass
from typing import Any

from pysyncobj.node import TCPNode

from .raft_dump import encode_dump
from .state_machine import _OPTIONAL_FIELDS, _SNAPSHOT_FIELDS, StateMachine

MAGIC = b"MIZZSNP\x00"
FORMAT_VERSION = 1
_HEADER = struct.Struct(">8sIIQQ")
_ALIGN = 512
_HASH_SIZE = hashlib.sha256().digest_size
CHUNK_SIZE = 1 << 20

# pysyncobj's NO_OP command (``_COMMAND_TYPE.NO_OP``) and the dump's log entries
_NO_OP = struct.pack("B", 1)
_DUMP_TERM = 0
RAFT_SNAPSHOT_FILE = "raft.snapshot"


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


def encode(sm: StateMachine) -> bytes:
    """Serialize ``sm``; the caller holds the state lock so the copy is point-in-time."""
    body = pickle.dumps(sm.__getstate__(), protocol=pickle.HIGHEST_PROTOCOL)
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, 0, sm.revision, len(body))
    unpadded = len(head) + len(body)
    padding = b"\0" * (-unpadded % _ALIGN)
    data = head + body + padding
    return data + hashlib.sha256(data).digest()


def decode(data: bytes) -> StateMachine:
    """The StateMachine in ``data``; SnapshotError unless the checksum and header are valid."""
    if len(data) < _HEADER.size + _HASH_SIZE or len(data) % _ALIGN != _HASH_SIZE:
        raise SnapshotError(f"not a Mizzen snapshot: size {len(data)} is not 32 mod 512")
    payload, digest = data[:-_HASH_SIZE], data[-_HASH_SIZE:]
    if hashlib.sha256(payload).digest() != digest:
        raise SnapshotError("snapshot checksum mismatch: the file is corrupted")
    magic, version, _flags, revision, body_len = _HEADER.unpack_from(payload)
    if magic != MAGIC:
        raise SnapshotError("not a Mizzen snapshot: bad magic")
    if version != FORMAT_VERSION:
        raise SnapshotError(f"unsupported snapshot format version {version}")
    if _HEADER.size + body_len > len(payload):
        raise SnapshotError("snapshot body length exceeds the file")
    state = pickle.loads(payload[_HEADER.size : _HEADER.size + body_len])
    required = set(_SNAPSHOT_FIELDS) - set(_OPTIONAL_FIELDS)
    if not isinstance(state, dict) or not required <= set(state) <= set(_SNAPSHOT_FIELDS):
        raise SnapshotError("snapshot body does not hold a state machine")
    sm = StateMachine.__new__(StateMachine)
    sm.__setstate__(state)
    if sm.revision != revision:
        raise SnapshotError("snapshot header and body disagree on the revision")
    return sm


def info(data: bytes) -> SnapshotInfo:
    """Decode and summarize ``data`` (verifies the checksum)."""
    sm = decode(data)
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

    Refuses a non-empty ``data_dir`` (it would mix two histories). The dump
    is written to a temporary file, fsynced and renamed into place.
    """
    summary = info(data)
    if os.path.isdir(data_dir) and os.listdir(data_dir):
        raise FileExistsError(f"data directory {data_dir} is not empty")
    sm = for_new_cluster(decode(data))
    os.makedirs(data_dir, exist_ok=True)
    dump = raft_dump(sm, sorted(initial_cluster.values()))
    write_atomic(os.path.join(data_dir, RAFT_SNAPSHOT_FILE), dump)
    return summary


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so a crash leaves either the old file or the new one."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
