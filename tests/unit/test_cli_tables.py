"""`mizzen get` tables rendered from messages, with time passed in."""

from __future__ import annotations

from mizzen.api import kinds
from mizzen.cli import tables
from mizzen.cli.objects_cmd import api_resources_rows
from protos import objects_pb2 as pb

NOW = 1_700_000_000.0


def _meta(name: str, age_seconds: float, namespace: str = "default") -> pb.ObjectMeta:
    meta = pb.ObjectMeta(name=name, namespace=namespace)
    meta.creation_timestamp.FromSeconds(int(NOW - age_seconds))
    return meta


def test_render_aligns_columns_without_trailing_blanks() -> None:
    text = tables.render([["NAME", "AGE"], ["web-long", "5s"], ["a", ""]])
    assert text == "NAME       AGE\nweb-long   5s\na\n"


def test_render_nothing() -> None:
    assert tables.render([]) == ""


def test_age_units() -> None:
    assert tables.age(NOW - 45, NOW) == "45s"
    assert tables.age(NOW - 119, NOW) == "119s"
    assert tables.age(NOW - 12 * 60, NOW) == "12m"
    assert tables.age(NOW - 5 * 3600, NOW) == "5h"
    assert tables.age(NOW - 3 * 86400, NOW) == "3d"
    assert tables.age(0, NOW) == "<unknown>"
    assert tables.age(NOW + 10, NOW) == "0s"


def _pod() -> pb.Pod:
    pod = pb.Pod(metadata=_meta("web-1", 30))
    pod.spec.processes.add(name="a")
    pod.spec.processes.add(name="b")
    pod.spec.node_name = "n1"
    pod.status.phase = "Running"
    pod.status.host_ip = "10.0.0.5"
    pod.status.process_statuses.add(name="a", ready=True, restart_count=2)
    pod.status.process_statuses.add(name="b", ready=False, restart_count=1)
    return pod


def test_pods_table() -> None:
    pending = pb.Pod(metadata=_meta("new", 3))
    pending.spec.processes.add(name="a")
    rows = tables.table(kinds.lookup("po"), [_pod(), pending], now=NOW)
    assert rows == [
        ["NAME", "READY", "STATUS", "RESTARTS", "NODE", "AGE"],
        ["web-1", "1/2", "Running", "3", "n1", "30s"],
        ["new", "0/1", "Pending", "0", "<none>", "3s"],
    ]


def test_pods_wide_and_all_namespaces() -> None:
    rows = tables.table(kinds.lookup("pods"), [_pod()], now=NOW, wide=True, with_namespace=True)
    assert rows[0] == [
        "NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "NODE", "AGE", "IP", "PORTS"
    ]  # fmt: skip
    assert rows[1] == ["default", "web-1", "1/2", "Running", "3", "n1", "30s", "10.0.0.5", "<none>"]


def test_pods_wide_shows_host_ports() -> None:
    pod = _pod()
    pod.spec.processes[0].ports.add(name="http", port=20001, protocol="TCP", assigned=True)
    pod.spec.processes[1].ports.add(name="dns", protocol="UDP")
    pod.spec.processes[1].ports.add(name="admin", port=9000)
    rows = tables.table(kinds.lookup("pods"), [pod], now=NOW, wide=True)
    assert rows[1][-1] == "20001/TCP,<dynamic>/UDP,9000/TCP"


def test_pod_status_prefers_terminating_then_waiting_reason() -> None:
    pod = _pod()
    pod.status.process_statuses[1].state.waiting.reason = "CrashLoopBackOff"
    assert tables.pod_status(pod) == "CrashLoopBackOff"
    pod.metadata.deletion_timestamp.FromSeconds(int(NOW))
    assert tables.pod_status(pod) == "Terminating"


def test_deployments_table() -> None:
    dep = pb.Deployment(metadata=_meta("web", 600))
    dep.spec.replicas = 3
    dep.spec.selector.match_labels["app"] = "web"
    dep.status.ready_replicas = 2
    dep.status.updated_replicas = 3
    dep.status.available_replicas = 2
    assert tables.table(kinds.lookup("deploy"), [dep], now=NOW) == [
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        ["web", "2/3", "3", "2", "10m"],
    ]
    wide = tables.table(kinds.lookup("deploy"), [dep], now=NOW, wide=True)
    assert wide[0][-2:] == ["AGE", "SELECTOR"]
    assert wide[1][-1] == "app=web"


def test_nodes_table() -> None:
    ready = pb.Node(metadata=_meta("n1", 7200, namespace=""))
    ready.status.conditions.add(type="Ready", status="True")
    cordoned = pb.Node(metadata=_meta("n2", 60, namespace=""))
    cordoned.status.conditions.add(type="Ready", status="False")
    cordoned.spec.unschedulable = True
    unknown = pb.Node(metadata=_meta("n3", 60, namespace=""))
    rows = tables.table(kinds.lookup("no"), [ready, cordoned, unknown], now=NOW)
    assert rows == [
        ["NAME", "STATUS", "AGE"],
        ["n1", "Ready", "2h"],
        ["n2", "NotReady,SchedulingDisabled", "60s"],
        ["n3", "Unknown", "60s"],
    ]


def test_other_kinds_show_name_and_age() -> None:
    lease = pb.Lease(metadata=_meta("leader", 5))
    assert tables.table(kinds.lookup("leases"), [lease], now=NOW) == [
        ["NAME", "AGE"],
        ["leader", "5s"],
    ]


def test_counters_of_replicasets_daemonsets_jobs() -> None:
    rs = pb.ReplicaSet(metadata=_meta("web-abc", 5))
    rs.status.replicas = 2
    rs.status.ready_replicas = 1
    assert tables.table(kinds.lookup("rs"), [rs], now=NOW)[1] == ["web-abc", "1", "2", "1", "5s"]
    ds = pb.DaemonSet(metadata=_meta("agent", 5))
    ds.status.desired_number_scheduled = 3
    ds.status.number_ready = 2
    assert tables.table(kinds.lookup("ds"), [ds], now=NOW)[1] == [
        "agent", "3", "0", "2", "0", "0", "5s"
    ]  # fmt: skip
    job = pb.Job(metadata=_meta("once", 5))
    job.spec.completions = 4
    job.status.succeeded = 1
    assert tables.table(kinds.lookup("job"), [job], now=NOW)[1] == ["once", "1/4", "5s"]


def test_api_resources_lists_every_kind() -> None:
    rows = api_resources_rows()
    assert rows[0] == ["NAME", "SHORTNAMES", "NAMESPACED", "KIND"]
    assert ["pods", "po", "true", "Pod"] in rows
    assert ["nodes", "no", "false", "Node"] in rows
    assert len(rows) == len(kinds.KINDS) + 1
