"""Fuzzing store/snapshot.decode: any bytes give SnapshotError or a valid, usable state.

Snapshot files are untrusted input (``mizzen snapshot status|restore`` read
files anyone can hand over; ``save`` reads what a server streams). Random
bytes almost never pass the sha256 trailer, so most examples here are framed
with a correct header, padding and checksum around a body that is random,
structured from random records, or a valid body mutated: that is what reaches
the record parser and the checks. Whatever decode accepts must be a state the
store can use: it re-encodes to the same state, answers reads at every
retained revision and applies writes without an internal error.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protos import kv_pb2, rpc_pb2, snapshot_pb2
from store import snapshot
from store.errors import Code, StoreError
from store.state_machine import MAX_LEASE_TTL, StateMachine

FUZZ = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
INT64 = (-(1 << 63), (1 << 63) - 1)


def frame(body: bytes, revision: int, version: int = snapshot.FORMAT_VERSION) -> bytes:
    head = struct.pack(">8sIIQQ", b"MIZZSNP\0", version, 0, revision, len(body))
    data = head + body + b"\0" * (-(len(head) + len(body)) % 512)
    return data + hashlib.sha256(data).digest()


def body_of(data: bytes) -> bytes:
    (length,) = struct.unpack_from(">Q", data, 24)
    return data[32 : 32 + length]


def check(data: bytes) -> None:
    """decode(data) raises SnapshotError, or returns a state that works."""
    try:
        sm = snapshot.decode(data)
    except snapshot.SnapshotError as err:
        assert str(err)
        return
    assert isinstance(sm, StateMachine)
    invariants(sm)
    again = snapshot.decode(snapshot.encode(sm))
    assert (again.revision, again.compacted, again.hash()) == (sm.revision, sm.compacted, sm.hash())
    assert again.events_after(sm.compacted) == sm.events_after(sm.compacted)
    assert {i: (lease.ttl, lease.keys) for i, lease in again.leases.items()} == {
        i: (lease.ttl, lease.keys) for i, lease in sm.leases.items()
    }
    for rev in {0, sm.compacted, sm.revision, *(e.revision for e in sm.events_after(-1))}:
        if rev < 0:
            continue
        try:
            sm.range(rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0", revision=rev))
        except StoreError as err:  # compacted or future revisions are answers, not crashes
            assert err.code is Code.OUT_OF_RANGE, err
    result = sm.apply(("put", rpc_pb2.PutRequest(key=b"\xff-fuzz", value=b"x").SerializeToString()))
    assert isinstance(result, rpc_pb2.PutResponse), result
    for lid in list(sm.leases):
        result = sm.apply(("lease_revoke", lid))
        assert isinstance(result, rpc_pb2.LeaseRevokeResponse), result


def invariants(sm: StateMachine) -> None:
    """What the StateMachine's code relies on (bisect over sorted keys and history ...)."""
    state = sm.__getstate__()
    kv, keys, history = state["_kv"], state["_keys"], state["_history"]
    assert sm.revision >= 1 and -1 <= sm.compacted <= sm.revision and sm.history_limit >= 1
    assert keys == sorted(kv) and len(set(keys)) == len(keys)
    for k, rec in kv.items():
        assert rec.key == k and k
        assert 1 <= rec.create_revision <= rec.mod_revision <= sm.revision and rec.version >= 1
        assert rec.lease == 0 or k in sm.leases[rec.lease].keys
    for lid, lease in sm.leases.items():
        assert lid == lease.id > 0 and 0 <= lease.ttl <= MAX_LEASE_TTL
        assert all(kv[k].lease == lid for k in lease.keys)
    revisions = [e.revision for e in history]
    assert revisions == sorted(revisions)
    assert all(sm.compacted < r <= sm.revision for r in revisions)
    for e in history:
        assert e.key and (e.record is None or e.record.key == e.key == e.record.key)
        assert e.record is None or e.record.mod_revision == e.revision
        assert e.prev is None or (e.prev.key == e.key and e.prev.mod_revision < e.revision)
    assert sm.members == {} and sm.cluster_id == 0


# ------------------------------------------------------------------ strategies

small_int = st.one_of(
    st.integers(-2, 12), st.sampled_from([*INT64, MAX_LEASE_TTL, MAX_LEASE_TTL + 1])
)
key = st.binary(max_size=3)


@st.composite
def key_values(draw: st.DrawFn) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(
        key=draw(key),
        value=draw(st.binary(max_size=3)),
        create_revision=draw(small_int),
        mod_revision=draw(small_int),
        version=draw(small_int),
        lease=draw(small_int),
    )


@st.composite
def random_records(draw: st.DrawFn) -> snapshot_pb2.SnapshotRecord:
    kind = draw(st.sampled_from(["header", "kv", "lease", "event", "empty"]))
    if kind == "header":
        h = snapshot_pb2.SnapshotHeader(
            revision=draw(small_int),
            compacted=draw(small_int),
            history_limit=draw(small_int),
            keys=draw(st.integers(-1, 4)),
            leases=draw(st.integers(-1, 4)),
            events=draw(st.integers(-1, 4)),
        )
        return snapshot_pb2.SnapshotRecord(header=h)
    if kind == "kv":
        return snapshot_pb2.SnapshotRecord(kv=draw(key_values()))
    if kind == "lease":
        lease = snapshot_pb2.SnapshotLease(id=draw(small_int), ttl=draw(small_int))
        return snapshot_pb2.SnapshotRecord(lease=lease)
    if kind == "event":
        event_type: Any = draw(st.sampled_from([0, 1, 2]))
        ev = kv_pb2.Event(type=event_type, kv=draw(key_values()))
        if draw(st.booleans()):
            ev.prev_kv.CopyFrom(draw(key_values()))
        return snapshot_pb2.SnapshotRecord(event=ev)
    return snapshot_pb2.SnapshotRecord()


def length_prefixed(parts: list[bytes]) -> bytes:
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


@st.composite
def real_states(draw: st.DrawFn) -> StateMachine:
    """A state reached by applying random commands (leases, puts, deletes, compactions)."""
    sm = StateMachine(history_limit=draw(st.integers(1, 12)))
    keys = [b"a", b"b", b"c", b"d"]
    for lid in (7, 9):  # revoked below, sometimes
        sm.apply(("lease_grant", lid, draw(st.integers(0, 60))))
    for _ in range(draw(st.integers(0, 25))):
        op = draw(st.sampled_from(["put", "delete", "grant", "revoke", "compact"]))
        if op == "put":
            lease = draw(st.sampled_from([7, 9, 0]))
            req = rpc_pb2.PutRequest(key=draw(st.sampled_from(keys)), value=b"v", lease=lease)
            sm.apply(("put", req.SerializeToString()))
        elif op == "delete":
            req_d = rpc_pb2.DeleteRangeRequest(key=draw(st.sampled_from(keys)))
            sm.apply(("delete", req_d.SerializeToString()))
        elif op == "grant":
            sm.apply(("lease_grant", draw(st.sampled_from([7, 9])), draw(st.integers(0, 60))))
        elif op == "revoke":
            sm.apply(("lease_revoke", draw(st.sampled_from([7, 9]))))
        else:
            sm.apply(("compact", draw(st.integers(0, sm.revision))))
    return sm


@st.composite
def mutated(draw: st.DrawFn, body: bytes) -> bytes:
    out = bytearray(body)
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "set"]))
        at = draw(st.integers(0, len(out)))
        if how == "flip" and at < len(out):
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif how == "set" and at < len(out):
            out[at] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
        elif how == "truncate":
            del out[at:]
        elif how == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=6))
        elif how == "delete":
            del out[at : at + draw(st.integers(1, 6))]
    return bytes(out)


def split(body: bytes) -> list[snapshot_pb2.SnapshotRecord]:
    out, pos = [], 0
    while pos < len(body):
        (n,) = struct.unpack_from(">I", body, pos)
        out.append(snapshot_pb2.SnapshotRecord.FromString(body[pos + 4 : pos + 4 + n]))
        pos += 4 + n
    return out


@st.composite
def reshuffled(draw: st.DrawFn, body: bytes) -> bytes:
    """Valid records rearranged: swapped, duplicated, dropped, or one field changed."""
    records = split(body)
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["swap", "duplicate", "drop", "field", "recount"]))
        # mostly past the header: moving it is caught at once
        first = draw(st.sampled_from([1, 1, 1, 0])) if len(records) > 1 else 0
        i = draw(st.integers(first, len(records) - 1))
        j = draw(st.integers(first, len(records) - 1))
        if how == "swap":
            records[i], records[j] = records[j], records[i]
        elif how == "duplicate":
            records.insert(j, records[i])
        elif how == "drop" and len(records) > 1:
            del records[i]
        elif how == "field":
            kind = records[i].WhichOneof("record")
            if kind is not None:
                msg = getattr(records[i], kind)
                if kind == "event":
                    msg = draw(st.sampled_from([msg, msg.kv, msg.prev_kv]))
                names = [f.name for f in msg.DESCRIPTOR.fields if f.type != f.TYPE_MESSAGE]
                name = draw(st.sampled_from(names))
                if isinstance(getattr(msg, name), bytes):
                    setattr(msg, name, draw(key))
                else:
                    setattr(msg, name, draw(small_int if name != "type" else st.integers(0, 2)))
        elif how == "recount" and records[0].WhichOneof("record") == "header":
            h = records[0].header
            kinds = [r.WhichOneof("record") for r in records[1:]]
            h.keys, h.leases, h.events = (kinds.count(k) for k in ("kv", "lease", "event"))
    return length_prefixed([r.SerializeToString() for r in records])


# ----------------------------------------------------------------------- tests


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    check(data)


@FUZZ
@given(st.binary(max_size=600), st.integers(0, 20))
def test_random_bodies_with_a_valid_frame(body: bytes, revision: int) -> None:
    check(frame(body, revision))


@FUZZ
@given(st.lists(random_records(), max_size=8), st.integers(0, 12), st.booleans())
def test_random_records_with_a_valid_frame(
    records: list[snapshot_pb2.SnapshotRecord], revision: int, header_first: bool
) -> None:
    if header_first:
        records = [snapshot_pb2.SnapshotRecord(header=snapshot_pb2.SnapshotHeader(
            revision=revision, history_limit=5, keys=len(records)
        )), *records]  # fmt: skip
    check(frame(length_prefixed([r.SerializeToString() for r in records]), revision))


@FUZZ
@given(st.data(), real_states())
def test_valid_files_round_trip_and_mutations_are_caught(
    data: st.DataObject, sm: StateMachine
) -> None:
    encoded = snapshot.encode(sm)
    back = snapshot.decode(encoded)
    assert (back.revision, back.compacted, back.hash()) == (sm.revision, sm.compacted, sm.hash())
    assert back.events_after(sm.compacted) == sm.events_after(sm.compacted)
    assert {i: lease.keys for i, lease in back.leases.items()} == {
        i: lease.keys for i, lease in sm.leases.items()
    }
    check(frame(data.draw(mutated(body_of(encoded))), sm.revision))
    check(frame(data.draw(reshuffled(body_of(encoded))), sm.revision))
    # damage the file itself (checksum included): never accepted
    raw = data.draw(mutated(encoded))
    if raw != encoded:
        check(raw)


def _scalar_fields(msg: Any) -> list[tuple[Any, str]]:
    out = []
    for f in msg.DESCRIPTOR.fields:
        if f.type == f.TYPE_MESSAGE:
            if msg.HasField(f.name):
                out += _scalar_fields(getattr(msg, f.name))
        else:
            out.append((msg, f.name))
    return out


def _fixed_state() -> StateMachine:
    sm = StateMachine(history_limit=20)
    for lid in (7, 9):
        sm.apply(("lease_grant", lid, 30))
    for key, lease in ((b"a", 7), (b"b", 0), (b"c", 9), (b"a", 0), (b"b", 9)):
        sm.apply(("put", rpc_pb2.PutRequest(key=key, value=b"v", lease=lease).SerializeToString()))
    sm.apply(("delete", rpc_pb2.DeleteRangeRequest(key=b"c").SerializeToString()))
    sm.apply(("compact", 3))
    return sm


def test_every_single_change_to_a_valid_file() -> None:
    """Exhaustively: each record dropped, duplicated or swapped with the next (counts fixed
    up or not), and each scalar field of each record set to each of a few values."""
    sm = _fixed_state()
    body = body_of(snapshot.encode(sm))
    base = split(body)
    variants: list[list[snapshot_pb2.SnapshotRecord]] = []
    for i in range(len(base)):
        variants.append(base[:i] + base[i + 1 :])
        variants.append(base[: i + 1] + base[i:])
        if i + 1 < len(base):
            variants.append([*base[:i], base[i + 1], base[i], *base[i + 2 :]])
    for i in range(len(base)):
        for field_index in range(len(_scalar_fields(base[i]))):
            for value in (-1, 0, 1, 2, 3, 7, 8, 9, 100, INT64[1], b"", b"a", b"b", b"z"):
                records = [
                    snapshot_pb2.SnapshotRecord.FromString(r.SerializeToString()) for r in base
                ]
                msg, name = _scalar_fields(records[i])[field_index]
                current = getattr(msg, name)
                if isinstance(current, bytes) != isinstance(value, bytes):
                    continue
                if name == "type" and value not in (0, 1, 2):
                    continue
                setattr(msg, name, value)
                variants.append(records)
    for records in variants:
        check(frame(length_prefixed([r.SerializeToString() for r in records]), sm.revision))
        h = records[0].header if records and records[0].HasField("header") else None
        if h is not None:  # the same with the header's counts made consistent
            kinds = [r.WhichOneof("record") for r in records[1:]]
            h.keys, h.leases, h.events = (kinds.count(k) for k in ("kv", "lease", "event"))
            check(frame(length_prefixed([r.SerializeToString() for r in records]), sm.revision))
