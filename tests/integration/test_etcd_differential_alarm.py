"""Alarms and the space quota, side by side with etcd 3.4 (etcd_differential.py).

Both clusters run with ``--quota-backend-bytes`` of 1 MiB. The scenario raises
and clears alarms by hand (Maintenance.Alarm), checks what NOSPACE and CORRUPT
refuse, then fills the store until the quota refuses a Put (the member raises
NOSPACE for itself) and recovers with etcd's documented procedure: delete,
compact, defragment, disarm. Alarms are cluster-wide, so the module's tests run
in order and each leaves no alarm behind.

etcd lists alarms in Go map order (random) and each store has its own member
ids: alarm lists are recorded sorted, with this member's id shown as ``me``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import pytest
from etcd_differential import Pair, Side, Trace, start_pair

from protos import rpc_pb2, rpc_pb2_grpc

pytestmark = [pytest.mark.compat, pytest.mark.timeout(180)]

QUOTA = 1024 * 1024
BIG = b"x" * (600 * 1024)
A = rpc_pb2.AlarmRequest


@pytest.fixture(scope="module")
def quota_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    args = ("--quota-backend-bytes", str(QUOTA))
    # small Raft snapshots, so the restart test also loads alarms from one
    yield from start_pair(
        tmp_path_factory.mktemp("alarm"),
        etcd_args=args,
        mizzen_args=(*args, "--snapshot-entries", "20"),
    )


async def _me(trace: Trace) -> int:
    status = await rpc_pb2_grpc.MaintenanceStub(trace.channel).Status(rpc_pb2.StatusRequest())
    return int(status.header.member_id)


def _who(member: int, me: int) -> str | int:
    return "me" if member == me else member


async def alarm(trace: Trace, what: str, req: rpc_pb2.AlarmRequest, me: int) -> None:
    try:
        resp = await rpc_pb2_grpc.MaintenanceStub(trace.channel).Alarm(req, timeout=10)
    except grpc.aio.AioRpcError as err:
        trace.error(what, err)
        return
    listed = sorted(
        (str(_who(a.memberID, me)), rpc_pb2.AlarmType.Name(a.alarm)) for a in resp.alarms
    )
    trace.record(what, {"alarms": listed, "has_header": resp.HasField("header")})


async def status_errors(trace: Trace, what: str, me: int) -> None:
    status = await rpc_pb2_grpc.MaintenanceStub(trace.channel).Status(rpc_pb2.StatusRequest())
    trace.record(what, sorted(e.replace(f"memberID:{me} ", "memberID:me ") for e in status.errors))


def put(key: bytes, value: bytes = b"v") -> rpc_pb2.PutRequest:
    return rpc_pb2.PutRequest(key=key, value=value)


async def by_hand(trace: Trace) -> None:
    kv = rpc_pb2_grpc.KVStub(trace.channel)
    lease = rpc_pb2_grpc.LeaseStub(trace.channel)
    me = await _me(trace)
    first = await kv.Put(put(trace.key("a")))
    trace.base = first.header.revision
    await alarm(trace, "get, none raised", A(action=A.GET), me)
    await alarm(trace, "activate NONE", A(action=A.ACTIVATE, memberID=me, alarm=rpc_pb2.NONE), me)
    await alarm(trace, "get lists NONE", A(action=A.GET), me)
    await alarm(trace, "deactivate NONE", A(action=A.DEACTIVATE, memberID=me), me)
    await alarm(
        trace,
        "deactivate, not raised",
        A(action=A.DEACTIVATE, memberID=me, alarm=rpc_pb2.NOSPACE),
        me,
    )
    await alarm(
        trace, "activate NOSPACE", A(action=A.ACTIVATE, memberID=me, alarm=rpc_pb2.NOSPACE), me
    )
    await alarm(
        trace,
        "activate NOSPACE again",
        A(action=A.ACTIVATE, memberID=me, alarm=rpc_pb2.NOSPACE),
        me,
    )
    await alarm(
        trace, "activate for 777", A(action=A.ACTIVATE, memberID=777, alarm=rpc_pb2.NOSPACE), me
    )
    await alarm(trace, "get, memberID ignored", A(action=A.GET, memberID=12345), me)
    await alarm(trace, "get CORRUPT only", A(action=A.GET, alarm=rpc_pb2.CORRUPT), me)
    await status_errors(trace, "status errors", me)
    await trace.call("put refused", kv.Put(put(trace.key("a"))))
    await trace.call(
        "txn with a put in the failure branch refused",
        kv.Txn(
            rpc_pb2.TxnRequest(
                failure=[rpc_pb2.RequestOp(request_put=put(trace.key("a")))],
            )
        ),
    )
    await trace.call(
        "txn with a delete passes",
        kv.Txn(
            rpc_pb2.TxnRequest(
                success=[
                    rpc_pb2.RequestOp(
                        request_delete_range=rpc_pb2.DeleteRangeRequest(key=trace.key("zz"))
                    )
                ]
            )
        ),
    )
    await trace.call("lease grant refused", lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=30)))
    await trace.call("range passes", kv.Range(rpc_pb2.RangeRequest(key=trace.key("a"))))
    await trace.call(
        "delete passes", kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=trace.key("zz")))
    )
    await alarm(
        trace, "deactivate mine", A(action=A.DEACTIVATE, memberID=me, alarm=rpc_pb2.NOSPACE), me
    )
    await trace.call("put still refused (777's)", kv.Put(put(trace.key("a"))))
    await alarm(
        trace, "deactivate 777's", A(action=A.DEACTIVATE, memberID=777, alarm=rpc_pb2.NOSPACE), me
    )
    await trace.call("put passes", kv.Put(put(trace.key("a"))))
    await alarm(
        trace, "activate CORRUPT", A(action=A.ACTIVATE, memberID=me, alarm=rpc_pb2.CORRUPT), me
    )
    await trace.call("put refused (corrupt)", kv.Put(put(trace.key("a"))))
    await trace.call(
        "delete refused (corrupt)", kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=trace.key("a")))
    )
    await trace.call("grant refused (corrupt)", lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=9)))
    await trace.call("range passes (corrupt)", kv.Range(rpc_pb2.RangeRequest(key=trace.key("a"))))
    await trace.call(
        "read-only txn passes (corrupt)",
        kv.Txn(
            rpc_pb2.TxnRequest(
                success=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=trace.key("a")))]
            )
        ),
    )
    await status_errors(trace, "status errors (corrupt)", me)
    await alarm(
        trace, "deactivate CORRUPT", A(action=A.DEACTIVATE, memberID=me, alarm=rpc_pb2.CORRUPT), me
    )
    await alarm(trace, "get, all clear", A(action=A.GET), me)


async def _db_size(trace: Trace) -> int:
    status = await rpc_pb2_grpc.MaintenanceStub(trace.channel).Status(rpc_pb2.StatusRequest())
    return int(status.dbSize)


async def _wait_db_size(trace: Trace, done: object) -> None:
    """etcd's size moves when its backend commits (every 100 ms): wait for it, bounded."""
    deadline = time.monotonic() + 10
    while not done(await _db_size(trace)):  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{trace.side}: dbSize stayed {await _db_size(trace)}"
        await asyncio.sleep(0.05)


async def quota(trace: Trace) -> None:
    kv = rpc_pb2_grpc.KVStub(trace.channel)
    me = await _me(trace)
    first = await kv.Put(put(trace.key("big1"), BIG))
    trace.base = first.header.revision
    await _wait_db_size(trace, lambda size: size >= len(BIG))
    await trace.call("put past the quota", kv.Put(put(trace.key("big2"), BIG)))
    await alarm(trace, "the member raised NOSPACE for itself", A(action=A.GET), me)
    await status_errors(trace, "status errors (nospace)", me)
    await trace.call("a small put is refused too", kv.Put(put(trace.key("small"))))
    # etcd's documented recovery: free space, compact, defragment, disarm
    await trace.call(
        "delete the big key", kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=trace.key("big1")))
    )
    rev = (await kv.Range(rpc_pb2.RangeRequest(key=trace.key("a")))).header.revision
    await trace.call("compact", kv.Compact(rpc_pb2.CompactionRequest(revision=rev, physical=True)))
    for i in range(3):
        async with grpc.aio.insecure_channel(trace.endpoints[i]) as ch:  # type: ignore[attr-defined]
            await trace.call(
                f"defragment member {i}",
                rpc_pb2_grpc.MaintenanceStub(ch).Defragment(rpc_pb2.DefragmentRequest()),
            )
    await _wait_db_size(trace, lambda size: size < QUOTA // 2)
    await trace.call("still refused until disarmed", kv.Put(put(trace.key("small"))))
    await alarm(trace, "disarm", A(action=A.DEACTIVATE, memberID=me, alarm=rpc_pb2.NOSPACE), me)
    await trace.call("put passes again", kv.Put(put(trace.key("small"))))


async def test_alarms_by_hand_answer_as_etcd(quota_pair: Pair) -> None:
    entries = dict(await quota_pair.same(by_hand))
    assert entries["put refused"] == {
        "code": "RESOURCE_EXHAUSTED",
        "details": "etcdserver: mvcc: database space exceeded",
    }
    assert entries["put refused (corrupt)"] == {
        "code": "DATA_LOSS",
        "details": "etcdserver: corrupt cluster",
    }
    assert entries["status errors"] == [
        "memberID:777 alarm:NOSPACE ",
        "memberID:me alarm:NOSPACE ",
    ]


async def test_quota_refusal_and_recovery_answer_as_etcd(quota_pair: Pair) -> None:
    async def scenario(trace: Trace) -> None:
        side = quota_pair.etcd if trace.side == "etcd" else quota_pair.mizzen
        trace.endpoints = side.endpoints()  # type: ignore[attr-defined]
        await quota(trace)

    entries = dict(await quota_pair.same(scenario))
    assert entries["put past the quota"]["code"] == "RESOURCE_EXHAUSTED"
    assert entries["the member raised NOSPACE for itself"]["alarms"] == [("me", "NOSPACE")]
    assert "code" not in entries["put passes again"]


def _restart_all(side: Side) -> None:
    cluster = side.cluster
    for i in range(len(cluster)):
        cluster.kill(i, wait=True)
    for i in range(len(cluster)):
        cluster.restart(i, wait=False)
    cluster.leader_index(timeout=30)


async def _alarms_listed(side: Side) -> list[tuple[int, int]]:
    deadline = time.monotonic() + 30
    while True:
        try:
            async with side.channel() as ch:
                resp = await rpc_pb2_grpc.MaintenanceStub(ch).Alarm(A(action=A.GET), timeout=5)
                return sorted((a.memberID, a.alarm) for a in resp.alarms)
        except grpc.aio.AioRpcError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _snapshots_after(side: Side, when: float) -> None:
    """Wait (bounded) until every member wrote raft.snapshot after ``when``; reads
    (barriers, one log entry each) push the log past --snapshot-entries."""
    files = [side.cluster.data_dir(i) / "raft.snapshot" for i in range(len(side.cluster))]
    deadline = time.monotonic() + 30
    async with side.channel() as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        while not all(f.exists() and f.stat().st_mtime > when for f in files):
            assert time.monotonic() < deadline, "no Raft snapshot after the alarm"
            for i in range(25):
                await kv.Range(rpc_pb2.RangeRequest(key=b"/restart/%d" % i), timeout=10)
            await asyncio.sleep(0.2)


@pytest.mark.parametrize("which", ["etcd", "mizzen"])
async def test_an_alarm_survives_a_restart_of_every_member(quota_pair: Pair, which: str) -> None:
    side = getattr(quota_pair, which)
    raised_at = time.time()
    async with side.channel() as ch:
        stub = rpc_pb2_grpc.MaintenanceStub(ch)
        await stub.Alarm(A(action=A.ACTIVATE, memberID=4242, alarm=rpc_pb2.NOSPACE), timeout=10)
        kv = rpc_pb2_grpc.KVStub(ch)
        for i in range(30):  # past --snapshot-entries: Mizzen members restart from a snapshot
            await kv.Range(rpc_pb2.RangeRequest(key=b"/restart/%d" % i), timeout=10)
    if which == "mizzen":  # every member restarts from a Raft snapshot taken after the alarm
        await _snapshots_after(side, raised_at)
    await asyncio.to_thread(_restart_all, side)
    assert await _alarms_listed(side) == [(4242, rpc_pb2.NOSPACE)]
    async with side.channel() as ch:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await rpc_pb2_grpc.KVStub(ch).Put(put(b"/restart/k"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await rpc_pb2_grpc.MaintenanceStub(ch).Alarm(
            A(action=A.DEACTIVATE, memberID=4242, alarm=rpc_pb2.NOSPACE), timeout=10
        )
