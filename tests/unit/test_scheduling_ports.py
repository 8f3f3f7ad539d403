"""Dynamic host ports in the scheduler's accounting (controllers.scheduling, pure)."""

from __future__ import annotations

from controllers.scheduling import (
    DEFAULT_DYNAMIC_PORTS,
    ClusterState,
    choose_node,
    dynamic_port_protocols,
    pod_ports,
    with_assigned_ports,
)
from protos import objects_pb2 as pb

GI = 1024**3


def node(name: str, first: int = 0, last: int = 0) -> pb.Node:
    n = pb.Node(metadata=pb.ObjectMeta(name=name))
    n.status.allocatable.cpu_millis = 64_000
    n.status.allocatable.memory_bytes = 64 * GI
    n.status.conditions.add(type="Ready", status="True")
    if first:
        n.status.dynamic_ports.first, n.status.dynamic_ports.last = first, last
    return n


def pod(name: str, *ports: tuple[str, int, str], processes: int = 1) -> pb.Pod:
    """ports: (name, number or 0 for dynamic, protocol), all on the first process."""
    p = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace="default"))
    for i in range(processes):
        p.spec.processes.add(name=f"p{i}", command=["/bin/true"])
    for port_name, number, protocol in ports:
        p.spec.processes[0].ports.add(name=port_name, port=number, protocol=protocol)
    return p


def web(name: str) -> pb.Pod:
    return pod(name, ("http", 0, "TCP"))


def place(state: ClusterState, p: pb.Pod) -> pb.Pod:
    """Decide, then assume the pod as the scheduler binds it; the bound pod."""
    decision = state.decide(p)
    assert decision.node_name, decision.message
    bound = with_assigned_ports(p, decision.node_name, decision.ports)
    state.assume(bound, decision.node_name)
    return bound


def assigned(p: pb.Pod) -> list[int]:
    return [port.port for proc in p.spec.processes for port in proc.ports if port.assigned]


def test_dynamic_ports_are_distinct_in_the_node_range_until_it_is_exhausted() -> None:
    state = ClusterState()
    state.set_node(node("n1", 30000, 30099))
    ports = [assigned(place(state, web(f"web-{i}")))[0] for i in range(100)]
    assert len(set(ports)) == 100
    assert all(30000 <= p <= 30099 for p in ports)
    decision = state.decide(web("web-100"))
    assert decision.node_name == ""
    assert decision.message == (
        "0/1 nodes are available: 1 node(s) didn't have enough free ports "
        "in their dynamic port range."
    )
    # one pod goes: its port is free again
    state.forget_pod("default/web-7")
    assert assigned(place(state, web("web-100"))) == [ports[7]]


def test_a_node_that_publishes_no_range_gets_the_default() -> None:
    state = ClusterState()
    state.set_node(node("n1"))
    first, last = DEFAULT_DYNAMIC_PORTS
    (port,) = assigned(place(state, web("web")))
    assert first <= port <= last


def test_assignment_avoids_fixed_ports_of_other_pods_and_of_the_pod_itself() -> None:
    state = ClusterState()
    state.set_node(node("n1", 30000, 30003))
    state.observe_pod(with_assigned_ports(pod("a", ("x", 30000, "TCP")), "n1", ()))
    state.assume(pod("b", ("x", 30001, "TCP")), "n1")
    both = pod("c", ("fixed", 30002, "TCP"), ("http", 0, "TCP"), ("admin", 0, "TCP"))
    decision = state.decide(both)
    assert decision.message == (
        "0/1 nodes are available: 1 node(s) didn't have enough free ports "
        "in their dynamic port range."
    )
    one = pod("d", ("fixed", 30002, "TCP"), ("http", 0, "TCP"))
    assert assigned(place(state, one)) == [30003]


def test_several_dynamic_ports_of_one_pod_differ_and_protocols_are_separate() -> None:
    state = ClusterState()
    state.set_node(node("n1", 30000, 30001))
    p = place(state, pod("a", ("http", 0, "TCP"), ("admin", 0, "TCP"), ("dns", 0, "UDP")))
    tcp = [port.port for port in p.spec.processes[0].ports if port.protocol == "TCP"]
    udp = [port.port for port in p.spec.processes[0].ports if port.protocol == "UDP"]
    assert sorted(tcp) == [30000, 30001] and len(udp) == 1
    # TCP is full, UDP still has one
    assert not state.decide(pod("b", ("http", 0, "TCP"))).node_name
    assert state.decide(pod("c", ("dns", 0, "UDP"))).node_name


def test_a_fixed_port_collides_with_an_assigned_one() -> None:
    state = ClusterState()
    state.set_node(node("n1", 30000, 30000))
    place(state, web("dyn"))
    decision = state.decide(pod("fixed", ("x", 30000, "TCP")))
    assert decision.message == (
        "0/1 nodes are available: 1 node(s) didn't have free ports for the requested pod ports."
    )


def test_a_full_node_sends_the_pod_elsewhere() -> None:
    state = ClusterState()
    state.set_node(node("small", 30000, 30000))
    state.set_node(node("big", 31000, 31999))
    placed = [place(state, web(f"w{i}")).spec.node_name for i in range(5)]
    assert placed.count("small") == 1 and placed.count("big") == 4


def test_the_informer_echo_of_the_binding_counts_once() -> None:
    state = ClusterState()
    state.set_node(node("n1", 30000, 30001))
    bound = place(state, web("a"))
    state.observe_pod(bound)  # the watch shows the bound pod with its assigned port
    assert not state.is_assumed("default/a")
    info = state.node("n1")
    assert info is not None and info.dynamic_used["TCP"] == 1
    place(state, web("b"))
    assert not state.decide(web("c")).node_name
    # the node's status is rewritten (heartbeat): the accounting stays
    state.set_node(node("n1", 30000, 30001))
    assert not state.decide(web("c")).node_name
    # the range grows: room again
    state.set_node(node("n1", 30000, 30002))
    assert assigned(place(state, web("c"))) == [30002]


def test_ports_in_use_by_another_program_are_avoided_for_a_while() -> None:
    state = ClusterState()
    state.set_node(node("n1", 30000, 30001))
    failed = with_assigned_ports(web("a"), "n1", (30000,))
    state.block_ports("n1", pod_ports(failed), until=100.0)
    # a dynamic port skips it; a fixed one cannot have it
    assert assigned(place(state, web("b"))) == [30001]
    state.forget_pod("default/b")
    decision = state.decide(pod("fixed", ("x", 30000, "TCP")), now=50.0)
    assert decision.message == (
        "0/1 nodes are available: 1 node(s) had a requested port in use by another program "
        "(PortInUse)."
    )
    assert state.block_expiry() == 100.0
    # after the cool-down it is tried again
    assert state.decide(pod("fixed", ("x", 30000, "TCP")), now=100.0).node_name == "n1"
    assert state.block_expiry() is None


def test_with_assigned_ports_fills_dynamic_ports_in_order() -> None:
    p = pod("a", ("http", 0, "TCP"), ("fixed", 80, "TCP"), processes=2)
    p.spec.processes[1].ports.add(name="metrics", protocol="TCP")
    assert dynamic_port_protocols(p) == ("TCP", "TCP")
    bound = with_assigned_ports(p, "n1", (30001, 30002))
    assert bound.spec.node_name == "n1"
    assert [(q.name, q.port, q.assigned) for q in bound.spec.processes[0].ports] == [
        ("http", 30001, True),
        ("fixed", 80, False),
    ]
    assert [(q.name, q.port, q.assigned) for q in bound.spec.processes[1].ports] == [
        ("metrics", 30002, True)
    ]
    assert p.spec.processes[0].ports[0].port == 0  # the pod given is not changed
    assert choose_node([], p).ports == ()
