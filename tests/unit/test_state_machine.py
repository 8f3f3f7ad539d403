"""The store's pure state machine, command by command.

Expectations marked "etcd 3.4" were checked against a real etcd 3.4.23 (Debian's
etcd-server) through the same gRPC messages; the state machine must answer the
same way.
"""

from __future__ import annotations

import pickle
import random
from typing import Any

import pytest
from google.protobuf import text_format

from mizzen.keyrange import prefix_end
from protos import kv_pb2, rpc_pb2
from store.errors import Code, StoreError
from store.requests import MAX_TXN_OPS
from store.state_machine import (
    DEDUP_BATCHES_PER_PROPOSER,
    DEDUP_PROPOSERS,
    MAX_LEASE_TTL,
    Event,
    KeepAliveResult,
    Record,
    StateMachine,
)

RR = rpc_pb2.RangeRequest
C = rpc_pb2.Compare

EMPTY_KEY = StoreError(Code.INVALID_ARGUMENT, "etcdserver: key is not provided")
DUPLICATE = StoreError(Code.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request")
LEASE_NOT_FOUND = StoreError(Code.NOT_FOUND, "etcdserver: requested lease not found")
KEY_NOT_FOUND = StoreError(Code.INVALID_ARGUMENT, "etcdserver: key not found")
TOO_MANY_OPS = StoreError(Code.INVALID_ARGUMENT, "etcdserver: too many operations in txn request")
COMPACTED = StoreError(Code.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
FUTURE = StoreError(Code.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")
BAD_LEASE_ID = StoreError(Code.INVALID_ARGUMENT, "etcdserver: lease ID must be positive")
ABANDONED = StoreError(Code.UNAVAILABLE, "mizzen: request abandoned by its proposer")


# ------------------------------------------------------------------ helpers


def put(key: bytes, value: bytes = b"v", **kw: Any) -> tuple[str, bytes]:
    return ("put", rpc_pb2.PutRequest(key=key, value=value, **kw).SerializeToString())


def delete(key: bytes, range_end: bytes = b"", **kw: Any) -> tuple[str, bytes]:
    req = rpc_pb2.DeleteRangeRequest(key=key, range_end=range_end, **kw)
    return ("delete", req.SerializeToString())


def txn(compare: Any = (), success: Any = (), failure: Any = ()) -> tuple[str, bytes]:
    return ("txn", txn_req(compare, success, failure).SerializeToString())


def txn_req(compare: Any = (), success: Any = (), failure: Any = ()) -> rpc_pb2.TxnRequest:
    return rpc_pb2.TxnRequest(compare=list(compare), success=list(success), failure=list(failure))


def op_put(key: bytes, value: bytes = b"v", **kw: Any) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value, **kw))


def op_del(key: bytes, range_end: bytes = b"", **kw: Any) -> rpc_pb2.RequestOp:
    req = rpc_pb2.DeleteRangeRequest(key=key, range_end=range_end, **kw)
    return rpc_pb2.RequestOp(request_delete_range=req)


def op_get(key: bytes, range_end: bytes = b"", **kw: Any) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_range=RR(key=key, range_end=range_end, **kw))


def op_txn(compare: Any = (), success: Any = (), failure: Any = ()) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_txn=txn_req(compare, success, failure))


_TARGET_FIELD: dict[Any, str] = {
    C.VALUE: "value",
    C.VERSION: "version",
    C.CREATE: "create_revision",
    C.MOD: "mod_revision",
    C.LEASE: "lease",
}


def cmp(key: bytes, target: Any, result: Any, want: Any, range_end: bytes = b"") -> C:
    return C(
        key=key, range_end=range_end, target=target, result=result, **{_TARGET_FIELD[target]: want}
    )


def ok(sm: StateMachine, cmd: tuple[Any, ...]) -> Any:
    res = sm.apply(cmd)
    assert not isinstance(res, StoreError), res
    return res


def get(sm: StateMachine, key: bytes, range_end: bytes = b"", **kw: Any) -> rpc_pb2.RangeResponse:
    return sm.range(RR(key=key, range_end=range_end, **kw))


def keys(resp: rpc_pb2.RangeResponse) -> list[bytes]:
    return [kv.key for kv in resp.kvs]


def everything(sm: StateMachine, rev: int = 0) -> list[kv_pb2.KeyValue]:
    return list(get(sm, b"\0", b"\0", revision=rev).kvs)


def snapshot(sm: StateMachine) -> tuple[Any, ...]:
    """Everything observable about a machine, for 'nothing changed' checks."""
    leases = {i: (lease.ttl, sorted(lease.keys)) for i, lease in sm.leases.items()}
    return sm.revision, sm.compacted, sm.hash(), everything(sm), sm.events_after(0), leases


def rec(key: bytes, value: bytes, create: int, mod: int, version: int, lease: int = 0) -> Record:
    return Record(key, value, create, mod, version, lease)


def msg_id(value: Any) -> str | None:
    """Readable test ids for protobuf parameters."""
    if hasattr(value, "DESCRIPTOR"):
        return text_format.MessageToString(value, as_one_line=True, as_utf8=False)
    return None


@pytest.fixture
def sm() -> StateMachine:
    return StateMachine()


# ---------------------------------------------------------------- revisions


def test_fresh_machine() -> None:
    sm = StateMachine()
    assert (sm.revision, sm.compacted, sm.key_count()) == (1, -1, 0)  # etcd: -1 when fresh
    assert sm.apply(("barrier",)) == 1
    assert sm.events_after(0) == []
    assert everything(sm) == []


def test_put_bumps_revision_and_reports_it(sm: StateMachine) -> None:
    assert ok(sm, put(b"a")).header.revision == 2
    assert ok(sm, put(b"a")).header.revision == 3
    assert ok(sm, put(b"b")).header.revision == 4
    assert sm.revision == 4
    assert sm.apply(("barrier",)) == 4


def test_delete_of_nothing_does_not_bump(sm: StateMachine) -> None:
    ok(sm, put(b"a"))
    resp = ok(sm, delete(b"zzz"))
    assert (resp.deleted, resp.header.revision, sm.revision) == (0, 2, 2)
    resp = ok(sm, delete(b"x", b"y"))
    assert (resp.deleted, sm.revision) == (0, 2)
    resp = ok(sm, delete(b"a"))
    assert (resp.deleted, resp.header.revision, sm.revision) == (1, 3, 3)


def test_delete_range_is_one_revision(sm: StateMachine) -> None:
    for k in (b"p/1", b"p/2", b"p/3", b"q"):
        ok(sm, put(k))
    resp = ok(sm, delete(b"p/", prefix_end(b"p/")))
    assert (resp.deleted, sm.revision) == (3, 6)
    assert [(e.revision, e.key, e.is_delete) for e in sm.events_after(5)] == [
        (6, b"p/1", True),
        (6, b"p/2", True),
        (6, b"p/3", True),
    ]
    assert keys(get(sm, b"\0", b"\0")) == [b"q"]


def test_txn_writes_share_one_revision(sm: StateMachine) -> None:
    ok(sm, put(b"gone"))
    resp = ok(sm, txn(success=[op_put(b"a"), op_put(b"b"), op_del(b"gone")]))
    assert resp.succeeded and resp.header.revision == 3 and sm.revision == 3
    assert {kv.mod_revision for kv in get(sm, b"a", b"c").kvs} == {3}
    assert [(e.revision, e.key) for e in sm.events_after(2)] == [(3, b"a"), (3, b"b"), (3, b"gone")]


@pytest.mark.parametrize(
    "cmd",
    [
        txn(success=[op_get(b"a")]),
        txn(compare=[cmp(b"a", C.VERSION, C.EQUAL, 99)], success=[op_put(b"a")]),  # no else
        txn(success=[op_del(b"missing")]),  # etcd 3.4: a txn changing nothing keeps the revision
        txn(),
        ("compact", 2),
        ("lease_grant", 5, 10),
        ("lease_keepalive", 5),
        ("barrier",),
        ("member_seed", 1, (("n1", 1, "127.0.0.1:2380"),)),
    ],
)
def test_commands_that_do_not_bump_the_revision(sm: StateMachine, cmd: tuple[Any, ...]) -> None:
    ok(sm, put(b"a"))
    ok(sm, put(b"a"))
    before = sm.events_after(0)
    res = ok(sm, cmd)
    assert sm.revision == 3
    assert sm.events_after(sm.compacted) == [e for e in before if e.revision > sm.compacted]
    if isinstance(res, rpc_pb2.TxnResponse):
        assert res.header.revision == 3


# ----------------------------------------------------- create/mod/version


def test_key_metadata_across_updates_delete_and_recreate(sm: StateMachine) -> None:
    ok(sm, put(b"k", b"1"))  # rev 2
    ok(sm, put(b"other"))  # rev 3
    ok(sm, put(b"k", b"2"))  # rev 4
    ok(sm, put(b"k", b"3"))  # rev 5
    assert sm.get(b"k") == rec(b"k", b"3", create=2, mod=5, version=3)
    ok(sm, delete(b"k"))  # rev 6
    assert sm.get(b"k") is None
    ok(sm, put(b"k", b"again"))  # rev 7: a new life, version restarts
    assert sm.get(b"k") == rec(b"k", b"again", create=7, mod=7, version=1)
    assert get(sm, b"k").kvs[0] == kv_pb2.KeyValue(
        key=b"k", value=b"again", create_revision=7, mod_revision=7, version=1
    )
    ok(sm, txn(success=[op_put(b"k", b"t")]))  # rev 8
    assert sm.get(b"k") == rec(b"k", b"t", create=7, mod=8, version=2)


def test_key_metadata_matches_a_simple_model() -> None:
    rng = random.Random(11)
    sm = StateMachine()
    model: dict[bytes, tuple[bytes, int, int, int]] = {}  # key -> value, create, mod, version
    rev = 1
    for i in range(600):
        k = b"k%d" % rng.randrange(6)
        if rng.random() < 0.7:
            v = b"%d" % i
            ok(sm, put(k, v))
            rev += 1
            _, create, _, version = model.get(k, (b"", rev, 0, 0))
            model[k] = (v, create, rev, version + 1)
        else:
            resp = ok(sm, delete(k))
            assert resp.deleted == (k in model)
            if model.pop(k, None) is not None:
                rev += 1
        assert sm.revision == rev
    got = {
        kv.key: (kv.value, kv.create_revision, kv.mod_revision, kv.version) for kv in everything(sm)
    }
    assert got == model


# ------------------------------------------------------------------ prev_kv


def test_put_prev_kv(sm: StateMachine) -> None:
    resp = ok(sm, put(b"a", b"1", prev_kv=True))
    assert not resp.HasField("prev_kv")  # etcd 3.4: no prev_kv for a new key
    resp = ok(sm, put(b"a", b"2", prev_kv=True))
    assert resp.prev_kv == kv_pb2.KeyValue(
        key=b"a", value=b"1", create_revision=2, mod_revision=2, version=1
    )
    resp = ok(sm, put(b"a", b"3"))
    assert not resp.HasField("prev_kv")


def test_delete_prev_kv(sm: StateMachine) -> None:
    ok(sm, put(b"g/a", b"1"))
    ok(sm, put(b"g/b", b"2"))
    resp = ok(sm, delete(b"g/", b"g0", prev_kv=True))
    assert resp.deleted == 2
    assert [(kv.key, kv.value, kv.mod_revision) for kv in resp.prev_kvs] == [
        (b"g/a", b"1", 2),
        (b"g/b", b"2", 3),
    ]
    ok(sm, put(b"g/c"))
    resp = ok(sm, delete(b"g/c"))
    assert resp.deleted == 1 and list(resp.prev_kvs) == []


def test_ignore_value_and_ignore_lease(sm: StateMachine) -> None:
    ok(sm, ("lease_grant", 7, 60))
    ok(sm, put(b"a", b"keep", lease=7))
    resp = ok(sm, put(b"a", b"", ignore_value=True, prev_kv=True))
    assert resp.prev_kv.value == b"keep"
    # etcd 3.4: ignore_value keeps the value but a Put without a lease drops the lease
    assert sm.get(b"a") == rec(b"a", b"keep", create=2, mod=3, version=2, lease=0)
    assert sm.lease_keys(7) == []
    ok(sm, put(b"a", b"x", lease=7))
    ok(sm, put(b"a", b"y", ignore_lease=True))
    assert sm.get(b"a") == rec(b"a", b"y", create=2, mod=5, version=4, lease=7)
    ok(sm, put(b"a", b"", ignore_value=True, ignore_lease=True))
    assert sm.get(b"a") == rec(b"a", b"y", create=2, mod=6, version=5, lease=7)
    assert sm.lease_keys(7) == [b"a"]


@pytest.mark.parametrize(
    ("kw", "err"),
    [  # etcd 3.4 messages and codes
        ({"ignore_value": True}, KEY_NOT_FOUND),
        ({"ignore_lease": True}, KEY_NOT_FOUND),
        (
            {"ignore_value": True, "value": b"x"},
            StoreError(Code.INVALID_ARGUMENT, "etcdserver: value is provided"),
        ),
        (
            {"ignore_lease": True, "lease": 7},
            StoreError(Code.INVALID_ARGUMENT, "etcdserver: lease is provided"),
        ),
        ({"lease": 12345}, LEASE_NOT_FOUND),
    ],
)
def test_bad_puts_store_nothing(sm: StateMachine, kw: dict[str, Any], err: StoreError) -> None:
    ok(sm, ("lease_grant", 7, 60))
    kw = {"value": b"", **kw}
    before = snapshot(sm)
    assert sm.apply(("put", rpc_pb2.PutRequest(key=b"missing", **kw).SerializeToString())) == err
    assert snapshot(sm) == before


@pytest.mark.parametrize(
    "cmd",
    [
        put(b""),
        delete(b""),
        delete(b"", b"z"),
        txn(success=[op_put(b"")]),
        txn(success=[op_del(b"")]),
        txn(success=[op_get(b"")]),
        txn(compare=[cmp(b"", C.VERSION, C.EQUAL, 0)]),
        txn(success=[op_txn(compare=[cmp(b"", C.VERSION, C.EQUAL, 0)])]),
        txn(success=[op_put(b"a"), op_txn(success=[op_put(b"")])]),
        txn(failure=[op_put(b"a"), op_put(b"")]),  # checked even in the branch not taken
    ],
)
def test_empty_key_is_rejected_and_nothing_stored(sm: StateMachine, cmd: tuple[Any, ...]) -> None:
    ok(sm, put(b"a"))
    before = snapshot(sm)
    assert sm.apply(cmd) == EMPTY_KEY  # etcd 3.4
    assert snapshot(sm) == before


def test_range_with_empty_key_raises(sm: StateMachine) -> None:
    with pytest.raises(StoreError) as info:
        get(sm, b"")
    assert info.value == EMPTY_KEY


# ------------------------------------------------------------------- range


@pytest.fixture(scope="module")
def data() -> StateMachine:
    """a b c d/1 d/2 e\\xff with distinct revisions; see the table below."""
    sm = StateMachine()
    for cmd in [
        put(b"a", b"a1"),  # rev 2
        put(b"b", b"b1"),  # rev 3
        put(b"c", b"c1"),  # rev 4
        put(b"b", b"b2"),  # rev 5
        put(b"d/1", b"x"),  # rev 6
        put(b"d/2", b"y"),  # rev 7
        put(b"c", b"c2"),  # rev 8
        put(b"c", b"c3"),  # rev 9
        put(b"e\xff", b"z"),  # rev 10
        put(b"tmp"),  # rev 11
        delete(b"tmp"),  # rev 12
    ]:
        ok(sm, cmd)
    return sm


# key   value create mod version
# a     a1    2      2   1
# b     b2    3      5   2
# c     c3    4      9   3
# d/1   x     6      6   1
# d/2   y     7      7   1
# e\xff z     10     10  1
ALL = [b"a", b"b", b"c", b"d/1", b"d/2", b"e\xff"]


@pytest.mark.parametrize(
    ("req", "want", "count", "more"),
    [
        (RR(key=b"a"), [b"a"], 1, False),
        (RR(key=b"nope"), [], 0, False),
        (RR(key=b"d"), [], 0, False),  # a single key, not a prefix
        (RR(key=b"b", range_end=b"d"), [b"b", b"c"], 2, False),
        (RR(key=b"b", range_end=b"\0"), ALL[1:], 5, False),
        (RR(key=b"\0", range_end=b"\0"), ALL, 6, False),
        (RR(key=b"d/", range_end=prefix_end(b"d/")), [b"d/1", b"d/2"], 2, False),
        (RR(key=b"e\xff", range_end=prefix_end(b"e\xff")), [b"e\xff"], 1, False),
        (RR(key=b"z", range_end=b"a"), [], 0, False),  # etcd 3.4: inverted range is empty
        (RR(key=b"\0", range_end=b"\0", limit=2), [b"a", b"b"], 6, True),
        (RR(key=b"\0", range_end=b"\0", limit=6), ALL, 6, False),
        (RR(key=b"\0", range_end=b"\0", limit=100), ALL, 6, False),
        (RR(key=b"\0", range_end=b"\0", count_only=True), [], 6, False),
        (RR(key=b"\0", range_end=b"\0", count_only=True, limit=2), [], 6, False),  # etcd 3.4
        # sorting; ties keep key order (etcd 3.4 gives the same for these)
        (RR(key=b"\0", range_end=b"\0", sort_order=RR.DESCEND), ALL[::-1], 6, False),
        (RR(key=b"\0", range_end=b"\0", sort_order=RR.ASCEND), ALL, 6, False),
        (
            RR(key=b"\0", range_end=b"\0", sort_target=RR.VERSION),  # NONE + non-KEY = ascend
            [b"a", b"d/1", b"d/2", b"e\xff", b"b", b"c"],
            6,
            False,
        ),
        (
            RR(key=b"\0", range_end=b"\0", sort_target=RR.VERSION, sort_order=RR.DESCEND),
            [b"c", b"b", b"a", b"d/1", b"d/2", b"e\xff"],
            6,
            False,
        ),
        (
            RR(key=b"\0", range_end=b"\0", sort_target=RR.MOD, sort_order=RR.DESCEND, limit=2),
            [b"e\xff", b"c"],
            6,
            True,
        ),
        (
            RR(key=b"\0", range_end=b"\0", sort_target=RR.CREATE, sort_order=RR.ASCEND),
            ALL,
            6,
            False,
        ),
        (
            RR(key=b"\0", range_end=b"\0", sort_target=RR.CREATE, sort_order=RR.DESCEND),
            ALL[::-1],
            6,
            False,
        ),
        (
            RR(key=b"\0", range_end=b"\0", sort_target=RR.VALUE, sort_order=RR.DESCEND),
            [b"e\xff", b"d/2", b"d/1", b"c", b"b", b"a"],
            6,
            False,
        ),
        (
            RR(key=b"\0", range_end=b"\0", sort_target=RR.VALUE, sort_order=RR.ASCEND, limit=1),
            [b"a"],
            6,
            True,
        ),
        # revision filters; etcd 3.4 counts the keys in range *before* filtering
        (RR(key=b"\0", range_end=b"\0", min_mod_revision=7), [b"c", b"d/2", b"e\xff"], 6, False),
        (RR(key=b"\0", range_end=b"\0", max_mod_revision=5), [b"a", b"b"], 6, False),
        (
            RR(key=b"\0", range_end=b"\0", min_create_revision=4),
            [b"c", b"d/1", b"d/2", b"e\xff"],
            6,
            False,
        ),
        (RR(key=b"\0", range_end=b"\0", max_create_revision=3), [b"a", b"b"], 6, False),
        (
            RR(key=b"\0", range_end=b"\0", min_mod_revision=6, max_mod_revision=8),
            [b"d/1", b"d/2"],
            6,
            False,
        ),
        (
            RR(key=b"\0", range_end=b"\0", min_create_revision=3, max_create_revision=6),
            [b"b", b"c", b"d/1"],
            6,
            False,
        ),
        (RR(key=b"\0", range_end=b"\0", min_mod_revision=7, limit=1), [b"c"], 6, True),
        (
            RR(key=b"\0", range_end=b"\0", min_mod_revision=7, limit=3),
            [b"c", b"d/2", b"e\xff"],
            6,
            False,
        ),
        (RR(key=b"\0", range_end=b"\0", max_create_revision=3, count_only=True), [], 6, False),
        (
            RR(
                key=b"\0",
                range_end=b"\0",
                min_mod_revision=7,
                sort_target=RR.MOD,
                sort_order=RR.DESCEND,
            ),
            [b"e\xff", b"c", b"d/2"],
            6,
            False,
        ),
        (RR(key=b"a", range_end=b"c", min_mod_revision=100), [], 2, False),
    ],
    ids=msg_id,
)
def test_range(data: StateMachine, req: RR, want: list[bytes], count: int, more: bool) -> None:
    resp = data.range(req)
    assert (keys(resp), resp.count, resp.more) == (want, count, more)


def test_range_returns_full_records_and_keys_only(data: StateMachine) -> None:
    assert list(get(data, b"a", b"c").kvs) == [
        kv_pb2.KeyValue(key=b"a", value=b"a1", create_revision=2, mod_revision=2, version=1),
        kv_pb2.KeyValue(key=b"b", value=b"b2", create_revision=3, mod_revision=5, version=2),
    ]
    resp = get(data, b"a", b"c", keys_only=True)
    assert [(kv.key, kv.value, kv.mod_revision, kv.version) for kv in resp.kvs] == [
        (b"a", b"", 2, 1),
        (b"b", b"", 5, 2),
    ]


def test_range_at_old_revisions(data: StateMachine) -> None:
    at4 = everything(data, 4)
    assert [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) for kv in at4] == [
        (b"a", b"a1", 2, 2, 1),
        (b"b", b"b1", 3, 3, 1),
        (b"c", b"c1", 4, 4, 1),
    ]
    assert keys(get(data, b"\0", b"\0", revision=1)) == []
    assert keys(get(data, b"t", b"u", revision=11)) == [b"tmp"]  # deleted at 12
    assert keys(get(data, b"t", b"u", revision=12)) == []
    at8 = get(data, b"\0", b"\0", revision=8, limit=2, sort_target=RR.MOD, sort_order=RR.DESCEND)
    assert (keys(at8), at8.count, at8.more) == ([b"c", b"d/2"], 5, True)
    assert get(data, b"c", revision=8).kvs[0].value == b"c2"
    assert get(data, b"c", revision=8, count_only=True).count == 1
    assert everything(data, data.revision) == everything(data, 0) == everything(data)


def test_range_at_every_revision_matches_what_was_live_then() -> None:
    rng = random.Random(5)
    sm = StateMachine(history_limit=10_000)
    seen = {1: everything(sm)}
    ok(sm, ("lease_grant", 1, 10))
    for _ in range(400):
        cmds = random_commands(rng, 1, lease_ids=[1, 2])
        sm.apply(cmds[0])
        if rng.random() < 0.02:
            sm.apply(("lease_grant", rng.choice([1, 2]), 10))
        seen[sm.revision] = everything(sm)
    assert sm.revision > 150 and 0 < sm.compacted < sm.revision - 50
    for rev, kvs in seen.items():
        if rev < sm.compacted:
            with pytest.raises(StoreError):
                everything(sm, rev)
            continue
        assert everything(sm, rev) == kvs, rev
        want = [kv for kv in kvs if kv.key.startswith(b"k1")]
        assert list(get(sm, b"k1", prefix_end(b"k1"), revision=rev).kvs) == want


def test_range_revision_errors(sm: StateMachine) -> None:
    for v in (b"1", b"2", b"3"):
        ok(sm, put(b"c/x", v))  # revs 2, 3, 4
    with pytest.raises(StoreError) as info:
        get(sm, b"c/x", revision=5)
    assert info.value == FUTURE and info.value.code.grpc.name == "OUT_OF_RANGE"
    ok(sm, ("compact", 3))
    with pytest.raises(StoreError) as info:
        get(sm, b"c/x", revision=2)
    assert info.value == COMPACTED
    # etcd 3.4: the compacted revision itself is still readable
    assert get(sm, b"c/x", revision=3).kvs[0].value == b"2"
    assert get(sm, b"c/x", revision=4).kvs[0].value == b"3"
    assert get(sm, b"c/x").kvs[0].value == b"3"


# --------------------------------------------------------------- compares


@pytest.fixture
def cmp_sm() -> StateMachine:
    """k: value b"m", create 2, mod 3, version 2, lease 7; g/a=1, g/b=2."""
    sm = StateMachine()
    ok(sm, ("lease_grant", 7, 60))
    ok(sm, put(b"k", b"x"))
    ok(sm, put(b"k", b"m", lease=7))
    ok(sm, put(b"g/a", b"1"))
    ok(sm, put(b"g/b", b"2"))
    return sm


EQ, NE, GT, LT = C.EQUAL, C.NOT_EQUAL, C.GREATER, C.LESS


@pytest.mark.parametrize(
    ("compare", "holds"),
    [
        (cmp(b"k", C.VALUE, EQ, b"m"), True),
        (cmp(b"k", C.VALUE, EQ, b"x"), False),
        (cmp(b"k", C.VALUE, NE, b"x"), True),
        (cmp(b"k", C.VALUE, NE, b"m"), False),
        (cmp(b"k", C.VALUE, GT, b"l"), True),
        (cmp(b"k", C.VALUE, GT, b"m"), False),
        (cmp(b"k", C.VALUE, LT, b"m\0"), True),  # bytewise, shorter is smaller
        (cmp(b"k", C.VALUE, LT, b"a"), False),
        (cmp(b"k", C.VERSION, EQ, 2), True),
        (cmp(b"k", C.VERSION, NE, 2), False),
        (cmp(b"k", C.VERSION, GT, 1), True),
        (cmp(b"k", C.VERSION, GT, 2), False),
        (cmp(b"k", C.VERSION, LT, 3), True),
        (cmp(b"k", C.VERSION, LT, 2), False),
        (cmp(b"k", C.CREATE, EQ, 2), True),
        (cmp(b"k", C.CREATE, NE, 2), False),
        (cmp(b"k", C.CREATE, GT, 1), True),
        (cmp(b"k", C.CREATE, LT, 2), False),
        (cmp(b"k", C.MOD, EQ, 3), True),
        (cmp(b"k", C.MOD, NE, 2), True),
        (cmp(b"k", C.MOD, GT, 3), False),
        (cmp(b"k", C.MOD, LT, 4), True),
        (cmp(b"k", C.LEASE, EQ, 7), True),
        (cmp(b"k", C.LEASE, EQ, 0), False),
        (cmp(b"k", C.LEASE, NE, 0), True),
        (cmp(b"k", C.LEASE, GT, 6), True),
        (cmp(b"k", C.LEASE, LT, 7), False),
        # a missing key compares as an empty KeyValue, except VALUE which always fails (etcd 3.4)
        (cmp(b"missing", C.VERSION, EQ, 0), True),
        (cmp(b"missing", C.VERSION, GT, 0), False),
        (cmp(b"missing", C.CREATE, EQ, 0), True),
        (cmp(b"missing", C.CREATE, LT, 5), True),
        (cmp(b"missing", C.MOD, EQ, 0), True),
        (cmp(b"missing", C.LEASE, EQ, 0), True),
        (cmp(b"missing", C.VALUE, EQ, b""), False),
        (cmp(b"missing", C.VALUE, NE, b"1"), False),
        (cmp(b"missing", C.VALUE, LT, b"z"), False),
        # range compares must hold for every key in the range
        (cmp(b"g/", C.VERSION, GT, 0, b"g0"), True),
        (cmp(b"g/", C.VALUE, EQ, b"1", b"g0"), False),
        (cmp(b"g/", C.VALUE, LT, b"3", b"g0"), True),
        (cmp(b"g/", C.MOD, GT, 3, b"g0"), True),
        (cmp(b"g/", C.MOD, GT, 4, b"g0"), False),
        (cmp(b"g/", C.VERSION, GT, 0, b"\0"), True),  # "\0": every key >= g/
        (cmp(b"a", C.VERSION, GT, 0, b"\0"), True),
        (cmp(b"a", C.LEASE, EQ, 0, b"\0"), False),  # k has a lease
        # a range with no keys compares as a missing key (etcd 3.4)
        (cmp(b"n/", C.VERSION, EQ, 0, b"n0"), True),
        (cmp(b"n/", C.VERSION, GT, 0, b"n0"), False),
        (cmp(b"n/", C.VERSION, NE, 0, b"n0"), False),
        (cmp(b"n/", C.CREATE, EQ, 0, b"n0"), True),
        (cmp(b"n/", C.CREATE, GT, 0, b"n0"), False),
        (cmp(b"n/", C.MOD, EQ, 0, b"n0"), True),
        (cmp(b"n/", C.LEASE, EQ, 0, b"n0"), True),
        (cmp(b"n/", C.VALUE, EQ, b"", b"n0"), False),
        (cmp(b"n/", C.VALUE, NE, b"x", b"n0"), False),
    ],
    ids=msg_id,
)
def test_compare(cmp_sm: StateMachine, compare: C, holds: bool) -> None:
    before = cmp_sm.revision
    resp = ok(cmp_sm, txn(compare=[compare], success=[op_get(b"k")], failure=[op_get(b"g/a")]))
    assert resp.succeeded is holds
    assert resp.responses[0].response_range.kvs[0].key == (b"k" if holds else b"g/a")
    assert cmp_sm.revision == before


def test_all_compares_must_hold(cmp_sm: StateMachine) -> None:
    true, false = cmp(b"k", C.VERSION, EQ, 2), cmp(b"k", C.VERSION, EQ, 3)
    assert ok(cmp_sm, txn(compare=[true, true])).succeeded
    assert not ok(cmp_sm, txn(compare=[true, false])).succeeded
    assert not ok(cmp_sm, txn(compare=[false, true])).succeeded
    assert ok(cmp_sm, txn(compare=[])).succeeded


# ---------------------------------------------------------------------- txn


def test_txn_branches(sm: StateMachine) -> None:
    ok(sm, put(b"lock", b"me"))
    create_if_absent = txn(
        compare=[cmp(b"obj", C.CREATE, EQ, 0)],
        success=[op_put(b"obj", b"1")],
        failure=[op_get(b"obj")],
    )
    first = ok(sm, create_if_absent)
    assert first.succeeded and first.responses[0].WhichOneof("response") == "response_put"
    second = ok(sm, create_if_absent)
    assert not second.succeeded
    assert second.responses[0].response_range.kvs[0].value == b"1"
    assert second.header.revision == sm.revision == 3


def test_range_inside_txn_sees_earlier_writes_of_the_txn(sm: StateMachine) -> None:
    ok(sm, put(b"b"))
    resp = ok(sm, txn(success=[op_put(b"a", b"x"), op_get(b"a"), op_del(b"b"), op_get(b"b")]))
    kvs = resp.responses[1].response_range.kvs
    # etcd 3.4: the range sees the put at the txn's own revision
    assert [(kv.key, kv.create_revision, kv.mod_revision) for kv in kvs] == [(b"a", 3, 3)]
    assert resp.responses[2].response_delete_range.deleted == 1
    assert resp.responses[3].response_range.count == 0


def test_nested_txn(sm: StateMachine) -> None:
    ok(sm, put(b"flag", b"on"))
    resp = ok(
        sm,
        txn(
            compare=[cmp(b"flag", C.VALUE, EQ, b"on")],
            success=[
                op_put(b"outer"),
                op_txn(
                    compare=[cmp(b"flag", C.VERSION, GT, 5)],
                    success=[op_put(b"inner-yes")],
                    failure=[op_put(b"inner-no"), op_txn(success=[op_put(b"deep")])],
                ),
            ],
        ),
    )
    assert resp.succeeded
    inner = resp.responses[1].response_txn
    assert not inner.succeeded
    assert inner.responses[1].response_txn.succeeded
    assert keys(get(sm, b"\0", b"\0")) == [b"deep", b"flag", b"inner-no", b"outer"]
    assert {kv.mod_revision for kv in get(sm, b"\0", b"\0").kvs} == {2, 3}
    assert sm.revision == 3


def test_nested_txn_put_response_carries_txn_revision(sm: StateMachine) -> None:
    resp = ok(sm, txn(success=[op_put(b"a"), op_txn(success=[op_put(b"b")])]))
    assert resp.header.revision == 2
    assert sm.get(b"b") == rec(b"b", b"v", create=2, mod=2, version=1)


PA, PA2, DA = op_put(b"d/a", b"1"), op_put(b"d/a", b"2"), op_del(b"d/a")


@pytest.mark.parametrize(
    ("success", "failure", "allowed"),
    [  # every case checked against etcd 3.4
        ([PA, PA2], [], False),
        ([PA], [PA2], True),  # the two top-level branches are exclusive
        ([op_txn(success=[PA], failure=[PA2])], [], True),  # so are a nested txn's
        ([op_txn(success=[PA], failure=[DA])], [], True),
        ([PA, op_txn(success=[DA])], [], False),
        ([op_txn(success=[DA]), PA], [], False),
        ([DA, op_txn(success=[PA])], [], False),
        ([PA, op_txn(success=[op_txn(success=[DA])])], [], False),
        ([op_txn(success=[PA]), op_txn(success=[PA2])], [], False),
        ([op_txn(success=[PA]), op_txn(failure=[PA2])], [], False),
        ([op_txn(success=[DA]), op_txn(success=[PA])], [], False),
        ([op_txn(success=[PA]), op_txn(success=[DA])], [], True),  # etcd 3.4's order quirk
        ([op_del(b"d/", b"d0"), PA], [], False),
        ([PA, op_del(b"d/", b"d0")], [], False),
        ([op_del(b"d/", b"d/a"), PA], [], True),  # range_end is exclusive
        ([DA, DA], [], True),  # deleting twice is fine
        ([PA, op_get(b"d/a")], [], True),
        ([PA, op_del(b"d/b")], [], True),
        ([], [PA, PA2], False),  # the branch not taken is checked too
    ],
)
def test_duplicate_keys_in_txn(
    sm: StateMachine, success: list[Any], failure: list[Any], allowed: bool
) -> None:
    ok(sm, put(b"d/a", b"0"))
    before = snapshot(sm)
    res = sm.apply(txn(success=success, failure=failure))
    if allowed:
        assert not isinstance(res, StoreError), res
    else:
        assert res == DUPLICATE
        assert snapshot(sm) == before


def test_failing_op_mid_txn_rolls_back_everything(sm: StateMachine) -> None:
    ok(sm, ("lease_grant", 5, 60))
    ok(sm, put(b"a", b"old", lease=5))
    ok(sm, put(b"b", b"keep"))
    ok(sm, put(b"x/1"))
    before = snapshot(sm)
    res = sm.apply(
        txn(
            success=[
                op_put(b"a", b"new"),  # detaches a from lease 5
                op_del(b"b"),
                op_del(b"x/", b"x0"),
                op_put(b"new"),
                op_put(b"c", lease=999),  # unknown lease: the whole txn fails
            ]
        )
    )
    assert res == LEASE_NOT_FOUND  # etcd 3.4
    assert snapshot(sm) == before
    assert sm.get(b"a") == rec(b"a", b"old", create=2, mod=2, version=1, lease=5)
    assert sm.lease_keys(5) == [b"a"]
    assert ok(sm, put(b"z")).header.revision == 5  # the failed txn used no revision


@pytest.mark.parametrize(
    ("ops", "err"),
    [
        ([op_put(b"n1"), op_txn(success=[op_put(b"n2", lease=424242)])], LEASE_NOT_FOUND),
        ([op_put(b"n1"), op_put(b"missing", ignore_value=True, value=b"")], KEY_NOT_FOUND),
        ([op_del(b"a"), op_put(b"missing", ignore_lease=True)], KEY_NOT_FOUND),
        ([op_put(b"n1"), rpc_pb2.RequestOp()], KEY_NOT_FOUND),  # etcd 3.4: an empty RequestOp
    ],
)
def test_failing_txn_stores_nothing(sm: StateMachine, ops: list[Any], err: StoreError) -> None:
    ok(sm, put(b"a"))
    before = snapshot(sm)
    assert sm.apply(txn(success=ops)) == err
    assert snapshot(sm) == before


def test_bad_sort_target_mid_txn_rolls_back(sm: StateMachine) -> None:
    ok(sm, put(b"a", b"1"))
    before = snapshot(sm)
    bad_sort = op_get(b"a", sort_target=99, sort_order=RR.ASCEND)  # no such sort target
    res = sm.apply(txn(success=[op_put(b"a", b"2"), op_del(b"zz"), op_put(b"b"), bad_sort]))
    assert isinstance(res, StoreError) and res.code == Code.INVALID_ARGUMENT
    assert snapshot(sm) == before


def test_unexpected_exception_mid_txn_rolls_back(
    sm: StateMachine, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok(sm, put(b"a", b"1"))
    before = snapshot(sm)

    def boom(self: StateMachine, req: rpc_pb2.RangeRequest) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(StateMachine, "_range_live", boom)
    res = sm.apply(txn(success=[op_put(b"a", b"2"), op_del(b"zz"), op_put(b"b"), op_get(b"a")]))
    assert isinstance(res, StoreError) and res.code == Code.INTERNAL
    assert snapshot(sm) == before


def puts(prefix: bytes, n: int) -> list[rpc_pb2.RequestOp]:
    return [op_put(b"%s%d" % (prefix, i)) for i in range(n)]


@pytest.mark.parametrize(
    ("cmd", "allowed"),
    [  # etcd 3.4, --max-txn-ops 128 (the default)
        (txn(success=puts(b"s", MAX_TXN_OPS)), True),
        (txn(success=puts(b"s", MAX_TXN_OPS + 1)), False),
        (txn(failure=puts(b"f", MAX_TXN_OPS + 1)), False),
        (txn(compare=[cmp(b"a", C.VERSION, EQ, 0)] * MAX_TXN_OPS), True),
        (txn(compare=[cmp(b"a", C.VERSION, EQ, 0)] * (MAX_TXN_OPS + 1)), False),
        # a nested txn gets what its parent leaves: 128 - max(compares, ops) of the parent
        (txn(success=[*puts(b"o", 99), op_txn(success=puts(b"i", 28))]), True),
        (txn(success=[*puts(b"o", 99), op_txn(success=puts(b"i", 29))]), False),
    ],
)
def test_txn_op_limits(sm: StateMachine, cmd: tuple[Any, ...], allowed: bool) -> None:
    res = sm.apply(cmd)
    if allowed:
        assert not isinstance(res, StoreError), res
    else:
        assert res == TOO_MANY_OPS
        assert sm.revision == 1 and sm.key_count() == 0


# ------------------------------------------------------------------- leases


def test_lease_grant(sm: StateMachine) -> None:
    resp = ok(sm, ("lease_grant", 42, 30))
    assert (resp.ID, resp.TTL, resp.header.revision) == (42, 30, 1)
    assert ok(sm, ("lease_grant", 43, MAX_LEASE_TTL)).TTL == MAX_LEASE_TTL
    assert sorted(sm.leases) == [42, 43]


@pytest.mark.parametrize(
    ("cmd", "err"),
    [  # etcd 3.4 messages and codes
        (
            ("lease_grant", 42, 10),
            StoreError(Code.FAILED_PRECONDITION, "etcdserver: lease already exists"),
        ),
        (
            ("lease_grant", 9, MAX_LEASE_TTL + 1),
            StoreError(Code.OUT_OF_RANGE, "etcdserver: too large lease TTL"),
        ),
        # Mizzen only: the leader picks IDs, so 0 or negative never reaches apply (etcd 3.4
        # takes a negative ID as is)
        (("lease_grant", 0, 10), BAD_LEASE_ID),
        (("lease_grant", -5, 10), BAD_LEASE_ID),
        (("lease_revoke", 777), LEASE_NOT_FOUND),
        (("lease_expire", 777), LEASE_NOT_FOUND),
    ],
)
def test_lease_errors(sm: StateMachine, cmd: tuple[Any, ...], err: StoreError) -> None:
    ok(sm, ("lease_grant", 42, 30))
    before = snapshot(sm)
    assert sm.apply(cmd) == err
    assert snapshot(sm) == before


def test_keys_attach_and_detach_as_their_lease_changes(sm: StateMachine) -> None:
    ok(sm, ("lease_grant", 1, 60))
    ok(sm, ("lease_grant", 2, 60))
    ok(sm, put(b"a", lease=1))
    ok(sm, put(b"b", lease=1))
    assert (sm.lease_keys(1), sm.lease_keys(2)) == ([b"a", b"b"], [])
    ok(sm, put(b"a", lease=2))
    assert (sm.lease_keys(1), sm.lease_keys(2)) == ([b"b"], [b"a"])
    ok(sm, put(b"a"))  # no lease
    assert (sm.lease_keys(1), sm.lease_keys(2)) == ([b"b"], [])
    ok(sm, put(b"a", lease=2))
    ok(sm, put(b"a", b"new", ignore_lease=True))
    assert sm.lease_keys(2) == [b"a"]
    ok(sm, delete(b"a"))
    assert sm.lease_keys(2) == []
    ok(sm, txn(success=[op_put(b"t1", lease=2), op_put(b"t2", lease=2), op_put(b"b", lease=2)]))
    assert (sm.lease_keys(1), sm.lease_keys(2)) == ([], [b"b", b"t1", b"t2"])
    assert sm.lease_keys(999) == []


@pytest.mark.parametrize("op", ["lease_revoke", "lease_expire"])
def test_revoke_deletes_attached_keys_in_one_revision(sm: StateMachine, op: str) -> None:
    ok(sm, ("lease_grant", 900, 60))
    ok(sm, ("lease_grant", 901, 60))
    ok(sm, put(b"f/b", b"2", lease=900))  # rev 2
    ok(sm, put(b"f/a", b"1", lease=900))  # rev 3
    ok(sm, put(b"f/c", lease=900))  # rev 4
    ok(sm, put(b"f/c"))  # rev 5: detached
    ok(sm, put(b"f/d", lease=901))  # rev 6
    ok(sm, op_cmd := (op, 900))
    assert sm.revision == 7  # etcd 3.4: one revision for the whole revoke
    assert keys(get(sm, b"f/", b"f0")) == [b"f/c", b"f/d"]
    events = sm.events_after(6)
    assert [(e.revision, e.key, e.is_delete) for e in events] == [
        (7, b"f/a", True),
        (7, b"f/b", True),
    ]
    assert events[0].prev == rec(b"f/a", b"1", create=3, mod=3, version=1, lease=900)
    assert events[0].to_proto(with_prev=True) == kv_pb2.Event(
        type=kv_pb2.Event.DELETE,
        kv=kv_pb2.KeyValue(key=b"f/a", mod_revision=7),
        prev_kv=events[0].prev.to_proto(),
    )
    assert 900 not in sm.leases and sm.lease_keys(901) == [b"f/d"]
    assert sm.apply(op_cmd) == LEASE_NOT_FOUND


def test_revoke_of_a_lease_without_keys_keeps_the_revision(sm: StateMachine) -> None:
    ok(sm, ("lease_grant", 3, 60))
    assert isinstance(ok(sm, ("lease_revoke", 3)), rpc_pb2.LeaseRevokeResponse)
    assert sm.revision == 1 and sm.leases == {}  # etcd 3.4


def test_lease_id_can_be_granted_again_after_revoke(sm: StateMachine) -> None:
    ok(sm, ("lease_grant", 3, 60))
    ok(sm, put(b"a", lease=3))
    ok(sm, ("lease_revoke", 3))
    ok(sm, ("lease_grant", 3, 5))
    assert sm.lease_keys(3) == [] and sm.leases[3].ttl == 5


def test_keepalive(sm: StateMachine) -> None:
    ok(sm, ("lease_grant", 8, 25))
    assert sm.apply(("lease_keepalive", 8)) == KeepAliveResult(8, 25)
    assert sm.apply(("lease_keepalive", 9)) == KeepAliveResult(9, 0)  # etcd 3.4: TTL 0
    assert sm.revision == 1


def test_member_attrs(sm: StateMachine) -> None:  # more in test_membership_state.py
    sm.apply(("member_seed", 1, (("n1", 1, "127.0.0.1:2380"),)))
    assert sm.apply(("member_attrs", "n1", ["http://a:1", "http://b:2"])).client_urls == (
        "http://a:1",
        "http://b:2",
    )
    assert sm.apply(("member_attrs", "n1", ("http://c:3",))).client_urls == ("http://c:3",)


# ------------------------------------------------------------ event history


def test_events_after(sm: StateMachine) -> None:
    ok(sm, put(b"a", b"1"))  # 2
    ok(sm, put(b"a", b"2"))  # 3
    ok(sm, delete(b"a"))  # 4
    ok(sm, txn(success=[op_put(b"x"), op_put(b"y")]))  # 5
    evs = sm.events_after(1)
    assert [(e.revision, e.key, e.is_delete) for e in evs] == [
        (2, b"a", False),
        (3, b"a", False),
        (4, b"a", True),
        (5, b"x", False),
        (5, b"y", False),
    ]
    assert evs[0] == Event(2, b"a", rec(b"a", b"1", 2, 2, 1), None)
    assert evs[1].prev == evs[0].record
    assert evs[2] == Event(4, b"a", None, rec(b"a", b"2", 2, 3, 2))
    assert evs[0].record is not None and evs[1].record is not None
    assert evs[1].to_proto(with_prev=True) == kv_pb2.Event(
        type=kv_pb2.Event.PUT, kv=evs[1].record.to_proto(), prev_kv=evs[0].record.to_proto()
    )
    assert not evs[1].to_proto(with_prev=False).HasField("prev_kv")
    assert not evs[0].to_proto(with_prev=True).HasField("prev_kv")
    assert evs[2].to_proto(with_prev=False) == kv_pb2.Event(
        type=kv_pb2.Event.DELETE, kv=kv_pb2.KeyValue(key=b"a", mod_revision=4)
    )
    assert sm.events_after(0) == evs
    assert sm.events_after(4) == evs[3:]
    assert sm.events_after(5) == []
    assert sm.events_after(99) == []


def test_history_limit_compacts_whole_revisions() -> None:
    sm = StateMachine(history_limit=3)
    ok(sm, txn(success=[op_put(b"a"), op_put(b"b")]))  # 2: two events
    ok(sm, put(b"c"))  # 3
    assert (len(sm.events_after(0)), sm.compacted) == (3, -1)
    ok(sm, put(b"d"))  # 4: 4 events > 3, so all of revision 2 goes
    assert sm.compacted == 2
    assert [e.revision for e in sm.events_after(0)] == [3, 4]
    ok(sm, txn(success=[op_put(b"e"), op_put(b"f"), op_put(b"g")]))  # 5: 5 events
    assert sm.compacted == 4
    assert [e.revision for e in sm.events_after(0)] == [5, 5, 5]
    assert keys(get(sm, b"\0", b"\0", revision=4)) == [b"a", b"b", b"c", b"d"]
    with pytest.raises(StoreError) as info:
        get(sm, b"a", revision=3)
    assert info.value == COMPACTED
    assert sm.apply(("compact", 4)) == COMPACTED
    assert sm.revision == 5 and sm.key_count() == 7


def test_history_limit_smaller_than_one_revision() -> None:
    sm = StateMachine(history_limit=1)
    ok(sm, put(b"a"))
    ok(sm, txn(success=[op_put(b"b"), op_put(b"c"), op_put(b"d")]))
    assert (sm.revision, sm.compacted, sm.events_after(0)) == (3, 3, [])
    # the current revision is the compacted one and stays readable, as in etcd 3.4
    assert keys(get(sm, b"\0", b"\0", revision=3)) == [b"a", b"b", b"c", b"d"]


def test_explicit_compact(sm: StateMachine) -> None:
    for k in (b"a", b"b", b"c", b"d"):
        ok(sm, put(k))  # revs 2..5
    resp = ok(sm, ("compact", 3))
    assert isinstance(resp, rpc_pb2.CompactionResponse) and resp.header.revision == 5
    assert (sm.compacted, sm.revision) == (3, 5)
    assert [e.revision for e in sm.events_after(sm.compacted)] == [4, 5]
    assert sm.apply(("compact", 3)) == COMPACTED  # etcd 3.4
    assert sm.apply(("compact", 2)) == COMPACTED
    assert sm.apply(("compact", 6)) == FUTURE
    ok(sm, ("compact", 5))  # the current revision may be compacted
    assert (sm.compacted, sm.events_after(0)) == (5, [])
    assert keys(get(sm, b"\0", b"\0")) == [b"a", b"b", b"c", b"d"]
    assert keys(get(sm, b"\0", b"\0", revision=5)) == [b"a", b"b", b"c", b"d"]
    ok(sm, put(b"e"))
    assert [e.key for e in sm.events_after(5)] == [b"e"]


# -------------------------------------------------------- batches and retries


def test_apply_batch_returns_one_result_per_command(sm: StateMachine) -> None:
    res = sm.apply_batch("p1", 1, 1, [put(b"a"), put(b""), ("barrier",), delete(b"a")])
    assert [type(r).__name__ for r in res] == [
        "PutResponse",
        "StoreError",
        "int",
        "DeleteRangeResponse",
    ]
    assert res[1] == EMPTY_KEY and res[2] == 2 and sm.revision == 3


def test_repeated_batch_is_not_applied_twice(sm: StateMachine) -> None:
    first = sm.apply_batch("p1", 1, 1, [put(b"a", b"1"), put(b"a", b"2")])
    state = snapshot(sm)
    again = sm.apply_batch("p1", 1, 1, [put(b"a", b"1"), put(b"a", b"2")])
    assert again is first
    assert snapshot(sm) == state
    # another proposer's seq 1 is a different batch
    sm.apply_batch("p2", 1, 1, [put(b"a", b"3")])
    assert sm.revision == 4 and sm.get(b"a") == rec(b"a", b"3", create=2, mod=4, version=3)
    # still remembered after other batches
    assert sm.apply_batch("p1", 1, 1, []) is first
    second = sm.apply_batch("p1", 2, 1, [put(b"b")])
    assert sm.apply_batch("p1", 2, 1, [put(b"b")]) is second
    assert sm.revision == 5


def test_batches_below_the_floor_are_refused(sm: StateMachine) -> None:
    sm.apply_batch("p1", 1, 1, [put(b"a")])
    sm.apply_batch("p1", 3, 3, [put(b"c")])  # the proposer gave up on 1 and 2
    state = snapshot(sm)
    for seq in (1, 2):
        res = sm.apply_batch("p1", seq, 1, [put(b"late"), put(b"late2")])
        assert res == [ABANDONED, ABANDONED]
    assert snapshot(sm) == state
    assert sm.apply_batch("p1", 4, 3, [put(b"d")])[0].header.revision == 4


def test_results_are_remembered_for_the_last_batches(sm: StateMachine) -> None:
    results = [
        sm.apply_batch("p", seq, 1, [put(b"k")]) for seq in range(1, DEDUP_BATCHES_PER_PROPOSER + 1)
    ]
    rev = sm.revision
    for seq in (1, DEDUP_BATCHES_PER_PROPOSER):
        assert sm.apply_batch("p", seq, 1, [put(b"k")]) is results[seq - 1]
    assert sm.revision == rev


def test_proposer_sessions_are_bounded() -> None:
    sm = StateMachine()
    for i in range(DEDUP_PROPOSERS + 5):
        sm.apply_batch(f"p{i}", 1, 1, [("barrier",)])
    assert len(sm._sessions) == DEDUP_PROPOSERS
    assert "p0" not in sm._sessions and f"p{DEDUP_PROPOSERS + 4}" in sm._sessions


# ---------------------------------------------------------- apply never raises


def _truncated(cmd: tuple[str, bytes]) -> tuple[str, bytes]:
    return (cmd[0], cmd[1][: len(cmd[1]) // 2])


@pytest.mark.parametrize(
    ("cmd", "code"),
    [
        (("nope",), Code.INVALID_ARGUMENT),
        (("PUT", put(b"a")[1]), Code.INVALID_ARGUMENT),
        ((b"put", put(b"a")[1]), Code.INVALID_ARGUMENT),
        (([1, 2],), Code.INVALID_ARGUMENT),
        ((), Code.INTERNAL),
        (None, Code.INTERNAL),
        (42, Code.INTERNAL),
        (("put",), Code.INTERNAL),
        (("put", None), Code.INTERNAL),
        (("put", "a string"), Code.INTERNAL),
        (_truncated(put(b"a-long-key", b"a-long-value")), Code.INTERNAL),
        (("put", b"\xff\xff\xff\xff"), Code.INTERNAL),
        (_truncated(delete(b"a-long-key", b"a-long-key-end")), Code.INTERNAL),
        (_truncated(txn(success=[op_put(b"a-long-key", b"value")])), Code.INTERNAL),
        (("delete",), Code.INTERNAL),
        (("txn", 5), Code.INTERNAL),
        (("compact",), Code.INTERNAL),
        (("compact", "x"), Code.INTERNAL),
        (("compact", None), Code.INTERNAL),
        (("lease_grant", 1), Code.INTERNAL),
        (("lease_grant", "a", 1), Code.INTERNAL),
        (("lease_revoke",), Code.INTERNAL),
        (("lease_expire", object()), Code.INTERNAL),
        (("lease_keepalive", None), Code.INTERNAL),
        (("member_attrs", "n"), Code.INTERNAL),
        (("member_attrs", "n", None), Code.INTERNAL),
    ],
)
def test_apply_never_raises(cmd: Any, code: Code) -> None:
    sm = StateMachine()
    ok(sm, ("lease_grant", 1, 60))
    ok(sm, put(b"a", lease=1))
    before = snapshot(sm)
    members = dict(sm.members)
    res = sm.apply(cmd)
    assert isinstance(res, StoreError) and res.code == code, res
    assert snapshot(sm) == before and sm.members == members
    assert ok(sm, put(b"a")).header.revision == 3  # and the machine still works
    res = sm.apply_batch("p", 1, 1, [cmd, put(b"b")])
    assert isinstance(res[0], StoreError) and res[1].header.revision == 4


def test_a_valid_message_of_the_wrong_type_is_not_a_crash(sm: StateMachine) -> None:
    # A DeleteRangeRequest parsed as a PutRequest: the same field numbers, key only.
    assert ok(sm, ("put", rpc_pb2.DeleteRangeRequest(key=b"k").SerializeToString()))
    assert sm.get(b"k") == rec(b"k", b"", 2, 2, 1)


# ------------------------------------------------------------------ pickling


def _busy_machine() -> StateMachine:
    sm = StateMachine(history_limit=50)
    rng = random.Random(3)
    for seq, cmds in enumerate(random_batches(rng, 120), start=1):
        sm.apply_batch("p1", seq, seq, cmds)
    ok(sm, ("lease_grant", 4242, 77))
    ok(sm, put(b"leased", lease=4242))
    sm.apply(("member_attrs", "n1", ["http://127.0.0.1:2379"]))
    return sm


def test_pickle_round_trip_preserves_everything() -> None:
    sm = _busy_machine()
    assert sm.compacted > 0 and sm.leases and sm.events_after(0)
    copy = pickle.loads(pickle.dumps(sm))
    assert snapshot(copy) == snapshot(sm)
    assert copy.hash() == sm.hash()
    assert copy.history_limit == sm.history_limit and copy.members == sm.members
    assert copy.lease_keys(4242) == [b"leased"]
    for rev in range(sm.compacted, sm.revision + 1):
        assert everything(copy, rev) == everything(sm, rev)
    # a retried batch is still recognised after a restore from snapshot
    assert copy.apply_batch("p1", 120, 120, []) == sm.apply_batch("p1", 120, 120, [])
    # and both keep evolving identically
    rng = random.Random(4)
    for seq, cmds in enumerate(random_batches(rng, 60), start=121):
        assert copy.apply_batch("p1", seq, seq, cmds) == sm.apply_batch("p1", seq, seq, cmds)
    assert snapshot(copy) == snapshot(sm)


def test_hash_reflects_the_live_key_space() -> None:
    a, b = StateMachine(), StateMachine()
    assert a.hash() == b.hash()
    ok(a, put(b"k", b"1"))
    assert a.hash() != b.hash()
    ok(b, put(b"k", b"2"))
    assert a.hash() != b.hash()  # same key, different value
    ok(b, put(b"k", b"1"))
    assert a.hash() != b.hash()  # same value, different mod revision and version
    ok(a, put(b"x"))
    ok(a, delete(b"x"))
    ok(b, delete(b"nothing"))
    ok(a, put(b"k", b"1"))
    assert a.hash() != b.hash()  # a is at revision 5, b at 3
    c, d = StateMachine(), StateMachine()
    ok(c, put(b"ab", b"c"))
    ok(d, put(b"a", b"bc"))
    assert c.hash() != d.hash()  # lengths are part of the digest


# ------------------------------------------------------------- determinism


def random_commands(rng: random.Random, n: int, lease_ids: list[int]) -> list[tuple[Any, ...]]:
    """A mix of every command kind, some of them failing, over a small key space."""

    def key() -> bytes:
        return b"k%d/%d" % (rng.randrange(3), rng.randrange(4))

    def some_op() -> rpc_pb2.RequestOp:
        r = rng.random()
        if r < 0.5:
            return op_put(key(), b"%d" % rng.randrange(1000), lease=rng.choice([0, 0, *lease_ids]))
        if r < 0.8:
            return op_del(key())
        return op_get(b"k", prefix_end(b"k"), limit=rng.randrange(3))

    cmds: list[tuple[Any, ...]] = []
    for _ in range(n):
        r = rng.random()
        if r < 0.35:
            cmds.append(
                put(
                    key(),
                    b"%d" % rng.randrange(1000),
                    lease=rng.choice([0, 0, 0, *lease_ids]),
                    prev_kv=rng.random() < 0.5,
                )
            )
        elif r < 0.5:
            k = key()
            cmds.append(delete(k, prefix_end(k[:3]) if rng.random() < 0.3 else b""))
        elif r < 0.75:
            compare = [
                cmp(
                    key(),
                    rng.choice([C.VERSION, C.MOD, C.CREATE]),
                    rng.choice([EQ, NE, GT, LT]),
                    rng.randrange(5),
                )
            ]
            cmds.append(
                txn(
                    compare,
                    [some_op() for _ in range(rng.randrange(4))],
                    [some_op() for _ in range(rng.randrange(3))],
                )
            )
        elif r < 0.82:
            cmds.append(("lease_grant", rng.choice(lease_ids), rng.randrange(1, 100)))
        elif r < 0.88:
            cmds.append((rng.choice(["lease_revoke", "lease_expire"]), rng.choice(lease_ids)))
        elif r < 0.91:
            cmds.append(("lease_keepalive", rng.choice(lease_ids)))
        elif r < 0.95:
            cmds.append(("compact", rng.randrange(1, 1000)))
        elif r < 0.98:
            cmds.append(("barrier",))
        else:
            cmds.append(("bogus", rng.random()))
    return cmds


def random_batches(rng: random.Random, n: int) -> list[list[tuple[Any, ...]]]:
    return [random_commands(rng, rng.randint(1, 5), [1, 2, 3]) for _ in range(n)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_replicas_fed_the_same_commands_agree(seed: int) -> None:
    cmds = random_commands(random.Random(seed), 3000, lease_ids=[1, 2, 3, 4])
    a, b = StateMachine(history_limit=500), StateMachine(history_limit=500)
    results_a = [a.apply(c) for c in cmds[:1500]]
    b_results = [b.apply(c) for c in cmds[:1500]]
    b = pickle.loads(pickle.dumps(b))  # one replica restarts from a snapshot midway
    results_a += [a.apply(c) for c in cmds[1500:]]
    b_results += [b.apply(c) for c in cmds[1500:]]
    assert results_a == b_results
    assert not any(r.code == Code.INTERNAL for r in results_a if isinstance(r, StoreError))
    assert a.revision > 1000 and a.compacted > 0 and a.key_count() > 0
    assert (a.hash(), a.revision, a.compacted) == (b.hash(), b.revision, b.compacted)
    assert a.events_after(0) == b.events_after(0)
    assert snapshot(a) == snapshot(b)
    # lease bookkeeping agrees with the keys
    for lid, lease in a.leases.items():
        assert lease.keys == {kv.key for kv in everything(a) if kv.lease == lid}
    assert all(kv.lease in a.leases for kv in everything(a) if kv.lease)
