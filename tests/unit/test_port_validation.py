"""Validation of dynamic ports, probes by port name and the binding that assigns ports."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from mizzen.api.defaults import apply_defaults
from mizzen.api.validation import FieldError, validate, validate_update
from protos import objects_pb2 as pb

P0 = "spec.processes[0]"
P1 = "spec.processes[1]"
T0 = "spec.template.spec.processes[0]"


def pod() -> pb.Pod:
    obj = pb.Pod(metadata=pb.ObjectMeta(name="web-1", namespace="default"))
    obj.spec.processes.add(name="server", command=["/bin/server"])
    obj.spec.processes.add(name="sidecar", command=["/bin/sidecar"])
    apply_defaults(obj)
    return obj


def _workload(obj: Any) -> Any:
    obj.metadata.name = "web"
    obj.metadata.namespace = "default"
    obj.spec.selector.match_labels["app"] = "web"
    obj.spec.template.metadata.labels["app"] = "web"
    obj.spec.template.spec.processes.add(name="main", command=["/bin/server"])
    return obj


def _paths(obj: Any) -> list[str]:
    apply_defaults(obj)
    return sorted(e.path for e in validate(obj))


def _errors(obj: Any) -> list[FieldError]:
    apply_defaults(obj)
    return validate(obj)


def _set(obj: Any, name: str, value: Any) -> object:
    setattr(obj, name, value)
    return obj


def _p(o: pb.Pod, i: int = 0) -> pb.Process:
    return o.spec.processes[i]


CASES: list[tuple[Callable[[pb.Pod], object], list[str]]] = [
    # a named port without a number is dynamic
    (lambda o: _p(o).ports.add(name="http"), []),
    (lambda o: _p(o).ports.add(name="dns", protocol="UDP"), []),
    # two dynamic ports in one process, or one per process: fine
    (lambda o: (_p(o).ports.add(name="http"), _p(o).ports.add(name="admin")), []),
    (lambda o: (_p(o).ports.add(name="http"), _p(o, 1).ports.add(name="metrics")), []),
    # neither a name nor a number
    (lambda o: _p(o).ports.add(), [f"{P0}.ports[0].port"]),
    # assigned needs a number (the scheduler's record of what it chose)
    (lambda o: _p(o).ports.add(name="http", assigned=True), [f"{P0}.ports[0].assigned"]),
    (lambda o: _p(o).ports.add(name="http", port=20001, assigned=True), []),
    # port names are the pod's ($MIZZEN_PORT_<NAME> is given to every process)
    (
        lambda o: (_p(o).ports.add(name="http"), _p(o, 1).ports.add(name="http")),
        [f"{P1}.ports[0].name"],
    ),
    # two processes of one pod cannot both listen on one host port
    (
        lambda o: (_p(o).ports.add(port=8080), _p(o, 1).ports.add(port=8080)),
        [f"{P1}.ports[0].port"],
    ),
    (lambda o: (_p(o).ports.add(port=53), _p(o, 1).ports.add(port=53, protocol="UDP")), []),
    # a bound pod's dynamic ports are assigned
    (
        lambda o: (_p(o).ports.add(name="http"), _set(o.spec, "node_name", "n1")),
        [f"{P0}.ports[0].port"],
    ),
    (
        lambda o: (
            _p(o).ports.add(name="http", port=20001, assigned=True),
            _set(o.spec, "node_name", "n1"),
        ),
        [],
    ),
]


@pytest.mark.parametrize(("mutate", "paths"), CASES)
def test_pod_ports(mutate: Callable[[pb.Pod], object], paths: list[str]) -> None:
    obj = pod()
    mutate(obj)
    assert _paths(obj) == paths


def test_messages_say_what_to_do() -> None:
    obj = pod()
    _p(obj).ports.add()
    (err,) = _errors(obj)
    assert "a name" in err.message and "dynamic" in err.message
    obj = pod()
    _p(obj).ports.add(name="http")
    _p(obj, 1).ports.add(name="http")
    (err,) = _errors(obj)
    assert err.message == 'duplicate port name "http" (also spec.processes[0].ports[0])'
    obj = pod()
    _p(obj).ports.add(name="http")
    obj.spec.node_name = "n1"
    (err,) = _errors(obj)
    assert "assigned by the scheduler" in err.message


def test_dynamic_ports_in_templates() -> None:
    deploy = _workload(pb.Deployment())
    deploy.spec.template.spec.processes[0].ports.add(name="http")
    assert _paths(deploy) == []
    job = _workload(pb.Job())
    job.spec.template.spec.restart_policy = "Never"
    job.spec.template.spec.processes[0].ports.add(name="http")
    assert _paths(job) == []
    # a DaemonSet's pods are bound by its controller: the scheduler never assigns their ports
    ds = _workload(pb.DaemonSet())
    ds.spec.template.spec.processes[0].ports.add(name="http")
    (err,) = _errors(ds)
    assert err.path == f"{T0}.ports[0].port"
    assert "DaemonSet" in err.message
    ds.spec.template.spec.processes[0].ports[0].port = 9100
    assert _paths(ds) == []


# ---------------------------------------------------------------- probes by port name


def _tcp(o: pb.Pod) -> pb.TCPSocketAction:
    return _p(o).liveness_probe.tcp_socket


def _http(o: pb.Pod) -> pb.HTTPGetAction:
    return _p(o).readiness_probe.http_get


PROBE_CASES: list[tuple[Callable[[pb.Pod], object], list[str]]] = [
    (lambda o: (_p(o).ports.add(name="http"), _set(_tcp(o), "port_name", "http")), []),
    (lambda o: (_p(o).ports.add(name="http"), _set(_http(o), "port_name", "http")), []),
    (
        lambda o: (_p(o).ports.add(port=8080, name="web"), _set(_http(o), "port_name", "web")),
        [],
    ),
    # no such port in this process (the sidecar's port does not count)
    (lambda o: _set(_tcp(o), "port_name", "http"), [f"{P0}.livenessProbe.tcpSocket.port"]),
    (
        lambda o: (_p(o, 1).ports.add(name="http"), _set(_http(o), "port_name", "http")),
        [f"{P0}.readinessProbe.httpGet.port"],
    ),
    # both a number and a name
    (
        lambda o: (
            _p(o).ports.add(name="http"),
            _set(_tcp(o), "port_name", "http"),
            _set(_tcp(o), "port", 80),
        ),
        [f"{P0}.livenessProbe.tcpSocket.port"],
    ),
]


@pytest.mark.parametrize(("mutate", "paths"), PROBE_CASES)
def test_probe_port_names(mutate: Callable[[pb.Pod], object], paths: list[str]) -> None:
    obj = pod()
    mutate(obj)
    assert _paths(obj) == paths


def test_probe_unknown_port_name_message() -> None:
    obj = pod()
    _p(obj).ports.add(name="http")
    _tcp(obj).port_name = "admin"
    (err,) = _errors(obj)
    assert err.message == 'no port named "admin" in this process\'s ports (http)'


# ---------------------------------------------------------------- binding


def _dynamic_pod() -> pb.Pod:
    obj = pod()
    _p(obj).ports.add(name="http")
    _p(obj).ports.add(name="fixed", port=8080)
    _p(obj, 1).ports.add(name="metrics")
    apply_defaults(obj)
    return obj


def _bound(old: pb.Pod, *ports: int) -> pb.Pod:
    new = pb.Pod()
    new.CopyFrom(old)
    new.spec.node_name = "n1"
    dynamic = [p for proc in new.spec.processes for p in proc.ports if p.port == 0]
    for port, number in zip(dynamic, ports, strict=True):
        port.port, port.assigned = number, True
    return new


def test_binding_fills_dynamic_ports() -> None:
    old = _dynamic_pod()
    assert validate_update(old, _bound(old, 20001, 20002)) == []


def test_binding_must_assign_every_dynamic_port() -> None:
    old = _dynamic_pod()
    new = _bound(old, 20001, 20002)
    new.spec.processes[1].ports[0].port = 0
    new.spec.processes[1].ports[0].assigned = False
    assert [e.path for e in validate_update(old, new)] == [f"{P1}.ports[0].port"]


def test_ports_are_filled_only_by_the_binding() -> None:
    old = _dynamic_pod()
    unbound = _bound(old, 20001, 20002)
    unbound.spec.node_name = ""
    assert [e.path for e in validate_update(old, unbound)] == ["spec.processes"]


def test_an_assigned_port_never_changes() -> None:
    old = _bound(_dynamic_pod(), 20001, 20002)
    new = pb.Pod()
    new.CopyFrom(old)
    new.spec.processes[0].ports[0].port = 20003
    assert [e.path for e in validate_update(old, new)] == ["spec.processes"]
    new.CopyFrom(old)
    new.spec.processes[0].ports[0].port = 0
    new.spec.processes[0].ports[0].assigned = False
    paths = sorted(e.path for e in validate_update(old, new))
    assert paths == sorted([f"{P0}.ports[0].port", "spec.processes"])


def test_binding_cannot_change_a_fixed_port_or_a_name() -> None:
    old = _dynamic_pod()
    new = _bound(old, 20001, 20002)
    new.spec.processes[0].ports[1].port = 8081
    assert [e.path for e in validate_update(old, new)] == ["spec.processes"]
    new = _bound(old, 20001, 20002)
    new.spec.processes[0].ports[0].name = "www"
    assert [e.path for e in validate_update(old, new)] == ["spec.processes"]
