"""Validation: every rule with a valid and an invalid case, asserting exact field paths."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf.message import Message

from mizzen.api.defaults import apply_defaults
from mizzen.api.kinds import EVENT_MAX_BYTES, LEASE_MAX_BYTES
from mizzen.api.validation import (
    MAX_EVENT_MESSAGE_BYTES,
    FieldError,
    validate,
    validate_update,
)
from protos import objects_pb2 as pb

# ---------------------------------------------------------------- valid objects


def _template(spec: Any, labels: dict[str, str]) -> None:
    spec.selector.match_labels.update(labels)
    spec.template.metadata.labels.update(labels)
    spec.template.spec.processes.add(name="main", command=["/bin/server", "--port=80"])


def pod() -> pb.Pod:
    obj = pb.Pod()
    obj.metadata.name = "web-1"
    obj.metadata.labels["app"] = "web"
    obj.spec.processes.add(name="server", command=["/bin/server"])
    obj.spec.processes.add(name="sidecar", command=["/bin/sidecar"], args=["-v"])
    apply_defaults(obj)
    return obj


def deployment() -> pb.Deployment:
    obj = pb.Deployment()
    obj.metadata.name = "web"
    _template(obj.spec, {"app": "web"})
    apply_defaults(obj)
    return obj


def replicaset() -> pb.ReplicaSet:
    obj = pb.ReplicaSet()
    obj.metadata.name = "web-5d8f"
    _template(obj.spec, {"app": "web", "pod-template-hash": "5d8f"})
    apply_defaults(obj)
    return obj


def daemonset() -> pb.DaemonSet:
    obj = pb.DaemonSet()
    obj.metadata.name = "logship"
    _template(obj.spec, {"app": "logship"})
    apply_defaults(obj)
    return obj


def job() -> pb.Job:
    obj = pb.Job()
    obj.metadata.name = "backup"
    _template(obj.spec, {"job": "backup"})
    apply_defaults(obj)
    return obj


def node() -> pb.Node:
    obj = pb.Node()
    obj.metadata.name = "host-1.example.com"
    obj.spec.taints.add(key="dedicated", value="db", effect="NoSchedule")
    obj.status.capacity.cpu_millis = 8000
    obj.status.capacity.memory_bytes = 16 * 2**30
    obj.status.capacity.pids = 4096
    obj.status.addresses.add(type="InternalIP", address="10.0.0.1")
    obj.status.addresses.add(type="AgentGRPC", address="10.0.0.1:7070")
    obj.status.conditions.add(type="Ready", status="True")
    apply_defaults(obj)
    return obj


def event() -> pb.Event:
    obj = pb.Event()
    obj.metadata.name = "web-1.17a2"
    obj.spec.involved_object.kind = "Pod"
    obj.spec.involved_object.name = "web-1"
    obj.spec.reason = "Scheduled"
    obj.spec.type = "Normal"
    obj.spec.count = 1
    apply_defaults(obj)
    return obj


def lease() -> pb.Lease:
    obj = pb.Lease()
    obj.metadata.name = "controller-manager"
    obj.metadata.namespace = "mizzen-system"
    obj.spec.holder_identity = "host-1"
    obj.spec.lease_duration_seconds = 15
    apply_defaults(obj)
    return obj


FACTORIES: dict[str, Callable[[], Message]] = {
    "pod": pod,
    "deployment": deployment,
    "replicaset": replicaset,
    "daemonset": daemonset,
    "job": job,
    "node": node,
    "event": event,
    "lease": lease,
}


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_valid_objects(kind: str) -> None:
    assert validate(FACTORIES[kind]()) == []


def _check(kind: str, mutate: Callable[[Any], object], paths: list[str]) -> list[FieldError]:
    obj = FACTORIES[kind]()
    mutate(obj)
    errors = validate(obj)
    assert sorted(e.path for e in errors) == sorted(paths), errors
    return errors


def _proc(o: Any, i: int = 0) -> Any:
    return o.spec.processes[i]


def _tproc(o: Any, i: int = 0) -> Any:
    return o.spec.template.spec.processes[i]


def _many(*steps: Callable[[Any], object]) -> Callable[[Any], None]:
    def run(o: Any) -> None:
        for step in steps:
            step(o)

    return run


# ---------------------------------------------------------------- metadata

METADATA_CASES = [
    # names: DNS-1123 subdomain for most kinds, label for Job
    ("pod", lambda o: setattr(o.metadata, "name", "web.v2-a"), []),
    ("pod", lambda o: setattr(o.metadata, "name", ""), ["metadata.name"]),
    ("pod", lambda o: setattr(o.metadata, "name", "Web"), ["metadata.name"]),
    ("pod", lambda o: setattr(o.metadata, "name", "web_1"), ["metadata.name"]),
    ("pod", lambda o: setattr(o.metadata, "name", "-web"), ["metadata.name"]),
    ("pod", lambda o: setattr(o.metadata, "name", "a" * 253), []),
    ("pod", lambda o: setattr(o.metadata, "name", "a" * 254), ["metadata.name"]),
    ("job", lambda o: setattr(o.metadata, "name", "a" * 63), []),
    ("job", lambda o: setattr(o.metadata, "name", "a" * 64), ["metadata.name"]),
    ("job", lambda o: setattr(o.metadata, "name", "backup.daily"), ["metadata.name"]),
    ("node", lambda o: setattr(o.metadata, "name", "UPPER"), ["metadata.name"]),
    # namespaces: required for namespaced kinds, forbidden for Node
    ("pod", lambda o: setattr(o.metadata, "namespace", "team-a"), []),
    ("pod", lambda o: setattr(o.metadata, "namespace", ""), ["metadata.namespace"]),
    ("pod", lambda o: setattr(o.metadata, "namespace", "team.a"), ["metadata.namespace"]),
    ("lease", lambda o: setattr(o.metadata, "namespace", ""), ["metadata.namespace"]),
    ("node", lambda o: setattr(o.metadata, "namespace", "default"), ["metadata.namespace"]),
    # labels: keys with optional DNS prefix, values up to 63
    ("pod", lambda o: o.metadata.labels.update({"example.com/tier": "Front_end.1"}), []),
    ("pod", lambda o: o.metadata.labels.update({"empty": ""}), []),
    ("pod", lambda o: o.metadata.labels.update({"bad key": "x"}), ["metadata.labels[bad key]"]),
    ("pod", lambda o: o.metadata.labels.update({"-x": "x"}), ["metadata.labels[-x]"]),
    ("pod", lambda o: o.metadata.labels.update({"Ex.com/x": "y"}), ["metadata.labels[Ex.com/x]"]),
    ("pod", lambda o: o.metadata.labels.update({"/x": "y"}), ["metadata.labels[/x]"]),
    ("pod", lambda o: o.metadata.labels.update({"a/": "y"}), ["metadata.labels[a/]"]),
    ("pod", lambda o: o.metadata.labels.update({"a/b/c": "y"}), ["metadata.labels[a/b/c]"]),
    ("pod", lambda o: o.metadata.labels.update({"k" * 63: "v"}), []),
    ("pod", lambda o: o.metadata.labels.update({"k" * 64: "v"}), [f"metadata.labels[{'k' * 64}]"]),
    ("pod", lambda o: o.metadata.labels.update({"k": "v" * 63}), []),
    ("pod", lambda o: o.metadata.labels.update({"k": "v" * 64}), ["metadata.labels[k]"]),
    ("pod", lambda o: o.metadata.labels.update({"k": "a b"}), ["metadata.labels[k]"]),
    ("pod", lambda o: o.metadata.labels.update({"k": "-a"}), ["metadata.labels[k]"]),
    # annotations: key syntax and total size
    ("pod", lambda o: o.metadata.annotations.update({"mizzen.io/note": "x y z!"}), []),
    (
        "pod",
        lambda o: o.metadata.annotations.update({"no te": "x"}),
        ["metadata.annotations[no te]"],
    ),
    ("pod", lambda o: o.metadata.annotations.update({"big": "x" * (256 * 1024 - 3)}), []),
    (
        "pod",
        lambda o: o.metadata.annotations.update({"big": "x" * (256 * 1024 - 2)}),
        ["metadata.annotations"],
    ),
    # owner references
    (
        "pod",
        lambda o: o.metadata.owner_references.add(
            api_version="mizzen/v1", kind="ReplicaSet", name="web", uid="u1", controller=True
        ),
        [],
    ),
    (
        "pod",
        lambda o: o.metadata.owner_references.add(kind="ReplicaSet", name="web"),
        ["metadata.ownerReferences[0].apiVersion", "metadata.ownerReferences[0].uid"],
    ),
    (
        "pod",
        _many(
            lambda o: o.metadata.owner_references.add(
                api_version="v", kind="k", name="a", uid="1", controller=True
            ),
            lambda o: o.metadata.owner_references.add(
                api_version="v", kind="k", name="b", uid="2", controller=True
            ),
        ),
        ["metadata.ownerReferences"],
    ),
    # finalizers, deletion grace
    ("pod", lambda o: o.metadata.finalizers.append("mizzen.io/gc"), []),
    ("pod", lambda o: o.metadata.finalizers.append("bad finalizer"), ["metadata.finalizers[0]"]),
    ("pod", lambda o: setattr(o.metadata, "deletion_grace_period_seconds", 0), []),
    (
        "pod",
        lambda o: setattr(o.metadata, "deletion_grace_period_seconds", -1),
        ["metadata.deletionGracePeriodSeconds"],
    ),
]


@pytest.mark.parametrize(("kind", "mutate", "paths"), METADATA_CASES)
def test_metadata(kind: str, mutate: Callable[[Any], object], paths: list[str]) -> None:
    _check(kind, mutate, paths)


# ---------------------------------------------------------------- pods

P0 = "spec.processes[0]"
P1 = "spec.processes[1]"

POD_CASES = [
    # processes: at least one, names, commands
    ("pod", lambda o: o.spec.ClearField("processes"), ["spec.processes"]),
    ("pod", lambda o: setattr(_proc(o, 1), "name", ""), [f"{P1}.name"]),
    ("pod", lambda o: setattr(_proc(o, 1), "name", "Side_car"), [f"{P1}.name"]),
    ("pod", lambda o: setattr(_proc(o, 1), "name", "server"), [f"{P1}.name"]),
    ("pod", lambda o: _proc(o, 1).ClearField("command"), [f"{P1}.command"]),
    ("pod", lambda o: _proc(o, 1).command.insert(0, ""), [f"{P1}.command[0]"]),
    ("pod", lambda o: _proc(o).env.add(name="PORT", value="8080"), []),
    ("pod", lambda o: _proc(o).env.add(name="", value="x"), [f"{P0}.env[0].name"]),
    ("pod", lambda o: _proc(o).env.add(name="A=B"), [f"{P0}.env[0].name"]),
    ("pod", lambda o: setattr(_proc(o), "working_dir", "/srv/web"), []),
    ("pod", lambda o: setattr(_proc(o), "working_dir", "srv"), [f"{P0}.workingDir"]),
    ("pod", lambda o: setattr(_proc(o), "user", "www-data"), []),
    ("pod", lambda o: setattr(_proc(o), "user", "1000"), []),
    ("pod", lambda o: setattr(_proc(o), "user", "root user"), [f"{P0}.user"]),
    # stdin
    ("pod", lambda o: setattr(_proc(o), "stdin", True), []),
    (
        "pod",
        _many(
            lambda o: setattr(_proc(o), "stdin", True),
            lambda o: setattr(_proc(o), "stdin_once", True),
        ),
        [],
    ),
    ("pod", lambda o: setattr(_proc(o), "stdin_once", True), [f"{P0}.stdinOnce"]),
    (
        "pod",
        _many(
            lambda o: setattr(_proc(o), "stdin", True),
            lambda o: setattr(_proc(o), "tty", True),
        ),
        [],
    ),
    ("pod", lambda o: setattr(_proc(o), "tty", True), [f"{P0}.tty"]),
    # ports
    ("pod", lambda o: _proc(o).ports.add(name="http", port=65535, protocol="TCP"), []),
    ("pod", lambda o: _proc(o).ports.add(port=0), [f"{P0}.ports[0].port"]),
    ("pod", lambda o: _proc(o).ports.add(port=65536), [f"{P0}.ports[0].port"]),
    ("pod", lambda o: _proc(o).ports.add(port=80, protocol="SCTP"), [f"{P0}.ports[0].protocol"]),
    (
        "pod",
        _many(
            lambda o: _proc(o).ports.add(name="http", port=80),
            lambda o: _proc(o).ports.add(name="http", port=81),
        ),
        [f"{P0}.ports[1].name"],
    ),
    # restart policy, node name, node selector, grace period
    ("pod", lambda o: setattr(o.spec, "restart_policy", "OnFailure"), []),
    ("pod", lambda o: setattr(o.spec, "restart_policy", "Sometimes"), ["spec.restartPolicy"]),
    ("pod", lambda o: setattr(o.spec, "restart_policy", ""), ["spec.restartPolicy"]),
    ("pod", lambda o: setattr(o.spec, "node_name", "host-1.example.com"), []),
    ("pod", lambda o: setattr(o.spec, "node_name", "Host 1"), ["spec.nodeName"]),
    ("pod", lambda o: o.spec.node_selector.update({"disk": "ssd"}), []),
    ("pod", lambda o: o.spec.node_selector.update({"disk": "s s d"}), ["spec.nodeSelector[disk]"]),
    ("pod", lambda o: setattr(o.spec, "termination_grace_period_seconds", 0), []),
    (
        "pod",
        lambda o: setattr(o.spec, "termination_grace_period_seconds", -1),
        ["spec.terminationGracePeriodSeconds"],
    ),
    # tolerations
    ("pod", lambda o: o.spec.tolerations.add(key="dedicated", value="db", effect="NoSchedule"), []),
    ("pod", lambda o: o.spec.tolerations.add(operator="Exists"), []),
    (
        "pod",
        lambda o: o.spec.tolerations.add(
            key="unreachable", operator="Exists", effect="NoExecute", toleration_seconds=300
        ),
        [],
    ),
    (
        "pod",
        lambda o: o.spec.tolerations.add(key="k", operator="Like"),
        ["spec.tolerations[0].operator"],
    ),
    ("pod", lambda o: o.spec.tolerations.add(value="v"), ["spec.tolerations[0].operator"]),
    (
        "pod",
        lambda o: o.spec.tolerations.add(key="k", operator="Exists", value="v"),
        ["spec.tolerations[0].value"],
    ),
    (
        "pod",
        lambda o: o.spec.tolerations.add(key="k", effect="Evict"),
        ["spec.tolerations[0].effect"],
    ),
    ("pod", lambda o: o.spec.tolerations.add(key="bad key"), ["spec.tolerations[0].key"]),
    (
        "pod",
        lambda o: o.spec.tolerations.add(key="k", effect="NoSchedule", toleration_seconds=5),
        ["spec.tolerations[0].tolerationSeconds"],
    ),
    # status
    ("pod", lambda o: setattr(o.status, "phase", "Running"), []),
    ("pod", lambda o: setattr(o.status, "phase", "Sleeping"), ["status.phase"]),
    ("pod", lambda o: o.status.conditions.add(type="Ready", status="False"), []),
    (
        "pod",
        lambda o: o.status.conditions.add(type="Ready", status="Yes"),
        ["status.conditions[0].status"],
    ),
    ("pod", lambda o: o.status.conditions.add(status="True"), ["status.conditions[0].type"]),
    ("pod", lambda o: o.status.process_statuses.add(name="server", restart_count=2), []),
    (
        "pod",
        lambda o: o.status.process_statuses.add(restart_count=-1),
        ["status.processStatuses[0].name", "status.processStatuses[0].restartCount"],
    ),
]


@pytest.mark.parametrize(("kind", "mutate", "paths"), POD_CASES)
def test_pod(kind: str, mutate: Callable[[Any], object], paths: list[str]) -> None:
    _check(kind, mutate, paths)


R1 = "spec.processes[1].resources"

RESOURCE_CASES = [
    (lambda r: setattr(r.requests, "cpu_millis", 500), []),
    (lambda r: setattr(r.limits, "memory_bytes", -1), [f"{R1}.limits.memory"]),
    (lambda r: setattr(r.requests, "cpu_millis", -1), [f"{R1}.requests.cpu"]),
    (lambda r: setattr(r.limits, "pids", -5), [f"{R1}.limits.pids"]),
    (lambda r: setattr(r.limits, "pids", 0), []),
    (
        _many(
            lambda r: setattr(r.requests, "cpu_millis", 500),
            lambda r: setattr(r.limits, "cpu_millis", 500),
        ),
        [],
    ),
    (
        _many(
            lambda r: setattr(r.requests, "cpu_millis", 501),
            lambda r: setattr(r.limits, "cpu_millis", 500),
        ),
        [f"{R1}.requests.cpu"],
    ),
    (
        _many(
            lambda r: setattr(r.requests, "memory_bytes", 2**30),
            lambda r: setattr(r.limits, "memory_bytes", 2**29),
            lambda r: setattr(r.requests, "pids", 10),
            lambda r: setattr(r.limits, "pids", 9),
        ),
        [f"{R1}.requests.memory", f"{R1}.requests.pids"],
    ),
    # a request without a limit (or the reverse) is fine
    (lambda r: setattr(r.requests, "memory_bytes", 2**40), []),
]


@pytest.mark.parametrize(("mutate", "paths"), RESOURCE_CASES)
def test_resources(mutate: Callable[[Any], object], paths: list[str]) -> None:
    _check("pod", lambda o: mutate(_proc(o, 1).resources), paths)


def test_resource_message_names_the_limit() -> None:
    def mutate(o: Any) -> None:
        o.spec.processes[1].resources.requests.memory_bytes = 2**30
        o.spec.processes[1].resources.limits.memory_bytes = 128 * 2**20

    (error,) = _check("pod", mutate, [f"{R1}.requests.memory"])
    assert error.message == "must be less than or equal to memory limit of 128Mi"
    assert str(error) == f"{R1}.requests.memory: {error.message}"


LP = f"{P0}.livenessProbe"
RP = f"{P1}.readinessProbe"


def _live(o: Any) -> Any:
    return _proc(o).liveness_probe


def _ready(o: Any) -> Any:
    return _proc(o, 1).readiness_probe


PROBE_CASES = [
    (lambda o: _live(o).exec.command.append("/bin/check"), []),
    (lambda o: setattr(_live(o).tcp_socket, "port", 8080), []),
    (lambda o: setattr(_ready(o).http_get, "port", 8080), []),
    (lambda o: _live(o).SetInParent(), [LP]),
    (
        _many(
            lambda o: _live(o).exec.command.append("x"),
            lambda o: setattr(_live(o).tcp_socket, "port", 1),
        ),
        [LP],
    ),
    (lambda o: _live(o).exec.SetInParent(), [f"{LP}.exec.command"]),
    (lambda o: _live(o).tcp_socket.SetInParent(), [f"{LP}.tcpSocket.port"]),
    (lambda o: setattr(_live(o).tcp_socket, "port", 70000), [f"{LP}.tcpSocket.port"]),
    (lambda o: setattr(_ready(o).http_get, "port", -1), [f"{RP}.httpGet.port"]),
    (
        _many(
            lambda o: setattr(_ready(o).http_get, "port", 80),
            lambda o: setattr(_ready(o).http_get, "path", "healthz"),
        ),
        [f"{RP}.httpGet.path"],
    ),
    (
        _many(
            lambda o: setattr(_ready(o).http_get, "port", 80),
            lambda o: setattr(_ready(o).http_get, "scheme", "FTP"),
        ),
        [f"{RP}.httpGet.scheme"],
    ),
    (
        _many(
            lambda o: setattr(_ready(o).http_get, "port", 80),
            lambda o: _ready(o).http_get.http_headers.add(value="x"),
        ),
        [f"{RP}.httpGet.httpHeaders[0].name"],
    ),
    (
        _many(
            lambda o: setattr(_live(o).tcp_socket, "port", 80),
            lambda o: setattr(_live(o), "initial_delay_seconds", -1),
            lambda o: setattr(_live(o), "period_seconds", 0),
            lambda o: setattr(_live(o), "timeout_seconds", 0),
            lambda o: setattr(_live(o), "failure_threshold", 0),
        ),
        [
            f"{LP}.initialDelaySeconds",
            f"{LP}.periodSeconds",
            f"{LP}.timeoutSeconds",
            f"{LP}.failureThreshold",
        ],
    ),
    (
        _many(
            lambda o: setattr(_live(o).tcp_socket, "port", 80),
            lambda o: setattr(_live(o), "success_threshold", 2),
        ),
        [f"{LP}.successThreshold"],
    ),
    (
        _many(
            lambda o: setattr(_ready(o).tcp_socket, "port", 80),
            lambda o: setattr(_ready(o), "success_threshold", 2),
        ),
        [],
    ),
    (
        _many(
            lambda o: setattr(_ready(o).tcp_socket, "port", 80),
            lambda o: setattr(_ready(o), "success_threshold", 0),
        ),
        [f"{RP}.successThreshold"],
    ),
]


@pytest.mark.parametrize(("mutate", "paths"), PROBE_CASES)
def test_probes(mutate: Callable[[Any], object], paths: list[str]) -> None:
    def mutate_then_default(o: Any) -> None:
        mutate(o)
        apply_defaults(o)

    _check("pod", mutate_then_default, paths)


# ---------------------------------------------------------------- workloads

T = "spec.template.spec"

WORKLOAD_CASES = [
    # replicas
    ("deployment", lambda o: setattr(o.spec, "replicas", 0), []),
    ("deployment", lambda o: setattr(o.spec, "replicas", -1), ["spec.replicas"]),
    ("replicaset", lambda o: setattr(o.spec, "replicas", -1), ["spec.replicas"]),
    ("replicaset", lambda o: setattr(o.spec, "min_ready_seconds", -1), ["spec.minReadySeconds"]),
    ("deployment", lambda o: setattr(o.spec, "min_ready_seconds", -1), ["spec.minReadySeconds"]),
    ("deployment", lambda o: setattr(o.spec, "revision_history_limit", 0), []),
    (
        "deployment",
        lambda o: setattr(o.spec, "revision_history_limit", -1),
        ["spec.revisionHistoryLimit"],
    ),
    (
        "daemonset",
        lambda o: setattr(o.spec, "revision_history_limit", -1),
        ["spec.revisionHistoryLimit"],
    ),
    ("deployment", lambda o: setattr(o.spec, "progress_deadline_seconds", 1), []),
    (
        "deployment",
        lambda o: setattr(o.spec, "progress_deadline_seconds", 0),
        ["spec.progressDeadlineSeconds"],
    ),
    (
        "deployment",
        lambda o: o.spec.MergeFrom(
            pb.DeploymentSpec(min_ready_seconds=30, progress_deadline_seconds=30)
        ),
        ["spec.progressDeadlineSeconds"],
    ),
    # selectors: required, well-formed, matching the template
    ("deployment", lambda o: o.spec.selector.Clear(), ["spec.selector"]),
    ("replicaset", lambda o: o.spec.selector.Clear(), ["spec.selector"]),
    ("daemonset", lambda o: o.spec.selector.Clear(), ["spec.selector"]),
    ("job", lambda o: o.spec.selector.Clear(), ["spec.selector"]),
    (
        "deployment",
        lambda o: o.spec.selector.match_labels.update({"app": "api"}),
        ["spec.template.metadata.labels"],
    ),
    (
        "replicaset",
        lambda o: o.spec.selector.match_labels.update({"x": "y"}),
        ["spec.template.metadata.labels"],
    ),
    (
        "daemonset",
        lambda o: o.spec.template.metadata.labels.clear(),
        ["spec.template.metadata.labels"],
    ),
    (
        "job",
        lambda o: o.spec.template.metadata.labels.update({"job": "other"}),
        ["spec.template.metadata.labels"],
    ),
    ("deployment", lambda o: o.spec.template.metadata.labels.update({"extra": "ok"}), []),
    (
        "deployment",
        lambda o: o.spec.selector.match_expressions.add(
            key="app", operator="In", values=["web", "api"]
        ),
        [],
    ),
    (
        "deployment",
        lambda o: o.spec.selector.match_expressions.add(
            key="app", operator="NotIn", values=["web"]
        ),
        ["spec.template.metadata.labels"],
    ),
    (
        "deployment",
        lambda o: o.spec.selector.match_expressions.add(key="app", operator="Is", values=["web"]),
        ["spec.selector.matchExpressions[0].operator"],
    ),
    (
        "deployment",
        lambda o: o.spec.selector.match_expressions.add(key="app", operator="In"),
        ["spec.selector.matchExpressions[0].values"],
    ),
    (
        "deployment",
        lambda o: o.spec.selector.match_expressions.add(key="app", operator="Exists", values=["x"]),
        ["spec.selector.matchExpressions[0].values"],
    ),
    (
        "deployment",
        lambda o: o.spec.selector.match_expressions.add(operator="Exists"),
        ["spec.selector.matchExpressions[0].key"],
    ),
    (
        "deployment",
        lambda o: o.spec.selector.match_expressions.add(key="app", operator="In", values=["b d"]),
        ["spec.selector.matchExpressions[0].values[0]"],
    ),
    (
        "deployment",
        _many(
            lambda o: o.spec.selector.match_labels.update({"bad key": "x"}),
            lambda o: o.spec.template.metadata.labels.update({"bad key": "x"}),
        ),
        ["spec.selector.matchLabels[bad key]", "spec.template.metadata.labels[bad key]"],
    ),
    # template pod spec is validated in place, with template restart policies
    ("deployment", lambda o: _tproc(o).ClearField("command"), [f"{T}.processes[0].command"]),
    ("daemonset", lambda o: o.spec.template.spec.ClearField("processes"), [f"{T}.processes"]),
    (
        "deployment",
        lambda o: setattr(o.spec.template.spec, "restart_policy", "Never"),
        [f"{T}.restartPolicy"],
    ),
    (
        "replicaset",
        lambda o: setattr(o.spec.template.spec, "restart_policy", "OnFailure"),
        [f"{T}.restartPolicy"],
    ),
    (
        "daemonset",
        lambda o: setattr(o.spec.template.spec, "restart_policy", "Never"),
        [f"{T}.restartPolicy"],
    ),
    ("job", lambda o: setattr(o.spec.template.spec, "restart_policy", "OnFailure"), []),
    (
        "job",
        lambda o: setattr(o.spec.template.spec, "restart_policy", "Always"),
        [f"{T}.restartPolicy"],
    ),
    (
        "job",
        lambda o: setattr(o.spec.template.spec, "restart_policy", "Bogus"),
        [f"{T}.restartPolicy"],
    ),
    (
        "deployment",
        lambda o: setattr(_tproc(o).resources.limits, "memory_bytes", -1),
        [f"{T}.processes[0].resources.limits.memory"],
    ),
    # deployment strategy
    ("deployment", lambda o: setattr(o.spec.strategy.rolling_update, "max_surge", "0"), []),
    ("deployment", lambda o: setattr(o.spec.strategy.rolling_update, "max_unavailable", "0%"), []),
    (
        "deployment",
        _many(
            lambda o: setattr(o.spec.strategy.rolling_update, "max_surge", "0"),
            lambda o: setattr(o.spec.strategy.rolling_update, "max_unavailable", "0%"),
        ),
        ["spec.strategy.rollingUpdate.maxUnavailable"],
    ),
    (
        "deployment",
        lambda o: setattr(o.spec.strategy.rolling_update, "max_surge", "-1"),
        ["spec.strategy.rollingUpdate.maxSurge"],
    ),
    (
        "deployment",
        lambda o: setattr(o.spec.strategy.rolling_update, "max_surge", "150%"),
        [],
    ),
    (
        "deployment",
        lambda o: setattr(o.spec.strategy.rolling_update, "max_unavailable", "101%"),
        ["spec.strategy.rollingUpdate.maxUnavailable"],
    ),
    (
        "deployment",
        lambda o: setattr(o.spec.strategy.rolling_update, "max_unavailable", "half"),
        ["spec.strategy.rollingUpdate.maxUnavailable"],
    ),
    ("deployment", lambda o: setattr(o.spec.strategy, "type", "BlueGreen"), ["spec.strategy.type"]),
    ("deployment", lambda o: o.spec.strategy.ClearField("type"), ["spec.strategy.type"]),
    (
        "deployment",
        lambda o: setattr(o.spec.strategy, "type", "Recreate"),
        ["spec.strategy.rollingUpdate"],
    ),
    (
        "deployment",
        _many(
            lambda o: setattr(o.spec.strategy, "type", "Recreate"),
            lambda o: o.spec.strategy.ClearField("rolling_update"),
        ),
        [],
    ),
    # daemonset update strategy
    (
        "daemonset",
        lambda o: setattr(o.spec.update_strategy, "type", "Recreate"),
        ["spec.updateStrategy.type"],
    ),
    (
        "daemonset",
        _many(
            lambda o: setattr(o.spec.update_strategy, "type", "OnDelete"),
            lambda o: o.spec.update_strategy.ClearField("rolling_update"),
        ),
        [],
    ),
    (
        "daemonset",
        lambda o: setattr(o.spec.update_strategy, "type", "OnDelete"),
        ["spec.updateStrategy.rollingUpdate"],
    ),
    (
        "daemonset",
        lambda o: setattr(o.spec.update_strategy.rolling_update, "max_unavailable", "0"),
        ["spec.updateStrategy.rollingUpdate.maxUnavailable"],
    ),
    (
        "daemonset",
        _many(
            lambda o: setattr(o.spec.update_strategy.rolling_update, "max_unavailable", "0"),
            lambda o: setattr(o.spec.update_strategy.rolling_update, "max_surge", "1"),
        ),
        [],
    ),
    # job counts
    ("job", lambda o: setattr(o.spec, "completions", 0), []),
    ("job", lambda o: setattr(o.spec, "parallelism", 0), []),
    ("job", lambda o: setattr(o.spec, "completions", -1), ["spec.completions"]),
    ("job", lambda o: setattr(o.spec, "parallelism", -1), ["spec.parallelism"]),
    ("job", lambda o: setattr(o.spec, "backoff_limit", -1), ["spec.backoffLimit"]),
    (
        "job",
        lambda o: setattr(o.spec, "ttl_seconds_after_finished", -1),
        ["spec.ttlSecondsAfterFinished"],
    ),
    ("job", lambda o: setattr(o.spec, "active_deadline_seconds", 60), []),
    (
        "job",
        lambda o: setattr(o.spec, "active_deadline_seconds", 0),
        ["spec.activeDeadlineSeconds"],
    ),
    # workload status conditions
    ("deployment", lambda o: o.status.conditions.add(type="Available", status="True"), []),
    (
        "deployment",
        lambda o: o.status.conditions.add(type="Available"),
        ["status.conditions[0].status"],
    ),
    ("job", lambda o: o.status.conditions.add(status="True"), ["status.conditions[0].type"]),
]


@pytest.mark.parametrize(("kind", "mutate", "paths"), WORKLOAD_CASES)
def test_workloads(kind: str, mutate: Callable[[Any], object], paths: list[str]) -> None:
    _check(kind, mutate, paths)


# ---------------------------------------------------------------- nodes, events, leases

OTHER_CASES = [
    ("node", lambda o: o.spec.taints.add(key="gpu", effect="NoExecute"), []),
    ("node", lambda o: o.spec.taints.add(key="", effect="NoSchedule"), ["spec.taints[1].key"]),
    ("node", lambda o: o.spec.taints.add(key="k", effect=""), ["spec.taints[1].effect"]),
    ("node", lambda o: o.spec.taints.add(key="k", effect="Evict"), ["spec.taints[1].effect"]),
    (
        "node",
        lambda o: o.spec.taints.add(key="k", value="a b", effect="NoSchedule"),
        ["spec.taints[1].value"],
    ),
    (
        "node",
        lambda o: o.spec.taints.add(key="dedicated", value="x", effect="NoSchedule"),
        ["spec.taints[1]"],
    ),
    ("node", lambda o: setattr(o.status.capacity, "cpu_millis", -1), ["status.capacity.cpu"]),
    (
        "node",
        lambda o: setattr(o.status.allocatable, "memory_bytes", -1),
        ["status.allocatable.memory"],
    ),
    ("node", lambda o: o.status.addresses.add(type="Hostname", address="host-1"), []),
    (
        "node",
        lambda o: o.status.addresses.add(type="MAC", address="x"),
        ["status.addresses[2].type"],
    ),
    ("node", lambda o: o.status.addresses.add(type="Hostname"), ["status.addresses[2].address"]),
    (
        "node",
        lambda o: setattr(o.status.conditions[0], "status", "Maybe"),
        ["status.conditions[0].status"],
    ),
    ("event", lambda o: setattr(o.spec, "type", "Warning"), []),
    ("event", lambda o: setattr(o.spec, "type", "Error"), ["spec.type"]),
    (
        "event",
        lambda o: o.spec.ClearField("involved_object"),
        ["spec.involvedObject.kind", "spec.involvedObject.name"],
    ),
    ("event", lambda o: setattr(o.spec, "reason", ""), ["spec.reason"]),
    ("event", lambda o: setattr(o.spec, "count", -1), ["spec.count"]),
    ("event", lambda o: setattr(o.spec, "message", "m" * MAX_EVENT_MESSAGE_BYTES), []),
    (
        "event",
        lambda o: setattr(o.spec, "message", "m" * (MAX_EVENT_MESSAGE_BYTES + 1)),
        ["spec.message"],
    ),
    # the limit is in bytes: 2,049 two-byte characters are 4,098 bytes
    ("event", lambda o: setattr(o.spec, "message", "é" * 2049), ["spec.message"]),
    ("event", lambda o: setattr(o.spec, "reason", "R" * 129), ["spec.reason"]),
    (
        "event",
        lambda o: o.metadata.annotations.update({"note": "n" * EVENT_MAX_BYTES}),
        ["object"],
    ),
    (
        "event",
        lambda o: setattr(o.spec, "message", "m" * 1_300_000),
        ["spec.message", "object"],
    ),
    (
        "lease",
        lambda o: setattr(o.spec, "holder_identity", "h" * LEASE_MAX_BYTES),
        ["object"],
    ),
    ("lease", lambda o: o.spec.ClearField("lease_duration_seconds"), []),
    (
        "lease",
        lambda o: setattr(o.spec, "lease_duration_seconds", 0),
        ["spec.leaseDurationSeconds"],
    ),
    ("lease", lambda o: setattr(o.spec, "lease_transitions", -1), ["spec.leaseTransitions"]),
]


@pytest.mark.parametrize(("kind", "mutate", "paths"), OTHER_CASES)
def test_nodes_events_leases(kind: str, mutate: Callable[[Any], object], paths: list[str]) -> None:
    _check(kind, mutate, paths)


def test_size_errors_name_the_limit() -> None:
    ev = event()
    ev.spec.message = "m" * 20_000
    errors = {e.path: e.message for e in validate(ev)}
    assert errors["spec.message"] == "must be at most 4096 bytes (is 20000)"
    assert errors["object"] == (
        f"Event objects must be at most {EVENT_MAX_BYTES} bytes encoded (is {ev.ByteSize()})"
    )


def test_kinds_without_a_cap_only_meet_the_request_limit() -> None:
    p = pod()
    p.metadata.annotations["note"] = "n" * (200 * 1024)  # under the 256 KiB annotations limit
    assert validate(p) == []


def test_every_bad_field_is_listed() -> None:
    def mutate(o: Any) -> None:
        o.metadata.name = "Bad Name"
        o.metadata.labels["bad key"] = "v"
        o.spec.restart_policy = "Sometimes"
        o.spec.processes[1].name = "server"
        o.spec.processes[1].resources.limits.memory_bytes = -1
        o.spec.processes[0].ClearField("command")

    errors = _check(
        "pod",
        mutate,
        [
            "metadata.name",
            "metadata.labels[bad key]",
            "spec.processes[0].command",
            "spec.processes[1].name",
            "spec.processes[1].resources.limits.memory",
            "spec.restartPolicy",
        ],
    )
    messages = {e.path: e.message for e in errors}
    assert messages["spec.processes[1].name"] == 'duplicate process name "server"'
    assert messages["spec.restartPolicy"] == (
        'unsupported value "Sometimes": supported values: "Always", "OnFailure", "Never"'
    )
    assert messages["spec.processes[0].command"] == "required"


# ---------------------------------------------------------------- updates

UPDATE_CASES = [
    # metadata: labels and annotations may change, identity may not
    ("pod", lambda o: o.metadata.labels.update({"new": "label"}), []),
    ("deployment", lambda o: o.metadata.annotations.update({"note": "x"}), []),
    ("pod", lambda o: setattr(o.metadata, "name", "web-2"), ["metadata.name"]),
    ("pod", lambda o: setattr(o.metadata, "namespace", "other"), ["metadata.namespace"]),
    ("node", lambda o: setattr(o.metadata, "uid", "u2"), ["metadata.uid"]),
    (
        "job",
        lambda o: setattr(o.metadata.creation_timestamp, "seconds", 5),
        ["metadata.creationTimestamp"],
    ),
    # pods: binding once, tolerations added, nothing else in spec
    ("pod", lambda o: setattr(o.spec, "node_name", "host-1"), []),
    ("pod", lambda o: o.spec.tolerations.add(key="k", operator="Exists"), []),
    ("pod", lambda o: setattr(o.status, "phase", "Running"), []),
    ("pod", lambda o: setattr(o.spec, "restart_policy", "Never"), ["spec.restartPolicy"]),
    ("pod", lambda o: _proc(o).args.append("--debug"), ["spec.processes"]),
    ("pod", lambda o: o.spec.node_selector.update({"disk": "ssd"}), ["spec.nodeSelector"]),
    (
        "pod",
        lambda o: setattr(o.spec, "termination_grace_period_seconds", 5),
        ["spec.terminationGracePeriodSeconds"],
    ),
    # workloads: template and replicas change, selectors do not
    ("deployment", lambda o: setattr(o.spec, "replicas", 5), []),
    ("deployment", lambda o: _tproc(o).args.append("--v2"), []),
    (
        "deployment",
        _many(
            lambda o: o.spec.selector.match_labels.update({"v": "2"}),
            lambda o: o.spec.template.metadata.labels.update({"v": "2"}),
        ),
        ["spec.selector"],
    ),
    (
        "replicaset",
        lambda o: o.spec.selector.match_expressions.add(key="app", operator="Exists"),
        ["spec.selector"],
    ),
    (
        "daemonset",
        lambda o: o.spec.selector.match_labels.update({"app": "x"}),
        ["spec.selector", "spec.template.metadata.labels"],
    ),
    ("job", lambda o: setattr(o.spec, "parallelism", 3), []),
    ("job", lambda o: setattr(o.spec, "completions", 3), ["spec.completions"]),
    ("job", lambda o: _tproc(o).args.append("--full"), ["spec.template"]),
    (
        "job",
        _many(
            lambda o: o.spec.selector.match_labels.update({"x": "y"}),
            lambda o: o.spec.template.metadata.labels.update({"x": "y"}),
        ),
        ["spec.selector", "spec.template"],
    ),
    ("node", lambda o: setattr(o.spec, "unschedulable", True), []),
    ("lease", lambda o: setattr(o.spec, "holder_identity", "host-2"), []),
]


@pytest.mark.parametrize(("kind", "mutate", "paths"), UPDATE_CASES)
def test_validate_update(kind: str, mutate: Callable[[Any], object], paths: list[str]) -> None:
    old = FACTORIES[kind]()
    new = FACTORIES[kind]()
    mutate(new)
    errors = validate_update(old, new)
    assert sorted(e.path for e in errors) == sorted(paths), errors


def test_pod_node_name_is_immutable_once_set() -> None:
    old = pod()
    old.spec.node_name = "host-1"
    new = pod()
    new.spec.node_name = "host-2"
    assert [e.path for e in validate_update(old, new)] == ["spec.nodeName"]
    new.spec.node_name = ""
    assert [e.path for e in validate_update(old, new)] == ["spec.nodeName"]


def test_pod_tolerations_may_only_be_added() -> None:
    old = pod()
    old.spec.tolerations.add(key="a", operator="Exists")
    new = pod()
    new.spec.tolerations.add(key="a", operator="Exists")
    new.spec.tolerations.add(key="b", operator="Exists")
    assert validate_update(old, new) == []
    assert [e.path for e in validate_update(new, old)] == ["spec.tolerations"]


def test_update_includes_validation_of_new() -> None:
    new = deployment()
    new.spec.replicas = -1
    assert [e.path for e in validate_update(deployment(), new)] == ["spec.replicas"]


def test_update_rejects_kind_change() -> None:
    with pytest.raises(TypeError, match="cannot update a Pod with a Node"):
        validate_update(pod(), node())
