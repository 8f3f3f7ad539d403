"""DaemonSet controller: plan_daemonset tables and the controller against FakeObjects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from controllers.base import ControllerContext
from controllers.confighash import CONFIG_HASH, CONFIG_ROLLOUT, CONFIG_SOURCES, ConfigState
from controllers.daemonset import (
    HASH_LABEL,
    DaemonSetController,
    plan_daemonset,
    should_run,
    template_hash,
)
from controllers.manager import ManagerConfig
from controllers.podutil import set_timestamp
from controllers.testing.fake_objects import FakeInformers, FakeObjects
from protos import objects_pb2 as pb

T0 = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Events:
    items: list[tuple[str, str]] = field(default_factory=list)

    def record(self, obj: Any, type: str, reason: str, message: str) -> None:
        self.items.append((reason, message))


def make_ds(
    name: str = "agent",
    *,
    strategy: str = "RollingUpdate",
    max_unavailable: str = "1",
    max_surge: str = "0",
    selector: dict[str, str] | None = None,
    tolerations: list[pb.Toleration] | None = None,
    version: str = "v1",
    min_ready: int = 0,
) -> pb.DaemonSet:
    ds = pb.DaemonSet(metadata=pb.ObjectMeta(name=name, namespace="default", uid=f"uid-{name}"))
    ds.metadata.generation = 3
    ds.spec.selector.match_labels["app"] = name
    ds.spec.template.metadata.labels["app"] = name
    ds.spec.template.spec.processes.add(name="main", command=["/bin/agent", version])
    ds.spec.template.spec.restart_policy = "Always"
    ds.spec.template.spec.node_selector.update(selector or {})
    ds.spec.template.spec.tolerations.extend(tolerations or [])
    ds.spec.update_strategy.type = strategy
    ds.spec.min_ready_seconds = min_ready
    if strategy == "RollingUpdate":
        ds.spec.update_strategy.rolling_update.max_unavailable = max_unavailable
        ds.spec.update_strategy.rolling_update.max_surge = max_surge
    return ds


def make_node(name: str, labels: dict[str, str] | None = None, taints: list[str] = ()) -> pb.Node:  # type: ignore[assignment]
    node = pb.Node(metadata=pb.ObjectMeta(name=name, labels=labels or {}))
    for effect in taints:
        node.spec.taints.add(key="dedicated", value="db", effect=effect)
    node.status.conditions.add(type="Ready", status="True")
    return node


def make_pod(
    name: str,
    node: str,
    ds: pb.DaemonSet,
    *,
    old: bool = False,
    ready: bool = True,
    ready_since: float = T0 - 100,
    terminating: bool = False,
    phase: str = "Running",
) -> pb.Pod:
    pod = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace="default", uid=f"uid-{name}"))
    set_timestamp(pod.metadata.creation_timestamp, T0 - 200)
    pod.metadata.labels[HASH_LABEL] = "stale" if old else template_hash(ds.spec.template)
    pod.spec.node_name = node
    pod.status.phase = phase
    if ready:
        cond = pod.status.conditions.add(type="Ready", status="True")
        set_timestamp(cond.last_transition_time, ready_since)
    if terminating:
        set_timestamp(pod.metadata.deletion_timestamp, T0)
    return pod


NODES = [make_node(f"n{i}") for i in range(1, 5)]


def names(plan: Any) -> tuple[list[str], list[str]]:
    return list(plan.create_on), sorted(d.pod.metadata.name for d in plan.delete)


def test_should_run_checks_selector_and_blocking_taints() -> None:
    spec = make_ds(selector={"disk": "ssd"}).spec.template.spec
    assert should_run(spec, make_node("a", {"disk": "ssd"}))
    assert not should_run(spec, make_node("b", {"disk": "hdd"}))
    assert not should_run(spec, make_node("c", {"disk": "ssd"}, ["NoSchedule"]))
    assert not should_run(spec, make_node("d", {"disk": "ssd"}, ["NoExecute"]))
    assert should_run(spec, make_node("e", {"disk": "ssd"}, ["PreferNoSchedule"]))
    tolerant = make_ds(tolerations=[pb.Toleration(key="dedicated", operator="Exists")])
    assert should_run(tolerant.spec.template.spec, make_node("f", {}, ["NoExecute"]))
    cordoned = make_node("g")
    cordoned.spec.unschedulable = True
    assert should_run(make_ds().spec.template.spec, cordoned)


DS = make_ds()
CASES = [
    # (id, ds, nodes, pods, created on, deleted pods)
    ("one pod per node", DS, NODES, [], ["n1", "n2", "n3", "n4"], []),
    (
        "only missing nodes get a pod",
        DS,
        NODES,
        [make_pod("p1", "n1", DS), make_pod("p3", "n3", DS)],
        ["n2", "n4"],
        [],
    ),
    (
        "no new pod while the old one terminates",
        DS,
        NODES[:2],
        [make_pod("p1", "n1", DS, terminating=True), make_pod("p2", "n2", DS)],
        [],
        [],
    ),
    (
        "extra pods on a node go, the oldest stays",
        DS,
        NODES[:1],
        [make_pod("p1", "n1", DS), make_pod("p1b", "n1", DS)],
        [],
        ["p1b"],
    ),
    (
        "node gone: pod force-deleted",
        DS,
        NODES[:1],
        [make_pod("p1", "n1", DS), make_pod("p9", "n9", DS)],
        [],
        ["p9"],
    ),
    (
        "failed pod is deleted, replaced after a backoff",
        DS,
        NODES[:1],
        [make_pod("p1", "n1", DS, phase="Failed", ready=False)],
        [],
        ["p1"],
    ),
    (
        "ineligible node loses its pod",
        make_ds(selector={"role": "edge"}),
        [make_node("n1", {"role": "edge"}), make_node("n2")],
        [],
        ["n1"],
        [],
    ),
    (
        "rolling update: max_unavailable old pods at a time",
        make_ds(max_unavailable="2"),
        NODES,
        [make_pod(f"p{i}", f"n{i}", DS, old=True) for i in range(1, 5)],
        [],
        ["p1", "p2"],
    ),
    (
        "rolling update waits while a node lacks an available pod",
        DS,
        NODES[:3],
        [make_pod("p1", "n1", DS, ready=False), make_pod("p2", "n2", DS, old=True)],
        ["n3"],
        [],
    ),
    (
        "unavailable old pods go without budget",
        DS,
        NODES[:3],
        [
            make_pod("p1", "n1", DS, old=True, ready=False),
            make_pod("p2", "n2", DS, old=True, ready=False),
            make_pod("p3", "n3", DS, old=True),
        ],
        [],
        ["p1", "p2"],
    ),
    (
        "OnDelete keeps old pods",
        make_ds(strategy="OnDelete"),
        NODES[:2],
        [make_pod("p1", "n1", DS, old=True), make_pod("p2", "n2", DS, old=True)],
        [],
        [],
    ),
    (
        "surge: new pod beside the old one",
        make_ds(max_unavailable="0", max_surge="1"),
        NODES[:2],
        [make_pod("p1", "n1", DS, old=True), make_pod("p2", "n2", DS, old=True)],
        ["n1"],
        [],
    ),
    (
        "surge: old pod goes once the new one is available",
        make_ds(max_unavailable="0", max_surge="1"),
        NODES[:2],
        [
            make_pod("p1", "n1", DS, old=True),
            make_pod("p1new", "n1", DS),
            make_pod("p2", "n2", DS, old=True),
        ],
        ["n2"],
        ["p1"],
    ),
]


@pytest.mark.parametrize(
    ("ds", "nodes", "pods", "created", "deleted"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_plan_daemonset(
    ds: pb.DaemonSet,
    nodes: list[pb.Node],
    pods: list[pb.Pod],
    created: list[str],
    deleted: list[str],
) -> None:
    # the pods of these cases were built against DS's template; hash them for ds
    for pod in pods:
        if pod.metadata.labels[HASH_LABEL] != "stale":
            pod.metadata.labels[HASH_LABEL] = template_hash(ds.spec.template)
    plan = plan_daemonset(ds, nodes, pods, T0)
    assert names(plan) == (created, deleted)


def test_force_delete_only_for_pods_on_vanished_nodes() -> None:
    pods = [make_pod("p9", "n9", DS), make_pod("pbad", "n1", DS)]
    plan = plan_daemonset(make_ds(selector={"x": "y"}), NODES[:1], pods, T0)
    forced = {d.pod.metadata.name: d.force for d in plan.delete}
    assert forced == {"p9": True, "pbad": False}


def test_status_counts_nodes() -> None:
    ds = make_ds(selector={"role": "edge"}, min_ready=30)
    nodes = [make_node(f"n{i}", {"role": "edge"}) for i in range(1, 5)] + [make_node("x")]
    pods = [
        make_pod("p1", "n1", ds),  # available
        make_pod("p2", "n2", ds, ready_since=T0 - 10),  # ready, not yet available
        make_pod("p3", "n3", ds, old=True, ready=False),
        make_pod("px", "x", ds),  # misscheduled
    ]
    plan = plan_daemonset(ds, nodes, pods, T0)
    s = plan.status
    assert (
        s.desired_number_scheduled,
        s.current_number_scheduled,
        s.number_ready,
        s.number_available,
        s.updated_number_scheduled,
        s.number_misscheduled,
        s.number_unavailable,
        s.observed_generation,
    ) == (4, 3, 2, 1, 2, 1, 3, 3)
    assert plan.requeue_after == pytest.approx(20)


# ------------------------------------------------------------------ the controller


def _must(obj: Any) -> Any:
    assert obj is not None
    return obj


class Harness:
    def __init__(self) -> None:
        self.clock = Clock()
        self.objects = FakeObjects(clock=self.clock)
        self.informers = FakeInformers(self.objects)
        self.events = Events()
        self.controller = DaemonSetController()
        self.controller.setup(
            ControllerContext(
                client=self.objects,
                informers=self.informers,
                events=self.events,
                clock=self.clock,
                config=ManagerConfig(),
            )
        )

    def get(self, kind: str, name: str, namespace: str = "default") -> Any:
        return _must(self.objects.peek(kind, name, namespace if kind != "Node" else ""))

    async def reconcile(self) -> Any:
        self.objects.clear_writes()
        return await self.controller.reconcile("default/agent")

    def placement(self) -> dict[str, str]:
        return {
            p.spec.node_name: p.metadata.labels[HASH_LABEL]
            for p in self.objects.objects("Pod", "default")
            if not p.metadata.HasField("deletion_timestamp")
        }

    async def make_ready(self) -> None:
        for pod in self.objects.objects("Pod", "default"):
            if pod.status.phase != "Running":
                pod.status.phase = "Running"
                cond = pod.status.conditions.add(type="Ready", status="True")
                set_timestamp(cond.last_transition_time, self.clock())
                await self.objects.update_status(pod)

    async def finish_deletions(self) -> None:
        for pod in self.objects.objects("Pod", "default"):
            if pod.metadata.HasField("deletion_timestamp"):
                await self.objects.delete(
                    "Pod", pod.metadata.name, "default", grace_period_seconds=0
                )


async def test_controller_follows_nodes_and_rolls_out_a_new_template() -> None:
    h = Harness()
    h.objects.add(make_ds(), make_node("n1"), make_node("n2"))
    await h.reconcile()
    v1 = template_hash(h.get("DaemonSet", "agent", "default").spec.template)
    assert h.placement() == {"n1": v1, "n2": v1}
    pod = h.objects.objects("Pod", "default")[0]
    assert pod.metadata.generate_name == "agent-"
    assert pod.metadata.owner_references[0].kind == "DaemonSet"
    await h.make_ready()
    await h.reconcile()
    ds = h.get("DaemonSet", "agent", "default")
    assert (ds.status.desired_number_scheduled, ds.status.number_ready) == (2, 2)

    h.objects.add(make_node("n3"))
    await h.objects.delete("Node", "n1")
    await h.reconcile()
    assert set(h.placement()) == {"n2", "n3"}  # n1's pod force-deleted, n3 got one
    await h.make_ready()

    ds = h.get("DaemonSet", "agent", "default")
    ds.spec.template.spec.processes[0].command[:] = ["/bin/agent", "v2"]
    await h.objects.update(ds)
    v2 = template_hash(ds.spec.template)
    await h.reconcile()
    assert sorted(h.placement().values()) == [v1]  # one old pod terminating (max 1 unavailable)
    for _ in range(4):
        await h.finish_deletions()
        await h.reconcile()
        await h.make_ready()
        await h.reconcile()
    assert h.placement() == {"n2": v2, "n3": v2}
    ds = h.get("DaemonSet", "agent", "default")
    assert ds.status.updated_number_scheduled == 2 and ds.status.number_available == 2


async def test_tainted_node_loses_its_pod() -> None:
    h = Harness()
    h.objects.add(make_ds(), make_node("n1"))
    await h.reconcile()
    await h.make_ready()
    node = h.get("Node", "n1")
    node.spec.taints.add(key="node.mizzen.io/unreachable", effect="NoExecute")
    await h.objects.update(node)
    await h.reconcile()
    assert h.placement() == {}
    ds = h.get("DaemonSet", "agent", "default")
    assert ds.status.desired_number_scheduled == 0


def test_held_node_gets_no_pod_until_its_backoff_ends() -> None:
    plan = plan_daemonset(DS, NODES[:2], [], T0, {"n1": T0 + 4})
    assert list(plan.create_on) == ["n2"]
    assert plan.requeue_after == pytest.approx(4)
    assert list(plan_daemonset(DS, NODES[:2], [], T0 + 4, {"n1": T0 + 4}).create_on) == [
        "n1",
        "n2",
    ]


async def test_ended_daemon_pods_are_replaced_with_growing_backoff() -> None:
    h = Harness()
    h.objects.add(make_ds(), make_node("n1"))
    await h.reconcile()
    for delay in (1.0, 2.0, 4.0):
        (pod,) = h.objects.objects("Pod", "default")
        pod.status.phase = "Failed"
        await h.objects.update_status(pod)
        result = await h.reconcile()
        assert h.objects.objects("Pod", "default") == []
        assert result.requeue_after == pytest.approx(delay)
        assert [r for r, _ in h.events.items[-2:]] == ["FailedDaemonPod", "SuccessfulDelete"]
        h.clock.now += delay - 0.5
        await h.reconcile()
        assert h.objects.objects("Pod", "default") == []
        h.clock.now += 0.5
        await h.reconcile()
        assert len(h.objects.objects("Pod", "default")) == 1


# ------------------------------------------------------------------ config rollouts


def config_ds(*, opt_out: bool = False) -> pb.DaemonSet:
    ds = make_ds()
    ds.spec.template.spec.processes[0].env_from.add().config_map_ref.name = "agent-config"
    if opt_out:
        ds.metadata.annotations[CONFIG_ROLLOUT] = "false"
    return ds


def agent_config(level: str) -> pb.ConfigMap:
    cm = pb.ConfigMap(metadata=pb.ObjectMeta(name="agent-config", namespace="default"))
    cm.data["level"] = level
    return cm


@pytest.mark.parametrize("opt_out", [False, True])
def test_plan_treats_pods_with_other_config_as_old(opt_out: bool) -> None:
    ds = config_ds(opt_out=opt_out)
    now_config = ConfigState("h2", (("ConfigMap/agent-config", "d2"),))
    pods = [make_pod(f"p{i}", f"n{i}", ds) for i in range(1, 5)]
    for p in pods:
        p.metadata.annotations[CONFIG_HASH] = "h1"
    plan = plan_daemonset(ds, NODES, pods, T0, config=now_config)
    if opt_out:
        assert names(plan) == ([], [])
        assert plan.status.updated_number_scheduled == 4
    else:
        assert names(plan) == ([], ["p1"])  # one at a time: max unavailable 1
        assert plan.status.updated_number_scheduled == 0


async def test_config_change_replaces_every_daemon_pod_once() -> None:
    h = Harness()
    h.objects.add(config_ds(), agent_config("debug"), *(make_node(f"n{i}") for i in (1, 2, 3)))
    await h.reconcile()
    await h.make_ready()
    await h.reconcile()
    first = {p.metadata.name for p in h.objects.objects("Pod", "default")}
    [h1] = {p.metadata.annotations[CONFIG_HASH] for p in h.objects.objects("Pod", "default")}
    assert all(
        p.metadata.annotations[CONFIG_SOURCES].startswith("ConfigMap/agent-config=")
        for p in h.objects.objects("Pod", "default")
    )
    cm = h.get("ConfigMap", "agent-config")
    cm.data["level"] = "info"
    await h.objects.update(cm)
    unavailable = []
    for _ in range(8):
        await h.reconcile()
        live = [
            p
            for p in h.objects.objects("Pod", "default")
            if not p.metadata.HasField("deletion_timestamp")
        ]
        unavailable.append(3 - sum(1 for p in live if p.status.phase == "Running"))
        await h.finish_deletions()
        await h.make_ready()
    pods = h.objects.objects("Pod", "default")
    assert len(pods) == 3 and not first & {p.metadata.name for p in pods}
    [h2] = {p.metadata.annotations[CONFIG_HASH] for p in pods}
    assert h2 != h1
    assert max(unavailable) <= 1
    assert [r for r, _ in h.events.items].count("SuccessfulCreate") == 6  # 3, then 3 again
    assert [m for r, m in h.events.items if r == "ConfigChanged"] == [
        "ConfigMap agent-config changed: rolling out to 3 pod(s)"
    ]
    ds = h.get("DaemonSet", "agent")
    assert ds.status.updated_number_scheduled == 3 and ds.metadata.generation == 3  # spec as set


async def test_opted_out_daemonset_keeps_its_pods_on_config_change() -> None:
    h = Harness()
    h.objects.add(config_ds(opt_out=True), agent_config("debug"), make_node("n1"))
    await h.reconcile()
    await h.make_ready()
    cm = h.get("ConfigMap", "agent-config")
    cm.data["level"] = "info"
    await h.objects.update(cm)
    await h.reconcile()
    assert [w for w in h.objects.writes if w[1] == "Pod"] == []
    assert "ConfigChanged" not in [r for r, _ in h.events.items]
