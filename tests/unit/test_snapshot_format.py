"""store/snapshot.py: the file format round-trips, and damage is detected before use."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pytest
from pysyncobj import pickle as pysyncobj_pickle

from protos import rpc_pb2
from store import snapshot
from store.state_machine import Member, StateMachine


def _state() -> StateMachine:
    sm = StateMachine()
    sm.apply(("lease_grant", 7, 30))
    sm.apply(("put", rpc_pb2.PutRequest(key=b"a", value=b"1").SerializeToString()))
    sm.apply(("put", rpc_pb2.PutRequest(key=b"b", value=b"2", lease=7).SerializeToString()))
    sm.apply(("put", rpc_pb2.PutRequest(key=b"a", value=b"3").SerializeToString()))
    sm.apply(("compact", 2))
    return sm


def test_round_trip_keeps_keys_revisions_leases_and_compaction() -> None:
    sm = _state()
    data = snapshot.encode(sm)
    assert len(data) % 512 == 32  # etcdctl's "ends in a sha256" rule
    assert data[-32:] == hashlib.sha256(data[:-32]).digest()
    back = snapshot.decode(data)
    assert back.revision == sm.revision
    assert back.compacted == sm.compacted
    assert back.hash() == sm.hash()
    assert set(back.leases) == {7}
    a, b = back.get(b"a"), back.get(b"b")
    assert a is not None and b is not None
    assert (a.value, a.mod_revision, a.version) == (b"3", sm.get(b"a").mod_revision, 2)  # type: ignore[union-attr]
    assert b.lease == 7
    info = snapshot.info(data)
    assert (info.revision, info.keys, info.leases) == (sm.revision, 2, 1)


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


def test_restore_writes_a_pysyncobj_dump_of_the_state(tmp_path: Path) -> None:
    sm = _state()
    sm.members["old"] = Member("old", 1, "10.0.0.1:2380", ("http://10.0.0.1:2379",))
    data = snapshot.encode(sm)
    cluster = {"x": "127.0.0.1:7001", "y": "127.0.0.1:7002"}
    snapshot.restore(data, str(tmp_path / "d"), cluster)
    raw = gzip.decompress((tmp_path / "d" / snapshot.RAFT_SNAPSHOT_FILE).read_bytes())
    consumers, last, prev, nodes = pysyncobj_pickle.loads(raw)
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
