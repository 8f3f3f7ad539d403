"""Defaulting: fill what the user left unset, as Kubernetes does.

The server applies defaults before validation, so validation may assume the
defaulted fields are set. Fields where zero is a meaningful value are proto3
``optional`` and defaulted only when absent (HasField); enumeration strings
are defaulted when empty. apply_defaults is idempotent.

A Secret's ``stringData`` is merged into ``data`` here (a stringData key wins
over the same key in data, as in Kubernetes) and cleared: the server defaults
before storing, so stringData is never stored or returned. Its type defaults
to "Opaque". Service and Endpoints ports default their protocol to "TCP".

Departures from Kubernetes, for convenience: a Job's pod template defaults
restartPolicy to "Never" (Kubernetes requires it to be given), and a Job with
no selector selects its template's labels.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message

from mizzen.api import kinds
from mizzen.api.dependencies import default_dependencies
from protos import objects_pb2 as pb

DEFAULT_NAMESPACE = "default"
DEFAULT_TERMINATION_GRACE_SECONDS = 30
DEFAULT_REVISION_HISTORY_LIMIT = 10
DEFAULT_PROGRESS_DEADLINE_SECONDS = 600
DEFAULT_MAX_SURGE = "25%"
DEFAULT_MAX_UNAVAILABLE = "25%"
DEFAULT_BACKOFF_LIMIT = 6
DEFAULT_SECRET_TYPE = "Opaque"

_PROBE_DEFAULTS = {
    "period_seconds": 10,
    "timeout_seconds": 1,
    "success_threshold": 1,
    "failure_threshold": 3,
    "initial_delay_seconds": 0,
}


def apply_defaults(obj: Message) -> None:
    """Fill unset fields of obj (any registered kind) in place."""
    info = kinds.kind_of(obj)
    o: Any = obj
    if info.namespaced and not o.metadata.namespace:
        o.metadata.namespace = DEFAULT_NAMESPACE
    match obj:
        case pb.Pod():
            default_pod_spec(obj.spec)
        case pb.ReplicaSet():
            _default_replicas(obj.spec)
            default_pod_spec(obj.spec.template.spec)
        case pb.Deployment():
            _default_deployment(obj.spec)
        case pb.DaemonSet():
            _default_daemonset(obj.spec)
        case pb.Job():
            _default_job(obj.spec)
        case pb.Node():
            _default_node(obj)
        case pb.Secret():
            _default_secret(obj)
        case pb.Service():
            for port in obj.spec.ports:
                port.protocol = port.protocol or "TCP"
        case pb.Endpoints():
            for subset in obj.subsets:
                for ep_port in subset.ports:
                    ep_port.protocol = ep_port.protocol or "TCP"
        case _:
            pass


def default_pod_spec(spec: pb.PodSpec) -> None:
    """Defaults of a PodSpec, also used for the templates of workloads."""
    if not spec.restart_policy:
        spec.restart_policy = "Always"
    if not spec.HasField("termination_grace_period_seconds"):
        spec.termination_grace_period_seconds = DEFAULT_TERMINATION_GRACE_SECONDS
    for process in spec.processes:
        for port in process.ports:
            if not port.protocol:
                port.protocol = "TCP"
        for name in ("liveness_probe", "readiness_probe"):
            if process.HasField(name):
                _default_probe(getattr(process, name))
    for toleration in spec.tolerations:
        if not toleration.operator:
            toleration.operator = "Equal"
    default_dependencies(spec.depends_on)


def _default_probe(probe: pb.Probe) -> None:
    for field, value in _PROBE_DEFAULTS.items():
        if not probe.HasField(field):
            setattr(probe, field, value)
    if probe.HasField("http_get"):
        if not probe.http_get.path:
            probe.http_get.path = "/"
        if not probe.http_get.scheme:
            probe.http_get.scheme = "HTTP"


def _default_replicas(spec: pb.ReplicaSetSpec | pb.DeploymentSpec) -> None:
    if not spec.HasField("replicas"):
        spec.replicas = 1


def _default_deployment(spec: pb.DeploymentSpec) -> None:
    _default_replicas(spec)
    if not spec.HasField("revision_history_limit"):
        spec.revision_history_limit = DEFAULT_REVISION_HISTORY_LIMIT
    if not spec.HasField("progress_deadline_seconds"):
        spec.progress_deadline_seconds = DEFAULT_PROGRESS_DEADLINE_SECONDS
    strategy = spec.strategy
    if not strategy.type:
        strategy.type = "RollingUpdate"
    if strategy.type == "RollingUpdate":
        if not strategy.rolling_update.max_surge:
            strategy.rolling_update.max_surge = DEFAULT_MAX_SURGE
        if not strategy.rolling_update.max_unavailable:
            strategy.rolling_update.max_unavailable = DEFAULT_MAX_UNAVAILABLE
    default_pod_spec(spec.template.spec)
    default_dependencies(spec.depends_on)


def _default_daemonset(spec: pb.DaemonSetSpec) -> None:
    if not spec.HasField("revision_history_limit"):
        spec.revision_history_limit = DEFAULT_REVISION_HISTORY_LIMIT
    strategy = spec.update_strategy
    if not strategy.type:
        strategy.type = "RollingUpdate"
    if strategy.type == "RollingUpdate":
        if not strategy.rolling_update.max_unavailable:
            strategy.rolling_update.max_unavailable = "1"
        if not strategy.rolling_update.max_surge:
            strategy.rolling_update.max_surge = "0"
    default_pod_spec(spec.template.spec)
    default_dependencies(spec.depends_on)


def _default_job(spec: pb.JobSpec) -> None:
    if not spec.HasField("completions"):
        spec.completions = 1
    if not spec.HasField("parallelism"):
        spec.parallelism = 1
    if not spec.HasField("backoff_limit"):
        spec.backoff_limit = DEFAULT_BACKOFF_LIMIT
    if not spec.template.spec.restart_policy:
        spec.template.spec.restart_policy = "Never"
    selector = spec.selector
    if not selector.match_labels and not selector.match_expressions:
        selector.match_labels.update(spec.template.metadata.labels)
    default_pod_spec(spec.template.spec)
    default_dependencies(spec.depends_on)


def _default_node(node: pb.Node) -> None:
    if not node.status.HasField("allocatable") and node.status.HasField("capacity"):
        node.status.allocatable.CopyFrom(node.status.capacity)


def _default_secret(secret: pb.Secret) -> None:
    if not secret.type:
        secret.type = DEFAULT_SECRET_TYPE
    for key, value in secret.string_data.items():
        secret.data[key] = value.encode()
    secret.ClearField("string_data")
