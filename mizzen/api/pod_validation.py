"""Validation of a PodSpec (of a Pod or a workload's template) and of a PodStatus."""

from __future__ import annotations

import re

from mizzen.api import names, quantity
from mizzen.api.field_errors import FieldErrors
from mizzen.echo import echo
from protos import objects_pb2 as pb

RESTART_POLICIES = ("Always", "OnFailure", "Never")
POD_PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")

_USER = re.compile(r"[a-z_][a-z0-9_-]*\$?|\d+")
# (field in ResourceList, manifest name)
RESOURCES = (("cpu_millis", "cpu"), ("memory_bytes", "memory"), ("pids", "pids"))


def validate_pod_spec(spec: pb.PodSpec, path: str, errs: FieldErrors) -> None:
    """Add spec's problems under path ("spec" for a Pod, "spec.template.spec" for templates)."""
    if not spec.processes:
        errs.add(f"{path}.processes", "at least one process is required")
    seen: set[str] = set()
    for i, process in enumerate(spec.processes):
        ppath = f"{path}.processes[{i}]"
        if errs.required(f"{ppath}.name", process.name):
            errs.each(f"{ppath}.name", names.dns1123_label(process.name))
            if process.name in seen:
                errs.add(f"{ppath}.name", f'duplicate process name "{echo(process.name)}"')
            seen.add(process.name)
        _process(process, ppath, errs)
    errs.enum(f"{path}.restartPolicy", spec.restart_policy, RESTART_POLICIES)
    if spec.node_name:
        errs.each(f"{path}.nodeName", names.dns1123_subdomain(spec.node_name))
    errs.labels(spec.node_selector, f"{path}.nodeSelector")
    for i, toleration in enumerate(spec.tolerations):
        _toleration(toleration, f"{path}.tolerations[{i}]", errs)
    if spec.HasField("termination_grace_period_seconds"):
        errs.at_least(
            f"{path}.terminationGracePeriodSeconds", spec.termination_grace_period_seconds, 0
        )


def _process(process: pb.Process, path: str, errs: FieldErrors) -> None:
    if errs.required(f"{path}.command", list(process.command)) and not process.command[0]:
        errs.add(f"{path}.command[0]", "must not be empty")
    for j, env in enumerate(process.env):
        epath = f"{path}.env[{j}].name"
        if errs.required(epath, env.name) and ("=" in env.name or "\0" in env.name):
            errs.add(epath, "must not contain '=' or NUL")
    if process.working_dir and not process.working_dir.startswith("/"):
        errs.add(f"{path}.workingDir", "must be an absolute path")
    if process.user and not _USER.fullmatch(process.user):
        errs.add(f"{path}.user", "must be a user name or a numeric uid")
    port_names: set[str] = set()
    for j, port in enumerate(process.ports):
        ppath = f"{path}.ports[{j}]"
        errs.port(f"{ppath}.port", port.port)
        if port.protocol:
            errs.enum(f"{ppath}.protocol", port.protocol, ("TCP", "UDP"))
        if port.name:
            errs.each(f"{ppath}.name", names.dns1123_label(port.name))
            if port.name in port_names:
                errs.add(f"{ppath}.name", f'duplicate port name "{echo(port.name)}"')
            port_names.add(port.name)
    _resources(process.resources, f"{path}.resources", errs)
    if process.HasField("liveness_probe"):
        _probe(process.liveness_probe, f"{path}.livenessProbe", errs, liveness=True)
    if process.HasField("readiness_probe"):
        _probe(process.readiness_probe, f"{path}.readinessProbe", errs, liveness=False)


def _resources(resources: pb.ResourceRequirements, path: str, errs: FieldErrors) -> None:
    for part in ("requests", "limits"):
        values: pb.ResourceList = getattr(resources, part)
        for field, name in RESOURCES:
            if values.HasField(field):
                errs.at_least(f"{path}.{part}.{name}", getattr(values, field), 0)
    for field, name in RESOURCES:
        if resources.requests.HasField(field) and resources.limits.HasField(field):
            request = getattr(resources.requests, field)
            limit = getattr(resources.limits, field)
            if request > limit:
                shown = _format(field, limit)
                errs.add(
                    f"{path}.requests.{name}",
                    f"must be less than or equal to {name} limit of {shown}",
                )


def _format(field: str, value: int) -> str:
    if field == "cpu_millis":
        return quantity.format_cpu(value)
    if field == "memory_bytes":
        return quantity.format_memory(value)
    return str(value)


def _probe(probe: pb.Probe, path: str, errs: FieldErrors, *, liveness: bool) -> None:
    handlers = [h for h in ("exec", "tcp_socket", "http_get") if probe.HasField(h)]
    if not handlers:
        errs.add(path, "must specify a handler: exec, tcpSocket or httpGet")
    elif len(handlers) > 1:
        errs.add(path, "may not specify more than one handler")
    if probe.HasField("exec"):
        errs.required(f"{path}.exec.command", list(probe.exec.command))
    if probe.HasField("tcp_socket"):
        errs.port(f"{path}.tcpSocket.port", probe.tcp_socket.port)
    if probe.HasField("http_get"):
        http = probe.http_get
        errs.port(f"{path}.httpGet.port", http.port)
        if http.path and not http.path.startswith("/"):
            errs.add(f"{path}.httpGet.path", "must start with '/'")
        if http.scheme:
            errs.enum(f"{path}.httpGet.scheme", http.scheme, ("HTTP", "HTTPS"))
        for k, header in enumerate(http.http_headers):
            errs.required(f"{path}.httpGet.httpHeaders[{k}].name", header.name)
    if probe.HasField("initial_delay_seconds"):
        errs.at_least(f"{path}.initialDelaySeconds", probe.initial_delay_seconds, 0)
    for field, json in (
        ("period_seconds", "periodSeconds"),
        ("timeout_seconds", "timeoutSeconds"),
        ("success_threshold", "successThreshold"),
        ("failure_threshold", "failureThreshold"),
    ):
        if probe.HasField(field):
            errs.at_least(f"{path}.{json}", getattr(probe, field), 1)
    if liveness and probe.HasField("success_threshold") and probe.success_threshold != 1:
        errs.add(f"{path}.successThreshold", "must be 1 for a liveness probe")


def _toleration(toleration: pb.Toleration, path: str, errs: FieldErrors) -> None:
    operator = toleration.operator or "Equal"
    errs.enum(f"{path}.operator", operator, ("Equal", "Exists"))
    if toleration.key:
        errs.each(f"{path}.key", names.qualified_name(toleration.key))
    elif operator != "Exists":
        errs.add(f"{path}.operator", "must be Exists when key is empty")
    if operator == "Exists" and toleration.value:
        errs.add(f"{path}.value", "must be empty when operator is Exists")
    elif toleration.value:
        errs.each(f"{path}.value", names.label_value(toleration.value))
    if toleration.effect:
        errs.enum(f"{path}.effect", toleration.effect, TAINT_EFFECTS)
    if toleration.HasField("toleration_seconds") and toleration.effect != "NoExecute":
        errs.add(f"{path}.tolerationSeconds", "only allowed with effect NoExecute")


def validate_pod_status(status: pb.PodStatus, errs: FieldErrors) -> None:
    if status.phase:
        errs.enum("status.phase", status.phase, POD_PHASES)
    errs.conditions(status.conditions, "status.conditions")
    for i, ps in enumerate(status.process_statuses):
        errs.required(f"status.processStatuses[{i}].name", ps.name)
        errs.at_least(f"status.processStatuses[{i}].restartCount", ps.restart_count, 0)
