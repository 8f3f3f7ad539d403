"""A member without a leader refuses requests carrying hasleader=true at once (like etcd)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from mizzen.testing.local_cluster import MizzenCluster
from protos import rpc_pb2, rpc_pb2_grpc

pytestmark = pytest.mark.integration

HASLEADER = (("hasleader", "true"),)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[MizzenCluster]:
    with MizzenCluster(3, tmp_path / "c") as c:
        yield c


def test_leaderless_member_answers_no_leader_and_proposes_nothing(cluster: MizzenCluster) -> None:
    survivor = cluster.leader_index()
    with grpc.insecure_channel(cluster.endpoints[survivor]) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        kv.Put(rpc_pb2.PutRequest(key=b"k", value=b"before"), metadata=HASLEADER, timeout=10)
        for i in range(3):
            if i != survivor:
                cluster.kill(i)
        deadline = time.monotonic() + 15
        while True:  # the old leader steps down after leaderFallbackTimeout (2 s)
            try:
                kv.Put(rpc_pb2.PutRequest(key=b"k", value=b"lost"), metadata=HASLEADER, timeout=1)
                raise AssertionError("a write succeeded without a quorum")
            except grpc.RpcError as err:
                if err.details() == "etcdserver: no leader":
                    assert err.code() == grpc.StatusCode.UNAVAILABLE
                    break
                assert err.code() in (
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.UNAVAILABLE,
                ), err
            assert time.monotonic() < deadline, "never answered 'no leader'"
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:
            kv.Range(rpc_pb2.RangeRequest(key=b"k"), metadata=HASLEADER, timeout=5)
        assert refused.value.details() == "etcdserver: no leader"
        assert time.monotonic() - started < 1.0  # refused up front, not timed out
        # serializable reads without the metadata are still answered locally
        local = kv.Range(rpc_pb2.RangeRequest(key=b"k", serializable=True), timeout=5)
        assert local.kvs[0].value == b"before"
        # Maintenance.Status answers (it reports the missing leader itself)
        status = rpc_pb2_grpc.MaintenanceStub(channel).Status(
            rpc_pb2.StatusRequest(), metadata=HASLEADER, timeout=5
        )
        assert status.leader == 0
        for i in range(3):
            if i != survivor:
                cluster.restart(i)
        deadline = time.monotonic() + 20
        while True:
            try:
                got = kv.Range(rpc_pb2.RangeRequest(key=b"k"), metadata=HASLEADER, timeout=2)
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "no leader again after restarts"
                time.sleep(0.2)
        # the refused writes were never proposed: the value from before the outage remains,
        # apart from writes that timed out (ambiguous) before the member knew it had no leader
        assert got.kvs[0].value in (b"before", b"lost")


def test_a_follower_whose_peers_are_gone_answers_no_leader(cluster: MizzenCluster) -> None:
    """Its leader and the other follower killed: within an election timeout or so it
    names no leader (Status.leader 0, "etcdserver: no leader" for hasleader requests),
    as an etcd follower does. It once named the dead leader forever."""
    leader = cluster.leader_index()
    survivor = next(i for i in range(3) if i != leader)
    for i in range(3):
        if i != survivor:
            cluster.kill(i)
    with grpc.insecure_channel(cluster.endpoints[survivor]) as channel:
        maintenance = rpc_pb2_grpc.MaintenanceStub(channel)
        deadline = time.monotonic() + 20
        while True:
            status = maintenance.Status(rpc_pb2.StatusRequest(), timeout=5)
            if status.leader == 0:
                break
            assert time.monotonic() < deadline, "still names its dead leader"
            time.sleep(0.2)
        assert "etcdserver: no leader" in status.errors
        kv = rpc_pb2_grpc.KVStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            kv.Range(rpc_pb2.RangeRequest(key=b"k"), metadata=HASLEADER, timeout=5)
        assert refused.value.details() == "etcdserver: no leader"
        cluster.restart(leader)  # a peer again: they elect a leader
        deadline = time.monotonic() + 20
        while maintenance.Status(rpc_pb2.StatusRequest(), timeout=5).leader == 0:
            assert time.monotonic() < deadline, "no leader after a peer came back"
            time.sleep(0.2)
