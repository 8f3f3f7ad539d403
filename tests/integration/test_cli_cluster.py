"""`mizzen cluster status` against a real 3-node store."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mizzen.cli.cluster_cmd import CONTROLLERS_LEADER_KEY
from mizzen.client import ObjectsClient, StoreClient
from mizzen.testing.local_cluster import REPO_ROOT, MizzenCluster
from protos import objects_pb2 as pb

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[MizzenCluster]:
    with MizzenCluster(3, tmp_path / "c") as c:
        yield c


def status(endpoints: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIZZEN_")}
    env["HOME"] = str(home)
    argv = [sys.executable, "-m", "mizzen", "cluster", "status", "--endpoints", ",".join(endpoints)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, env=env)


def roles(stdout: str) -> dict[str, str]:
    lines = stdout.splitlines()
    assert lines[0].split()[:4] == ["MEMBER", "ID", "ENDPOINT", "ROLE"]
    return {line.split()[0]: line.split()[3] for line in lines[1:] if line.startswith("n")}


def test_status_shows_leaders_and_an_unreachable_member(
    cluster: MizzenCluster, tmp_path: Path
) -> None:
    result = status(cluster.endpoints, tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(roles(result.stdout).values()) == ["follower", "follower", "leader"]
    assert "Controllers: no leader" in result.stdout
    assert "Nodes: 0/0 ready" in result.stdout

    async def elect() -> int:
        async with ObjectsClient(cluster.endpoints) as objects:
            for name, ready in (("w1", "True"), ("w2", "Unknown")):
                node = await objects.create(pb.Node(metadata=pb.ObjectMeta(name=name)))
                node.status.conditions.add(type="Ready", status=ready)
                await objects.update_status(node)
        async with StoreClient(cluster.endpoints) as store:
            rev, _ = await store.put(CONTROLLERS_LEADER_KEY, b"cm-1")
            return rev

    rev = asyncio.run(elect())
    leader = cluster.leader_index()
    follower = next(i for i in range(3) if i != leader)
    cluster.kill(follower)
    result = status([cluster.endpoints[leader]], tmp_path)
    assert result.returncode == 0, result.stderr
    by_name = roles(result.stdout)
    assert by_name[f"n{follower + 1}"] == "unreachable"
    assert by_name[f"n{leader + 1}"] == "leader"
    assert f"Controllers: leader cm-1 (fence revision {rev})" in result.stdout
    assert "Nodes: 1/2 ready" in result.stdout
    tail = result.stdout.split("Nodes: 1/2 ready\n")[1].splitlines()
    assert [line.split() for line in tail] == [
        ["NODE", "STATUS"],
        ["w1", "Ready"],
        ["w2", "Unknown"],
    ]
    lags = [line.split()[6] for line in result.stdout.splitlines()[1:4] if "leader" in line]
    assert lags and lags[0] == "0"
