"""Defaulting: unset fields filled, set fields (including zero) kept, idempotent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from mizzen.api.defaults import apply_defaults
from protos import objects_pb2 as pb


def _with_process(obj: Any, template: bool = True) -> Any:
    spec = obj.spec.template.spec if template else obj.spec
    spec.processes.add(name="main", command=["sleep", "1"])
    return obj


@pytest.mark.parametrize(
    ("obj", "namespace"),
    [
        (pb.Pod(), "default"),
        (pb.Pod(metadata=pb.ObjectMeta(namespace="prod")), "prod"),
        (pb.Deployment(), "default"),
        (pb.ReplicaSet(), "default"),
        (pb.DaemonSet(), "default"),
        (pb.Job(), "default"),
        (pb.Event(), "default"),
        (pb.Lease(), "default"),
        (pb.Node(), ""),
    ],
)
def test_namespace(obj: Any, namespace: str) -> None:
    apply_defaults(obj)
    assert obj.metadata.namespace == namespace


def test_pod_spec_defaults() -> None:
    pod = _with_process(pb.Pod(), template=False)
    process = pod.spec.processes[0]
    process.liveness_probe.tcp_socket.port = 8080
    process.readiness_probe.http_get.port = 8080
    process.ports.add(port=8080)
    pod.spec.tolerations.add(key="k", value="v")
    apply_defaults(pod)
    assert pod.spec.restart_policy == "Always"
    assert pod.spec.termination_grace_period_seconds == 30
    for probe in (process.liveness_probe, process.readiness_probe):
        assert (
            probe.initial_delay_seconds,
            probe.period_seconds,
            probe.timeout_seconds,
            probe.success_threshold,
            probe.failure_threshold,
        ) == (0, 10, 1, 1, 3)
    assert process.readiness_probe.http_get.path == "/"
    assert process.readiness_probe.http_get.scheme == "HTTP"
    assert process.ports[0].protocol == "TCP"
    assert pod.spec.tolerations[0].operator == "Equal"
    assert not process.HasField("resources")


def test_pod_set_values_kept() -> None:
    pod = _with_process(pb.Pod(), template=False)
    pod.spec.restart_policy = "Never"
    pod.spec.termination_grace_period_seconds = 0
    probe = pod.spec.processes[0].liveness_probe
    probe.exec.command.append("true")
    probe.period_seconds = 5
    probe.failure_threshold = 1
    apply_defaults(pod)
    assert pod.spec.restart_policy == "Never"
    assert pod.spec.termination_grace_period_seconds == 0
    assert (probe.period_seconds, probe.failure_threshold, probe.timeout_seconds) == (5, 1, 1)


def test_no_probe_no_defaults() -> None:
    pod = _with_process(pb.Pod(), template=False)
    apply_defaults(pod)
    assert not pod.spec.processes[0].HasField("liveness_probe")
    assert not pod.spec.processes[0].HasField("readiness_probe")


def test_deployment_defaults() -> None:
    deploy = _with_process(pb.Deployment())
    apply_defaults(deploy)
    spec = deploy.spec
    assert spec.replicas == 1
    assert spec.revision_history_limit == 10
    assert spec.progress_deadline_seconds == 600
    assert spec.strategy.type == "RollingUpdate"
    assert spec.strategy.rolling_update.max_surge == "25%"
    assert spec.strategy.rolling_update.max_unavailable == "25%"
    assert spec.template.spec.restart_policy == "Always"
    assert spec.template.spec.termination_grace_period_seconds == 30


@pytest.mark.parametrize(
    ("setup", "check"),
    [
        (lambda s: setattr(s, "replicas", 0), lambda s: s.replicas == 0),
        (
            lambda s: setattr(s, "revision_history_limit", 0),
            lambda s: s.revision_history_limit == 0,
        ),
        (
            lambda s: setattr(s, "progress_deadline_seconds", 30),
            lambda s: s.progress_deadline_seconds == 30,
        ),
        (
            lambda s: setattr(s.strategy, "type", "Recreate"),
            lambda s: s.strategy.type == "Recreate" and not s.strategy.HasField("rolling_update"),
        ),
        (
            lambda s: setattr(s.strategy.rolling_update, "max_surge", "1"),
            lambda s: (
                (s.strategy.rolling_update.max_surge, s.strategy.rolling_update.max_unavailable)
                == ("1", "25%")
            ),
        ),
    ],
)
def test_deployment_set_values_kept(
    setup: Callable[[Any], None], check: Callable[[Any], bool]
) -> None:
    deploy = _with_process(pb.Deployment())
    setup(deploy.spec)
    apply_defaults(deploy)
    assert check(deploy.spec)


def test_replicaset_defaults() -> None:
    rs = _with_process(pb.ReplicaSet())
    apply_defaults(rs)
    assert rs.spec.replicas == 1
    assert rs.spec.template.spec.restart_policy == "Always"
    rs2 = _with_process(pb.ReplicaSet())
    rs2.spec.replicas = 0
    apply_defaults(rs2)
    assert rs2.spec.replicas == 0


def test_daemonset_defaults() -> None:
    ds = _with_process(pb.DaemonSet())
    apply_defaults(ds)
    assert ds.spec.update_strategy.type == "RollingUpdate"
    assert ds.spec.update_strategy.rolling_update.max_unavailable == "1"
    assert ds.spec.update_strategy.rolling_update.max_surge == "0"
    assert ds.spec.revision_history_limit == 10
    assert ds.spec.template.spec.restart_policy == "Always"


def test_job_defaults() -> None:
    job = _with_process(pb.Job())
    job.spec.template.metadata.labels["job"] = "backup"
    apply_defaults(job)
    spec = job.spec
    assert (spec.completions, spec.parallelism, spec.backoff_limit) == (1, 1, 6)
    assert spec.template.spec.restart_policy == "Never"
    assert dict(spec.selector.match_labels) == {"job": "backup"}
    assert not spec.HasField("active_deadline_seconds")


def test_job_set_values_kept() -> None:
    job = _with_process(pb.Job())
    job.spec.completions = 0
    job.spec.parallelism = 0
    job.spec.backoff_limit = 0
    job.spec.template.spec.restart_policy = "OnFailure"
    job.spec.selector.match_labels["x"] = "y"
    job.spec.template.metadata.labels["job"] = "backup"
    apply_defaults(job)
    spec = job.spec
    assert (spec.completions, spec.parallelism, spec.backoff_limit) == (0, 0, 0)
    assert spec.template.spec.restart_policy == "OnFailure"
    assert dict(spec.selector.match_labels) == {"x": "y"}


def test_node_allocatable_defaults_to_capacity() -> None:
    node = pb.Node()
    node.status.capacity.cpu_millis = 4000
    node.status.capacity.memory_bytes = 2**33
    apply_defaults(node)
    assert node.status.allocatable == node.status.capacity
    other = pb.Node()
    other.status.capacity.cpu_millis = 4000
    other.status.allocatable.cpu_millis = 3500
    apply_defaults(other)
    assert other.status.allocatable.cpu_millis == 3500
    assert not other.status.allocatable.HasField("memory_bytes")


def test_bare_node_gets_no_resources() -> None:
    node = pb.Node()
    apply_defaults(node)
    assert not node.status.HasField("allocatable")


@pytest.mark.parametrize(
    "factory",
    [
        lambda: _with_process(pb.Pod(), template=False),
        lambda: _with_process(pb.Deployment()),
        lambda: _with_process(pb.ReplicaSet()),
        lambda: _with_process(pb.DaemonSet()),
        lambda: _with_process(pb.Job()),
        pb.Node,
        pb.Event,
        pb.Lease,
    ],
)
def test_idempotent(factory: Callable[[], Any]) -> None:
    once = factory()
    apply_defaults(once)
    twice = factory()
    apply_defaults(twice)
    apply_defaults(twice)
    assert once == twice


def test_rejects_non_objects() -> None:
    with pytest.raises(LookupError):
        apply_defaults(pb.PodSpec())
