"""Node lifecycle against FakeObjects with a stepped clock: grace, taint, eviction, recovery."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from controllers.base import ControllerContext
from controllers.node_lifecycle import (
    LEASE_NAMESPACE,
    LeaseObserver,
    NodeLifecycleController,
    eviction_delay,
)
from controllers.runner import process_key
from controllers.testing.fake_objects import FakeInformers, FakeObjects
from controllers.workqueue import RateLimitedQueue
from protos import objects_pb2 as pb

UNREACHABLE = "node.mizzen.io/unreachable"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class RecordedEvents:
    items: list[tuple[str, str, str]] = field(default_factory=list)

    def record(self, obj: Any, type: str, reason: str, message: str) -> None:
        self.items.append((obj.metadata.name, type, reason))


def node(name: str) -> pb.Node:
    n = pb.Node(metadata=pb.ObjectMeta(name=name))
    n.status.conditions.add(type="Ready", status="True", reason="AgentReady")
    return n


def lease(name: str, renew: int) -> pb.Lease:
    obj = pb.Lease(metadata=pb.ObjectMeta(name=name, namespace=LEASE_NAMESPACE))
    obj.spec.holder_identity = name
    obj.spec.lease_duration_seconds = 5
    obj.spec.renew_time.FromSeconds(renew)
    return obj


def pod(name: str, node_name: str, *tolerations: pb.Toleration) -> pb.Pod:
    p = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace="default"))
    p.spec.processes.add(name="main", command=["/bin/sleep", "1000"])
    p.spec.node_name = node_name
    p.spec.tolerations.extend(tolerations)
    p.status.phase = "Running"
    return p


class Harness:
    def __init__(self, *objs: Any) -> None:
        self.clock = Clock()
        self.objects = FakeObjects(clock=lambda: 1_700_000_000.0)
        self.objects.add(*objs)
        self.informers = FakeInformers(self.objects)
        self.events = RecordedEvents()
        self.ctx = ControllerContext(
            client=self.objects,
            informers=self.informers,
            events=self.events,
            clock=lambda: 1_700_000_000.0,
            config=cast(Any, None),
        )
        self.ctrl = NodeLifecycleController(grace=5.0, eviction_timeout=10.0, clock=self.clock)
        self.ctrl.queue = RateLimitedQueue(clock=self.clock)
        self.ctrl.setup(self.ctx)

    async def step(self, seconds: float) -> None:
        """Advance the clock and run every key that is due."""
        self.clock.now += seconds
        while (key := self.ctrl.queue.get_nowait()) is not None:
            await process_key(self.ctrl, key, self.ctx)

    async def renew(self, name: str) -> None:
        stored = self.objects.peek("leases", name, LEASE_NAMESPACE)
        assert stored is not None
        stored.spec.renew_time.FromSeconds(stored.spec.renew_time.seconds + 1)
        await self.objects.update(stored)

    def node(self, name: str) -> pb.Node:
        stored = self.objects.peek("nodes", name)
        assert stored is not None
        return cast(pb.Node, stored)

    def ready(self, name: str) -> tuple[str, str]:
        (cond,) = [c for c in self.node(name).status.conditions if c.type == "Ready"]
        return cond.status, cond.reason

    def taints(self, name: str) -> list[tuple[str, str]]:
        return [(t.key, t.effect) for t in self.node(name).spec.taints]

    def pods(self) -> list[str]:
        return [p.metadata.name for p in self.objects.objects("pods")]


async def test_renewing_node_stays_healthy() -> None:
    h = Harness(node("n1"), lease("n1", 100), pod("p", "n1"))
    h.objects.clear_writes()
    for _ in range(30):
        await h.renew("n1")
        h.objects.clear_writes()
        await h.step(1.0)
        assert h.objects.writes == []
    assert h.taints("n1") == [] and h.ready("n1") == ("True", "AgentReady")
    assert h.pods() == ["p"]


async def test_silent_node_is_tainted_then_its_pods_are_force_deleted() -> None:
    forever = pb.Toleration(key=UNREACHABLE, operator="Exists", effect="NoExecute")
    briefly = pb.Toleration(key=UNREACHABLE, operator="Exists", toleration_seconds=3)
    h = Harness(
        node("n1"),
        node("n2"),
        lease("n1", 100),
        lease("n2", 100),
        pod("a", "n1"),
        pod("b", "n1"),
        pod("stays", "n1", forever),
        pod("short", "n1", briefly),
        pod("elsewhere", "n2"),
    )
    await h.step(0)
    for _ in range(4):
        await h.renew("n2")
        await h.step(1.0)
    assert h.taints("n1") == []  # 4 s of silence < 5 s grace
    await h.renew("n2")
    await h.step(1.5)
    assert h.taints("n1") == [(UNREACHABLE, "NoExecute")]
    assert h.ready("n1") == ("Unknown", "NodeStatusUnknown")
    assert ("n1", "Warning", "NodeNotReady") in h.events.items
    assert h.taints("n2") == []
    assert sorted(h.pods()) == ["a", "b", "elsewhere", "short", "stays"]
    h.objects.clear_writes()
    await h.step(3.0)  # 3.5 s unhealthy: past the 3 s toleration
    assert sorted(h.pods()) == ["a", "b", "elsewhere", "stays"]
    assert h.objects.writes == [("delete", "Pod", "default/short")]
    await h.step(6.0)  # 9.5 s: not yet
    assert sorted(h.pods()) == ["a", "b", "elsewhere", "stays"]
    await h.step(0.5)  # 10 s after becoming unhealthy
    assert sorted(h.pods()) == ["elsewhere", "stays"]
    evicted = sorted(n for n, _, reason in h.events.items if reason == "Evicted")
    assert evicted == ["a", "b", "short"]
    assert h.ctrl.evicted == 3


async def test_terminating_pods_on_a_dead_node_are_finished() -> None:
    h = Harness(node("n1"), lease("n1", 100), pod("slow", "n1"))
    await h.objects.delete("pods", "slow", "default", grace_period_seconds=300)
    assert h.pods() == ["slow"]
    await h.step(0)
    await h.step(5.0)
    await h.step(10.0)
    assert h.pods() == []


async def test_lease_renewal_lifts_the_taint() -> None:
    h = Harness(node("n1"), lease("n1", 100))
    await h.step(0)
    await h.step(6.0)
    assert h.taints("n1") == [(UNREACHABLE, "NoExecute")]
    await h.renew("n1")
    h.objects.clear_writes()
    await h.step(0)
    assert h.taints("n1") == []
    assert h.objects.writes == [("update", "Node", "n1")]
    assert h.ready("n1") == ("Unknown", "NodeStatusUnknown")  # the agent sets it back
    await h.renew("n1")
    h.objects.clear_writes()
    await h.step(4.0)
    assert h.objects.writes == []


async def test_grace_starts_when_the_controller_first_sees_a_node() -> None:
    # a new leader: the lease's renew_time is old, and no lease at all for n2
    h = Harness(node("n1"), lease("n1", 1), node("n2"), pod("p", "n1"))
    h.objects.clear_writes()
    await h.step(0)
    await h.step(4.9)
    assert h.objects.writes == []
    await h.step(0.2)
    assert h.taints("n1") == [(UNREACHABLE, "NoExecute")]
    assert h.taints("n2") == [(UNREACHABLE, "NoExecute")]
    assert h.pods() == ["p"]


def test_observer_uses_its_own_clock_not_the_lease_timestamps() -> None:
    clock = Clock()
    seen = LeaseObserver(clock)
    skewed = lease("n1", 10)  # renew_time from a clock far behind ours
    assert seen.observe("n1", skewed)
    clock.now += 3
    skewed.spec.renew_time.FromSeconds(11)
    assert seen.observe("n1", skewed)
    assert seen.silent_for("n1") == 0.0
    clock.now += 2
    assert not seen.observe("n1", skewed)
    assert seen.silent_for("n1") == 2.0
    assert seen.silent_for("unknown") == 0.0


def test_eviction_delay() -> None:
    p = pod("p", "n1")
    assert eviction_delay(p, 10.0) == 10.0
    p.spec.tolerations.add(key=UNREACHABLE, operator="Exists", effect="NoExecute")
    assert eviction_delay(p, 10.0) is None
    q = pod("q", "n1", pb.Toleration(operator="Exists", toleration_seconds=2))
    assert eviction_delay(q, 10.0) == 2.0
    r = pod("r", "n1", pb.Toleration(key="other", operator="Exists"))
    assert eviction_delay(r, 10.0) == 10.0
