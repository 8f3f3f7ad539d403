"""The loopback cluster launcher drives a real 3-member etcd: put, kill the leader, re-elect."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import grpc
import pytest

from mizzen.testing import EtcdCluster, free_ports
from protos import rpc_pb2, rpc_pb2_grpc

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("etcd") is None,
        reason="etcd not on PATH (apt-get install etcd-server)",
    ),
]


def test_free_ports_are_distinct() -> None:
    ports = free_ports(20) + free_ports(20)
    assert len(set(ports)) == 40


@pytest.mark.timeout(30)
def test_put_kill_leader_new_leader(tmp_path: Path) -> None:
    with EtcdCluster(3, tmp_path) as cluster:
        leader = cluster.leader_index(timeout=10)
        with grpc.insecure_channel(cluster.endpoint(leader)) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            put = kv.Put(rpc_pb2.PutRequest(key=b"/t/k", value=b"v1"), timeout=5)
            assert put.header.revision >= 2

        old_pid = cluster.pids[leader]
        assert old_pid is not None
        cluster.kill(leader, signal.SIGKILL)
        assert cluster.pids[leader] is None
        assert not os.path.exists(f"/proc/{old_pid}")

        new_leader = cluster.leader_index(timeout=15)
        assert new_leader != leader
        with grpc.insecure_channel(cluster.endpoint(new_leader)) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            got = kv.Range(rpc_pb2.RangeRequest(key=b"/t/k"), timeout=5)
            assert [kv.value for kv in got.kvs] == [b"v1"]

        cluster.restart(leader, timeout=15)
        assert cluster.leader_index(timeout=15) in range(3)
        pids = [p for p in cluster.pids if p is not None]
        assert len(pids) == 3

    assert cluster.pids == [None, None, None]
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}")
