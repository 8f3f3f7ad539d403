"""Store membership on a running cluster: add, remove (a follower, the leader), restart, MoveLeader.

Real store processes on loopback. What a user relies on: a new member catches
up and counts everywhere, removed members disappear from every member's list
and no longer disturb the cluster, the changed membership survives a restart
of every member (their --initial-cluster flags still name the first boot's
members), and bad requests get etcd's codes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from mizzen.testing.local_cluster import REPO_ROOT, MizzenCluster
from mizzen.testing.waits import wait_until
from protos import rpc_pb2, rpc_pb2_grpc

pytestmark = pytest.mark.integration

RPC = 5.0
CHANGE_RPC = 25.0


def cluster_stub(endpoint: str) -> rpc_pb2_grpc.ClusterStub:
    return rpc_pb2_grpc.ClusterStub(grpc.insecure_channel(endpoint))


def maintenance(endpoint: str) -> rpc_pb2_grpc.MaintenanceStub:
    return rpc_pb2_grpc.MaintenanceStub(grpc.insecure_channel(endpoint))


def kv(endpoint: str) -> rpc_pb2_grpc.KVStub:
    return rpc_pb2_grpc.KVStub(grpc.insecure_channel(endpoint))


def names(endpoint: str) -> list[str]:
    resp = cluster_stub(endpoint).MemberList(rpc_pb2.MemberListRequest(), timeout=RPC)
    return sorted(m.name for m in resp.members)


def hash_kv(endpoint: str) -> tuple[int, int]:
    r = maintenance(endpoint).HashKV(rpc_pb2.HashKVRequest(), timeout=RPC)
    return r.hash, r.header.revision


def put(endpoint: str, key: bytes, value: bytes = b"v") -> None:
    kv(endpoint).Put(rpc_pb2.PutRequest(key=key, value=value), timeout=RPC)


def mizzen(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIZZEN_")}
    env["HOME"] = str(home)
    argv = [sys.executable, "-m", "mizzen", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, env=env)


def code_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as exc:
        call()
    return status(exc.value)


def status(err: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    return err.code(), err.details() or ""


def add_request(addr: str) -> rpc_pb2.MemberAddRequest:
    return rpc_pb2.MemberAddRequest(peerURLs=[f"http://{addr}"])


def named(name: str) -> tuple[tuple[str, str], ...]:
    return (("mizzen-member-name", name),)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[MizzenCluster]:
    with MizzenCluster(3, tmp_path / "c") as c:
        yield c


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "extra",
    [[], ["--snapshot-entries", "10", "--snapshot-interval", "1"]],
    ids=["journal", "frequent-snapshots"],  # restart replays the log, or loads a dump first
)
def test_add_remove_follower_and_leader_then_restart_keeps_the_changed_membership(
    tmp_path: Path, extra: list[str]
) -> None:
    with MizzenCluster(3, tmp_path / "c", extra_args=extra) as c:
        scenario_add_remove_restart(c, tmp_path)


def scenario_add_remove_restart(c: MizzenCluster, tmp_path: Path) -> None:
    c.leader_index()
    for i in range(20):
        put(c.endpoint(i % 3), b"before/%02d" % i)

    # -- add n4 with the CLI; it prints the flags n4 must be started with
    n4 = c.add_member(start=False)
    result = mizzen(
        "cluster", "member", "add", "n4", "--peer-url", c.peer_address(n4),
        "--endpoints", c.endpoint(0), home=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    initial = ",".join(f"n{i + 1}={c.peer_address(i)}" for i in range(4))
    assert f"--initial-cluster {initial} --initial-cluster-state existing" in result.stdout
    argv = " ".join(c.argv(n4))  # the harness starts n4 with the same flags
    assert f"--initial-cluster {initial}" in argv and "--initial-cluster-state existing" in argv
    c.restart(n4)  # first start: it joins and catches up from the leader

    everyone = list(range(4))
    wait_until(
        lambda: all(names(c.endpoint(i)) == ["n1", "n2", "n3", "n4"] for i in everyone),
        20, "every member to list 4 members",
    )  # fmt: skip
    wait_until(lambda: len({hash_kv(c.endpoint(i)) for i in everyone}) == 1, 20, "equal HashKV")
    for i in everyone:
        put(c.endpoint(i), b"after-add/%d" % i)
    wait_until(lambda: len({hash_kv(c.endpoint(i)) for i in everyone}) == 1, 20, "equal HashKV")

    def n4_client_urls() -> list[str]:
        resp = cluster_stub(c.endpoint(0)).MemberList(rpc_pb2.MemberListRequest(), timeout=RPC)
        return list(next(m for m in resp.members if m.name == "n4").clientURLs)

    url = f"http://{c.endpoint(n4)}"
    wait_until(lambda: n4_client_urls() == [url], 20, "n4 to publish its client URL")
    assert c.leader_index() in everyone

    # -- remove a follower (not n4) with the CLI; it keeps running for a while
    leader = c.leader_index()
    follower = next(i for i in range(3) if i != leader)
    result = mizzen(
        "cluster", "member", "remove", f"n{follower + 1}", "--endpoints", c.endpoint(leader),
        home=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rest = [i for i in everyone if i != follower]
    want = sorted(f"n{i + 1}" for i in rest)
    wait_until(lambda: all(names(c.endpoint(i)) == want for i in rest), 20, "3 members listed")
    # the removed member still runs: the cluster ignores it and keeps writing
    for k in range(10):
        put(c.endpoint(rest[k % 3]), b"after-remove/%02d" % k)
        time.sleep(0.2)
    assert c.is_running(follower)

    def removed_answer() -> bool:
        try:
            put(c.endpoint(follower), b"on-removed")
        except grpc.RpcError as err:
            code, details = status(err)
            return code == grpc.StatusCode.UNAVAILABLE and "permanently removed" in details
        raise AssertionError("a removed member acknowledged a write")

    wait_until(removed_answer, 10, "the removed member to refuse requests")
    assert maintenance(c.endpoint(leader)).Status(rpc_pb2.StatusRequest(), timeout=RPC).leader
    c.kill(follower)

    # -- remove the leader, asking a follower; a new leader takes over
    leader = c.leader_index()
    asked = next(i for i in rest if i != leader)
    leader_id = c.member_id(leader)
    assert leader_id is not None
    cluster_stub(c.endpoint(asked)).MemberRemove(
        rpc_pb2.MemberRemoveRequest(ID=leader_id), timeout=CHANGE_RPC
    )
    rest = [i for i in rest if i != leader]
    want = sorted(f"n{i + 1}" for i in rest)
    wait_until(lambda: all(names(c.endpoint(i)) == want for i in rest), 20, "2 members listed")
    c.kill(leader)
    new_leader = c.leader_index(timeout=20)
    assert new_leader in rest
    for i in rest:
        put(c.endpoint(i), b"after-leader-removal/%d" % i)

    # -- restart every remaining member: the membership is the changed one
    for i in rest:
        c.kill(i, wait=True)
    for i in rest:
        c.restart(i)
    c.leader_index(timeout=30)
    for i in rest:
        assert names(c.endpoint(i)) == want
        put(c.endpoint(i), b"after-restart/%d" % i)
    wait_until(lambda: len({hash_kv(c.endpoint(i)) for i in rest}) == 1, 20, "equal HashKV")
    resp = kv(c.endpoint(rest[0])).Range(
        rpc_pb2.RangeRequest(key=b"before/", range_end=b"before0"), timeout=RPC
    )
    assert resp.count == 20


@pytest.mark.timeout(120)
def test_move_leader_and_bad_requests(cluster: MizzenCluster, tmp_path: Path) -> None:
    c = cluster
    leader = c.leader_index()
    target = next(i for i in range(3) if i != leader)

    # MoveLeader: only the leader takes it; unknown targets are NOT_FOUND
    target_id = c.member_id(target)
    assert target_id is not None
    code, details = code_of(
        lambda: maintenance(c.endpoint(target)).MoveLeader(
            rpc_pb2.MoveLeaderRequest(targetID=target_id), timeout=RPC
        )
    )
    assert (code, details) == (grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: not leader")
    code, details = code_of(
        lambda: maintenance(c.endpoint(leader)).MoveLeader(
            rpc_pb2.MoveLeaderRequest(targetID=12345), timeout=RPC
        )
    )
    assert (code, details) == (grpc.StatusCode.NOT_FOUND, "etcdserver: member not found")
    result = mizzen(
        "cluster", "move-leader", f"n{target + 1}", "--endpoints", c.endpoint(target),
        home=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert c.leader_index() == target
    put(c.endpoint(leader), b"after-move")
    leader = target

    # MemberRemove of an unknown id: etcd's NOT_FOUND
    code, details = code_of(
        lambda: cluster_stub(c.endpoint(0)).MemberRemove(
            rpc_pb2.MemberRemoveRequest(ID=12345), timeout=RPC
        )
    )
    assert (code, details) == (grpc.StatusCode.NOT_FOUND, "etcdserver: member not found")
    result = mizzen(
        "cluster", "member", "remove", "nx", "--endpoints", c.endpoint(0), home=tmp_path
    )
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1

    # MemberAdd: duplicate name, duplicate address, no name, bad URL
    stub = cluster_stub(c.endpoint(0))
    code, details = code_of(
        lambda: stub.MemberAdd(add_request("127.0.0.1:1"), metadata=named("n2"), timeout=RPC)
    )
    assert code == grpc.StatusCode.ALREADY_EXISTS and "name 'n2'" in details
    taken = c.peer_address(1)
    code, details = code_of(
        lambda: stub.MemberAdd(add_request(taken), metadata=named("n9"), timeout=RPC)
    )
    assert (code, details) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "etcdserver: Peer URLs already exists",
    )  # etcd 3.4's answer
    code, details = code_of(
        lambda: stub.MemberAdd(
            rpc_pb2.MemberAddRequest(peerURLs=["http://no-port"]), metadata=named("n9"), timeout=RPC
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "peerURLs" in details

    # two changes at once: exactly one passes, the other is FAILED_PRECONDITION
    def try_add(i: int) -> grpc.StatusCode:
        try:
            cluster_stub(c.endpoint(i)).MemberAdd(
                add_request(f"127.0.0.1:{40000 + i}"), metadata=named(f"x{i}"), timeout=CHANGE_RPC
            )
        except grpc.RpcError as err:
            return status(err)[0]
        return grpc.StatusCode.OK

    with ThreadPoolExecutor(3) as pool:
        codes = sorted(pool.map(try_add, [0, 0, 1]), key=lambda s: s.name)
    assert codes.count(grpc.StatusCode.OK) == 1, codes
    assert set(codes) - {grpc.StatusCode.OK} == {grpc.StatusCode.FAILED_PRECONDITION}, codes
    added = next(m for m in cluster_stub(c.endpoint(leader)).MemberList(
        rpc_pb2.MemberListRequest(), timeout=RPC).members if m.name.startswith("x"))  # fmt: skip
    cluster_stub(c.endpoint(leader)).MemberRemove(
        rpc_pb2.MemberRemoveRequest(ID=added.ID), timeout=CHANGE_RPC
    )
    wait_until(lambda: len(names(c.endpoint(leader))) == 3, 20, "the never-started member gone")

    # no quorum for the change: one of three down
    down = next(i for i in range(3) if i != leader)
    c.kill(down)
    code, details = code_of(
        lambda: cluster_stub(c.endpoint(leader)).MemberAdd(
            add_request("127.0.0.1:40009"), metadata=named("n9"), timeout=CHANGE_RPC
        )
    )
    assert code == grpc.StatusCode.UNAVAILABLE and "unhealthy cluster" in details
    alive = next(i for i in range(3) if i not in (leader, down))
    alive_id = c.member_id(alive)
    assert alive_id is not None
    code, details = code_of(
        lambda: cluster_stub(c.endpoint(leader)).MemberRemove(
            rpc_pb2.MemberRemoveRequest(ID=alive_id), timeout=CHANGE_RPC
        )
    )
    assert code == grpc.StatusCode.UNAVAILABLE and "unhealthy cluster" in details
    assert names(c.endpoint(leader)) == ["n1", "n2", "n3"]


@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("etcdctl") is None, reason="etcdctl is not installed")
def test_etcdctl_member_list_add_remove(cluster: MizzenCluster) -> None:
    c = cluster
    c.leader_index()
    env = {**os.environ, "ETCDCTL_API": "3"}

    def etcdctl(*args: str) -> str:
        argv = ["etcdctl", "--endpoints", ",".join(c.endpoints), "--command-timeout=25s", *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout

    listed = etcdctl("member", "list")
    assert sorted(line.split(", ")[2] for line in listed.splitlines()) == ["n1", "n2", "n3"]
    # etcd's request has no name: etcdctl sends it in the peer URL's user part
    out = etcdctl("member", "add", "n5", "--peer-urls=http://n5@127.0.0.1:40005")
    assert "Member" in out and "added to cluster" in out
    assert 'ETCD_INITIAL_CLUSTER_STATE="existing"' in out
    listed = etcdctl("member", "list")
    row = next(line for line in listed.splitlines() if ", n5, " in line)
    assert "http://127.0.0.1:40005" in row
    etcdctl("member", "remove", row.split(", ")[0])
    wait_until(lambda: names(c.endpoint(0)) == ["n1", "n2", "n3"], 20, "n5 removed")

    # stock etcdctl: no name in the request. Like etcd, the member is listed unstarted
    # (no name, no client URL) until it starts and publishes its name.
    i = c.add_member(start=False)
    new = c.names[i]
    out = etcdctl("member", "add", new, f"--peer-urls=http://{c.peer_address(i)}")
    added_id = re.search(r"Member ([0-9a-f]+) added to cluster", out)
    assert added_id is not None, out
    assert f'ETCD_NAME="{new}"' in out
    rows = [line.split(", ") for line in etcdctl("member", "list").splitlines()]
    assert [added_id[1], "unstarted", "", f"http://{c.peer_address(i)}", "", "false"] in rows
    listed = json.loads(etcdctl("member", "list", "-w", "json"))["members"]
    shape = next(m for m in listed if m["ID"] == int(added_id[1], 16))
    assert shape == {"ID": int(added_id[1], 16), "peerURLs": [f"http://{c.peer_address(i)}"]}
    # member update (peer URLs) of the unstarted member, then back
    moved = "127.0.0.1:40011"
    out = etcdctl("member", "update", added_id[1], f"--peer-urls=http://{moved}")
    assert f"Member {added_id[1]} updated in cluster" in out
    assert f"http://{moved}" in etcdctl("member", "list")
    etcdctl("member", "update", added_id[1], f"--peer-urls=http://{c.peer_address(i)}")
    c.restart(i)  # first start: --initial-cluster-state existing
    wait_until(
        lambda: (
            f"{added_id[1]}, started, {new}, http://{c.peer_address(i)}, "
            f"http://{c.endpoint(i)}, false" in etcdctl("member", "list")
        ),
        30,
        f"{new} started and named",
    )
    assert c.member_id(i) == int(added_id[1], 16)  # it answers with the id it was given
    put(c.endpoint(i), b"written-through-the-new-member")
    # learners: refused (pysyncobj has none); promote answers as etcd does for a voter
    argv = ["etcdctl", "--endpoints", c.endpoint(0), "--command-timeout=25s"]
    learner = subprocess.run(
        [*argv, "member", "add", "l1", "--learner", "--peer-urls=http://127.0.0.1:40012"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert learner.returncode != 0 and "learners are not supported" in learner.stderr
    promote = subprocess.run(
        [*argv, "member", "promote", added_id[1]],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert promote.returncode != 0
    assert "Error: etcdserver: can only promote a learner member" in promote.stderr
