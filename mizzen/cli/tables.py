"""`mizzen get` tables: rows of text from object messages, and aligned columns — pure.

Columns follow kubectl: pods NAME READY STATUS RESTARTS NODE AGE; deployments
NAME READY UP-TO-DATE AVAILABLE AGE; nodes NAME STATUS AGE; replicasets,
daemonsets and jobs their usual counters; configmaps NAME DATA AGE and
secrets NAME TYPE DATA AGE (DATA counts keys, never shows values); services
NAME PORT(S) AGE (``name:targetPort/protocol``); endpoints NAME ENDPOINTS AGE
(the ready ``host:port`` pairs, three at most, then ``+ N more...``, as
kubectl); any other kind NAME AGE. ``wide``
adds a kind's extra columns after AGE (pods IP, workloads and services SELECTOR); a listing across
namespaces starts with NAMESPACE. Time is passed in, so tests need no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mizzen.api.kinds import KindInfo

Row = list[str]
Columns = tuple[list[str], Callable[[Any], Row]]

GAP = "   "


def render(rows: Sequence[Sequence[str]]) -> str:
    """Rows as left-aligned columns separated by three spaces; no trailing blanks."""
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append(GAP.join(cells).rstrip())
    return "\n".join(lines) + "\n"


def age(created_seconds: float, now: float) -> str:
    """kubectl's short age: 45s, 12m, 5h, 3d (and "<unknown>" when never set)."""
    if created_seconds <= 0:
        return "<unknown>"
    delta = max(int(now - created_seconds), 0)
    if delta < 120:
        return f"{delta}s"
    if delta < 120 * 60:
        return f"{delta // 60}m"
    if delta < 48 * 3600:
        return f"{delta // 3600}h"
    return f"{delta // 86400}d"


def _created(obj: Any) -> float:
    meta = obj.metadata
    if not meta.HasField("creation_timestamp"):
        return 0.0
    ts = meta.creation_timestamp
    return float(ts.seconds) + ts.nanos / 1e9


def pod_status(pod: Any) -> str:
    """What kubectl shows in STATUS: Terminating, a waiting or terminated reason, or the phase."""
    if pod.metadata.HasField("deletion_timestamp"):
        return "Terminating"
    for process in pod.status.process_statuses:
        state = process.state
        if state.HasField("waiting") and state.waiting.reason:
            return str(state.waiting.reason)
        if (
            state.HasField("terminated")
            and state.terminated.reason
            and pod.status.phase
            not in (
                "Succeeded",
                "Failed",
            )
        ):
            return str(state.terminated.reason)
    return str(pod.status.reason or pod.status.phase or "Pending")


def node_status(node: Any) -> str:
    ready = "Unknown"
    for condition in node.status.conditions:
        if condition.type == "Ready":
            ready = {"True": "Ready", "False": "NotReady"}.get(condition.status, "Unknown")
    return f"{ready},SchedulingDisabled" if node.spec.unschedulable else ready


def selector_text(obj: Any) -> str:
    labels = obj.spec.selector.match_labels
    parts = [f"{key}={labels[key]}" for key in sorted(labels)]
    for req in obj.spec.selector.match_expressions:
        values = ",".join(req.values)
        parts.append(f"{req.key} {req.operator.lower()} ({values})" if values else req.key)
    return ",".join(parts) or "<none>"


def service_ports(svc: Any) -> str:
    """A Service's ports: ``name:targetPort/protocol`` (``targetPort/protocol`` when unnamed)."""
    parts = [
        (f"{p.name}:" if p.name else "") + f"{p.target_port}/{p.protocol or 'TCP'}"
        for p in svc.spec.ports
    ]
    return ",".join(parts) or "<none>"


def map_selector_text(selector: Any) -> str:
    return ",".join(f"{key}={selector[key]}" for key in sorted(selector)) or "<none>"


ENDPOINTS_SHOWN = 3


def endpoints_text(ep: Any, shown: int = ENDPOINTS_SHOWN) -> str:
    """kubectl's ENDPOINTS column: ready host:port pairs, ``shown`` at most, then a count."""
    pairs = [
        f"{address.ip}:{port.port}"
        for subset in ep.subsets
        for port in subset.ports
        for address in subset.addresses
    ]
    if not pairs:
        return "<none>"
    text = ",".join(pairs[:shown])
    if len(pairs) > shown:
        text += f" + {len(pairs) - shown} more..."
    return text


def _replicas(obj: Any) -> int:
    return int(obj.spec.replicas) if obj.spec.HasField("replicas") else 1


def _pod(pod: Any) -> Row:
    statuses = pod.status.process_statuses
    ready = sum(1 for s in statuses if s.ready)
    total = len(pod.spec.processes)
    restarts = sum(s.restart_count for s in statuses)
    return [f"{ready}/{total}", pod_status(pod), str(restarts), pod.spec.node_name or "<none>"]


def _deployment(o: Any) -> Row:
    s = o.status
    ready = f"{s.ready_replicas}/{_replicas(o)}"
    return [ready, str(s.updated_replicas), str(s.available_replicas)]


def _replicaset(o: Any) -> Row:
    return [str(_replicas(o)), str(o.status.replicas), str(o.status.ready_replicas)]


def _daemonset(o: Any) -> Row:
    s = o.status
    counts = (
        s.desired_number_scheduled,
        s.current_number_scheduled,
        s.number_ready,
        s.updated_number_scheduled,
        s.number_available,
    )
    return [str(n) for n in counts]


def _job(o: Any) -> Row:
    completions = o.spec.completions if o.spec.HasField("completions") else 1
    return [f"{o.status.succeeded}/{completions}"]


_COLUMNS: dict[str, Columns] = {
    "Pod": (["READY", "STATUS", "RESTARTS", "NODE"], _pod),
    "Deployment": (["READY", "UP-TO-DATE", "AVAILABLE"], _deployment),
    "ReplicaSet": (["DESIRED", "CURRENT", "READY"], _replicaset),
    "DaemonSet": (["DESIRED", "CURRENT", "READY", "UP-TO-DATE", "AVAILABLE"], _daemonset),
    "Job": (["COMPLETIONS"], _job),
    "Node": (["STATUS"], lambda o: [node_status(o)]),
    "ConfigMap": (["DATA"], lambda o: [str(len(o.data) + len(o.binary_data))]),
    "Secret": (["TYPE", "DATA"], lambda o: [o.type or "Opaque", str(len(o.data))]),
    "Service": (["PORT(S)"], lambda o: [service_ports(o)]),
    "Endpoints": (["ENDPOINTS"], lambda o: [endpoints_text(o)]),
}
"""Per kind: the columns between NAME and AGE."""


def pod_ports_text(pod: Any) -> str:
    """The pod's host ports as kubectl writes a Service's: ``20001/TCP,9000/TCP``; a dynamic
    port the scheduler has not assigned yet is ``<dynamic>/TCP``."""
    ports = [
        f"{p.port or '<dynamic>'}/{p.protocol or 'TCP'}"
        for process in pod.spec.processes
        for p in process.ports
    ]
    return ",".join(ports) or "<none>"


_SELECTOR: Columns = (["SELECTOR"], lambda o: [selector_text(o)])
_WIDE: dict[str, Columns] = {
    "Pod": (["IP", "PORTS"], lambda o: [o.status.host_ip or "<none>", pod_ports_text(o)]),
    "Deployment": _SELECTOR,
    "ReplicaSet": _SELECTOR,
    "DaemonSet": _SELECTOR,
    "Job": _SELECTOR,
    "Service": (["SELECTOR"], lambda o: [map_selector_text(o.spec.selector)]),
}
"""Per kind: the columns -o wide adds after AGE."""

_NONE: Columns = ([], lambda o: [])


def table(
    info: KindInfo,
    objects: Sequence[Any],
    *,
    now: float,
    wide: bool = False,
    with_namespace: bool = False,
) -> list[Row]:
    """Header row and one row per object (NAMESPACE first when with_namespace)."""
    heads, cells = _COLUMNS.get(info.kind, _NONE)
    extra_heads, extra_cells = _WIDE.get(info.kind, _NONE) if wide else _NONE
    first = ["NAMESPACE"] if with_namespace else []
    rows = [[*first, "NAME", *heads, "AGE", *extra_heads]]
    for obj in objects:
        ns = [obj.metadata.namespace] if with_namespace else []
        created = age(_created(obj), now)
        rows.append([*ns, obj.metadata.name, *cells(obj), created, *extra_cells(obj)])
    return rows
