"""`mizzen describe` text: an object and the Events about it, as readable sections — pure.

``describe(obj, events, now=...)`` returns the whole text. Every object starts
with Name, Namespace, Labels, Annotations and Created; then per kind: a Pod
its status and each process (command, resources, probes, state, restarts,
environment with the ConfigMap and Secret keys it comes from, mounts), its
volumes and, given ``configs``, whether each ConfigMap and Secret it refers to
resolves; a Deployment or ReplicaSet its replicas and conditions (a Deployment also
its progressDeadlineSeconds, and each condition's lastUpdateTime and
lastTransitionTime where set); a Node its
capacity, allocatable, addresses and conditions; a ConfigMap its data (values
shown, as kubectl does); a Secret its type and the size of each value, never a
value; any other kind its spec and status fields. The text ends with
``Events:`` (``<none>`` when there are none).
Labels are aligned per nesting depth, like kubectl's tabwriter output.

One file because it is one pure text renderer; the per-kind sections share the
same layout helpers, and the file has no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf.json_format import MessageToDict

from mizzen.api import dependencies
from mizzen.api.config_refs import ConfigRef, config_refs
from mizzen.api.defaults import DEFAULT_PROGRESS_DEADLINE_SECONDS
from mizzen.api.kinds import kind_of
from mizzen.api.quantity import format_cpu, format_memory
from mizzen.cli import event_view, tables

NONE = "<none>"
Configs = dict[tuple[str, str], Any]
"""What describe knows of each (kind, name) a pod refers to: the object, None (not
found), or a string saying why it could not be read (e.g. permission denied)."""


@dataclass(frozen=True)
class Line:
    depth: int
    label: str
    # None: the label heads a nested block ("Processes:"); "" prints an empty value.
    value: str | None = None
    # Printed as is after the indent (rows of a table); label is ignored.
    raw: bool = False


Lines = list[Line]


def _time(ts: Any) -> str:
    return datetime.fromtimestamp(ts.seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time_or_none(msg: Any, field: str) -> str:
    return _time(getattr(msg, field)) if msg.HasField(field) else NONE


def _pairs(mapping: Any) -> list[str]:
    return [f"{key}={mapping[key]}" for key in sorted(mapping)] or [NONE]


def _multi(lines: Lines, depth: int, label: str, values: Sequence[str]) -> None:
    """label: first value, then each further value on its own line under it."""
    lines.append(Line(depth, label, values[0]))
    lines.extend(Line(depth, "", value) for value in values[1:])


def _metadata(obj: Any, now: float) -> Lines:
    meta = obj.metadata
    lines = [Line(0, "Name", meta.name)]
    if kind_of(obj).namespaced:
        lines.append(Line(0, "Namespace", meta.namespace))
    _multi(lines, 0, "Labels", _pairs(meta.labels))
    _multi(lines, 0, "Annotations", _pairs(meta.annotations))
    created = NONE
    if meta.HasField("creation_timestamp"):
        ts = meta.creation_timestamp
        created = f"{_time(ts)} ({tables.age(float(ts.seconds), now)} ago)"
    lines.append(Line(0, "Created", created))
    if meta.HasField("deletion_timestamp"):
        grace = meta.deletion_grace_period_seconds
        lines.append(
            Line(0, "Terminating", f"since {_time(meta.deletion_timestamp)} (grace {grace}s)")
        )
    if meta.owner_references:
        owners = [f"{ref.kind}/{ref.name}" for ref in meta.owner_references]
        lines.append(Line(0, "Controlled By", ", ".join(owners)))
    if meta.finalizers:
        lines.append(Line(0, "Finalizers", ", ".join(meta.finalizers)))
    return lines


def _conditions(lines: Lines, conditions: Sequence[Any], *, times: bool = False) -> None:
    """The conditions table; with times, a LastUpdateTime and a LastTransitionTime column
    (each only when some condition has it set, <none> in the rows that do not)."""
    if not conditions:
        lines.append(Line(0, "Conditions", NONE))
        return
    lines.append(Line(0, "Conditions"))
    fields = [
        (label, field)
        for label, field in (
            ("LastUpdateTime", "last_update_time"),
            ("LastTransitionTime", "last_transition_time"),
        )
        if times and any(c.HasField(field) for c in conditions)
    ]
    head = ["Type", "Status", *(label for label, _ in fields), "Reason", "Message"]
    rows = [head, ["-" * len(h) for h in head]]
    rows += [
        [
            c.type,
            c.status,
            *(_time_or_none(c, field) for _, field in fields),
            c.reason,
            event_view.one_line(c.message),
        ]
        for c in conditions
    ]
    lines.extend(Line(1, "", text, raw=True) for text in tables.render(rows).splitlines())


def _resources(values: Any) -> list[tuple[str, str]]:
    out = []
    if values.HasField("cpu_millis"):
        out.append(("cpu", format_cpu(values.cpu_millis)))
    if values.HasField("memory_bytes"):
        out.append(("memory", format_memory(values.memory_bytes)))
    if values.HasField("pids"):
        out.append(("pids", str(values.pids)))
    return out


def _port(port: Any) -> str:
    """``8080/TCP (http)``; a dynamic port: ``20001/TCP (http, dynamic)`` once the
    scheduler assigned it, ``<dynamic>/TCP (http)`` before."""
    protocol = port.protocol or "TCP"
    if port.port == 0:
        return f"<dynamic>/{protocol} ({port.name})"
    notes = [n for n in (port.name, "dynamic" if port.assigned else "") if n]
    return f"{port.port}/{protocol}" + (f" ({', '.join(notes)})" if notes else "")


def _probe(probe: Any) -> str | None:
    if probe.exec.command:
        action = f"exec [{' '.join(probe.exec.command)}]"
    elif probe.tcp_socket.port or probe.tcp_socket.port_name:
        tcp = probe.tcp_socket
        action = f"tcp-socket {tcp.host}:{tcp.port or tcp.port_name}"
    elif probe.http_get.port or probe.http_get.port_name:
        get = probe.http_get
        scheme = (get.scheme or "HTTP").lower()
        action = f"http-get {scheme}://{get.host}:{get.port or get.port_name}{get.path or '/'}"
    else:
        return None
    return (
        f"{action} delay={probe.initial_delay_seconds}s timeout={probe.timeout_seconds}s "
        f"period={probe.period_seconds}s #success={probe.success_threshold} "
        f"#failure={probe.failure_threshold}"
    )


def _state(lines: Lines, depth: int, label: str, state: Any) -> None:
    if state.HasField("running"):
        lines.append(Line(depth, label, "Running"))
        lines.append(Line(depth + 1, "Started", _time_or_none(state.running, "started_at")))
    elif state.HasField("terminated"):
        t = state.terminated
        lines.append(Line(depth, label, "Terminated"))
        lines.append(Line(depth + 1, "Reason", t.reason or NONE))
        if t.message:
            lines.append(Line(depth + 1, "Message", event_view.one_line(t.message)))
        lines.append(Line(depth + 1, "Exit Code", str(t.exit_code)))
        if t.signal:
            lines.append(Line(depth + 1, "Signal", str(t.signal)))
        lines.append(Line(depth + 1, "Started", _time_or_none(t, "started_at")))
        lines.append(Line(depth + 1, "Finished", _time_or_none(t, "finished_at")))
    elif state.HasField("waiting"):
        lines.append(Line(depth, label, "Waiting"))
        lines.append(Line(depth + 1, "Reason", state.waiting.reason or NONE))
        if state.waiting.message:
            lines.append(Line(depth + 1, "Message", event_view.one_line(state.waiting.message)))
    else:
        lines.append(Line(depth, label, NONE))


def _process(lines: Lines, process: Any, status: Any | None) -> None:
    lines.append(Line(1, process.name))
    _multi(lines, 2, "Command", [" ".join(process.command) or NONE])
    if process.args:
        lines.append(Line(2, "Args", " ".join(process.args)))
    if process.working_dir:
        lines.append(Line(2, "Working Dir", process.working_dir))
    if process.user:
        lines.append(Line(2, "User", process.user))
    if process.ports:
        lines.append(Line(2, "Ports", ", ".join(_port(p) for p in process.ports)))
    if status is not None:
        _state(lines, 2, "State", status.state)
        if status.HasField("last_state") and status.last_state.ListFields():
            _state(lines, 2, "Last State", status.last_state)
        lines.append(Line(2, "Ready", str(status.ready)))
        lines.append(Line(2, "Restart Count", str(status.restart_count)))
        if status.pid:
            lines.append(Line(2, "Pid", str(status.pid)))
    else:
        lines.append(Line(2, "State", NONE))
    for label, values in (
        ("Limits", process.resources.limits),
        ("Requests", process.resources.requests),
    ):
        amounts = _resources(values)
        if amounts:
            lines.append(Line(2, label))
            lines.extend(Line(3, name, amount) for name, amount in amounts)
    for label, probe in (
        ("Liveness", process.liveness_probe),
        ("Readiness", process.readiness_probe),
    ):
        text = _probe(probe)
        if text:
            lines.append(Line(2, label, text))
    if process.env_from:
        lines.append(Line(2, "Environment Variables from"))
        lines.extend(Line(3, *_env_from(e)) for e in process.env_from)
    if process.env:
        lines.append(Line(2, "Environment"))
        lines.extend(Line(3, env.name, _env_value(env)) for env in process.env)
    else:
        lines.append(Line(2, "Environment", NONE))
    if process.volume_mounts:
        lines.append(Line(2, "Mounts"))
        for m in process.volume_mounts:
            lines.append(Line(3, m.mount_path, f"from {m.name}" + (" (ro)" if m.read_only else "")))


def _optional(ref: Any) -> str:
    return " (optional)" if ref.HasField("optional") and ref.optional else ""


def _env_value(env: Any) -> str:
    """kubectl's wording for an environment variable that comes from a ConfigMap or Secret."""
    src = env.value_from
    if src.HasField("config_map_key_ref"):
        r = src.config_map_key_ref
        return f"<set to the key '{r.key}' of ConfigMap '{r.name}'>{_optional(r)}"
    if src.HasField("secret_key_ref"):
        r = src.secret_key_ref
        return f"<set to the key '{r.key}' in Secret '{r.name}'>{_optional(r)}"
    return str(env.value)


def _env_from(env_from: Any) -> tuple[str, str]:
    if env_from.HasField("config_map_ref"):
        ref, kind = env_from.config_map_ref, "ConfigMap"
    else:
        ref, kind = env_from.secret_ref, "Secret"
    prefix = f" with prefix '{env_from.prefix}'" if env_from.prefix else ""
    return ref.name, f"{kind}{prefix}{_optional(ref)}"


def _volumes(lines: Lines, volumes: Sequence[Any]) -> None:
    if not volumes:
        lines.append(Line(0, "Volumes", NONE))
        return
    lines.append(Line(0, "Volumes"))
    for vol in volumes:
        lines.append(Line(1, vol.name))
        if vol.HasField("config_map"):
            src, kind, name = vol.config_map, "ConfigMap", vol.config_map.name
        elif vol.HasField("secret"):
            src, kind, name = vol.secret, "Secret", vol.secret.secret_name
        else:
            lines.append(Line(2, "Type", NONE))
            continue
        lines.append(Line(2, "Type", f"{kind} (files from a {kind})"))
        lines.append(Line(2, "Name", name))
        if src.items:
            lines.append(Line(2, "Items", ", ".join(f"{i.key} -> {i.path}" for i in src.items)))
        if src.HasField("default_mode"):
            lines.append(Line(2, "Default Mode", f"{src.default_mode:04o}"))
        lines.append(Line(2, "Optional", str(src.HasField("optional") and src.optional).lower()))


def resolution(ref: ConfigRef, known: Any) -> str:
    """Whether one reference resolves, given what is known of its object (see Configs)."""
    optional = ", optional" if ref.optional else ""
    if isinstance(known, str):
        return f"unknown ({known})"
    if known is None:
        return f"missing{optional}"
    if ref.use == "env":
        keys = set(known.data) | set(getattr(known, "binary_data", {}))
        if ref.key not in keys:
            return f"no key {ref.key}{optional}"
    return "ok"


def _config_references(lines: Lines, spec: Any, configs: Configs) -> None:
    refs = config_refs(spec)
    if not refs:
        return
    rows = [["KIND", "NAME", "USE", "RESOLVED"]]
    for ref in refs:
        use = {"env": f"env key {ref.key}", "volume": f"volume {ref.volume}"}.get(ref.use, ref.use)
        known = configs.get((ref.kind, ref.name), "not looked up")
        rows.append([ref.kind, ref.name, use, resolution(ref, known)])
    lines.append(Line(0, "Config References"))
    lines.extend(Line(1, "", text, raw=True) for text in tables.render(rows).splitlines())


def _pod(pod: Any, now: float, configs: Configs | None = None) -> Lines:
    spec, status = pod.spec, pod.status
    lines = [
        Line(0, "Node", spec.node_name or NONE),
        Line(0, "Status", tables.pod_status(pod)),
    ]
    if status.reason:
        lines.append(Line(0, "Reason", status.reason))
    if status.message:
        lines.append(Line(0, "Message", event_view.one_line(status.message)))
    lines.append(Line(0, "Host IP", status.host_ip or NONE))
    lines.append(Line(0, "Start Time", _time_or_none(status, "start_time")))
    _dependencies(lines, spec.depends_on)
    lines.append(Line(0, "Processes"))
    statuses = {s.name: s for s in status.process_statuses}
    for process in spec.processes:
        _process(lines, process, statuses.get(process.name))
    _conditions(lines, status.conditions)
    lines.append(Line(0, "Restart Policy", spec.restart_policy or NONE))
    grace = spec.termination_grace_period_seconds
    lines.append(Line(0, "Termination Grace", f"{grace}s"))
    _multi(lines, 0, "Node-Selectors", _pairs(spec.node_selector))
    tolerations = [_toleration(t) for t in spec.tolerations] or [NONE]
    _multi(lines, 0, "Tolerations", tolerations)
    _volumes(lines, spec.volumes)
    if configs is not None:
        _config_references(lines, spec, configs)
    return lines


def _toleration(t: Any) -> str:
    text = t.key or "<all keys>"
    if t.operator == "Exists":
        text += " (exists)"
    elif t.value:
        text += f"={t.value}"
    text += f":{t.effect}" if t.effect else ""
    if t.HasField("toleration_seconds"):
        text += f" for {t.toleration_seconds}s"
    return text


def _replicas(obj: Any) -> int:
    return int(obj.spec.replicas) if obj.spec.HasField("replicas") else 1


def _deployment(dep: Any, now: float) -> Lines:
    spec, s = dep.spec, dep.status
    counts = (
        f"{_replicas(dep)} desired | {s.updated_replicas} updated | {s.replicas} total | "
        f"{s.available_replicas} available | {s.unavailable_replicas} unavailable"
    )
    lines = [
        Line(0, "Selector", tables.selector_text(dep)),
        Line(0, "Replicas", counts),
        Line(0, "Strategy", spec.strategy.type or NONE),
    ]
    if spec.strategy.type == "RollingUpdate":
        ru = spec.strategy.rolling_update
        lines.append(
            Line(
                0,
                "Rolling Update",
                f"{ru.max_unavailable} max unavailable, {ru.max_surge} max surge",
            )
        )
    lines.append(Line(0, "Min Ready Seconds", str(spec.min_ready_seconds)))
    deadline = (
        str(spec.progress_deadline_seconds)
        if spec.HasField("progress_deadline_seconds")
        else f"{DEFAULT_PROGRESS_DEADLINE_SECONDS} (default)"
    )
    lines.append(Line(0, "Progress Deadline Seconds", deadline))
    if spec.paused:
        lines.append(Line(0, "Paused", "true"))
    lines.append(
        Line(0, "Observed Generation", f"{s.observed_generation} of {dep.metadata.generation}")
    )
    _dependencies(lines, spec.depends_on)
    _template(lines, spec.template)
    _conditions(lines, s.conditions, times=True)
    return lines


def _replicaset(rs: Any, now: float) -> Lines:
    s = rs.status
    lines = [
        Line(0, "Selector", tables.selector_text(rs)),
        Line(0, "Replicas", f"{s.replicas} current / {_replicas(rs)} desired"),
        Line(0, "Pods Status", f"{s.ready_replicas} ready / {s.available_replicas} available"),
    ]
    _dependencies(lines, rs.spec.template.spec.depends_on)
    _template(lines, rs.spec.template)
    _conditions(lines, s.conditions)
    return lines


def _dependencies(lines: Lines, depends_on: Sequence[Any]) -> None:
    """What the pods wait for (spec.dependsOn), one per line; nothing when there is none."""
    if depends_on:
        _multi(lines, 0, "Depends On", [dependencies.describe(d) for d in depends_on])


def _template(lines: Lines, template: Any) -> None:
    lines.append(Line(0, "Pod Template"))
    _multi(lines, 1, "Labels", _pairs(template.metadata.labels))
    lines.append(Line(1, "Processes"))
    for process in template.spec.processes:
        lines.append(Line(2, process.name))
        lines.append(Line(3, "Command", " ".join([*process.command, *process.args]) or NONE))
        for label, values in (
            ("Limits", process.resources.limits),
            ("Requests", process.resources.requests),
        ):
            amounts = _resources(values)
            if amounts:
                lines.append(Line(3, label, ", ".join(f"{n}: {a}" for n, a in amounts)))


def _node(node: Any, now: float) -> Lines:
    spec, s = node.spec, node.status
    lines = [
        Line(0, "Status", tables.node_status(node)),
        Line(0, "Unschedulable", str(spec.unschedulable).lower()),
    ]
    taints = [
        f"{t.key}={t.value}:{t.effect}" if t.value else f"{t.key}:{t.effect}" for t in spec.taints
    ]
    _multi(lines, 0, "Taints", taints or [NONE])
    for label, values in (("Capacity", s.capacity), ("Allocatable", s.allocatable)):
        amounts = _resources(values)
        if amounts:
            lines.append(Line(0, label))
            lines.extend(Line(1, name, amount) for name, amount in amounts)
        else:
            lines.append(Line(0, label, NONE))
    if s.addresses:
        lines.append(Line(0, "Addresses"))
        lines.extend(Line(1, a.type, a.address) for a in s.addresses)
    else:
        lines.append(Line(0, "Addresses", NONE))
    info = s.node_info
    if info.ListFields():
        lines.append(Line(0, "System Info"))
        for label, value in (
            ("Machine ID", info.machine_id),
            ("Boot ID", info.boot_id),
            ("Kernel Version", info.kernel_version),
            ("OS Image", info.os_image),
            ("Architecture", info.architecture),
            ("Agent Version", info.agent_version),
            ("Cgroup Version", info.cgroup_version),
        ):
            if value:
                lines.append(Line(1, label, value))
    _conditions(lines, s.conditions)
    return lines


def _config_map(cm: Any, now: float) -> Lines:
    lines: Lines = []
    if cm.HasField("immutable"):
        lines.append(Line(0, "Immutable", str(cm.immutable).lower()))
    if cm.data:
        lines.append(Line(0, "Data"))
        for key in sorted(cm.data):
            lines.append(Line(1, key))
            value = cm.data[key].splitlines() or [""]
            lines.extend(Line(2, "", text.rstrip(), raw=True) for text in value)
    else:
        lines.append(Line(0, "Data", NONE))
    if cm.binary_data:
        lines.append(Line(0, "BinaryData"))
        lines.extend(Line(1, k, f"{len(cm.binary_data[k])} bytes") for k in sorted(cm.binary_data))
    return lines


def _secret(secret: Any, now: float) -> Lines:
    """Type and the size of each value; never a value (kubectl does the same)."""
    lines = [Line(0, "Type", secret.type or "Opaque")]
    if secret.HasField("immutable"):
        lines.append(Line(0, "Immutable", str(secret.immutable).lower()))
    if secret.data:
        lines.append(Line(0, "Data"))
        lines.extend(Line(1, k, f"{len(secret.data[k])} bytes") for k in sorted(secret.data))
    else:
        lines.append(Line(0, "Data", NONE))
    return lines


def _endpoint_pairs(ep: Any, port_name: str, ready: bool) -> list[str]:
    """host:port (pod) of every address of ep for the port named port_name."""
    out = []
    for subset in ep.subsets:
        for port in subset.ports:
            if port.name != port_name:
                continue
            addresses = subset.addresses if ready else subset.not_ready_addresses
            out += [f"{a.ip}:{port.port} ({a.target_ref.name or a.node_name})" for a in addresses]
    return out


def _service(svc: Any, now: float, endpoints: Any = None) -> Lines:
    lines = [Line(0, "Selector", tables.map_selector_text(svc.spec.selector))]
    if not svc.spec.selector:
        lines.append(Line(0, "", "(no selector: its Endpoints are written by hand)"))
    lines.append(Line(0, "Ports"))
    for port in svc.spec.ports:
        label = port.name or "<unnamed>"
        lines.append(Line(1, label, f"targetPort {port.target_port}/{port.protocol or 'TCP'}"))
        if endpoints is None:
            continue
        for title, ready in (("Endpoints", True), ("Not Ready", False)):
            pairs = _endpoint_pairs(endpoints, port.name, ready)
            if pairs or ready:
                _multi(lines, 2, title, pairs or [NONE])
    if endpoints is None:
        lines.append(Line(0, "Endpoints", "<no Endpoints object>"))
    _conditions(lines, svc.status.conditions)
    return lines


def _endpoints(ep: Any, now: float) -> Lines:
    if not ep.subsets:
        return [Line(0, "Subsets", NONE)]
    lines = [Line(0, "Subsets")]
    for subset in ep.subsets:
        ports = [f"{p.name or '<unnamed>'} {p.port}/{p.protocol or 'TCP'}" for p in subset.ports]
        lines.append(Line(1, "Ports", ", ".join(ports) or NONE))
        for title, addresses in (
            ("Addresses", subset.addresses),
            ("NotReadyAddresses", subset.not_ready_addresses),
        ):
            shown = [
                f"{a.ip} ({a.target_ref.kind}/{a.target_ref.name} on {a.node_name})"
                if a.target_ref.name
                else a.ip
                for a in addresses
            ]
            _multi(lines, 2, title, shown or [NONE])
    return lines


def _fields(lines: Lines, depth: int, value: Any) -> None:
    for key, item in value.items():
        if isinstance(item, dict) and item:
            lines.append(Line(depth, key))
            _fields(lines, depth + 1, item)
        elif isinstance(item, list) and item and isinstance(item[0], dict):
            lines.append(Line(depth, key))
            for i, element in enumerate(item):
                lines.append(Line(depth + 1, f"[{i}]"))
                _fields(lines, depth + 2, element)
        elif isinstance(item, list):
            lines.append(Line(depth, key, ", ".join(str(x) for x in item) or NONE))
        else:
            lines.append(Line(depth, key, str(item) if item != {} else NONE))


def _generic(obj: Any, now: float) -> Lines:
    """Spec and Status of any other kind, field by field (camelCase names as in manifests)."""
    lines: Lines = []
    for field, label in (("spec", "Spec"), ("status", "Status")):
        if field not in obj.DESCRIPTOR.fields_by_name:
            continue
        value = MessageToDict(getattr(obj, field))
        if value:
            lines.append(Line(0, label))
            _fields(lines, 1, value)
        else:
            lines.append(Line(0, label, NONE))
    return lines


_BY_KIND: dict[str, Callable[[Any, float], Lines]] = {
    "Pod": _pod,
    "Deployment": _deployment,
    "ReplicaSet": _replicaset,
    "Node": _node,
    "ConfigMap": _config_map,
    "Secret": _secret,
    "Endpoints": _endpoints,
}


def _events(events: Sequence[Any], now: float) -> Lines:
    if not events:
        return [Line(0, "Events", NONE)]
    rows = event_view.describe_rows(events, now=now)
    return [
        Line(0, "Events"),
        *(Line(1, "", t, raw=True) for t in tables.render(rows).splitlines()),
    ]


def render_lines(lines: Iterable[Line]) -> str:
    """Lines as text: two spaces per depth; values aligned per depth."""
    lines = list(lines)
    width: dict[int, int] = {}
    for line in lines:
        if line.value is not None and not line.raw:
            width[line.depth] = max(width.get(line.depth, 0), len(line.label) + 1)
    out = []
    for line in lines:
        indent = "  " * line.depth
        if line.raw:
            out.append(f"{indent}{line.value}".rstrip())
        elif line.value is None:
            out.append(f"{indent}{line.label}:")
        else:
            head = f"{line.label}:" if line.label else ""
            out.append(f"{indent}{head.ljust(width[line.depth] + 2)}{line.value}".rstrip())
    return "\n".join(out) + "\n"


def describe(
    obj: Any,
    events: Sequence[Any],
    *,
    now: float,
    configs: Configs | None = None,
    endpoints: Any = None,
) -> str:
    """The full describe text of obj followed by its events (only those about obj are shown).

    configs: for a pod, what is known of the ConfigMaps and Secrets it refers to
    (a "Config References" table says whether each resolves). endpoints: for a
    Service, its Endpoints object (None: there is none).
    """
    info = kind_of(obj)
    meta = obj.metadata
    namespace = meta.namespace if info.namespaced else ""
    mine = [e for e in events if event_view.is_about(e, info.kind, meta.name, namespace, meta.uid)]
    if info.kind == "Pod":
        body = _pod(obj, now, configs)
    elif info.kind == "Service":
        body = _service(obj, now, endpoints)
    else:
        body = _BY_KIND.get(info.kind, _generic)(obj, now)
    return render_lines([*_metadata(obj, now), *body, *_events(mine, now)])
