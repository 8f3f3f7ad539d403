"""Endpoints controller: the pure computation, then reconciles against FakeObjects."""

from __future__ import annotations

from typing import Any

from controllers.endpoints import (
    CONDITION,
    MANAGED_BY,
    EndpointsController,
    compute_endpoints,
    host_port,
    node_address,
    resolution_condition,
)
from controllers.testing import FakeObjects, RecordingEvents, drain, fake_context
from protos import objects_pb2 as pb

NOW = 1_000_000.0
NS = "default"


def clock() -> float:
    return NOW


def service(
    name: str = "db",
    selector: dict[str, str] | None = None,
    ports: list[tuple[str, str]] | None = None,
) -> pb.Service:
    svc = pb.Service(metadata=pb.ObjectMeta(name=name, namespace=NS, labels={"tier": "data"}))
    svc.spec.selector.update({"app": "db"} if selector is None else selector)
    for port_name, target in ports if ports is not None else [("http", "http")]:
        svc.spec.ports.add(name=port_name, target_port=target, protocol="TCP")
    return svc


def pod(
    name: str,
    *,
    port: int = 20001,
    port_name: str = "http",
    labels: dict[str, str] | None = None,
    node: str = "n1",
    ready: bool = True,
    phase: str = "Running",
    terminating: bool = False,
) -> pb.Pod:
    p = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace=NS, uid=f"uid-{name}"))
    p.metadata.labels.update({"app": "db"} if labels is None else labels)
    proc = p.spec.processes.add(name="main", command=["/bin/db"])
    proc.ports.add(name=port_name, port=port, protocol="TCP")
    p.spec.node_name = node
    p.status.phase = phase
    p.status.conditions.add(type="Ready", status="True" if ready else "False")
    if terminating:
        p.metadata.deletion_timestamp.FromNanoseconds(int((NOW - 1) * 1e9))
        p.metadata.finalizers.append("test/keep")
    return p


def node(name: str, internal: str = "", hostname: str = "") -> pb.Node:
    n = pb.Node(metadata=pb.ObjectMeta(name=name))
    if internal:
        n.status.addresses.add(type="InternalIP", address=internal)
    if hostname:
        n.status.addresses.add(type="Hostname", address=hostname)
    n.status.addresses.add(type="AgentGRPC", address="10.9.9.9:10250")
    return n


NODES = {"n1": node("n1", "10.0.0.1", "n1"), "n2": node("n2", hostname="n2.example.com")}


def addresses(subset: pb.EndpointSubset, ready: bool = True) -> list[tuple[str, str]]:
    items = subset.addresses if ready else subset.not_ready_addresses
    return [(a.ip, a.target_ref.name) for a in items]


# ------------------------------------------------------------------ pure computation


def test_node_address_prefers_internal_ip_then_hostname() -> None:
    assert node_address(NODES["n1"]) == "10.0.0.1"
    assert node_address(NODES["n2"]) == "n2.example.com"
    assert node_address(node("n3")) == ""
    assert node_address(None) == ""


def test_host_port_by_name_or_number() -> None:
    p = pod("db-1", port=20007)
    assert host_port(p, "http") == 20007
    assert host_port(p, "9000") == 9000
    assert host_port(p, "admin") is None
    dynamic = pod("db-2", port=0)
    assert host_port(dynamic, "http") == 0


def test_ready_and_not_ready_pods_each_with_their_own_port() -> None:
    pods = [
        pod("db-1", port=20001),
        pod("db-2", port=20002, ready=False),
        pod("db-3", port=20001, node="n2"),
    ]
    computed = compute_endpoints(service(), pods, NODES)
    assert computed.unresolved == {}
    assert [[(p.name, p.port, p.protocol) for p in s.ports] for s in computed.subsets] == [
        [("http", 20001, "TCP")],
        [("http", 20002, "TCP")],
    ]
    first, second = computed.subsets
    # the same port on two nodes: one subset, addresses sorted by ip
    assert addresses(first) == [("10.0.0.1", "db-1"), ("n2.example.com", "db-3")]
    assert addresses(first, ready=False) == []
    assert addresses(second) == []
    assert addresses(second, ready=False) == [("10.0.0.1", "db-2")]
    ref = first.addresses[0]
    assert (ref.node_name, ref.target_ref.kind, ref.target_ref.uid) == ("n1", "Pod", "uid-db-1")


def test_pods_left_out() -> None:
    pods = [
        pod("other", labels={"app": "web"}),
        pod("unbound", node=""),
        pod("gone", terminating=True),
        pod("done", phase="Succeeded"),
        pod("failed", phase="Failed"),
        pod("dynamic-unassigned", port=0),
        pod("no-address", node="n9"),
        pod("kept", port=20005),
    ]
    computed = compute_endpoints(service(), pods, NODES)
    assert computed.unresolved == {}
    assert [addresses(s) for s in computed.subsets] == [[("10.0.0.1", "kept")]]


def test_pod_host_ip_when_the_node_is_unknown() -> None:
    p = pod("db-1", node="n9")
    p.status.host_ip = "192.0.2.7"
    computed = compute_endpoints(service(), [p], NODES)
    assert [addresses(s) for s in computed.subsets] == [[("192.0.2.7", "db-1")]]


def test_a_service_selecting_nothing_has_no_subsets_and_no_error() -> None:
    computed = compute_endpoints(service(selector={"app": "nope"}), [pod("db-1")], NODES)
    assert computed.subsets == []
    assert resolution_condition(service(), computed) == ("True", "TargetPortsFound", "")


def test_numeric_target_port_is_used_as_is() -> None:
    computed = compute_endpoints(service(ports=[("", "5432")]), [pod("db-1")], NODES)
    assert [(p.name, p.port) for p in computed.subsets[0].ports] == [("", 5432)]


def test_several_service_ports() -> None:
    p = pod("db-1", port=20001)
    p.spec.processes[0].ports.add(name="admin", port=20002, protocol="TCP")
    svc = service(ports=[("http", "http"), ("admin", "admin"), ("metrics", "9100")])
    (subset,) = compute_endpoints(svc, [p], NODES).subsets
    assert [(x.name, x.port) for x in subset.ports] == [
        ("http", 20001),
        ("admin", 20002),
        ("metrics", 9100),
    ]


def test_unresolved_target_port_leaves_the_pod_out_and_names_it() -> None:
    svc = service(ports=[("http", "http"), ("admin", "admin")])
    pods = [pod("db-2"), pod("db-1")]
    computed = compute_endpoints(svc, pods, NODES)
    assert computed.subsets == []
    assert computed.unresolved == {1: ["db-1", "db-2"]}
    status, reason, message = resolution_condition(svc, computed)
    assert (status, reason) == ("False", "TargetPortNotFound")
    assert message == (
        'spec.ports[1] (admin): targetPort "admin" is not a port name declared by any process '
        "of pod db-1, db-2 (those pods are left out)"
    )


def test_unresolved_message_is_bounded() -> None:
    svc = service(ports=[("http", "nope")])
    pods = [pod(f"db-{i}") for i in range(8)]
    _, _, message = resolution_condition(svc, compute_endpoints(svc, pods, NODES))
    assert "db-0, db-1, db-2, db-3, db-4 and 3 more" in message


# ------------------------------------------------------------------ reconciles


async def run(*objs: Any) -> tuple[FakeObjects, EndpointsController, Any]:
    objects = FakeObjects(clock=clock)
    objects.add(*objs)
    ctx = fake_context(objects, clock=clock)
    controller = EndpointsController()
    controller.setup(ctx)
    await drain(controller, ctx)
    return objects, controller, ctx


def ready_ips(objects: FakeObjects, name: str = "db") -> list[tuple[str, int]]:
    ep = objects.peek("endpoints", name, NS)
    assert ep is not None
    return [(a.target_ref.name, s.ports[0].port) for s in ep.subsets for a in s.addresses]


def condition(objects: FakeObjects, name: str = "db") -> tuple[str, str]:
    svc = objects.peek("services", name, NS)
    cond = next(c for c in svc.status.conditions if c.type == CONDITION)
    return cond.status, cond.reason


async def test_creates_endpoints_with_the_service_labels_and_sets_the_condition() -> None:
    objects, _, _ = await run(
        NODES["n1"], service(), pod("db-1", port=20001), pod("db-2", port=20002)
    )
    ep = objects.peek("endpoints", "db", NS)
    assert dict(ep.metadata.labels) == {"tier": "data", MANAGED_BY: "endpoints-controller"}
    assert ready_ips(objects) == [("db-1", 20001), ("db-2", 20002)]
    assert condition(objects) == ("True", "TargetPortsFound")
    assert [(op, kind) for op, kind, _ in objects.writes] == [
        ("create", "Endpoints"),
        ("update_status", "Service"),
    ]


async def test_pod_becoming_unready_moves_it_and_nothing_else_is_written() -> None:
    objects, controller, ctx = await run(NODES["n1"], service(), pod("db-1"), pod("db-2", port=2))
    objects.clear_writes()
    p = objects.peek("pods", "db-2", NS)
    p.status.conditions[0].status = "False"
    await objects.update_status(p)
    await drain(controller, ctx)
    assert ready_ips(objects) == [("db-1", 20001)]
    ep = objects.peek("endpoints", "db", NS)
    assert [a.target_ref.name for s in ep.subsets for a in s.not_ready_addresses] == ["db-2"]
    assert [(op, kind) for op, kind, _ in objects.writes] == [
        ("update_status", "Pod"),
        ("update", "Endpoints"),
    ]
    # a pod status change the Endpoints do not depend on queues nothing
    objects.clear_writes()
    p = objects.peek("pods", "db-1", NS)
    p.status.message = "still fine"
    await objects.update_status(p)
    assert await drain(controller, ctx) == 0


async def test_deleted_pod_and_relabelled_pod_leave() -> None:
    objects, controller, ctx = await run(
        NODES["n1"], service(), pod("db-1"), pod("db-2", port=2), pod("db-3", port=3)
    )
    await objects.delete("pods", "db-1", NS, grace_period_seconds=0)
    p = objects.peek("pods", "db-2", NS)
    p.metadata.labels["app"] = "other"
    await objects.update(p)
    await drain(controller, ctx)
    assert ready_ips(objects) == [("db-3", 3)]


async def test_service_selecting_nothing_gets_empty_endpoints() -> None:
    objects, _, _ = await run(NODES["n1"], service(selector={"app": "nothing"}), pod("db-1"))
    ep = objects.peek("endpoints", "db", NS)
    assert list(ep.subsets) == []
    assert condition(objects) == ("True", "TargetPortsFound")


async def test_unresolved_target_port_condition_and_one_event() -> None:
    svc = service(ports=[("http", "web")])
    objects, controller, ctx = await run(NODES["n1"], svc, pod("db-1"))
    assert condition(objects) == ("False", "TargetPortNotFound")
    events: RecordingEvents = ctx.events
    assert [(e.kind, e.type, e.reason) for e in events.events] == [
        ("Service", "Warning", "TargetPortNotFound")
    ]
    # another pod with the same problem: the message changes, no second Event
    objects.add(pod("db-2", port=5))
    controller.queue.add(f"{NS}/db")
    await drain(controller, ctx)
    assert "db-1, db-2" in objects.peek("services", "db", NS).status.conditions[0].message
    assert len(events.events) == 1
    # fixed by the Service: True again
    fixed = objects.peek("services", "db", NS)
    fixed.spec.ports[0].target_port = "http"
    await objects.update(fixed)
    await drain(controller, ctx)
    assert condition(objects) == ("True", "TargetPortsFound")
    assert ready_ips(objects) == [("db-2", 5), ("db-1", 20001)]  # subsets sorted by port


async def test_service_deleted_deletes_its_managed_endpoints_only() -> None:
    manual = pb.Endpoints(metadata=pb.ObjectMeta(name="external", namespace=NS))
    manual.subsets.add().addresses.add(ip="192.0.2.1")
    objects, controller, ctx = await run(NODES["n1"], service(), pod("db-1"), manual)
    assert objects.peek("endpoints", "external", NS) is not None
    await objects.delete("services", "db", NS)
    await drain(controller, ctx)
    assert objects.peek("endpoints", "db", NS) is None
    assert objects.peek("endpoints", "external", NS) is not None


async def test_service_without_selector_is_left_alone() -> None:
    svc = service(selector={})
    manual = pb.Endpoints(metadata=pb.ObjectMeta(name="db", namespace=NS))
    manual.subsets.add().addresses.add(ip="192.0.2.1")
    objects, _, _ = await run(NODES["n1"], svc, pod("db-1"), manual)
    assert objects.writes == []
    assert objects.peek("endpoints", "db", NS).subsets[0].addresses[0].ip == "192.0.2.1"


async def test_endpoints_changed_by_someone_else_are_put_back() -> None:
    objects, controller, ctx = await run(NODES["n1"], service(), pod("db-1"))
    ep = objects.peek("endpoints", "db", NS)
    del ep.subsets[:]
    await objects.update(ep)
    await drain(controller, ctx)
    assert ready_ips(objects) == [("db-1", 20001)]
    await objects.delete("endpoints", "db", NS)
    await drain(controller, ctx)
    assert ready_ips(objects) == [("db-1", 20001)]


async def test_node_address_change_rewrites() -> None:
    objects, controller, ctx = await run(NODES["n1"], service(), pod("db-1"))
    n = objects.peek("nodes", "n1")
    n.status.addresses[0].address = "10.0.0.99"
    await objects.update_status(n)
    await drain(controller, ctx)
    ep = objects.peek("endpoints", "db", NS)
    assert ep.subsets[0].addresses[0].ip == "10.0.0.99"


async def test_a_lagging_cache_does_not_cost_a_conflict() -> None:
    objects = FakeObjects(clock=clock)
    objects.add(NODES["n1"], service(), pod("db-1"))
    ctx = fake_context(objects, clock=clock, auto_sync=False)
    controller = EndpointsController()
    controller.setup(ctx)
    await drain(controller, ctx)
    # the cache has not seen the create; a pod change arrives first
    p = objects.peek("pods", "db-1", NS)
    p.status.conditions[0].status = "False"
    await objects.update_status(p)
    informers: Any = ctx.informers
    pods = informers.get("pods")
    pods.apply_event("MODIFIED", objects.peek("pods", "db-1", NS))
    objects.clear_writes()
    await drain(controller, ctx)
    assert [(op, kind) for op, kind, _ in objects.writes] == [("update", "Endpoints")]
    assert ready_ips(objects) == []
