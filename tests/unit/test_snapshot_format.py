"""store/snapshot.py: the file format round-trips, and damage is detected before use."""

from __future__ import annotations

import hashlib
import os
import re
import struct
from pathlib import Path
from typing import Any

import pytest

from protos import kv_pb2, rpc_pb2, snapshot_pb2
from store import snapshot
from store.raft_dump import DumpHead, load_dump, read_head
from store.state_machine import Member, StateMachine


def _put(sm: StateMachine, key: bytes, value: bytes, lease: int = 0) -> None:
    sm.apply(("put", rpc_pb2.PutRequest(key=key, value=value, lease=lease).SerializeToString()))


def _state() -> StateMachine:
    sm = StateMachine()
    sm.apply(("lease_grant", 7, 30))
    _put(sm, b"a", b"1")
    _put(sm, b"b", b"2", lease=7)
    _put(sm, b"a", b"3")
    sm.apply(("compact", 2))
    sm.apply(("delete", rpc_pb2.DeleteRangeRequest(key=b"b").SerializeToString()))
    _put(sm, b"c", b"4", lease=7)
    sm.apply(("lease_grant", 9, 60))
    return sm


def frame(body: bytes, revision: int, version: int = snapshot.FORMAT_VERSION) -> bytes:
    """A snapshot file around ``body``, built from docs/store.md (not from the encoder)."""
    head = struct.pack(">8sIIQQ", b"MIZZSNP\0", version, 0, revision, len(body))
    data = head + body + b"\0" * (-(len(head) + len(body)) % 512)
    return data + hashlib.sha256(data).digest()


def records(*msgs: snapshot_pb2.SnapshotRecord) -> bytes:
    return b"".join(
        struct.pack(">I", len(m.SerializeToString())) + m.SerializeToString() for m in msgs
    )


def body_of(data: bytes) -> bytes:
    (length,) = struct.unpack_from(">Q", data, 24)
    return data[32 : 32 + length]


def test_the_body_is_length_prefixed_records_header_keys_leases_events() -> None:
    sm = _state()
    data = snapshot.encode(sm)
    body = body_of(data)
    parsed = []
    pos = 0
    while pos < len(body):
        (n,) = struct.unpack_from(">I", body, pos)
        parsed.append(snapshot_pb2.SnapshotRecord.FromString(body[pos + 4 : pos + 4 + n]))
        pos += 4 + n
    assert pos == len(body)
    kinds = [r.WhichOneof("record") for r in parsed]
    events = len(sm.events_after(sm.compacted))
    assert kinds == ["header", "kv", "kv", "lease", "lease"] + ["event"] * events
    h = parsed[0].header
    assert (h.revision, h.compacted, h.history_limit) == (sm.revision, 2, sm.history_limit)
    assert (h.keys, h.leases, h.events) == (2, 2, events)
    assert [r.kv.key for r in parsed[1:3]] == [b"a", b"c"]
    assert [(r.lease.id, r.lease.ttl) for r in parsed[3:5]] == [(7, 30), (9, 60)]
    assert [r.event.kv.mod_revision for r in parsed[5:]] == [3, 4, 5, 6]
    delete = parsed[7].event
    assert delete.type == kv_pb2.Event.DELETE and delete.kv.key == b"b"
    assert delete.prev_kv.value == b"2" and delete.prev_kv.lease == 7


def test_restored_state_serves_the_same_reads_and_watch_history() -> None:
    sm = _state()
    back = snapshot.decode(snapshot.encode(sm))
    assert back.events_after(sm.compacted) == sm.events_after(sm.compacted)
    for rev in range(sm.compacted, sm.revision + 1):
        req = rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0", revision=rev)
        assert back.range(req) == sm.range(req), rev
    assert back.lease_keys(7) == sm.lease_keys(7) == [b"c"]
    assert back.lease_keys(9) == []
    # it goes on like the original: same results, same revisions
    for target in (sm, back):
        _put(target, b"d", b"5", lease=9)
        target.apply(("lease_revoke", 7))
    assert back.hash() == sm.hash() and back.revision == sm.revision
    assert back.events_after(sm.compacted) == sm.events_after(sm.compacted)


def test_a_version_1_pickle_file_is_refused_with_a_reason() -> None:
    with pytest.raises(snapshot.SnapshotError, match=r"version 1 .*pickle.* not loaded"):
        snapshot.decode(frame(b"\x80\x04N.", 1, version=1))


def _hdr(**fields: int) -> snapshot_pb2.SnapshotRecord:
    values: dict[str, Any] = {"revision": 5, "compacted": -1, "history_limit": 10, **fields}
    return snapshot_pb2.SnapshotRecord(header=snapshot_pb2.SnapshotHeader(**values))


def _kv(key: bytes, create: int = 2, mod: int = 2, version: int = 1, lease: int = 0) -> Any:
    kv = kv_pb2.KeyValue(
        key=key, value=b"v", create_revision=create, mod_revision=mod, version=version, lease=lease
    )
    return snapshot_pb2.SnapshotRecord(kv=kv)


def _lease(lid: int, ttl: int = 10) -> snapshot_pb2.SnapshotRecord:
    return snapshot_pb2.SnapshotRecord(lease=snapshot_pb2.SnapshotLease(id=lid, ttl=ttl))


def _event(
    key: bytes, rev: int, kind: Any = kv_pb2.Event.PUT, prev: tuple[bytes, int] | None = None
) -> snapshot_pb2.SnapshotRecord:
    kv = kv_pb2.KeyValue(key=key, create_revision=rev, mod_revision=rev, version=1)
    ev = kv_pb2.Event(type=kind, kv=kv)
    if prev is not None:
        ev.prev_kv.CopyFrom(
            kv_pb2.KeyValue(key=prev[0], create_revision=2, mod_revision=prev[1], version=1)
        )
    return snapshot_pb2.SnapshotRecord(event=ev)


MALFORMED: list[tuple[bytes, str]] = [
    (b"", "no header record"),
    (b"\0\0", "truncated length"),
    (b"\0\0\0\x09abc", "length 9 exceeds the 3 bytes left"),
    (b"\0\0\0\x02\xff\xff", "not a valid record"),
    (records(_kv(b"a")), "first record is not the header"),
    (records(_hdr(revision=4)), "revision 4 but the file header says 5"),
    (records(_hdr(compacted=6)), "compacted revision 6 not within -1..5"),
    (records(_hdr(history_limit=0)), "history_limit 0"),
    (records(_hdr(keys=-1)), "negative count of keys"),
    (records(_hdr(keys=2), _kv(b"a")), "ends after 1 records; the header counts 2"),
    (records(_hdr(), _kv(b"a")), "more records than the header counts"),
    (records(_hdr(keys=1), _lease(1)), "expected a kv record, found lease"),
    (records(_hdr(keys=2), _kv(b"b"), _kv(b"a")), "not after b'b'"),
    (records(_hdr(keys=2), _kv(b"a"), _kv(b"a")), "not after b'a'"),
    (records(_hdr(keys=1), _kv(b"")), "empty key"),
    (records(_hdr(keys=1), _kv(b"a", create=3, mod=2)), "not within 1..5 in order"),
    (records(_hdr(keys=1), _kv(b"a", mod=6)), "not within 1..5"),
    (records(_hdr(keys=1), _kv(b"a", version=0)), "version 0"),
    (records(_hdr(keys=1), _kv(b"a", lease=3)), "attached to lease 3"),
    (records(_hdr(leases=1), _lease(0)), "lease id 0 is not positive"),
    (records(_hdr(leases=2), _lease(2), _lease(2)), "lease 2 is not after 2"),
    (records(_hdr(leases=1), _lease(2, ttl=-1)), "ttl -1 out of range"),
    (records(_hdr(events=1), _event(b"a", 6)), "event revision 6 not within 0..5"),
    (records(_hdr(compacted=3, events=1), _event(b"a", 3)), "not within 4..5"),
    (records(_hdr(events=2), _event(b"a", 3), _event(b"a", 2)), "before 3"),
    (records(_hdr(events=1), _event(b"", 3)), "event with an empty key"),
    (records(_hdr(events=1), _event(b"a", 3, prev=(b"b", 2))), "previous record of b'a' at 3"),
    (records(_hdr(events=1), _event(b"a", 3, prev=(b"a", 3))), "is b'a' at 3"),
    (records(_hdr(events=1), _event(b"a", 3, kind=7)), "unknown event type 7"),
]


@pytest.mark.parametrize(("body", "message"), MALFORMED, ids=[m for _, m in MALFORMED])
def test_each_malformation_is_a_snapshot_error_naming_it(body: bytes, message: str) -> None:
    with pytest.raises(snapshot.SnapshotError, match=re.escape(message)):
        snapshot.decode(frame(body, 5))


def test_framing_errors() -> None:
    good = snapshot.encode(_state())
    body = body_of(good)
    with pytest.raises(snapshot.SnapshotError, match="exceeds the file"):
        head = struct.pack(">8sIIQQ", b"MIZZSNP\0", 2, 0, 1, 10**6)
        data = head + b"\0" * (512 - 32)
        snapshot.decode(data + hashlib.sha256(data).digest())
    with pytest.raises(snapshot.SnapshotError, match="padding is not zero"):
        padded = bytearray(frame(body, _state().revision))
        padded[-33] = 1
        padded[-32:] = hashlib.sha256(padded[:-32]).digest()
        snapshot.decode(bytes(padded))
    with pytest.raises(snapshot.SnapshotError, match="flags"):
        head = struct.pack(">8sIIQQ", b"MIZZSNP\0", 2, 1, 1, 0)
        data = head + b"\0" * (512 - 32)
        snapshot.decode(data + hashlib.sha256(data).digest())
    with pytest.raises(snapshot.SnapshotError, match="unsupported snapshot format version 3"):
        snapshot.decode(frame(body, 1, version=3))


def test_round_trip_keeps_keys_revisions_leases_and_compaction() -> None:
    sm = _state()
    data = snapshot.encode(sm)
    assert len(data) % 512 == 32  # etcdctl's "ends in a sha256" rule
    assert data[-32:] == hashlib.sha256(data[:-32]).digest()
    back = snapshot.decode(data)
    assert back.revision == sm.revision
    assert back.compacted == sm.compacted
    assert back.hash() == sm.hash()
    assert back.history_limit == sm.history_limit
    assert set(back.leases) == {7, 9}
    a, c = back.get(b"a"), back.get(b"c")
    assert a is not None and c is not None and back.get(b"b") is None
    assert (a.value, a.mod_revision, a.version) == (b"3", sm.get(b"a").mod_revision, 2)  # type: ignore[union-attr]
    assert c.lease == 7
    info = snapshot.info(data)
    assert (info.revision, info.keys, info.leases) == (sm.revision, 2, 2)


@pytest.mark.parametrize("where", [0, 100, -40, -1])
def test_corrupted_byte_is_detected(where: int) -> None:
    data = bytearray(snapshot.encode(_state()))
    data[where] ^= 0xFF
    with pytest.raises(snapshot.SnapshotError, match="checksum"):
        snapshot.decode(bytes(data))


def test_truncated_or_foreign_files_are_rejected() -> None:
    data = snapshot.encode(_state())
    with pytest.raises(snapshot.SnapshotError, match="32 mod 512"):
        snapshot.decode(data[:-1])
    foreign = b"\x01" * 512
    foreign += hashlib.sha256(foreign).digest()
    with pytest.raises(snapshot.SnapshotError, match="magic"):
        snapshot.decode(foreign)


def test_chunks_cover_the_data_with_decreasing_remaining() -> None:
    data = bytes(range(256)) * 10
    parts = snapshot.chunks(data, size=1000)
    assert b"".join(p for p, _ in parts) == data
    assert [r for _, r in parts] == [1560, 560, 0]
    assert snapshot.chunks(b"") == [(b"", 0)]


def test_restore_writes_a_raft_snapshot_of_the_state(tmp_path: Path) -> None:
    sm = _state()
    sm.members["old"] = Member("old", 1, "10.0.0.1:2380", ("http://10.0.0.1:2379",))
    data = snapshot.encode(sm)
    cluster = {"x": "127.0.0.1:7001", "y": "127.0.0.1:7002"}
    snapshot.restore(data, str(tmp_path / "d"), cluster)
    path = tmp_path / "d" / snapshot.RAFT_SNAPSHOT_FILE
    consumers, last, prev, nodes = load_dump(str(path))
    assert read_head(str(path)) == DumpHead(prev=prev, last=last)
    restored = consumers[1]["state"]
    assert restored.hash() == sm.hash() and restored.revision == sm.revision
    assert restored.members == {}
    assert (prev[1], last[1]) == (1, 2)
    assert sorted(n.id for n in nodes) == sorted(cluster.values())


def test_restore_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "raft.journal").write_bytes(b"x")
    with pytest.raises(FileExistsError):
        snapshot.restore(snapshot.encode(_state()), str(tmp_path), {"x": "127.0.0.1:7001"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raft.journal"]


def test_files_are_0600_and_a_restored_directory_0700(tmp_path: Path) -> None:
    old = os.umask(0o022)  # what a user's shell usually has
    try:
        out = tmp_path / "backup.snap"
        out.write_bytes(b"old")
        os.chmod(out, 0o644)
        snapshot.write_atomic(str(out), snapshot.encode(_state()))
        assert out.stat().st_mode & 0o777 == 0o600
        snapshot.restore(out.read_bytes(), str(tmp_path / "d"), {"x": "127.0.0.1:7001"})
    finally:
        os.umask(old)
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o700
    dump = tmp_path / "d" / snapshot.RAFT_SNAPSHOT_FILE
    assert dump.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.snap", "d"]  # no temporaries
