"""Scheduler and node lifecycle against a real 1-node store, with simulated nodes.

The controllers run in-process under ``ControllerManager`` (so writes go
through the fenced client, as in production). Nodes are Node + Lease objects
whose leases a background task renews, the way node agents do; a node is
"killed" by no longer renewing its lease. Each test gets its own store so
nodes of one test never receive pods of another.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from manager_fixtures import leading_manager, until

from controllers.manager import ManagerConfig
from controllers.node_lifecycle import LEASE_NAMESPACE, node_lifecycle_from_config
from controllers.scheduler import scheduler_from_config
from mizzen.cli.errors import CommandError
from mizzen.cli.node_cmd import add_node_parsers
from mizzen.client import ObjectsClient
from mizzen.client.errors import ConflictError
from mizzen.testing.local_cluster import MizzenCluster
from protos import objects_pb2 as pb

pytestmark = pytest.mark.integration

GRACE = 2.0
EVICTION = 3.0
NS = "default"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[MizzenCluster]:
    with MizzenCluster(1, tmp_path / "store") as c:
        yield c


def _now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


class SimNodes:
    """Node + Lease objects; renew() keeps the leases of alive nodes fresh every 0.5 s."""

    def __init__(self, client: ObjectsClient) -> None:
        self.client = client
        self.alive: set[str] = set()

    async def add(self, name: str, *, cpu: int = 1000, **labels: str) -> None:
        node = pb.Node(metadata=pb.ObjectMeta(name=name, labels=labels))
        node.metadata.labels["mizzen.io/hostname"] = name
        stored = await self.client.create(node)
        stored.status.capacity.cpu_millis = cpu
        stored.status.capacity.memory_bytes = 8 * 1024**3
        stored.status.capacity.pids = 10_000
        stored.status.allocatable.CopyFrom(stored.status.capacity)
        cond = stored.status.conditions.add(type="Ready", status="True", reason="AgentReady")
        cond.last_heartbeat_time.CopyFrom(_now())
        await self.client.update_status(stored)
        lease = pb.Lease(metadata=pb.ObjectMeta(name=name, namespace=LEASE_NAMESPACE))
        lease.spec.holder_identity = name
        lease.spec.lease_duration_seconds = 5
        lease.spec.renew_time.CopyFrom(_now())
        await self.client.create(lease)
        self.alive.add(name)

    async def renew(self) -> None:
        while True:
            for name in sorted(self.alive):
                with contextlib.suppress(ConflictError):
                    lease = await self.client.get("leases", name, LEASE_NAMESPACE)
                    lease.spec.renew_time.CopyFrom(_now())
                    await self.client.update(lease)
            await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def running(cluster: MizzenCluster) -> AsyncIterator[tuple[ObjectsClient, SimNodes]]:
    """A client, simulated nodes with renewing leases, and the two controllers leading."""
    config = ManagerConfig(
        endpoints=cluster.endpoints,
        id="test-manager",
        node_grace=GRACE,
        eviction_timeout=EVICTION,
        election_key="/mizzen/leader/test-scheduler",
    )
    factories = [scheduler_from_config, node_lifecycle_from_config]
    async with ObjectsClient(cluster.endpoints) as client:
        nodes = SimNodes(client)
        async with leading_manager(config, factories, nodes.renew()):
            yield client, nodes


def make_pod(name: str, cpu: int = 100, *, node_name: str = "") -> pb.Pod:
    pod = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace=NS))
    proc = pod.spec.processes.add(name="main", command=["/bin/sleep", "1000"])
    proc.resources.requests.cpu_millis = cpu
    pod.spec.node_name = node_name
    return pod


async def pods_by_node(client: ObjectsClient) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for pod in (await client.list("pods", NS)).items:
        out.setdefault(pod.spec.node_name, []).append(pod.metadata.name)
    return {k: sorted(v) for k, v in out.items()}


def condition(obj: Any, type_: str) -> Any:
    for cond in obj.status.conditions:
        if cond.type == type_:
            return cond
    return None


async def cli(argv: list[str]) -> int:
    """A node command as `mizzen` would run it (in a thread: it runs its own event loop)."""
    parser = argparse.ArgumentParser()
    add_node_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(await asyncio.to_thread(args.func, args))


async def test_pods_are_bound_within_node_resources(cluster: MizzenCluster) -> None:
    async with running(cluster) as (client, nodes):
        for name in ("n1", "n2", "n3"):
            await nodes.add(name, cpu=1000)
        for i in range(7):
            await client.create(make_pod(f"p{i}", cpu=400))

        async def settled() -> dict[str, list[str]] | None:
            placed = await pods_by_node(client)
            return placed if len(placed.get("", [])) == 1 and len(placed) == 4 else None

        placed = await until(settled, 20, "6 pods bound, 1 left")
        assert all(len(v) == 2 for k, v in placed.items() if k), placed
        (left,) = placed[""]
        pod = await client.get("pods", left, NS)
        cond = condition(pod, "PodScheduled")
        assert (cond.status, cond.reason) == ("False", "Unschedulable")
        assert cond.message == "0/3 nodes are available: 3 Insufficient cpu."

        async def failed_event() -> bool:
            events = (await client.list("events", NS)).items
            return any(
                e.spec.reason == "FailedScheduling" and e.spec.involved_object.name == left
                for e in events
            )

        await until(failed_event, 10, "a FailedScheduling event")
        bound = await client.get("pods", placed["n1"][0], NS)
        assert condition(bound, "PodScheduled").status == "True"

        await nodes.add("n4", cpu=1000)  # a new node wakes the unschedulable pod

        async def left_bound() -> bool:
            return bool((await client.get("pods", left, NS)).spec.node_name == "n4")

        await until(left_bound, 10, f"{left} bound to the new node")
        assert condition(await client.get("pods", left, NS), "PodScheduled").status == "True"


async def test_silent_node_is_tainted_and_its_pods_evicted(cluster: MizzenCluster) -> None:
    async with running(cluster) as (client, nodes):
        await nodes.add("a")
        await nodes.add("b")
        for i in range(6):
            await client.create(make_pod(f"p{i}"))

        async def spread() -> dict[str, list[str]] | None:
            placed = await pods_by_node(client)
            return placed if "" not in placed and len(placed) == 2 else None

        placed = await until(spread, 20, "pods bound on both nodes")
        on_a = placed["a"]
        nodes.alive.discard("a")
        stopped = time.monotonic()

        async def a_empty() -> bool:
            return "a" not in await pods_by_node(client)

        await until(a_empty, GRACE + EVICTION + 8, "pods of the silent node deleted")
        elapsed = time.monotonic() - stopped
        assert elapsed >= GRACE + EVICTION - 0.5, elapsed
        node = await client.get("nodes", "a")
        assert [(t.key, t.effect) for t in node.spec.taints] == [
            ("node.mizzen.io/unreachable", "NoExecute")
        ]
        ready = condition(node, "Ready")
        assert (ready.status, ready.reason) == ("Unknown", "NodeStatusUnknown")
        assert (await pods_by_node(client))["b"] == placed["b"]
        events = (await client.list("events", NS)).items
        evicted = {e.spec.involved_object.name for e in events if e.spec.reason == "Evicted"}
        assert evicted == set(on_a)
        await client.create(make_pod("late"))

        async def late_on_b() -> bool:
            return bool((await client.get("pods", "late", NS)).spec.node_name == "b")

        await until(late_on_b, 10, "a new pod placed on the healthy node only")

        nodes.alive.add("a")  # the agent comes back

        async def untainted() -> bool:
            return not (await client.get("nodes", "a")).spec.taints

        await until(untainted, 10, "the unreachable taint lifted")


async def test_cordon_prevents_scheduling_and_drain_empties_node(
    cluster: MizzenCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running(cluster) as (client, nodes):
        ep = ["--endpoints", ",".join(cluster.endpoints)]
        await nodes.add("a")
        await nodes.add("b")
        assert await cli(["cordon", "a", *ep]) == 0
        assert "node/a cordoned" in capsys.readouterr().out
        assert (await client.get("nodes", "a")).spec.unschedulable
        for i in range(4):
            await client.create(make_pod(f"p{i}"))

        async def all_bound() -> dict[str, list[str]] | None:
            placed = await pods_by_node(client)
            return placed if "" not in placed and sum(map(len, placed.values())) == 4 else None

        placed = await until(all_bound, 20, "pods bound")
        assert list(placed) == ["b"]

        assert await cli(["uncordon", "a", *ep]) == 0
        assert not (await client.get("nodes", "a")).spec.unschedulable
        daemon = make_pod("ds-pod", node_name="b")
        daemon.metadata.owner_references.add(
            api_version="mizzen/v1", kind="DaemonSet", name="ds", uid="ds-uid", controller=True
        )
        await client.create(daemon)
        pinned = make_pod("pinned", node_name="b")
        pinned.metadata.namespace = "other"
        await client.create(pinned)
        capsys.readouterr()
        assert await cli(["drain", "b", "--grace-period", "0", "--timeout", "20", *ep]) == 0
        out = capsys.readouterr().out
        assert "ignoring DaemonSet-managed pods: default/ds-pod" in out
        assert "node/b drained" in out
        assert (await client.get("nodes", "b")).spec.unschedulable
        assert await pods_by_node(client) == {"b": ["ds-pod"]}
        assert (await client.list("pods", "other")).items == []
        assert "evicting pod other/pinned" in out


async def test_drain_times_out_on_pods_that_do_not_stop(
    cluster: MizzenCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running(cluster) as (client, nodes):
        ep = ["--endpoints", ",".join(cluster.endpoints)]
        await nodes.add("a")
        await client.create(make_pod("stuck", node_name="a"))  # no agent will finish it
        with pytest.raises(CommandError, match=r"timed out after 1s waiting for: default/stuck"):
            await cli(["drain", "a", "--timeout", "1", *ep])
        stuck = await client.get("pods", "stuck", NS)
        assert stuck.metadata.HasField("deletion_timestamp")
