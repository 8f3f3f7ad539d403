"""Validation of a PodSpec (of a Pod or a workload's template) and of a PodStatus."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from typing import Any

from mizzen.api import names, quantity
from mizzen.api.dependencies import validate_dependencies
from mizzen.api.field_errors import FieldErrors
from mizzen.echo import echo
from protos import objects_pb2 as pb

RESTART_POLICIES = ("Always", "OnFailure", "Never")
POD_PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")

_USER = re.compile(r"[a-z_][a-z0-9_-]*\$?|\d+")
# (field in ResourceList, manifest name)
RESOURCES = (("cpu_millis", "cpu"), ("memory_bytes", "memory"), ("pids", "pids"))
MAX_FILE_MODE = 0o777
_ENV_REFS = "configMapKeyRef, secretKeyRef"


def validate_pod_spec(spec: pb.PodSpec, path: str, errs: FieldErrors) -> None:
    """Add spec's problems under path ("spec" for a Pod, "spec.template.spec" for templates)."""
    if not spec.processes:
        errs.add(f"{path}.processes", "at least one process is required")
    seen: set[str] = set()
    volumes = _volumes(spec.volumes, f"{path}.volumes", errs)
    for i, process in enumerate(spec.processes):
        ppath = f"{path}.processes[{i}]"
        if errs.required(f"{ppath}.name", process.name):
            errs.each(f"{ppath}.name", names.dns1123_label(process.name))
            if process.name in seen:
                errs.add(f"{ppath}.name", f'duplicate process name "{echo(process.name)}"')
            seen.add(process.name)
        _process(process, ppath, errs)
        _volume_mounts(process.volume_mounts, volumes, f"{ppath}.volumeMounts", errs)
    _pod_ports(spec, path, errs)
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
    validate_dependencies(spec.depends_on, f"{path}.dependsOn", errs)


def _process(process: pb.Process, path: str, errs: FieldErrors) -> None:
    if errs.required(f"{path}.command", list(process.command)) and not process.command[0]:
        errs.add(f"{path}.command[0]", "must not be empty")
    for j, env in enumerate(process.env):
        epath = f"{path}.env[{j}].name"
        if errs.required(epath, env.name) and ("=" in env.name or "\0" in env.name):
            errs.add(epath, "must not contain '=' or NUL")
        if env.HasField("value_from"):
            _env_source(env, f"{path}.env[{j}]", errs)
    for j, env_from in enumerate(process.env_from):
        _env_from(env_from, f"{path}.envFrom[{j}]", errs)
    if process.working_dir and not process.working_dir.startswith("/"):
        errs.add(f"{path}.workingDir", "must be an absolute path")
    if process.user and not _USER.fullmatch(process.user):
        errs.add(f"{path}.user", "must be a user name or a numeric uid")
    if process.stdin_once and not process.stdin:
        errs.add(f"{path}.stdinOnce", "requires stdin: true")
    if process.tty and not process.stdin:
        errs.add(f"{path}.tty", "requires stdin: true")
    for j, port in enumerate(process.ports):
        ppath = f"{path}.ports[{j}]"
        if port.port == 0 and port.name:
            if port.assigned:
                errs.add(f"{ppath}.assigned", "only a port with a number can be assigned")
        elif port.port == 0:
            errs.add(
                f"{ppath}.port",
                "required: a number (1-65535), or a name to get a dynamic port "
                "(port 0: the scheduler assigns a free one from the node's range)",
            )
        else:
            errs.port(f"{ppath}.port", port.port)
        if port.protocol:
            errs.enum(f"{ppath}.protocol", port.protocol, ("TCP", "UDP"))
        if port.name:
            errs.each(f"{ppath}.name", names.dns1123_label(port.name))
    _resources(process.resources, f"{path}.resources", errs)
    port_names = [p.name for p in process.ports if p.name]
    if process.HasField("liveness_probe"):
        _probe(process.liveness_probe, f"{path}.livenessProbe", port_names, errs, liveness=True)
    if process.HasField("readiness_probe"):
        _probe(process.readiness_probe, f"{path}.readinessProbe", port_names, errs, liveness=False)


def is_dynamic(port: pb.ProcessPort) -> bool:
    """A named port without a number, not assigned yet: the scheduler picks it."""
    return port.port == 0 and not port.assigned and bool(port.name)


def _pod_ports(spec: pb.PodSpec, path: str, errs: FieldErrors) -> None:
    """Across the pod: port names are unique (every process gets $MIZZEN_PORT_<NAME> of
    each), two processes never declare one host port, and a bound pod (spec.nodeName set)
    has every dynamic port assigned."""
    names_at: dict[str, str] = {}
    numbers_at: dict[tuple[str, int], str] = {}
    for i, process in enumerate(spec.processes):
        for j, port in enumerate(process.ports):
            ppath = f"{path}.processes[{i}].ports[{j}]"
            if port.name:
                first = names_at.setdefault(port.name, ppath)
                if first != ppath:
                    errs.add(
                        f"{ppath}.name", f'duplicate port name "{echo(port.name)}" (also {first})'
                    )
            if 0 < port.port <= 65535:
                key = (port.protocol or "TCP", port.port)
                first = numbers_at.setdefault(key, ppath)
                if first != ppath:
                    errs.add(
                        f"{ppath}.port", f"duplicate host port {key[1]}/{key[0]} (also {first})"
                    )
            if spec.node_name and is_dynamic(port):
                errs.add(
                    f"{ppath}.port",
                    "a dynamic port is assigned by the scheduler when it binds the pod: "
                    "a pod created with spec.nodeName must give the port a number",
                )


# ------------------------------------------------ ConfigMap and Secret references


def _object_name(path: str, name: str, errs: FieldErrors) -> None:
    if errs.required(path, name):
        errs.each(path, names.dns1123_subdomain(name))


def _env_source(env: pb.EnvVar, path: str, errs: FieldErrors) -> None:
    src = env.value_from
    if env.value:
        errs.add(f"{path}.valueFrom", "may not be specified when `value` is not empty")
    refs = [r for r in ("config_map_key_ref", "secret_key_ref") if src.HasField(r)]
    if not refs:
        errs.add(f"{path}.valueFrom", f"must specify one of: {_ENV_REFS}")
    elif len(refs) > 1:
        errs.add(f"{path}.valueFrom", f"may not specify more than one of: {_ENV_REFS}")
    for field, json in (
        ("config_map_key_ref", "configMapKeyRef"),
        ("secret_key_ref", "secretKeyRef"),
    ):
        if not src.HasField(field):
            continue
        ref = getattr(src, field)
        rpath = f"{path}.valueFrom.{json}"
        _object_name(f"{rpath}.name", ref.name, errs)
        if errs.required(f"{rpath}.key", ref.key):
            errs.each(f"{rpath}.key", names.config_key(ref.key))


def _env_from(env_from: pb.EnvFromSource, path: str, errs: FieldErrors) -> None:
    refs = [r for r in ("config_map_ref", "secret_ref") if env_from.HasField(r)]
    if not refs:
        errs.add(path, "must specify one of: configMapRef, secretRef")
    elif len(refs) > 1:
        errs.add(path, "may not specify more than one of: configMapRef, secretRef")
    if "=" in env_from.prefix or "\0" in env_from.prefix:
        errs.add(f"{path}.prefix", "must not contain '=' or NUL")
    if env_from.HasField("config_map_ref"):
        _object_name(f"{path}.configMapRef.name", env_from.config_map_ref.name, errs)
    if env_from.HasField("secret_ref"):
        _object_name(f"{path}.secretRef.name", env_from.secret_ref.name, errs)


def _mode(path: str, message: Any, field: str, errs: FieldErrors) -> None:
    if message.HasField(field) and not 0 <= getattr(message, field) <= MAX_FILE_MODE:
        errs.add(path, "must be a number between 0 and 0777 (octal), both inclusive")


def _relative_path(path: str, value: str, errs: FieldErrors) -> None:
    """A path that stays below the directory it is relative to."""
    if not errs.required(path, value):
        return
    if "\0" in value:
        errs.add(path, "must not contain NUL")
    elif value.startswith("/"):
        errs.add(path, "must be a relative path")
    elif ".." in value.split("/"):
        errs.add(path, "must not contain '..'")
    elif posixpath.normpath(value) == ".":
        errs.add(path, "must name a file or directory below the volume, not the volume itself")


def _items(items: Sequence[pb.KeyToPath], path: str, errs: FieldErrors) -> None:
    seen: set[str] = set()
    for k, item in enumerate(items):
        ipath = f"{path}[{k}]"
        if errs.required(f"{ipath}.key", item.key):
            errs.each(f"{ipath}.key", names.config_key(item.key))
        _relative_path(f"{ipath}.path", item.path, errs)
        normal = posixpath.normpath(item.path) if item.path else ""
        if normal and normal in seen:
            errs.add(f"{ipath}.path", f'duplicate path "{echo(item.path)}"')
        seen.add(normal)
        _mode(f"{ipath}.mode", item, "mode", errs)


def _volumes(volumes: Sequence[pb.Volume], path: str, errs: FieldErrors) -> set[str]:
    """Check the pod's volumes; the names of those a volumeMount may refer to."""
    seen: set[str] = set()
    for i, vol in enumerate(volumes):
        vpath = f"{path}[{i}]"
        if errs.required(f"{vpath}.name", vol.name):
            errs.each(f"{vpath}.name", names.dns1123_label(vol.name))
            if vol.name in seen:
                errs.add(f"{vpath}.name", f'duplicate volume name "{echo(vol.name)}"')
            seen.add(vol.name)
        sources = [s for s in ("config_map", "secret") if vol.HasField(s)]
        if not sources:
            errs.add(vpath, "must specify one volume source: configMap or secret")
        elif len(sources) > 1:
            errs.add(vpath, "may not specify more than one volume source")
        if vol.HasField("config_map"):
            cm = vol.config_map
            _object_name(f"{vpath}.configMap.name", cm.name, errs)
            _items(cm.items, f"{vpath}.configMap.items", errs)
            _mode(f"{vpath}.configMap.defaultMode", cm, "default_mode", errs)
        if vol.HasField("secret"):
            sv = vol.secret
            _object_name(f"{vpath}.secret.secretName", sv.secret_name, errs)
            _items(sv.items, f"{vpath}.secret.items", errs)
            _mode(f"{vpath}.secret.defaultMode", sv, "default_mode", errs)
    return seen


def _volume_mounts(
    mounts: Sequence[pb.VolumeMount], volumes: set[str], path: str, errs: FieldErrors
) -> None:
    """Each mount names a pod volume; mount paths are relative, distinct and never climb
    out ('..').

    A mount lies inside the pod directory, whose absolute path only the node knows
    (``$MIZZEN_POD_DIR`` at run time), so an absolute mountPath cannot be known to
    lie inside it and is refused (the agent refuses one outside it all the same).
    """
    seen: set[str] = set()
    for k, mount in enumerate(mounts):
        mpath = f"{path}[{k}]"
        if errs.required(f"{mpath}.name", mount.name) and mount.name not in volumes:
            errs.add(f"{mpath}.name", f'not found: no volume named "{echo(mount.name)}"')
        target = mount.mount_path
        if not errs.required(f"{mpath}.mountPath", target):
            continue
        if "\0" in target:
            errs.add(f"{mpath}.mountPath", "must not contain NUL")
        elif target.startswith("/"):
            errs.add(
                f"{mpath}.mountPath",
                "must be relative (to the process's workingDir when that is inside the pod "
                "directory, else to the pod directory, $MIZZEN_POD_DIR): an absolute path "
                "cannot be known to lie inside the pod directory",
            )
        elif ".." in target.split("/"):
            errs.add(f"{mpath}.mountPath", "must not contain '..'")
        elif posixpath.normpath(target) in (".", "/"):
            errs.add(f"{mpath}.mountPath", "must name a directory, not the working or root one")
        normal = posixpath.normpath(target)
        if normal in seen:
            errs.add(f"{mpath}.mountPath", f'duplicate mount path "{echo(target)}"')
        seen.add(normal)


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


def _probe_port(path: str, port: int, port_name: str, names: list[str], errs: FieldErrors) -> None:
    """A probe's port: a number, or (``port: http`` in a manifest) one of the process's
    port names."""
    if not port_name:
        errs.port(path, port)
    elif port:
        errs.add(path, "may not specify both a port number and a port name")
    elif port_name not in names:
        known = ", ".join(names) or "none"
        errs.add(path, f'no port named "{echo(port_name)}" in this process\'s ports ({known})')


def _probe(
    probe: pb.Probe, path: str, port_names: list[str], errs: FieldErrors, *, liveness: bool
) -> None:
    handlers = [h for h in ("exec", "tcp_socket", "http_get") if probe.HasField(h)]
    if not handlers:
        errs.add(path, "must specify a handler: exec, tcpSocket or httpGet")
    elif len(handlers) > 1:
        errs.add(path, "may not specify more than one handler")
    if probe.HasField("exec"):
        errs.required(f"{path}.exec.command", list(probe.exec.command))
    if probe.HasField("tcp_socket"):
        tcp = probe.tcp_socket
        _probe_port(f"{path}.tcpSocket.port", tcp.port, tcp.port_name, port_names, errs)
    if probe.HasField("http_get"):
        http = probe.http_get
        _probe_port(f"{path}.httpGet.port", http.port, http.port_name, port_names, errs)
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
