"""Alarms in the state machine: etcd 3.4's alarm store and its capped/corrupt appliers.

Every expectation here was checked against a real etcd 3.4.23 (Debian's
etcd-server) through the same gRPC messages (Maintenance.Alarm, KV, Lease).
"""

from __future__ import annotations

import pickle

from protos import rpc_pb2
from store.errors import Code, StoreError
from store.requests import txn_cost
from store.snapshot import for_new_cluster
from store.state_machine import CORRUPT, NO_SPACE, StateMachine

A = rpc_pb2.AlarmRequest
ME = 0x2E1259D415F2A040
NOSPACE_ERR = StoreError(Code.RESOURCE_EXHAUSTED, NO_SPACE)
CORRUPT_ERR = StoreError(Code.DATA_LOSS, CORRUPT)


def put(key: bytes, value: bytes = b"v") -> tuple[str, bytes]:
    return ("put", rpc_pb2.PutRequest(key=key, value=value).SerializeToString())


def txn(
    success: list[rpc_pb2.RequestOp], failure: list[rpc_pb2.RequestOp] | None = None
) -> tuple[str, bytes]:
    req = rpc_pb2.TxnRequest(success=success, failure=failure or [])
    return ("txn", req.SerializeToString())


def op_put(key: bytes) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=b"x"))


def op_range(key: bytes) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key))


def op_delete(key: bytes) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key))


def alarms(resp: rpc_pb2.AlarmResponse) -> list[tuple[int, int]]:
    return [(a.memberID, a.alarm) for a in resp.alarms]


def test_activate_lists_the_alarm_even_when_already_raised() -> None:
    sm = StateMachine()
    for _ in range(2):
        resp = sm.apply(("alarm", A.ACTIVATE, ME, rpc_pb2.NOSPACE))
        assert alarms(resp) == [(ME, rpc_pb2.NOSPACE)]
        assert not resp.HasField("header")  # etcd's AlarmResponse carries none
    assert sm.alarm_list() == [(ME, rpc_pb2.NOSPACE)]


def test_activate_records_any_type_and_member_like_etcd() -> None:
    sm = StateMachine()
    assert alarms(sm.apply(("alarm", A.ACTIVATE, ME, rpc_pb2.NONE))) == [(ME, 0)]
    assert alarms(sm.apply(("alarm", A.ACTIVATE, ME, 9))) == [(ME, 9)]
    assert alarms(sm.apply(("alarm", A.ACTIVATE, 0, rpc_pb2.NOSPACE))) == [(0, 1)]
    assert sm.alarm_list() == [(ME, 0), (0, 1), (ME, 9)]
    assert sm.alarm_list(rpc_pb2.NOSPACE) == [(0, 1)]
    assert sm.apply(put(b"k")) == NOSPACE_ERR  # a NOSPACE of any member caps the store


def test_deactivate_of_an_alarm_not_raised_answers_an_empty_list() -> None:
    sm = StateMachine()
    resp = sm.apply(("alarm", A.DEACTIVATE, ME, rpc_pb2.NOSPACE))
    assert alarms(resp) == []
    sm.apply(("alarm", A.ACTIVATE, ME, rpc_pb2.NOSPACE))
    sm.apply(("alarm", A.ACTIVATE, 777, rpc_pb2.NOSPACE))
    assert alarms(sm.apply(("alarm", A.DEACTIVATE, ME, rpc_pb2.NOSPACE))) == [(ME, 1)]
    assert sm.apply(put(b"k")) == NOSPACE_ERR  # 777's is still raised
    sm.apply(("alarm", A.DEACTIVATE, 777, rpc_pb2.NOSPACE))
    assert isinstance(sm.apply(put(b"k")), rpc_pb2.PutResponse)


def test_unknown_action_is_refused() -> None:
    # etcd 3.4 crashes on this one (a nil response); Mizzen names the field
    err = StateMachine().apply(("alarm", 7, ME, rpc_pb2.NOSPACE))
    assert isinstance(err, StoreError) and err.code == Code.INVALID_ARGUMENT
    assert "action" in err.message


def test_nospace_refuses_put_grant_and_txn_with_top_level_puts_only() -> None:
    sm = StateMachine()
    sm.apply(put(b"k"))
    sm.apply(("lease_grant", 5, 10))
    sm.apply(("alarm", A.ACTIVATE, ME, rpc_pb2.NOSPACE))
    assert sm.apply(put(b"k")) == NOSPACE_ERR
    assert sm.apply(("lease_grant", 6, 10)) == NOSPACE_ERR
    assert sm.apply(txn([op_put(b"k")])) == NOSPACE_ERR
    assert sm.apply(txn([op_range(b"k")], [op_put(b"k")])) == NOSPACE_ERR  # either branch
    assert isinstance(sm.apply(txn([op_range(b"k")])), rpc_pb2.TxnResponse)
    assert isinstance(sm.apply(txn([op_delete(b"zz")])), rpc_pb2.TxnResponse)
    nested = rpc_pb2.RequestOp(request_txn=rpc_pb2.TxnRequest(success=[op_put(b"n")]))
    assert isinstance(sm.apply(txn([nested])), rpc_pb2.TxnResponse)  # etcd 3.4 costs it 0
    assert isinstance(sm.apply(("lease_keepalive", 5)), object)
    assert isinstance(sm.apply(("lease_revoke", 5)), rpc_pb2.LeaseRevokeResponse)
    resp = sm.apply(("delete", rpc_pb2.DeleteRangeRequest(key=b"k").SerializeToString()))
    assert resp.deleted == 1
    assert isinstance(sm.apply(("compact", sm.revision)), rpc_pb2.CompactionResponse)


def test_corrupt_refuses_every_write_but_reads_and_keepalives() -> None:
    sm = StateMachine()
    sm.apply(put(b"k"))
    sm.apply(("lease_grant", 5, 10))
    sm.apply(("alarm", A.ACTIVATE, ME, rpc_pb2.CORRUPT))
    sm.apply(("alarm", A.ACTIVATE, ME, rpc_pb2.NOSPACE))  # CORRUPT wins, as in etcd
    for cmd in (
        put(b"k"),
        ("delete", rpc_pb2.DeleteRangeRequest(key=b"k").SerializeToString()),
        txn([op_delete(b"k")]),
        txn([rpc_pb2.RequestOp(request_txn=rpc_pb2.TxnRequest(success=[op_range(b"k")]))]),
        ("compact", sm.revision),
        ("lease_grant", 6, 10),
        ("lease_revoke", 5),
        ("lease_expire", 5),
    ):
        assert sm.apply(cmd) == CORRUPT_ERR, cmd
    assert isinstance(sm.apply(txn([op_range(b"k")])), rpc_pb2.TxnResponse)
    assert sm.apply(("lease_keepalive", 5)).ttl == 10
    assert sm.range(rpc_pb2.RangeRequest(key=b"k")).count == 1
    sm.apply(("alarm", A.DEACTIVATE, ME, rpc_pb2.CORRUPT))
    assert sm.apply(put(b"k")) == NOSPACE_ERR


def test_size_counts_every_kept_version_once_and_drops_with_compaction() -> None:
    sm = StateMachine()
    assert sm.size_bytes() == 0
    sm.apply(put(b"k", b"x" * 100))
    assert sm.size_bytes() == 101
    sm.apply(put(b"k", b"y" * 50))  # the old version is kept in history
    assert sm.size_bytes() == 51 + 101
    sm.apply(("delete", rpc_pb2.DeleteRangeRequest(key=b"k").SerializeToString()))
    assert sm.size_bytes() == 101 + 51
    sm.apply(("compact", sm.revision))
    assert sm.size_bytes() == 0
    sm.apply(put(b"a", b"1234"))
    bad = txn([op_put(b"a"), op_put(b"a")])  # refused and rolled back
    assert isinstance(sm.apply(bad), StoreError)
    assert sm.size_bytes() == 5
    restored = pickle.loads(pickle.dumps(sm))
    assert restored.size_bytes() == sm.size_bytes()


def test_txn_cost_is_the_larger_branch_of_top_level_puts() -> None:
    req = rpc_pb2.TxnRequest(success=[op_put(b"ab")], failure=[op_put(b"a"), op_put(b"b")])
    assert txn_cost(req) == 4
    assert txn_cost(rpc_pb2.TxnRequest(success=[op_delete(b"a")])) == 0


def test_alarms_survive_a_raft_snapshot_but_not_a_backup_restore() -> None:
    sm = StateMachine()
    sm.apply(("alarm", A.ACTIVATE, ME, rpc_pb2.NOSPACE))
    loaded = pickle.loads(pickle.dumps(sm))
    assert loaded.alarm_list() == [(ME, rpc_pb2.NOSPACE)]
    assert loaded.apply(put(b"k")) == NOSPACE_ERR
    old = sm.__getstate__()
    del old["alarms"]  # a state written before alarms existed
    older = StateMachine.__new__(StateMachine)
    older.__setstate__(old)
    assert older.alarm_list() == []
    older.apply(("alarm", A.ACTIVATE, 1, rpc_pb2.CORRUPT))
    fresh = StateMachine.__new__(StateMachine)
    fresh.__setstate__(old)
    assert fresh.alarm_list() == []  # never the shared default set
    assert for_new_cluster(StateMachine()).alarm_list() == []
