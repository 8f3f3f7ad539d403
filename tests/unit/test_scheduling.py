"""Filters, scores, reason strings and accounting of controllers.scheduling (pure)."""

from __future__ import annotations

from collections import Counter

import pytest

from controllers.scheduling import (
    ClusterState,
    NodeInfo,
    PodInfo,
    Resources,
    choose_node,
    filter_node,
    pod_requests,
    tolerates,
    unschedulable_message,
)
from protos import objects_pb2 as pb

GI = 1024**3


def make_node(
    name: str,
    *,
    cpu: int | None = 4000,
    mem: int | None = 8 * GI,
    pids: int | None = None,
    ready: str = "True",
    unschedulable: bool = False,
    labels: dict[str, str] | None = None,
    taints: list[tuple[str, str, str]] = (),  # type: ignore[assignment]
) -> pb.Node:
    node = pb.Node(metadata=pb.ObjectMeta(name=name, labels=labels or {}))
    node.spec.unschedulable = unschedulable
    for key, value, effect in taints:
        node.spec.taints.add(key=key, value=value, effect=effect)
    if cpu is not None:
        node.status.allocatable.cpu_millis = cpu
    if mem is not None:
        node.status.allocatable.memory_bytes = mem
    if pids is not None:
        node.status.allocatable.pids = pids
    if ready:
        node.status.conditions.add(type="Ready", status=ready)
    return node


def make_pod(
    name: str = "p",
    *,
    cpu: int = 0,
    mem: int = 0,
    pids: int = 0,
    processes: int = 1,
    owner: str = "",
    node: str = "",
    selector: dict[str, str] | None = None,
    tolerations: list[tuple[str, str, str, str]] = (),  # type: ignore[assignment]
    phase: str = "",
) -> pb.Pod:
    pod = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace="default"))
    for i in range(processes):
        proc = pod.spec.processes.add(name=f"p{i}", command=["/bin/true"])
        if cpu:
            proc.resources.requests.cpu_millis = cpu
        if mem:
            proc.resources.requests.memory_bytes = mem
        if pids:
            proc.resources.requests.pids = pids
    if owner:
        pod.metadata.owner_references.add(kind="ReplicaSet", name=owner, uid=owner, controller=True)
    pod.spec.node_name = node
    pod.spec.node_selector.update(selector or {})
    for key, op, value, effect in tolerations:
        pod.spec.tolerations.add(key=key, operator=op, value=value, effect=effect)
    pod.status.phase = phase
    return pod


def test_requests_sum_over_processes() -> None:
    assert pod_requests(make_pod(cpu=250, mem=GI, pids=10, processes=3)) == Resources(
        750, 3 * GI, 30
    )
    assert pod_requests(make_pod()) == Resources()


@pytest.mark.parametrize(
    ("toleration", "taint", "expected"),
    [
        (("k", "Equal", "v", "NoSchedule"), ("k", "v", "NoSchedule"), True),
        (("k", "Equal", "other", "NoSchedule"), ("k", "v", "NoSchedule"), False),
        (("k", "", "v", "NoSchedule"), ("k", "v", "NoSchedule"), True),  # default Equal
        (("k", "Exists", "", "NoSchedule"), ("k", "anything", "NoSchedule"), True),
        (("k", "Exists", "", "NoExecute"), ("k", "v", "NoSchedule"), False),
        (("k", "Exists", "", ""), ("k", "v", "NoExecute"), True),  # empty effect: all
        (("", "Exists", "", ""), ("any", "v", "NoExecute"), True),  # tolerate everything
        (("", "Equal", "", ""), ("any", "v", "NoExecute"), False),
        (("other", "Exists", "", ""), ("k", "v", "NoSchedule"), False),
    ],
)
def test_tolerates(
    toleration: tuple[str, str, str, str], taint: tuple[str, str, str], expected: bool
) -> None:
    key, op, value, effect = toleration
    tol = pb.Toleration(key=key, operator=op, value=value, effect=effect)
    t = pb.Taint(key=taint[0], value=taint[1], effect=taint[2])
    assert tolerates(tol, t) is expected


@pytest.mark.parametrize(
    ("node", "pod", "reasons"),
    [
        (make_node("n"), make_pod(cpu=1000, mem=GI), []),
        (make_node("n"), make_pod(), []),
        (make_node("n", cpu=None, mem=None), make_pod(cpu=10**9, mem=10**15), []),
        (make_node("n", ready="Unknown"), make_pod(), ["node(s) were not ready"]),
        (make_node("n", ready=""), make_pod(), ["node(s) were not ready"]),
        (make_node("n", unschedulable=True), make_pod(), ["node(s) were unschedulable"]),
        (make_node("n", cpu=500), make_pod(cpu=600), ["Insufficient cpu"]),
        (
            make_node("n", cpu=500, mem=GI),
            make_pod(cpu=600, mem=2 * GI),
            ["Insufficient cpu", "Insufficient memory"],
        ),
        (make_node("n", pids=100), make_pod(pids=60, processes=2), ["Insufficient pids"]),
        (make_node("n", cpu=0), make_pod(), []),
        (
            make_node("n", labels={"disk": "hdd"}),
            make_pod(selector={"disk": "ssd"}),
            ["node(s) didn't match node selector"],
        ),
        (make_node("n", labels={"disk": "ssd", "x": "y"}), make_pod(selector={"disk": "ssd"}), []),
        (
            make_node("n", taints=[("dedicated", "db", "NoSchedule")]),
            make_pod(),
            ["node(s) had untolerated taint {dedicated: db}"],
        ),
        (
            make_node("n", taints=[("node.mizzen.io/unreachable", "", "NoExecute")]),
            make_pod(),
            ["node(s) had untolerated taint {node.mizzen.io/unreachable: }"],
        ),
        (
            make_node("n", taints=[("dedicated", "db", "NoSchedule")]),
            make_pod(tolerations=[("dedicated", "Equal", "db", "NoSchedule")]),
            [],
        ),
        (make_node("n", taints=[("soft", "", "PreferNoSchedule")]), make_pod(), []),
    ],
)
def test_filter_node(node: pb.Node, pod: pb.Pod, reasons: list[str]) -> None:
    assert filter_node(NodeInfo.of(node), PodInfo.of(pod)) == reasons


def test_filter_counts_requests_already_on_node() -> None:
    info = NodeInfo.of(make_node("n", cpu=1000))
    info.add(Resources(cpu_millis=700), "")
    assert filter_node(info, PodInfo.of(make_pod(cpu=300))) == []
    assert filter_node(info, PodInfo.of(make_pod(cpu=301))) == ["Insufficient cpu"]


@pytest.mark.parametrize(
    ("total", "reasons", "message"),
    [
        (
            5,
            {"node(s) didn't match node selector": 2, "Insufficient memory": 3},
            "0/5 nodes are available: 3 Insufficient memory, 2 node(s) didn't match node selector.",
        ),
        (
            3,
            {"b": 1, "a": 1, "c": 1},
            "0/3 nodes are available: 1 a, 1 b, 1 c.",
        ),
        (0, {}, "0/0 nodes are available: no nodes registered."),
    ],
)
def test_unschedulable_message(total: int, reasons: dict[str, int], message: str) -> None:
    assert unschedulable_message(total, Counter(reasons)) == message


def test_choose_node_reason_string_counts_every_node() -> None:
    nodes = [
        NodeInfo.of(make_node("a", mem=GI, labels={"zone": "y"})),
        NodeInfo.of(make_node("b", mem=GI, labels={"zone": "y"})),
        NodeInfo.of(make_node("c", mem=GI, labels={"zone": "y"})),
        NodeInfo.of(make_node("d", labels={"zone": "x"})),
        NodeInfo.of(make_node("e", labels={"zone": "x"})),
    ]
    pod = make_pod(mem=2 * GI, selector={"zone": "y"})
    decision = choose_node(nodes, pod)
    assert decision.node_name == ""
    assert decision.message == (
        "0/5 nodes are available: 3 Insufficient memory, 2 node(s) didn't match node selector."
    )


def test_least_allocated_prefers_emptier_node() -> None:
    busy = NodeInfo.of(make_node("a"))
    busy.add(Resources(cpu_millis=3000, memory_bytes=4 * GI), "")
    idle = NodeInfo.of(make_node("b"))
    pod = make_pod(cpu=100, mem=GI)
    assert choose_node([busy, idle], pod).node_name == "b"
    assert choose_node([busy, idle], pod, most_allocated=True).node_name == "a"


def test_spread_beats_allocation() -> None:
    crowded = NodeInfo.of(make_node("a"))
    crowded.add(Resources(), "rs1")
    loaded = NodeInfo.of(make_node("b"))
    loaded.add(Resources(cpu_millis=3000, memory_bytes=6 * GI), "other")
    assert choose_node([crowded, loaded], make_pod(owner="rs1")).node_name == "b"
    assert choose_node([crowded, loaded], make_pod(owner="rs2")).node_name == "a"


def test_prefer_no_schedule_only_scores() -> None:
    soft = NodeInfo.of(make_node("a", taints=[("soft", "", "PreferNoSchedule")]))
    busy = NodeInfo.of(make_node("b"))
    busy.add(Resources(cpu_millis=3900), "")
    assert choose_node([soft, busy], make_pod()).node_name == "b"
    assert choose_node([soft], make_pod()).node_name == "a"


def test_tie_break_is_deterministic_and_spreads() -> None:
    nodes = [NodeInfo.of(make_node(f"n{i}")) for i in range(4)]
    first = [choose_node(nodes, make_pod(f"p{i}")).node_name for i in range(40)]
    again = [choose_node(list(reversed(nodes)), make_pod(f"p{i}")).node_name for i in range(40)]
    assert first == again
    assert len(set(first)) > 1


def test_cluster_state_assumptions_prevent_overcommit() -> None:
    state = ClusterState()
    state.set_node(make_node("a", cpu=1000))
    state.set_node(make_node("b", cpu=1000))
    placed = []
    for i in range(5):
        pod = make_pod(f"p{i}", cpu=400)
        decision = state.decide(pod)
        if decision.node_name:
            state.assume(pod, decision.node_name)
        placed.append(decision.node_name)
    assert sorted(placed) == ["", "a", "a", "b", "b"]
    last = state.decide(make_pod("p9", cpu=400))
    assert last.message == "0/2 nodes are available: 2 Insufficient cpu."


def test_cluster_state_informer_replaces_assumption() -> None:
    state = ClusterState()
    state.set_node(make_node("a", cpu=1000))
    pod = make_pod("p", cpu=600)
    state.assume(pod, "a")
    assert state.is_assumed("default/p")
    state.observe_pod(pod)  # a stale unbound event keeps the assumption
    assert state.is_assumed("default/p")
    bound = make_pod("p", cpu=600, node="a")
    state.observe_pod(bound)
    assert not state.is_assumed("default/p")
    info = state.node("a")
    assert info is not None and info.requested.cpu_millis == 600 and info.pod_count == 1
    state.unassume("default/p")  # not an assumption any more: kept
    assert info.requested.cpu_millis == 600
    state.observe_pod(make_pod("p", cpu=600, node="a", phase="Succeeded"))
    assert info.requested.cpu_millis == 0 and info.pod_count == 0


def test_cluster_state_unassume_and_forget() -> None:
    state = ClusterState()
    state.set_node(make_node("a", cpu=1000))
    state.assume(make_pod("p", cpu=600, owner="rs"), "a")
    info = state.node("a")
    assert info is not None and info.owner_counts["rs"] == 1
    state.unassume("default/p")
    assert info.requested == Resources() and not info.owner_counts
    state.observe_pod(make_pod("q", cpu=500, node="a"))
    state.forget_pod("default/q")
    assert info.requested == Resources() and info.pod_count == 0


def test_cluster_state_node_update_keeps_accounting_and_late_node_counts_pods() -> None:
    state = ClusterState()
    state.observe_pod(make_pod("early", cpu=300, node="late"))
    state.set_node(make_node("late", cpu=1000))
    info = state.node("late")
    assert info is not None and info.requested.cpu_millis == 300
    state.set_node(make_node("late", cpu=2000, unschedulable=True))
    info = state.node("late")
    assert info is not None and info.requested.cpu_millis == 300
    assert info.allocatable.cpu_millis == 2000
    assert state.decide(make_pod()).message == (
        "0/1 nodes are available: 1 node(s) were unschedulable."
    )


def _with_port(pod: pb.Pod, port: int, protocol: str = "") -> pb.Pod:
    pod.spec.processes[0].ports.add(name="p", port=port, protocol=protocol)
    return pod


def test_host_ports_are_exclusive_per_node() -> None:
    state = ClusterState()
    state.set_node(make_node("a"))
    state.set_node(make_node("b"))
    first = _with_port(make_pod("web-1"), 8080)
    state.assume(first, state.decide(first).node_name)
    second = _with_port(make_pod("web-2"), 8080)
    decision = state.decide(second)
    assert decision.node_name and decision.node_name != state._placed["default/web-1"].node_name
    state.assume(second, decision.node_name)
    third = _with_port(make_pod("web-3"), 8080)
    assert state.decide(third).message == (
        "0/2 nodes are available: 2 node(s) didn't have free ports for the requested pod ports."
    )
    # another port, or the same number over UDP, still fits
    assert state.decide(_with_port(make_pod("web-4"), 8081)).node_name
    assert state.decide(_with_port(make_pod("dns"), 8080, "UDP")).node_name
    # the port is free again once the pod is gone
    state.forget_pod("default/web-1")
    assert state.decide(third).node_name
