"""The dependencies controller: evaluation, cycle detection (pure), and the controller
against FakeObjects driven only by informer events (no resync, no polling)."""

from __future__ import annotations

from typing import Any

import pytest

from controllers.base import owner_reference
from controllers.dependencies import (
    Cycle,
    DependenciesController,
    Node,
    Targets,
    find_cycles,
    unmet,
    verdict,
)
from controllers.podutil import mark_condition
from controllers.testing import FakeObjects, RecordingEvents, drain, fake_context
from mizzen.api.dependencies import CONDITION, CYCLE, MET, NOT_READY, Target
from protos import objects_pb2 as pb

NOW = 3_000_000.0
NS = "default"


def clock() -> float:
    return NOW


# ------------------------------------------------------------------ objects


def service(name: str, **selector: str) -> pb.Service:
    svc = pb.Service(metadata=pb.ObjectMeta(name=name, namespace=NS))
    svc.spec.selector.update(selector or {"app": name})
    svc.spec.ports.add(name="http", target_port="http")
    return svc


def endpoints(name: str, ready: int, not_ready: int = 0) -> pb.Endpoints:
    ep = pb.Endpoints(metadata=pb.ObjectMeta(name=name, namespace=NS))
    subset = ep.subsets.add()
    for i in range(ready):
        subset.addresses.add(ip="198.18.0.1", node_name="n1").target_ref.name = f"{name}-{i}"
    for _ in range(not_ready):
        subset.not_ready_addresses.add(ip="198.18.0.1", node_name="n1")
    subset.ports.add(name="http", port=20000, protocol="TCP")
    return ep


def with_condition(obj: Any, type_: str, status: str, reason: str = "") -> Any:
    mark_condition(obj.status.conditions, type_, status, reason, "", NOW)
    return obj


def deployment(name: str, *needs: pb.Dependency, available: bool | None = None) -> pb.Deployment:
    d = pb.Deployment(metadata=pb.ObjectMeta(name=name, namespace=NS, uid=f"uid-{name}"))
    d.spec.selector.match_labels["app"] = name
    d.spec.template.metadata.labels["app"] = name
    d.spec.template.spec.processes.add(name="main", command=["/bin/true"])
    d.spec.depends_on.extend(needs)
    if available is not None:
        with_condition(d, "Available", "True" if available else "False")
    return d


def job(name: str, condition: str = "") -> pb.Job:
    j = pb.Job(metadata=pb.ObjectMeta(name=name, namespace=NS, uid=f"uid-{name}"))
    j.spec.template.metadata.labels["app"] = name
    j.spec.template.spec.processes.add(name="main", command=["/bin/true"])
    if condition:
        with_condition(j, condition, "True")
    return j


def svc_dep(name: str) -> pb.Dependency:
    return pb.Dependency(service=name)


def pod(name: str, *needs: pb.Dependency, owner: Any = None, phase: str = "") -> pb.Pod:
    p = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace=NS, uid=f"uid-{name}"))
    p.metadata.labels["app"] = name.rsplit("-", 1)[0]
    p.spec.processes.add(name="main", command=["/bin/true"])
    p.spec.depends_on.extend(needs)
    p.spec.node_name = "n1"
    if owner is not None:
        p.metadata.owner_references.append(owner_reference(owner))
        p.metadata.labels["app"] = owner.metadata.name
    p.status.phase = phase or "Pending"
    return p


def replicaset_of(d: pb.Deployment) -> pb.ReplicaSet:
    rs = pb.ReplicaSet(
        metadata=pb.ObjectMeta(
            name=f"{d.metadata.name}-h", namespace=NS, uid=f"uid-rs-{d.metadata.name}"
        )
    )
    rs.metadata.owner_references.append(owner_reference(d))
    rs.spec.selector.match_labels["app"] = d.metadata.name
    rs.spec.template.CopyFrom(d.spec.template)
    rs.spec.template.spec.depends_on.extend(d.spec.depends_on)
    return rs


def condition(objects: FakeObjects, kind: str, name: str) -> tuple[str, str, str] | None:
    obj = objects.peek(kind, name, NS)
    for c in obj.status.conditions:
        if c.type == CONDITION:
            return (c.status, c.reason, c.message)
    return None


class World:
    """FakeObjects, a context and a controller that only ever sees informer events."""

    def __init__(self, *objs: Any) -> None:
        self.objects = FakeObjects(clock=clock)
        self.objects.add(*objs)
        self.ctx = fake_context(self.objects, clock=clock)
        self.controller = DependenciesController()
        self.controller.setup(self.ctx)

    @property
    def events(self) -> RecordingEvents:
        events = self.ctx.events
        assert isinstance(events, RecordingEvents)
        return events

    async def settle(self) -> None:
        await drain(self.controller, self.ctx)

    async def put(self, *objs: Any) -> None:
        """Create or replace objects as a user would (then let the controller react)."""
        for obj in objs:
            kind = type(obj).DESCRIPTOR.name
            current = self.objects.peek(kind, obj.metadata.name, NS)
            if current is None:
                await self.objects.create(obj)
                continue
            obj.metadata.resource_version = current.metadata.resource_version
            if kind == "Endpoints" or not obj.status.ListFields():
                obj.status.CopyFrom(current.status) if hasattr(obj, "status") else None
                await self.objects.update(obj)
            else:
                await self.objects.update_status(obj)
        await self.settle()

    async def remove(self, kind: str, name: str) -> None:
        await self.objects.delete(kind, name, NS)
        await self.settle()


# ------------------------------------------------------------------ evaluation


def seen(**objs: Any) -> Targets:
    by = {(type(o).DESCRIPTOR.name, o.metadata.name): o for o in objs.values()}
    return Targets(
        service=lambda n: by.get(("Service", n)),
        endpoints=lambda n: by.get(("Endpoints", n)),
        deployment=lambda n: by.get(("Deployment", n)),
        job=lambda n: by.get(("Job", n)),
    )


def test_unmet_says_why_for_every_kind_of_target() -> None:
    needs = [
        svc_dep("gone"),
        svc_dep("db"),
        svc_dep("web"),
        pb.Dependency(kind="Deployment", name="cache"),
        pb.Dependency(kind="Deployment", name="api", condition="Available"),
        pb.Dependency(kind="Deployment", name="up", condition="Available"),
        pb.Dependency(kind="Job", name="missing"),
        pb.Dependency(kind="Job", name="migrate", condition="Complete"),
        pb.Dependency(kind="Job", name="broken", condition="Complete"),
        pb.Dependency(kind="Job", name="done", condition="Complete"),
    ]
    state = seen(
        a=service("db"),
        b=endpoints("db", ready=0, not_ready=2),
        c=service("web"),
        d=endpoints("web", ready=1),
        e=deployment("api", available=False),
        f=deployment("up", available=True),
        g=job("migrate"),
        h=job("broken", "Failed"),
        i=job("done", "Complete"),
    )
    assert unmet(needs, state) == [
        'service "gone" does not exist',
        'service "db" has no ready endpoints',
        'deployment "cache" does not exist',
        'deployment "api" is not Available',
        'job "missing" does not exist',
        'job "migrate" is not Complete',
        'job "broken" failed',
    ]


def test_verdict() -> None:
    assert verdict([], None) == verdict([], Cycle(("Deployment/a", "Deployment/a"), 2))
    assert verdict([], None).status == "True"
    assert verdict([], None).reason == MET
    v = verdict(['service "db" has no ready endpoints', "x"], None)
    assert (v.status, v.reason, v.message) == (
        "False",
        NOT_READY,
        'service "db" has no ready endpoints; x',
    )
    cyc = Cycle(("Deployment/a", "Service/b", "Deployment/b", "Service/a", "Deployment/a"), 5)
    v = verdict(["y"], cyc)
    assert (v.reason, v.message) == (
        CYCLE,
        "dependency cycle: Deployment/a -> Service/b -> Deployment/b -> Service/a -> "
        "Deployment/a; y",
    )
    v = verdict([], cyc, workload=True)
    assert (v.status, v.reason) == ("False", CYCLE)


# ------------------------------------------------------------------ cycles


def node(ref: str, *needs: str, app: str = "") -> Node:
    targets = []
    for need in needs:
        kind, _, name = need.partition("/")
        targets.append(Target(kind, name))
    return Node(ref, {"app": app or ref.split("/")[1]}, tuple(targets))


SVC = {"a": {"app": "a"}, "b": {"app": "b"}, "c": {"app": "c"}, "db": {"app": "db"}}


@pytest.mark.parametrize(
    ("nodes", "services", "expected"),
    [
        pytest.param(
            [node("Deployment/a"), node("Deployment/b", "Service/a")], SVC, {}, id="chain"
        ),
        pytest.param(
            [node("Deployment/a", "Service/b"), node("Deployment/b", "Service/a")],
            SVC,
            {
                "Deployment/a": (
                    "Deployment/a",
                    "Service/b",
                    "Deployment/b",
                    "Service/a",
                    "Deployment/a",
                ),
                "Deployment/b": (
                    "Deployment/b",
                    "Service/a",
                    "Deployment/a",
                    "Service/b",
                    "Deployment/b",
                ),
            },
            id="two",
        ),
        pytest.param(
            [node("Deployment/a", "Service/a")],
            SVC,
            {"Deployment/a": ("Deployment/a", "Service/a", "Deployment/a")},
            id="own-service",
        ),
        pytest.param(
            [node("Deployment/a", "Deployment/a")],
            SVC,
            {"Deployment/a": ("Deployment/a", "Deployment/a")},
            id="itself",
        ),
        pytest.param(
            [
                node("Deployment/a", "Service/b"),
                node("Deployment/b", "Service/a"),
                node("Deployment/b2", app="b"),
            ],
            SVC,
            {},
            id="another-member-can-start",
        ),
        pytest.param(
            [
                node("Deployment/a", "Service/b"),
                node("Deployment/b", "Service/a"),
                node("Deployment/c", "Service/a"),
            ],
            SVC,
            {
                "Deployment/a": (
                    "Deployment/a",
                    "Service/b",
                    "Deployment/b",
                    "Service/a",
                    "Deployment/a",
                ),
                "Deployment/b": (
                    "Deployment/b",
                    "Service/a",
                    "Deployment/a",
                    "Service/b",
                    "Deployment/b",
                ),
            },
            id="downstream-is-not-in-it",
        ),
        pytest.param(
            [node("Deployment/a", "Service/nowhere", "Job/missing", "Deployment/gone")],
            SVC,
            {},
            id="missing-targets",
        ),
        pytest.param(
            [node("Deployment/a", "Service/c")],
            {"c": {}},
            {},
            id="service-selecting-nothing",
        ),
        pytest.param(
            [node("Job/migrate", "Deployment/db"), node("Deployment/db", "Job/migrate")],
            SVC,
            {
                "Job/migrate": ("Job/migrate", "Deployment/db", "Job/migrate"),
                "Deployment/db": ("Deployment/db", "Job/migrate", "Deployment/db"),
            },
            id="job-and-deployment",
        ),
        pytest.param(
            [
                node("Deployment/a", "Service/b"),
                node("DaemonSet/b", "Deployment/c"),
                node("Deployment/c", "Service/a"),
            ],
            SVC,
            {
                "Deployment/a": (
                    "Deployment/a",
                    "Service/b",
                    "DaemonSet/b",
                    "Deployment/c",
                    "Service/a",
                    "Deployment/a",
                ),
                "DaemonSet/b": (
                    "DaemonSet/b",
                    "Deployment/c",
                    "Service/a",
                    "Deployment/a",
                    "Service/b",
                    "DaemonSet/b",
                ),
                "Deployment/c": (
                    "Deployment/c",
                    "Service/a",
                    "Deployment/a",
                    "Service/b",
                    "DaemonSet/b",
                    "Deployment/c",
                ),
            },
            id="three",
        ),
    ],
)
def test_find_cycles(
    nodes: list[Node], services: dict[str, dict[str, str]], expected: dict[str, tuple[str, ...]]
) -> None:
    found = find_cycles(nodes, services)
    assert {ref: c.head for ref, c in found.items()} == expected
    assert all(c.length == len(c.head) for c in found.values())


def test_find_cycles_scales_to_a_long_chain() -> None:
    nodes = [node(f"Deployment/w{i}", f"Deployment/w{i + 1}") for i in range(2000)]
    assert find_cycles(nodes, {}) == {}
    nodes.append(node("Deployment/w2000", "Deployment/w0"))
    found = find_cycles(nodes, {})
    assert len(found) == 2001
    assert found["Deployment/w7"].length == 2002
    message = verdict(["x"], found["Deployment/w7"]).message
    assert message == (
        "dependency cycle: "
        + " -> ".join(f"Deployment/w{i}" for i in range(7, 18))
        + " -> ... (1990 more) -> Deployment/w7; x"
    )


# ------------------------------------------------------------------ the controller


async def test_a_pod_waits_for_its_service_and_is_told_when_it_has_a_ready_endpoint() -> None:
    w = World(pod("api-1", svc_dep("db")))
    await w.settle()
    assert condition(w.objects, "pods", "api-1") == (
        "False",
        NOT_READY,
        'service "db" does not exist',
    )
    await w.put(service("db"))
    assert condition(w.objects, "pods", "api-1") == (
        "False",
        NOT_READY,
        'service "db" has no ready endpoints',
    )
    await w.put(endpoints("db", ready=0, not_ready=1))
    assert condition(w.objects, "pods", "api-1")[0] == "False"  # type: ignore[index]
    await w.put(endpoints("db", ready=1))
    assert condition(w.objects, "pods", "api-1") == ("True", MET, "")
    # a running pod whose dependency goes away: not stopped, but its condition says so
    running = w.objects.peek("pods", "api-1", NS)
    running.status.phase = "Running"
    await w.put(running)
    await w.put(endpoints("db", ready=0, not_ready=1))
    assert condition(w.objects, "pods", "api-1") == (
        "False",
        NOT_READY,
        'service "db" has no ready endpoints',
    )
    assert w.objects.peek("pods", "api-1", NS).status.phase == "Running"


async def test_steady_state_writes_nothing_and_finished_pods_are_left_alone() -> None:
    w = World(
        service("db"),
        endpoints("db", ready=1),
        pod("api-1", svc_dep("db")),
        pod("api-2", svc_dep("db"), phase="Succeeded"),
        pod("plain-1"),
    )
    await w.settle()
    assert [(op, k) for op, k, _ in w.objects.writes] == [("update_status", "Pod")]
    assert condition(w.objects, "pods", "api-2") is None
    assert condition(w.objects, "pods", "plain-1") is None
    w.objects.clear_writes()
    for key in w.controller.pods.queue_keys():  # a resync
        w.controller.queue.add(key)
    await w.settle()
    assert w.objects.writes == []


async def test_deployment_and_job_targets() -> None:
    needs = [
        pb.Dependency(kind="Deployment", name="db", condition="Available"),
        pb.Dependency(kind="Job", name="migrate", condition="Complete"),
    ]
    w = World(pod("api-1", *needs))
    await w.settle()
    assert condition(w.objects, "pods", "api-1") == (
        "False",
        NOT_READY,
        'deployment "db" does not exist; job "migrate" does not exist',
    )
    await w.put(deployment("db", available=False), job("migrate"))
    assert condition(w.objects, "pods", "api-1")[2] == (  # type: ignore[index]
        'deployment "db" is not Available; job "migrate" is not Complete'
    )
    await w.put(deployment("db", available=True))
    await w.put(job("migrate", "Complete"))
    assert condition(w.objects, "pods", "api-1") == ("True", MET, "")


async def test_a_workload_shows_what_it_waits_for_and_loses_the_condition_without_deps() -> None:
    w = World(deployment("api", svc_dep("db")))
    await w.settle()
    assert condition(w.objects, "deployments", "api") == (
        "False",
        NOT_READY,
        'service "db" does not exist',
    )
    await w.put(service("db"), endpoints("db", ready=2))
    assert condition(w.objects, "deployments", "api") == ("True", MET, "")
    d = w.objects.peek("deployments", "api", NS)
    del d.spec.depends_on[:]
    await w.objects.update(d)
    await w.settle()
    assert condition(w.objects, "deployments", "api") is None


async def test_a_cycle_is_reported_on_workloads_and_their_pods_then_cleared() -> None:
    a = deployment("a", svc_dep("b"))
    b = deployment("b", svc_dep("a"))
    c = deployment("c", svc_dep("a"))
    rs_a, rs_b = replicaset_of(a), replicaset_of(b)
    pod_a = pod("a-1", svc_dep("b"), owner=rs_a)
    pod_b = pod("b-1", svc_dep("a"), owner=rs_b)
    w = World(service("a"), service("b"), a, b, c, rs_a, rs_b, pod_a, pod_b)
    await w.settle()
    cycle_a = (
        "dependency cycle: Deployment/a -> Service/b -> Deployment/b -> Service/a -> Deployment/a"
    )
    assert condition(w.objects, "deployments", "a") == (
        "False",
        CYCLE,
        f'{cycle_a}; service "b" has no ready endpoints',
    )
    assert condition(w.objects, "deployments", "b")[1] == CYCLE  # type: ignore[index]
    assert condition(w.objects, "pods", "a-1") == (
        "False",
        CYCLE,
        f'{cycle_a}; service "b" has no ready endpoints',
    )
    assert condition(w.objects, "pods", "b-1")[1] == CYCLE  # type: ignore[index]
    # downstream of the cycle: waiting, not in it
    assert condition(w.objects, "deployments", "c") == (
        "False",
        NOT_READY,
        'service "a" has no ready endpoints',
    )
    cycles = [(e.kind, e.name, e.type) for e in w.events.events if e.reason == CYCLE]
    assert sorted(cycles) == [("Deployment", "a", "Warning"), ("Deployment", "b", "Warning")]
    # a resync reports nothing again
    for key in w.controller.pods.queue_keys():
        w.controller.queue.add(key)
    w.controller.queue.add("Deployment:default/a")
    await w.settle()
    assert len([e for e in w.events.events if e.reason == CYCLE]) == 2

    # break it: b no longer depends on a
    stored_b = w.objects.peek("deployments", "b", NS)
    del stored_b.spec.depends_on[:]
    await w.objects.update(stored_b)
    await w.settle()
    assert condition(w.objects, "deployments", "b") is None
    assert condition(w.objects, "deployments", "a") == (
        "False",
        NOT_READY,
        'service "b" has no ready endpoints',
    )
    assert condition(w.objects, "pods", "a-1") == (
        "False",
        NOT_READY,
        'service "b" has no ready endpoints',
    )


async def test_a_bare_pod_depending_on_its_own_service_is_a_cycle() -> None:
    w = World(service("loner"), pod("loner-1", svc_dep("loner")))
    await w.settle()
    assert condition(w.objects, "pods", "loner-1") == (
        "False",
        CYCLE,
        "dependency cycle: Pod/loner-1 -> Service/loner -> Pod/loner-1; "
        'service "loner" has no ready endpoints',
    )
    assert [(e.kind, e.reason) for e in w.events.events] == [("Pod", CYCLE)]


async def test_only_the_dependents_of_a_changed_target_are_reconciled() -> None:
    w = World(
        service("db"),
        service("cache"),
        *(pod(f"api-{i}", svc_dep("db")) for i in range(3)),
        *(pod(f"web-{i}", svc_dep("cache")) for i in range(3)),
    )
    await w.settle()
    w.objects.clear_writes()
    before = w.controller.queue.adds
    await w.objects.create(endpoints("db", ready=1))
    queued = w.controller.queue.adds - before
    await w.settle()
    assert queued == 3
    assert sorted(k for _, kind, k in w.objects.writes if kind == "Pod") == [
        f"default/api-{i}" for i in range(3)
    ]
    # an Endpoints update that keeps the readiness does not queue anything
    before = w.controller.queue.adds
    ep = w.objects.peek("endpoints", "db", NS)
    ep.subsets[0].addresses.add(ip="198.18.0.2", node_name="n2")
    await w.objects.update(ep)
    assert w.controller.queue.adds == before


def waiting_status(p: pb.Pod) -> pb.Pod:
    p.status.process_statuses.add(name="main").state.waiting.reason = NOT_READY
    return p


async def test_pods_waiting_for_dependencies_their_owner_dropped_are_replaced() -> None:
    d = deployment("right", svc_dep("left"))
    rs = replicaset_of(d)
    waiting_pod = waiting_status(pod("right-1", svc_dep("left"), owner=rs))
    started = pod("right-2", svc_dep("left"), owner=rs, phase="Running")
    started.status.process_statuses.add(name="main").state.running.started_at.seconds = 1
    w = World(service("left"), d, rs, waiting_pod, started)
    await w.settle()
    assert w.objects.peek("pods", "right-1", NS) is not None
    # the Deployment controller writes the new dependsOn into the ReplicaSet's template
    changed = w.objects.peek("replicasets", rs.metadata.name, NS)
    del changed.spec.template.spec.depends_on[:]
    await w.objects.update(changed)
    await w.settle()
    # deleted (gracefully: it is bound; its agent finishes it), its owner makes a new one
    assert w.objects.peek("pods", "right-1", NS).metadata.HasField("deletion_timestamp")
    assert not w.objects.peek("pods", "right-2", NS).metadata.HasField("deletion_timestamp")
    assert [(e.name, e.reason) for e in w.events.events if e.kind == "Pod"] == [
        ("right-1", "DependenciesChanged")
    ]


async def test_a_waiting_pod_whose_condition_is_true_is_not_replaced() -> None:
    j = job("migrate")
    j.spec.depends_on.append(svc_dep("db"))
    p = waiting_status(pod("migrate-1", svc_dep("db"), owner=j))
    with_condition(p, CONDITION, "True")
    w = World(service("db"), endpoints("db", ready=1), j, p)
    await w.settle()
    stored = w.objects.peek("jobs", "migrate", NS)
    del stored.spec.depends_on[:]
    await w.objects.update(stored)
    await w.settle()
    assert not w.objects.peek("pods", "migrate-1", NS).metadata.HasField("deletion_timestamp")
