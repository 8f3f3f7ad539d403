"""Node registration and heartbeat against a fake Objects client (stepped clock)."""

from __future__ import annotations

from typing import Any

import pytest

from mizzen.client.errors import AlreadyExistsError, ConflictError, NotFoundError
from nodeagent.node_status import (
    LEASE_NAMESPACE,
    NodeFacts,
    NodeHeartbeat,
    allocatable,
    parse_labels,
    parse_reserved,
)
from protos import objects_pb2 as pb


class FakeObjects:
    """Objects keyed by (kind, namespace, name) with resource_version checks."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], Any] = {}
        self.rv = 0
        self.writes: list[str] = []

    def _key(self, kind: str, obj: Any) -> tuple[str, str, str]:
        return (kind, obj.metadata.namespace, obj.metadata.name)

    @staticmethod
    def _kind(obj: Any) -> str:
        return {pb.Node: "nodes", pb.Lease: "leases"}[type(obj)]

    def _store(self, key: tuple[str, str, str], obj: Any, what: str) -> Any:
        self.rv += 1
        stored = type(obj)()
        stored.CopyFrom(obj)
        stored.metadata.resource_version = str(self.rv)
        self.objects[key] = stored
        self.writes.append(what)
        out = type(obj)()
        out.CopyFrom(stored)
        return out

    async def get(self, kind: str, name: str, namespace: str = "") -> Any:
        obj = self.objects.get((kind, namespace, name))
        if obj is None:
            raise NotFoundError(f"{kind} {name} not found")
        out = type(obj)()
        out.CopyFrom(obj)
        return out

    async def create(self, obj: Any) -> Any:
        key = self._key(self._kind(obj), obj)
        if key in self.objects:
            raise AlreadyExistsError("exists")
        return self._store(key, obj, f"create {key[0]}")

    async def _check(self, obj: Any) -> tuple[tuple[str, str, str], Any]:
        key = self._key(self._kind(obj), obj)
        old = self.objects.get(key)
        if old is None:
            raise NotFoundError("gone")
        if old.metadata.resource_version != obj.metadata.resource_version:
            raise ConflictError("conflict")
        return key, old

    async def update(self, obj: Any) -> Any:
        key, old = await self._check(obj)
        new = type(obj)()
        new.CopyFrom(obj)
        if hasattr(old, "status"):
            new.status.CopyFrom(old.status)
        return self._store(key, new, f"update {key[0]}")

    async def update_status(self, obj: Any) -> Any:
        key, old = await self._check(obj)
        new = type(old)()
        new.CopyFrom(old)
        new.status.CopyFrom(obj.status)
        return self._store(key, new, f"status {key[0]}")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def facts() -> NodeFacts:
    cap = pb.ResourceList(cpu_millis=2000, memory_bytes=4 << 30, pids=4096)
    return NodeFacts(
        name="n1",
        labels={"zone": "a"},
        capacity=cap,
        allocatable=allocatable(cap, parse_reserved("cpu=500m,memory=1Gi")),
        addresses=[("InternalIP", "10.0.0.1"), ("AgentGRPC", "10.0.0.1:10250")],
        info=pb.NodeSystemInfo(boot_id="b", cgroup_version="v2"),
    )


def test_parse_labels_and_reserved() -> None:
    assert parse_labels("a=1, b = x ,") == {"a": "1", "b": "x"}
    with pytest.raises(ValueError, match="expected key=value"):
        parse_labels("novalue")
    r = parse_reserved("cpu=500m,memory=512Mi,pids=1000")
    assert (r.cpu_millis, r.memory_bytes, r.pids) == (500, 512 << 20, 1000)
    assert not parse_reserved("cpu=1").HasField("memory_bytes")
    with pytest.raises(ValueError, match="unknown resource 'disk'"):
        parse_reserved("disk=1")
    with pytest.raises(ValueError, match="reserved memory"):
        parse_reserved("memory=lots")


def test_allocatable_subtracts_reservations_never_below_zero() -> None:
    cap = pb.ResourceList(cpu_millis=1000, memory_bytes=100, pids=10)
    a = allocatable(cap, pb.ResourceList(cpu_millis=1500, pids=3))
    assert (a.cpu_millis, a.memory_bytes, a.pids) == (0, 100, 7)


async def test_register_creates_the_node_with_labels_addresses_and_ready() -> None:
    client, clock = FakeObjects(), Clock()
    hb = NodeHeartbeat(client, facts(), clock=clock)
    node = await hb.register()
    assert node.metadata.labels["zone"] == "a"
    assert node.metadata.labels["mizzen.io/hostname"] == "n1"
    assert node.status.allocatable.cpu_millis == 1500
    assert node.status.allocatable.memory_bytes == 3 << 30
    ready = next(c for c in node.status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == ("True", "AgentReady")
    assert ready.last_heartbeat_time.seconds == 1000


async def test_register_keeps_what_others_own() -> None:
    client, clock = FakeObjects(), Clock()
    existing = pb.Node(metadata=pb.ObjectMeta(name="n1", labels={"team": "x", "zone": "old"}))
    existing.spec.unschedulable = True
    existing.spec.taints.add(key="k", effect="NoSchedule")
    existing.status.conditions.add(type="Ready", status="Unknown", reason="NodeStatusUnknown")
    existing.status.conditions.add(type="MemoryPressure", status="False")
    await client.create(existing)
    node = await NodeHeartbeat(client, facts(), clock=clock).register()
    assert node.spec.unschedulable and node.spec.taints[0].key == "k"
    assert node.metadata.labels["team"] == "x" and node.metadata.labels["zone"] == "a"
    types = {c.type: c.status for c in node.status.conditions}
    assert types == {"MemoryPressure": "False", "Ready": "True"}


async def test_status_heartbeat_only_when_due_and_transition_time_kept() -> None:
    client, clock = FakeObjects(), Clock()
    hb = NodeHeartbeat(client, facts(), status_interval=10.0, clock=clock)
    await hb.register()
    writes = len(client.writes)
    clock.now += 5
    await hb.update_status()
    assert len(client.writes) == writes  # unchanged and not due
    clock.now += 6
    node = await hb.update_status()
    assert len(client.writes) == writes + 1
    ready = next(c for c in node.status.conditions if c.type == "Ready")
    assert ready.last_heartbeat_time.seconds == 1011
    assert ready.last_transition_time.seconds == 1000


async def test_status_conflict_rereads_and_retries() -> None:
    client, clock = FakeObjects(), Clock()
    hb = NodeHeartbeat(client, facts(), clock=clock)
    node = await hb.register()
    stale = pb.Node()
    stale.CopyFrom(node)
    other = await client.get("nodes", "n1")
    other.spec.unschedulable = True
    await client.update(other)  # someone else wrote: stale's resource_version is old
    clock.now += 20
    out = await hb.update_status(stale)
    assert out.spec.unschedulable


async def test_lease_created_then_renewed() -> None:
    client, clock = FakeObjects(), Clock()
    hb = NodeHeartbeat(client, facts(), clock=clock)
    await hb.renew_lease()
    lease = await client.get("leases", "n1", LEASE_NAMESPACE)
    assert lease.spec.holder_identity == "n1" and lease.spec.lease_duration_seconds == 5
    assert lease.spec.renew_time.seconds == 1000
    clock.now += 1
    await hb.renew_lease()
    lease = await client.get("leases", "n1", LEASE_NAMESPACE)
    assert lease.spec.renew_time.seconds == 1001
    assert lease.spec.acquire_time.seconds == 1000


async def test_lease_conflict_is_raised_then_recovered_by_rereading() -> None:
    client, clock = FakeObjects(), Clock()
    hb = NodeHeartbeat(client, facts(), clock=clock)
    await hb.renew_lease()
    lease = await client.get("leases", "n1", LEASE_NAMESPACE)
    await client.update(lease)  # a concurrent write
    with pytest.raises(ConflictError):
        await hb.renew_lease()
    clock.now += 1
    await hb.renew_lease()
    assert (await client.get("leases", "n1", LEASE_NAMESPACE)).spec.renew_time.seconds == 1001
