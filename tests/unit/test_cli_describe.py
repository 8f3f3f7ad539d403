"""`mizzen describe` and `mizzen events` text from messages, with time passed in."""

from __future__ import annotations

import argparse
import io
import json

import yaml

from mizzen.api import kinds
from mizzen.api.selectors import parse_field_selector
from mizzen.cli import event_view
from mizzen.cli.describe import describe
from mizzen.cli.describe_cmd import event_selector
from mizzen.cli.watch_cmd import Printer, WatchTable
from protos import objects_pb2 as pb

NOW = 1_700_000_000.0


def _meta(name: str, age_seconds: float, namespace: str = "default") -> pb.ObjectMeta:
    meta = pb.ObjectMeta(name=name, namespace=namespace, uid=f"uid-{name}")
    meta.creation_timestamp.FromSeconds(int(NOW - age_seconds))
    return meta


def _event(
    name: str,
    kind: str,
    about: str,
    reason: str,
    message: str,
    *,
    ago: int,
    type_: str = "Normal",
    count: int = 1,
    namespace: str = "default",
) -> pb.Event:
    ev = pb.Event(metadata=_meta(name, ago, namespace))
    ev.spec.involved_object.kind = kind
    ev.spec.involved_object.name = about
    ev.spec.reason = reason
    ev.spec.message = message
    ev.spec.type = type_
    ev.spec.count = count
    ev.spec.source.component = "scheduler"
    ev.spec.last_timestamp.FromSeconds(int(NOW - ago))
    ev.spec.first_timestamp.FromSeconds(int(NOW - ago - 240 * (count > 1)))
    return ev


def _pod() -> pb.Pod:
    pod = pb.Pod(metadata=_meta("web-1", 30))
    pod.metadata.labels["app"] = "web"
    pod.metadata.labels["tier"] = "front"
    pod.spec.node_name = "n1"
    pod.spec.restart_policy = "Always"
    pod.spec.termination_grace_period_seconds = 30
    main = pod.spec.processes.add(name="main", command=["/bin/sleep", "100"])
    main.resources.limits.memory_bytes = 128 * 2**20
    main.resources.requests.cpu_millis = 500
    probe = main.readiness_probe
    probe.tcp_socket.port = 8080
    probe.initial_delay_seconds, probe.timeout_seconds, probe.period_seconds = 0, 1, 10
    probe.success_threshold, probe.failure_threshold = 1, 3
    main.env.add(name="MODE", value="prod")
    pod.spec.processes.add(name="side", command=["/bin/true"])
    pod.status.phase = "Running"
    pod.status.host_ip = "10.0.0.5"
    running = pod.status.process_statuses.add(name="main", ready=True, restart_count=2, pid=4242)
    running.state.running.started_at.FromSeconds(int(NOW - 10))
    running.last_state.terminated.exit_code = 137
    running.last_state.terminated.reason = "OOMKilled"
    waiting = pod.status.process_statuses.add(name="side", restart_count=5)
    waiting.state.waiting.reason = "CrashLoopBackOff"
    pod.status.conditions.add(type="Ready", status="False", reason="ProcessesNotReady")
    return pod


def _lines(text: str) -> list[str]:
    return text.splitlines()


def test_pod_without_events() -> None:
    text = describe(_pod(), [], now=NOW)
    lines = _lines(text)
    assert lines[:6] == [
        "Name:               web-1",
        "Namespace:          default",
        "Labels:             app=web",
        "                    tier=front",
        "Annotations:        <none>",
        "Created:            2023-11-14T22:12:50Z (30s ago)",
    ]
    assert "Node:               n1" in lines
    assert "Status:             CrashLoopBackOff" in lines
    main = lines.index("  main:")
    side = lines.index("  side:")
    block = lines[main:side]
    assert "    Command:        /bin/sleep 100" in block
    assert "    State:          Running" in block
    assert "    Last State:     Terminated" in block
    assert any(line.split() == ["Reason:", "OOMKilled"] for line in block)
    assert any(line.split() == ["Exit", "Code:", "137"] for line in block)
    assert "    Restart Count:  2" in block
    assert "    Pid:            4242" in block
    assert any(line.split() == ["memory:", "128Mi"] for line in block)
    assert any(line.split() == ["cpu:", "500m"] for line in block)
    assert any(
        line.split()[:3] == ["Readiness:", "tcp-socket", ":8080"]
        and "period=10s #success=1 #failure=3" in line
        for line in block
    )
    assert any(line.split() == ["MODE:", "prod"] for line in block)
    side_block = lines[side : lines.index("Conditions:")]
    assert "    State:          Waiting" in side_block
    assert any(line.split() == ["Reason:", "CrashLoopBackOff"] for line in side_block)
    assert "    Restart Count:  5" in side_block
    assert lines[lines.index("Conditions:") + 3].split() == ["Ready", "False", "ProcessesNotReady"]
    assert "Restart Policy:     Always" in lines
    assert lines[-1] == "Events:             <none>"
    assert text.endswith("\n") and not any(line != line.rstrip() for line in lines)


def test_pod_ports_and_probes_by_port_name() -> None:
    pod = _pod()
    main = pod.spec.processes[0]
    main.ports.add(name="http", port=20001, protocol="TCP", assigned=True)
    main.ports.add(name="admin", port=9000, protocol="TCP")
    main.ports.add(name="dns", protocol="UDP")
    main.readiness_probe.tcp_socket.port = 0
    main.readiness_probe.tcp_socket.port_name = "http"
    main.liveness_probe.http_get.port_name = "admin"
    main.liveness_probe.http_get.path = "/healthz"
    lines = _lines(describe(pod, [], now=NOW))
    assert (
        "    Ports:          20001/TCP (http, dynamic), 9000/TCP (admin), <dynamic>/UDP (dns)"
        in (lines)
    )
    assert any(line.split()[:3] == ["Readiness:", "tcp-socket", ":http"] for line in lines)
    assert any(
        line.split()[:3] == ["Liveness:", "http-get", "http://:admin/healthz"] for line in lines
    )


def test_pod_with_events_shows_only_its_own_oldest_first() -> None:
    events = [
        _event(
            "e2", "Pod", "web-1", "BackOff", "restarting\nfailed", ago=5, type_="Warning", count=3
        ),
        _event("e1", "Pod", "web-1", "Scheduled", "assigned default/web-1 to n1", ago=60),
        _event("other", "Pod", "web-2", "Scheduled", "not mine", ago=1),
        _event("elsewhere", "Pod", "web-1", "Scheduled", "other ns", ago=1, namespace="prod"),
        _event("node", "Node", "web-1", "Ready", "a node of the same name", ago=1),
    ]
    lines = _lines(describe(_pod(), events, now=NOW))
    at = lines.index("Events:")
    assert [line.split()[:2] for line in lines[at + 1 : at + 3]] == [
        ["Type", "Reason"],
        ["----", "------"],
    ]
    assert lines[at + 3].split() == [
        "Normal",
        "Scheduled",
        "60s",
        "scheduler",
        "assigned",
        "default/web-1",
        "to",
        "n1",
    ]
    assert lines[at + 4].split() == [
        "Warning",
        "BackOff",
        "5s",
        "(x3",
        "over",
        "4m)",
        "scheduler",
        "restarting",
        "failed",
    ]
    assert len(lines) == at + 5


def test_event_with_another_uid_is_about_an_earlier_object() -> None:
    ev = _event("e", "Pod", "web-1", "Scheduled", "old pod", ago=100)
    ev.spec.involved_object.uid = "uid-of-a-deleted-pod"
    assert _lines(describe(_pod(), [ev], now=NOW))[-1] == "Events:             <none>"


def _deployment() -> pb.Deployment:
    dep = pb.Deployment(metadata=_meta("web", 600))
    dep.metadata.generation = 2
    dep.spec.replicas = 3
    dep.spec.selector.match_labels["app"] = "web"
    dep.spec.strategy.type = "RollingUpdate"
    dep.spec.strategy.rolling_update.max_surge = "25%"
    dep.spec.strategy.rolling_update.max_unavailable = "1"
    dep.spec.template.metadata.labels["app"] = "web"
    dep.spec.template.spec.processes.add(name="main", command=["/bin/sleep"], args=["100"])
    s = dep.status
    s.observed_generation, s.replicas, s.updated_replicas = 2, 3, 3
    s.ready_replicas, s.available_replicas, s.unavailable_replicas = 2, 2, 1
    s.conditions.add(type="Available", status="True", reason="MinimumReplicasAvailable")
    s.conditions.add(type="Progressing", status="True", reason="NewReplicaSetAvailable")
    return dep


def test_deployment_without_events() -> None:
    lines = _lines(describe(_deployment(), [], now=NOW))
    assert lines[0].split() == ["Name:", "web"]
    assert lines[4].split() == ["Created:", "2023-11-14T22:03:20Z", "(10m", "ago)"]
    assert lines[5].split() == ["Selector:", "app=web"]
    words = [" ".join(line.split()) for line in lines]
    assert "Replicas: 3 desired | 3 updated | 3 total | 2 available | 1 unavailable" in words
    assert "Strategy: RollingUpdate" in words
    assert "Rolling Update: 1 max unavailable, 25% max surge" in words
    assert "Progress Deadline Seconds: 600 (default)" in words
    assert "Observed Generation: 2 of 2" in words
    assert any(line.split() == ["Command:", "/bin/sleep", "100"] for line in lines)
    at = lines.index("Conditions:")
    assert lines[at + 3].split() == ["Available", "True", "MinimumReplicasAvailable"]
    assert lines[at + 4].split() == ["Progressing", "True", "NewReplicaSetAvailable"]
    assert lines[-1].split() == ["Events:", "<none>"]


def test_deployment_progress_deadline_and_condition_times() -> None:
    dep = _deployment()
    dep.spec.progress_deadline_seconds = 120
    available, progressing = dep.status.conditions
    available.last_transition_time.FromSeconds(int(NOW - 300))
    progressing.last_update_time.FromSeconds(int(NOW - 60))
    progressing.last_transition_time.FromSeconds(int(NOW - 600))
    lines = _lines(describe(dep, [], now=NOW))
    assert any(line.split() == ["Progress", "Deadline", "Seconds:", "120"] for line in lines)
    at = lines.index("Conditions:")
    head = lines[at + 1].split()
    assert head == ["Type", "Status", "LastUpdateTime", "LastTransitionTime", "Reason", "Message"]
    assert lines[at + 3].split() == [
        "Available",
        "True",
        "<none>",
        "2023-11-14T22:08:20Z",
        "MinimumReplicasAvailable",
    ]
    assert lines[at + 4].split() == [
        "Progressing",
        "True",
        "2023-11-14T22:12:20Z",
        "2023-11-14T22:03:20Z",
        "NewReplicaSetAvailable",
    ]


def test_deployment_with_events() -> None:
    ev = _event("d1", "Deployment", "web", "ScalingReplicaSet", "scaled up to 3", ago=20)
    lines = _lines(describe(_deployment(), [ev], now=NOW))
    assert lines[-1].split()[:3] == ["Normal", "ScalingReplicaSet", "20s"]


def test_replicaset_replicas_and_conditions() -> None:
    rs = pb.ReplicaSet(metadata=_meta("web-abc", 60))
    rs.spec.replicas = 2
    rs.status.replicas, rs.status.ready_replicas, rs.status.available_replicas = 2, 1, 1
    lines = _lines(describe(rs, [], now=NOW))
    assert any(line.split() == ["Replicas:", "2", "current", "/", "2", "desired"] for line in lines)
    assert any(
        line.split() == ["Pods", "Status:", "1", "ready", "/", "1", "available"] for line in lines
    )
    assert any(line.split() == ["Conditions:", "<none>"] for line in lines)


def _node() -> pb.Node:
    node = pb.Node(metadata=_meta("n1", 3 * 86400, namespace=""))
    node.metadata.labels["zone"] = "a"
    node.status.capacity.cpu_millis = 4000
    node.status.capacity.memory_bytes = 8 * 2**30
    node.status.allocatable.cpu_millis = 3500
    node.status.addresses.add(type="InternalIP", address="10.0.0.5")
    node.status.addresses.add(type="AgentGRPC", address="10.0.0.5:7070")
    node.status.node_info.cgroup_version = "v2"
    node.status.conditions.add(type="Ready", status="True", reason="AgentReady", message="ok")
    node.spec.taints.add(key="gpu", value="yes", effect="NoSchedule")
    return node


def test_node_without_events() -> None:
    lines = _lines(describe(_node(), [], now=NOW))
    assert lines[0].split() == ["Name:", "n1"]
    assert not any(line.startswith("Namespace:") for line in lines)
    assert any(line.split() == ["Status:", "Ready"] for line in lines)
    assert any(line.split() == ["Taints:", "gpu=yes:NoSchedule"] for line in lines)
    capacity = lines.index("Capacity:")
    assert [line.split() for line in lines[capacity + 1 : capacity + 3]] == [
        ["cpu:", "4"],
        ["memory:", "8Gi"],
    ]
    allocatable = lines.index("Allocatable:")
    assert lines[allocatable + 1].split() == ["cpu:", "3500m"]
    addresses = lines.index("Addresses:")
    assert [line.split() for line in lines[addresses + 1 : addresses + 3]] == [
        ["InternalIP:", "10.0.0.5"],
        ["AgentGRPC:", "10.0.0.5:7070"],
    ]
    assert any(line.split() == ["Cgroup", "Version:", "v2"] for line in lines)
    at = lines.index("Conditions:")
    assert lines[at + 3].split() == ["Ready", "True", "AgentReady", "ok"]
    assert lines[-1].split() == ["Events:", "<none>"]


def test_node_events_from_any_namespace() -> None:
    ev = _event("n", "Node", "n1", "NodeReady", "node n1 is ready", ago=3, namespace="default")
    lines = _lines(describe(_node(), [ev], now=NOW))
    assert lines[-1].split() == [
        "Normal",
        "NodeReady",
        "3s",
        "scheduler",
        "node",
        "n1",
        "is",
        "ready",
    ]


def test_other_kinds_show_spec_and_status_fields() -> None:
    job = pb.Job(metadata=_meta("once", 5))
    job.spec.completions = 2
    job.status.succeeded = 1
    lines = _lines(describe(job, [], now=NOW))
    assert lines[lines.index("Spec:") + 1].split() == ["completions:", "2"]
    assert lines[lines.index("Status:") + 1].split() == ["succeeded:", "1"]


def test_events_table_sorted_by_last_seen() -> None:
    events = [
        _event("b", "Pod", "web-1", "BackOff", "again", ago=5, type_="Warning", count=2),
        _event("a", "Deployment", "web", "ScalingReplicaSet", "up to 1", ago=90),
    ]
    rows = event_view.events_table(events, now=NOW)
    assert rows == [
        ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        ["90s", "Normal", "ScalingReplicaSet", "deployment/web", "up to 1"],
        ["5s (x2 over 4m)", "Warning", "BackOff", "pod/web-1", "again"],
    ]
    rows = event_view.events_table(events[:1], now=NOW, with_namespace=True)
    assert rows[1][:2] == ["default", "5s (x2 over 4m)"]


def test_events_for_one_object() -> None:
    events = [
        _event("a", "Pod", "web-1", "Scheduled", "x", ago=5),
        _event("b", "Pod", "web-2", "Scheduled", "y", ago=5),
        _event("c", "Node", "web-1", "Scheduled", "y", ago=5),
    ]
    matcher = parse_field_selector(event_selector(("Pod", "web-1")), "Event")
    assert [e.metadata.name for e in events if matcher.matches(e)] == ["a"]
    assert event_selector(None) == ""


def test_event_time_falls_back_to_creation() -> None:
    ev = pb.Event(metadata=_meta("e", 42))
    assert event_view.last_seen(ev) == NOW - 42
    assert event_view.age_with_count(ev, NOW) == "42s"


def test_watch_table_keeps_and_grows_widths() -> None:
    table = WatchTable()
    assert table.lines([["NAME", "AGE"], ["a", "1s"]]) == "NAME   AGE\na      1s\n"
    assert table.lines([["longer-name", "2s"]]) == "longer-name   2s\n"
    assert table.lines([["b", "3s"]]) == "b             3s\n"


def test_watch_printer_header_once_and_other_outputs() -> None:
    out = io.StringIO()
    info = kinds.lookup("pods")
    printer = Printer(info, None, False, out.write, clock=lambda: NOW)
    printer.objects([])
    printer.objects([_pod()])
    printer.objects([_pod()])
    assert out.getvalue().splitlines() == [
        "NAME    READY   STATUS             RESTARTS   NODE   AGE",
        "web-1   1/2     CrashLoopBackOff   7          n1     30s",
        "web-1   1/2     CrashLoopBackOff   7          n1     30s",
    ]
    out = io.StringIO()
    printer = Printer(info, "name", False, out.write)
    printer.objects([_pod(), _pod()])
    assert out.getvalue() == "pod/web-1\npod/web-1\n"
    out = io.StringIO()
    printer = Printer(info, "yaml", False, out.write)
    printer.objects([_pod()])
    printer.objects([_pod()])
    assert out.getvalue().count("---\n") == 1
    assert out.getvalue().count("kind: Pod") == 2


def test_watch_printer_with_event_types() -> None:
    out = io.StringIO()
    info = kinds.lookup("pods")
    printer = Printer(info, None, False, out.write, clock=lambda: NOW, events=True)
    printer.objects([_pod()])
    printer.objects([_pod()], "DELETED")
    assert out.getvalue().splitlines() == [
        "EVENT   NAME    READY   STATUS             RESTARTS   NODE   AGE",
        "ADDED   web-1   1/2     CrashLoopBackOff   7          n1     30s",
        "DELETED   web-1   1/2     CrashLoopBackOff   7          n1     30s",  # widths only grow
    ]
    out = io.StringIO()
    Printer(info, "name", False, out.write, events=True).objects([_pod()], "MODIFIED")
    assert out.getvalue() == "MODIFIED pod/web-1\n"
    out = io.StringIO()
    Printer(info, "json", False, out.write, events=True).objects([_pod()], "DELETED")
    doc = json.loads(out.getvalue())
    assert doc["type"] == "DELETED" and doc["object"]["metadata"]["name"] == "web-1"
    out = io.StringIO()
    Printer(info, "yaml", False, out.write, events=True).objects([_pod()], "ADDED")
    doc = yaml.safe_load(out.getvalue())
    assert doc["type"] == "ADDED" and doc["object"]["kind"] == "Pod"


def test_argparse_flags_registered() -> None:
    from mizzen.cli.main import build_parser

    args = build_parser().parse_args(["get", "pods", "-w", "-n", "x"])
    assert isinstance(args, argparse.Namespace)
    assert args.watch and not args.watch_only
    args = build_parser().parse_args(["events", "-A", "--for", "pod/web"])
    assert args.all_namespaces and args.target == "pod/web"
    args = build_parser().parse_args(["describe", "po", "web", "-n", "x"])
    assert (args.kind, args.name, args.namespace) == ("po", "web", "x")
