"""The scheduler controller against FakeObjects: binding, accounting, unschedulable, conflicts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from controllers.base import ControllerContext
from controllers.runner import process_key
from controllers.scheduler import Scheduler
from controllers.testing.fake_objects import FakeInformers, FakeObjects
from mizzen.client.errors import AmbiguousWriteError, ConflictError
from protos import objects_pb2 as pb

GI = 1024**3
NOW = 1_700_000_000.0


@dataclass
class RecordedEvents:
    items: list[tuple[str, str, str, str]] = field(default_factory=list)

    def record(self, obj: Any, type: str, reason: str, message: str) -> None:
        self.items.append((obj.metadata.name, type, reason, message))

    def reasons(self) -> list[tuple[str, str]]:
        return [(name, reason) for name, _, reason, _ in self.items]


def node(name: str, *, cpu: int = 1000, mem: int = 4 * GI, **labels: str) -> pb.Node:
    n = pb.Node(metadata=pb.ObjectMeta(name=name, labels=labels))
    n.status.capacity.cpu_millis = cpu
    n.status.capacity.memory_bytes = mem
    n.status.conditions.add(type="Ready", status="True", reason="AgentReady")
    return n


def pod(name: str, *, cpu: int = 0, mem: int = 0, node_name: str = "") -> pb.Pod:
    p = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace="default"))
    proc = p.spec.processes.add(name="main", command=["/bin/sleep", "1000"])
    if cpu:
        proc.resources.requests.cpu_millis = cpu
    if mem:
        proc.resources.requests.memory_bytes = mem
    p.spec.node_name = node_name
    return p


class Harness:
    def __init__(self, *objs: Any, auto_sync: bool = True) -> None:
        self.objects = FakeObjects(clock=lambda: NOW)
        self.objects.add(*objs)
        self.informers = FakeInformers(self.objects, auto_sync=auto_sync)
        self.events = RecordedEvents()
        self.ctx = ControllerContext(
            client=self.objects,
            informers=self.informers,
            events=self.events,
            clock=lambda: NOW,
            config=cast(Any, None),
        )
        self.scheduler = Scheduler(workers=1)
        self.scheduler.setup(self.ctx)

    async def drain(self) -> list[str]:
        """Process every ready key once per pass until the queue has none ready."""
        done = []
        while (key := self.scheduler.queue.get_nowait()) is not None:
            await process_key(self.scheduler, key, self.ctx)
            done.append(key)
        return done

    def bound(self) -> dict[str, str]:
        return {p.metadata.name: p.spec.node_name for p in self.objects.objects("pods")}

    def condition(self, name: str) -> pb.Condition:
        stored = self.objects.peek("pods", name, "default")
        assert stored is not None
        (cond,) = [c for c in stored.status.conditions if c.type == "PodScheduled"]
        return cond


async def test_binds_pending_pod_in_one_write_that_also_marks_it_scheduled() -> None:
    h = Harness(node("n1"), pod("web", cpu=100))
    h.objects.clear_writes()
    assert await h.drain() == ["default/web"]
    assert h.bound() == {"web": "n1"}
    # the binding update sets PodScheduled too (as the store does): no status write
    assert h.objects.writes == [("update", "Pod", "default/web")]
    cond = h.condition("web")
    assert (cond.status, cond.reason) == ("True", "")
    assert h.events.items == [
        ("web", "Normal", "Scheduled", "Successfully assigned default/web to n1")
    ]
    assert h.scheduler.bound == 1


async def test_ignores_bound_and_terminating_pods() -> None:
    terminating = pod("gone")
    terminating.metadata.deletion_timestamp.FromSeconds(int(NOW))
    terminating.metadata.finalizers.append("example.com/hold")
    h = Harness(node("n1"), pod("placed", node_name="n1"), terminating)
    h.objects.clear_writes()
    await h.drain()
    assert h.objects.writes == []


async def test_assumed_pods_prevent_overcommit_while_the_informer_lags() -> None:
    pods = [pod(f"p{i}", cpu=400) for i in range(5)]
    h = Harness(node("a"), node("b"), *pods, auto_sync=False)
    h.objects.clear_writes()
    await h.drain()
    placed = h.bound()
    per_node = {n: sorted(p for p, m in placed.items() if m == n) for n in ("a", "b", "")}
    assert len(per_node["a"]) == 2 and len(per_node["b"]) == 2 and len(per_node[""]) == 1
    (left,) = per_node[""]
    assert h.condition(left).message == "0/2 nodes are available: 2 Insufficient cpu."
    # the watch catches up: bound pods replace the assumptions, nothing is counted twice
    h.informers.sync()
    for name in ("a", "b"):
        info = h.scheduler.state.node(name)
        assert info is not None and info.cpu_used == 800 and info.pod_count == 2


async def test_unschedulable_condition_event_and_backoff() -> None:
    picky = pod("picky", cpu=1000)
    picky.spec.node_selector["zone"] = "a"
    h = Harness(node("small", cpu=500, zone="a"), node("other", cpu=4000, zone="b"), picky)
    h.objects.clear_writes()
    await h.drain()
    expected = "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) didn't match node selector."
    cond = h.condition("picky")
    assert (cond.status, cond.reason, cond.message) == ("False", "Unschedulable", expected)
    assert h.objects.writes == [("update_status", "Pod", "default/picky")]
    assert h.events.items == [("picky", "Warning", "FailedScheduling", expected)]
    assert "default/picky" in h.scheduler.queue.delayed()
    assert h.scheduler.unschedulable["default/picky"] == 1
    # a second attempt with the same verdict does not rewrite the status
    h.objects.clear_writes()
    h.scheduler.queue.add("default/picky")
    assert await h.drain() == ["default/picky"]
    assert h.objects.writes == []
    assert h.scheduler.unschedulable["default/picky"] == 2
    assert len(h.events.items) == 2


async def test_node_change_retries_unschedulable_pods() -> None:
    h = Harness(node("n1", cpu=500), pod("big", cpu=1000))
    await h.drain()
    assert h.bound() == {"big": ""}
    assert h.scheduler.queue.get_nowait() is None  # waiting for its backoff
    # a heartbeat-only change does not wake it
    stored = h.objects.peek("nodes", "n1")
    assert stored is not None
    stored.status.conditions[0].last_heartbeat_time.FromSeconds(int(NOW))
    await h.objects.update_status(stored)
    assert await h.drain() == []
    # more capacity does
    stored = h.objects.peek("nodes", "n1")
    assert stored is not None
    stored.status.allocatable.cpu_millis = 2000
    await h.objects.update_status(stored)
    assert await h.drain() == ["default/big"]
    assert h.bound() == {"big": "n1"}
    assert (h.condition("big").status, h.condition("big").reason) == ("True", "")
    assert "default/big" not in h.scheduler.unschedulable


async def test_new_node_and_freed_resources_retry_unschedulable_pods() -> None:
    h = Harness(node("n1", cpu=1000), pod("first", cpu=800, node_name="n1"), pod("next", cpu=800))
    await h.drain()
    assert h.bound()["next"] == ""
    await h.objects.delete("pods", "first", "default", grace_period_seconds=0)
    assert await h.drain() == ["default/next"]
    assert h.bound() == {"next": "n1"}

    h2 = Harness(node("n1", cpu=100), pod("p", cpu=800))
    await h2.drain()
    await h2.objects.create(node("n2", cpu=1000))
    assert await h2.drain() == ["default/p"]
    assert h2.bound() == {"p": "n2"}


async def test_cordoned_and_tainted_nodes_are_skipped() -> None:
    cordoned = node("cordoned", cpu=8000)
    cordoned.spec.unschedulable = True
    tainted = node("tainted", cpu=8000)
    tainted.spec.taints.add(key="node.mizzen.io/unreachable", effect="NoExecute")
    h = Harness(cordoned, tainted, node("plain"), pod("p", cpu=100))
    await h.drain()
    assert h.bound() == {"p": "plain"}


async def test_conflict_drops_assumption_and_retries_later() -> None:
    h = Harness(node("n1", cpu=1000), pod("p", cpu=600))
    h.objects.fail("update", "Pod", ConflictError("modified"))
    h.objects.clear_writes()
    await h.drain()
    assert h.objects.writes == []
    info = h.scheduler.state.node("n1")
    assert info is not None and info.cpu_used == 0 and not h.scheduler.state.is_assumed("default/p")
    assert h.scheduler.queue.num_requeues("default/p") == 1
    assert "default/p" in h.scheduler.queue.delayed()


async def test_conflict_with_a_pod_bound_elsewhere_is_not_rebound() -> None:
    h = Harness(node("a"), node("b"), pod("p", cpu=100), auto_sync=False)
    # someone else binds the pod; our informer has not seen it yet
    stored = h.objects.peek("pods", "p", "default")
    assert stored is not None
    stored.spec.node_name = "b"
    await h.objects.update(stored)
    h.objects.clear_writes()
    await h.drain()
    assert h.objects.writes == []
    assert h.bound() == {"p": "b"}
    assert h.scheduler.queue.num_requeues("default/p") == 0
    assert "default/p" not in h.scheduler.queue.delayed()
    h.informers.sync()
    info = h.scheduler.state.node("b")
    assert info is not None and info.pod_count == 1


@pytest.mark.parametrize("most_allocated", [False, True])
async def test_allocation_strategy(most_allocated: bool) -> None:
    h = Harness(node("busy"), node("idle"), pod("x", cpu=500, node_name="busy"), pod("y", cpu=100))
    h.scheduler.state.most_allocated = most_allocated
    await h.drain()
    assert h.bound()["y"] == ("busy" if most_allocated else "idle")


async def test_ambiguous_bind_is_resolved_by_reading_back() -> None:
    h = Harness(node("n1", cpu=1000), pod("p", cpu=600))
    h.objects.fail("update", "Pod", AmbiguousWriteError("connection reset"))
    await h.drain()  # the write did not happen: assumption dropped, retried with backoff
    info = h.scheduler.state.node("n1")
    assert info is not None and info.cpu_used == 0
    assert h.scheduler.queue.num_requeues("default/p") == 1
    h.scheduler.queue.add("default/p")
    await h.drain()
    assert h.bound() == {"p": "n1"}
    assert info.cpu_used == 600 and not h.scheduler.state.is_assumed("default/p")


async def test_spreads_pods_of_one_owner_across_nodes() -> None:
    pods = []
    for i in range(6):
        p = pod(f"web-{i}", cpu=10)
        p.metadata.owner_references.add(
            api_version="mizzen/v1", kind="ReplicaSet", name="web", uid="rs-uid", controller=True
        )
        pods.append(p)
    busy = pod("other", cpu=500, node_name="a")
    h = Harness(node("a", cpu=4000), node("b", cpu=4000), node("c", cpu=4000), busy, *pods)
    await h.drain()
    placed = [n for name, n in h.bound().items() if name.startswith("web-")]
    assert sorted(placed) == ["a", "a", "b", "b", "c", "c"]
