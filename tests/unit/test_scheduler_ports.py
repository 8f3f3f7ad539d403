"""The scheduler binds pods with dynamic ports: ports in the binding write, PortInUse blocks."""

from __future__ import annotations

from test_scheduler import NOW, Harness, node, pod

from controllers.scheduler import PORT_IN_USE_BLOCK
from protos import objects_pb2 as pb


def web(name: str) -> pb.Pod:
    p = pod(name)
    p.spec.processes[0].ports.add(name="http", protocol="TCP")
    return p


def ranged(name: str, first: int, last: int) -> pb.Node:
    n = node(name, cpu=64_000)
    n.status.dynamic_ports.first, n.status.dynamic_ports.last = first, last
    return n


def ports_of(h: Harness) -> dict[str, list[tuple[int, bool]]]:
    return {
        p.metadata.name: [(q.port, q.assigned) for q in p.spec.processes[0].ports]
        for p in h.objects.objects("pods")
    }


async def test_five_replicas_on_one_node_get_distinct_ports_in_the_binding_write() -> None:
    h = Harness(ranged("n1", 30000, 30009), *(web(f"web-{i}") for i in range(5)))
    h.objects.clear_writes()
    await h.drain()
    assert set(h.bound().values()) == {"n1"}
    # one write per pod: the binding carries the ports (validated as a binding by the store)
    assert sorted(h.objects.writes) == [("update", "Pod", f"default/web-{i}") for i in range(5)]
    ports = [p for assigned in ports_of(h).values() for p in assigned]
    assert all(assigned for _, assigned in ports)
    numbers = [n for n, _ in ports]
    assert len(set(numbers)) == 5 and all(30000 <= n <= 30009 for n in numbers)


async def test_exhausted_range_is_unschedulable_with_the_reason() -> None:
    h = Harness(ranged("n1", 30000, 30001), *(web(f"web-{i}") for i in range(3)))
    await h.drain()
    left = [name for name, n in h.bound().items() if not n]
    assert len(left) == 1
    cond = h.condition(left[0])
    assert (cond.status, cond.reason, cond.message) == (
        "False",
        "Unschedulable",
        "0/1 nodes are available: 1 node(s) didn't have enough free ports in their "
        "dynamic port range.",
    )
    # a bound pod goes away: the pending one gets its port
    gone = next(name for name, n in h.bound().items() if n)
    freed = ports_of(h)[gone][0][0]
    await h.objects.delete("pods", gone, "default", grace_period_seconds=0)
    assert await h.drain() == [f"default/{left[0]}"]
    assert ports_of(h)[left[0]] == [(freed, True)]


async def test_a_wider_range_published_by_the_node_retries_pending_pods() -> None:
    h = Harness(ranged("n1", 30000, 30000), web("a"), web("b"))
    await h.drain()
    assert sorted(h.bound().values()) == ["", "n1"]
    stored = h.objects.peek("nodes", "n1")
    assert stored is not None
    stored.status.dynamic_ports.last = 30001
    await h.objects.update_status(stored)
    await h.drain()
    assert sorted(h.bound().values()) == ["n1", "n1"]


async def test_port_in_use_blocks_the_port_on_that_node_for_a_while() -> None:
    fixed = pod("fixed")
    fixed.spec.processes[0].ports.add(name="http", port=8080, protocol="TCP")
    h = Harness(node("n1"), fixed)
    await h.drain()
    assert h.bound() == {"fixed": "n1"}
    # the agent found 8080 taken by another program
    failed = h.objects.peek("pods", "fixed", "default")
    assert failed is not None
    failed.status.phase, failed.status.reason = "Failed", "PortInUse"
    failed.status.start_time.FromSeconds(int(NOW))
    await h.objects.update_status(failed)
    again = pod("fixed-2")
    again.spec.processes[0].ports.add(name="http", port=8080, protocol="TCP")
    await h.objects.create(again)
    h.scheduler.backoff_initial = 1000.0
    await h.drain()
    assert h.bound()["fixed-2"] == ""
    cond = h.condition("fixed-2")
    assert cond.message == (
        "0/1 nodes are available: 1 node(s) had a requested port in use by another program "
        "(PortInUse)."
    )
    # retried when the block ends, not at the (here very long) backoff
    delayed = h.scheduler.queue.delayed()
    assert PORT_IN_USE_BLOCK - 1 < delayed["default/fixed-2"] <= PORT_IN_USE_BLOCK + 0.1
    # another port is not blocked
    other = pod("other")
    other.spec.processes[0].ports.add(name="http", port=8081, protocol="TCP")
    await h.objects.create(other)
    await h.drain()
    assert h.bound()["other"] == "n1"
