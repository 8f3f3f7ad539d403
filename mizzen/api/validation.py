"""Validation of objects: every problem, each with the manifest path to the field.

validate(obj) checks one (already defaulted) object; validate_update(old, new)
adds the rules about fields that may not change. Both return a list of
FieldError, empty when the object is valid; the server turns a non-empty list
into INVALID_ARGUMENT naming every path. Paths use the manifest (JSON)
spelling, e.g. ``spec.processes[1].resources.limits.memory`` or
``metadata.labels[app]``.

One file because it is the one place the rules of a valid object are written,
per kind; the server, ``manifest`` and the controllers' fake all call
``validate`` and ``validate_update``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf.message import Message

from mizzen.api import kinds, names, quantity, selectors
from mizzen.api.dependencies import forbid_template_dependencies, validate_dependencies
from mizzen.api.field_errors import FieldError, FieldErrors
from mizzen.api.pod_validation import (
    RESOURCES,
    RESTART_POLICIES,
    TAINT_EFFECTS,
    is_dynamic,
    validate_pod_spec,
    validate_pod_status,
)
from mizzen.api.service_validation import validate_endpoints, validate_service
from mizzen.echo import echo
from protos import objects_pb2 as pb

MAX_ANNOTATIONS_BYTES = 256 * 1024
# Kubernetes' recorders truncate an Event's message to 1 KiB and events.k8s.io
# refuses a note over 1 KiB; the server allows 4 KiB for messages written by
# other clients. A reason is a short CamelCase word (events.k8s.io: 128).
MAX_EVENT_MESSAGE_BYTES = 4 * 1024
MAX_EVENT_REASON_BYTES = 128
NODE_ADDRESS_TYPES = ("Hostname", "InternalIP", "ExternalIP", "AgentGRPC")
SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
EVENT_TYPES = ("Normal", "Warning")
# Keys and values of a ConfigMap's data and binaryData, or a Secret's data, together
# (Kubernetes: 1 MiB); the encoded object is capped too (kinds.CONFIG_MAX_BYTES).
MAX_CONFIG_DATA_BYTES = 1024 * 1024
MAX_SECRET_TYPE_BYTES = 253


def validate(obj: Message) -> list[FieldError]:
    """Every problem with obj, a message of a registered kind."""
    info = kinds.kind_of(obj)
    errs = FieldErrors()
    o: Any = obj
    _metadata(o.metadata, info, errs)
    match obj:
        case pb.Pod():
            validate_pod_spec(obj.spec, "spec", errs)
            validate_pod_status(obj.status, errs)
        case pb.ReplicaSet():
            _replicas(obj.spec, errs)
            errs.at_least("spec.minReadySeconds", obj.spec.min_ready_seconds, 0)
            _selector_and_template(obj.spec.selector, obj.spec.template, ("Always",), errs)
            errs.conditions(obj.status.conditions, "status.conditions")
        case pb.Deployment():
            _deployment(obj.spec, errs)
            errs.conditions(obj.status.conditions, "status.conditions")
        case pb.DaemonSet():
            _daemonset(obj.spec, errs)
            errs.conditions(obj.status.conditions, "status.conditions")
        case pb.Job():
            _job(obj.spec, errs)
            errs.conditions(obj.status.conditions, "status.conditions")
        case pb.Node():
            _node(obj, errs)
        case pb.Event():
            _event(obj.spec, errs)
        case pb.Lease():
            if obj.spec.HasField("lease_duration_seconds"):
                errs.at_least("spec.leaseDurationSeconds", obj.spec.lease_duration_seconds, 1)
            errs.at_least("spec.leaseTransitions", obj.spec.lease_transitions, 0)
        case pb.ConfigMap():
            _config_map(obj, errs)
        case pb.Secret():
            _secret(obj, errs)
        case pb.Service():
            validate_service(obj, errs)
        case pb.Endpoints():
            validate_endpoints(obj, errs)
        case _:  # pragma: no cover - kind_of accepted it, so it is one of the above
            pass
    if info.max_bytes:
        size = obj.ByteSize()
        if size > info.max_bytes:
            errs.add(
                "object",
                f"{info.kind} objects must be at most {info.max_bytes} bytes encoded (is {size})",
            )
    return errs.items


# ---------------------------------------------------------------- metadata


def _metadata(meta: pb.ObjectMeta, info: kinds.KindInfo, errs: FieldErrors) -> None:
    if errs.required("metadata.name", meta.name):
        rule = names.dns1123_label if info.name_rule == "label" else names.dns1123_subdomain
        errs.each("metadata.name", rule(meta.name))
    if info.namespaced:
        if errs.required("metadata.namespace", meta.namespace):
            errs.each("metadata.namespace", names.dns1123_label(meta.namespace))
    elif meta.namespace:
        errs.add("metadata.namespace", f"not allowed: {info.kind} is cluster-scoped")
    errs.labels(meta.labels, "metadata.labels")
    size = 0
    for key, value in sorted(meta.annotations.items()):
        errs.each(f"metadata.annotations[{echo(key)}]", names.qualified_name(key))
        size += len(key.encode()) + len(value.encode())
    if size > MAX_ANNOTATIONS_BYTES:
        errs.add("metadata.annotations", f"must have at most {MAX_ANNOTATIONS_BYTES} bytes")
    controllers = 0
    for i, ref in enumerate(meta.owner_references):
        path = f"metadata.ownerReferences[{i}]"
        for field, json in (
            ("api_version", "apiVersion"),
            ("kind", "kind"),
            ("name", "name"),
            ("uid", "uid"),
        ):
            errs.required(f"{path}.{json}", getattr(ref, field))
        controllers += ref.controller
    if controllers > 1:
        errs.add("metadata.ownerReferences", "only one reference can have controller set to true")
    for i, finalizer in enumerate(meta.finalizers):
        errs.each(f"metadata.finalizers[{i}]", names.qualified_name(finalizer))
    if meta.HasField("deletion_grace_period_seconds"):
        errs.at_least("metadata.deletionGracePeriodSeconds", meta.deletion_grace_period_seconds, 0)


# ---------------------------------------------------------------- workloads


def _selector(selector: pb.LabelSelector, path: str, errs: FieldErrors) -> bool:
    """Check a LabelSelector's syntax; True when it is well-formed."""
    before = len(errs.items)
    errs.labels(selector.match_labels, f"{path}.matchLabels")
    for i, expr in enumerate(selector.match_expressions):
        epath = f"{path}.matchExpressions[{i}]"
        if errs.required(f"{epath}.key", expr.key):
            errs.each(f"{epath}.key", names.qualified_name(expr.key))
        errs.enum(f"{epath}.operator", expr.operator, SELECTOR_OPERATORS)
        if expr.operator in ("In", "NotIn"):
            if not expr.values:
                errs.add(f"{epath}.values", f"must be specified when operator is {expr.operator}")
            for j, value in enumerate(expr.values):
                errs.each(f"{epath}.values[{j}]", names.label_value(value))
        elif expr.operator in ("Exists", "DoesNotExist") and expr.values:
            errs.add(f"{epath}.values", f"may not be specified when operator is {expr.operator}")
    return len(errs.items) == before


def _selector_and_template(
    selector: pb.LabelSelector,
    template: pb.PodTemplateSpec,
    restart_policies: Sequence[str],
    errs: FieldErrors,
) -> None:
    empty = not selector.match_labels and not selector.match_expressions
    if empty:
        errs.add("spec.selector", "required: a non-empty selector")
    well_formed = _selector(selector, "spec.selector", errs)
    errs.labels(template.metadata.labels, "spec.template.metadata.labels")
    if not empty and well_formed:
        matcher = selectors.from_label_selector(selector)
        if not matcher.matches(template.metadata.labels):
            errs.add("spec.template.metadata.labels", "`selector` does not match template `labels`")
    validate_pod_spec(template.spec, "spec.template.spec", errs)
    policy = template.spec.restart_policy
    if policy in RESTART_POLICIES and policy not in restart_policies:
        errs.enum("spec.template.spec.restartPolicy", policy, restart_policies)


def _replicas(spec: pb.ReplicaSetSpec | pb.DeploymentSpec, errs: FieldErrors) -> None:
    if spec.HasField("replicas"):
        errs.at_least("spec.replicas", spec.replicas, 0)


def _surge_unavailable(max_surge: str, max_unavailable: str, path: str, errs: FieldErrors) -> None:
    parsed: dict[str, tuple[int, bool]] = {}
    for name, value in (("maxSurge", max_surge), ("maxUnavailable", max_unavailable)):
        if not value:
            continue
        try:
            parsed[name] = quantity.parse_int_or_percent(value)
        except quantity.QuantityError:
            errs.add(f"{path}.{name}", "must be a non-negative integer or percentage (e.g. '25%')")
    unavailable = parsed.get("maxUnavailable")
    if unavailable is not None and unavailable[1] and unavailable[0] > 100:
        errs.add(f"{path}.maxUnavailable", "must not be greater than 100%")
    surge = parsed.get("maxSurge", (0, False))
    if unavailable is not None and unavailable[0] == 0 and surge[0] == 0:
        errs.add(f"{path}.maxUnavailable", "may not be 0 when maxSurge is 0")


def _deployment(spec: pb.DeploymentSpec, errs: FieldErrors) -> None:
    _replicas(spec, errs)
    errs.at_least("spec.minReadySeconds", spec.min_ready_seconds, 0)
    if spec.HasField("revision_history_limit"):
        errs.at_least("spec.revisionHistoryLimit", spec.revision_history_limit, 0)
    if spec.HasField("progress_deadline_seconds"):
        deadline = spec.progress_deadline_seconds
        if deadline < 1:
            errs.add("spec.progressDeadlineSeconds", "must be greater than or equal to 1")
        elif deadline <= spec.min_ready_seconds:
            errs.add("spec.progressDeadlineSeconds", "must be greater than minReadySeconds")
    strategy = spec.strategy
    errs.enum("spec.strategy.type", strategy.type, ("RollingUpdate", "Recreate"))
    rolling = strategy.rolling_update
    if strategy.type == "Recreate" and (rolling.max_surge or rolling.max_unavailable):
        errs.add("spec.strategy.rollingUpdate", "may not be specified when type is Recreate")
    elif strategy.type == "RollingUpdate":
        _surge_unavailable(
            rolling.max_surge, rolling.max_unavailable, "spec.strategy.rollingUpdate", errs
        )
    _selector_and_template(spec.selector, spec.template, ("Always",), errs)
    _workload_dependencies("Deployment", spec, errs)


def _workload_dependencies(
    kind: str, spec: pb.DeploymentSpec | pb.DaemonSetSpec | pb.JobSpec, errs: FieldErrors
) -> None:
    validate_dependencies(spec.depends_on, "spec.dependsOn", errs)
    forbid_template_dependencies(kind, spec.template, errs)


def _daemonset(spec: pb.DaemonSetSpec, errs: FieldErrors) -> None:
    errs.at_least("spec.minReadySeconds", spec.min_ready_seconds, 0)
    if spec.HasField("revision_history_limit"):
        errs.at_least("spec.revisionHistoryLimit", spec.revision_history_limit, 0)
    strategy = spec.update_strategy
    errs.enum("spec.updateStrategy.type", strategy.type, ("RollingUpdate", "OnDelete"))
    rolling = strategy.rolling_update
    if strategy.type == "OnDelete" and (rolling.max_surge or rolling.max_unavailable):
        errs.add("spec.updateStrategy.rollingUpdate", "may not be specified when type is OnDelete")
    elif strategy.type == "RollingUpdate":
        _surge_unavailable(
            rolling.max_surge, rolling.max_unavailable, "spec.updateStrategy.rollingUpdate", errs
        )
    _selector_and_template(spec.selector, spec.template, ("Always",), errs)
    _workload_dependencies("DaemonSet", spec, errs)
    for i, process in enumerate(spec.template.spec.processes):
        for j, port in enumerate(process.ports):
            if is_dynamic(port):
                errs.add(
                    f"spec.template.spec.processes[{i}].ports[{j}].port",
                    "a DaemonSet's pods are bound to their nodes by the DaemonSet controller, "
                    "not the scheduler, so a dynamic port cannot be assigned: give the port a "
                    "number (one pod per node, so a fixed port never collides with a sibling)",
                )


def _job(spec: pb.JobSpec, errs: FieldErrors) -> None:
    for field, json in (
        ("parallelism", "parallelism"),
        ("completions", "completions"),
        ("backoff_limit", "backoffLimit"),
        ("ttl_seconds_after_finished", "ttlSecondsAfterFinished"),
    ):
        if spec.HasField(field):
            errs.at_least(f"spec.{json}", getattr(spec, field), 0)
    if spec.HasField("active_deadline_seconds"):
        errs.at_least("spec.activeDeadlineSeconds", spec.active_deadline_seconds, 1)
    _selector_and_template(spec.selector, spec.template, ("OnFailure", "Never"), errs)
    _workload_dependencies("Job", spec, errs)


# ---------------------------------------------------------------- nodes, events


def _node(node: pb.Node, errs: FieldErrors) -> None:
    seen: set[tuple[str, str]] = set()
    for i, taint in enumerate(node.spec.taints):
        path = f"spec.taints[{i}]"
        if errs.required(f"{path}.key", taint.key):
            errs.each(f"{path}.key", names.qualified_name(taint.key))
        errs.each(f"{path}.value", names.label_value(taint.value))
        errs.enum(f"{path}.effect", taint.effect, TAINT_EFFECTS)
        if (taint.key, taint.effect) in seen:
            errs.add(path, f'duplicate taint "{echo(taint.key)}:{echo(taint.effect)}"')
        seen.add((taint.key, taint.effect))
    for part in ("capacity", "allocatable"):
        values: pb.ResourceList = getattr(node.status, part)
        for field, name in RESOURCES:
            if values.HasField(field):
                errs.at_least(f"status.{part}.{name}", getattr(values, field), 0)
    for i, address in enumerate(node.status.addresses):
        errs.enum(f"status.addresses[{i}].type", address.type, NODE_ADDRESS_TYPES)
        errs.required(f"status.addresses[{i}].address", address.address)
    errs.conditions(node.status.conditions, "status.conditions")


def _event(spec: pb.EventSpec, errs: FieldErrors) -> None:
    errs.required("spec.involvedObject.kind", spec.involved_object.kind)
    errs.required("spec.involvedObject.name", spec.involved_object.name)
    errs.required("spec.reason", spec.reason)
    errs.at_most_bytes("spec.reason", spec.reason, MAX_EVENT_REASON_BYTES)
    errs.at_most_bytes("spec.message", spec.message, MAX_EVENT_MESSAGE_BYTES)
    errs.enum("spec.type", spec.type, EVENT_TYPES)
    errs.at_least("spec.count", spec.count, 0)


# ---------------------------------------------------------------- config
# Errors about a ConfigMap's or Secret's data name keys, never values.


def _config_keys(keys: Any, path: str, errs: FieldErrors) -> None:
    for key in sorted(keys):
        errs.each(f"{path}[{echo(key)}]", names.config_key(key))


def _data_size(path: str, sizes: Any, errs: FieldErrors) -> None:
    total = sum(sizes)
    if total > MAX_CONFIG_DATA_BYTES:
        errs.add(
            path,
            f"too long: must have at most {MAX_CONFIG_DATA_BYTES} bytes of keys and values "
            f"(has {total})",
        )


def _config_map(cm: pb.ConfigMap, errs: FieldErrors) -> None:
    _config_keys(cm.data, "data", errs)
    _config_keys(cm.binary_data, "binaryData", errs)
    for key in sorted(set(cm.data) & set(cm.binary_data)):
        errs.add(f"binaryData[{echo(key)}]", f"duplicate of key data[{echo(key)}]")
    sizes = [len(k.encode()) + len(v.encode()) for k, v in cm.data.items()]
    sizes += [len(k.encode()) + len(v) for k, v in cm.binary_data.items()]
    _data_size("data", sizes, errs)


def _secret(secret: pb.Secret, errs: FieldErrors) -> None:
    _config_keys(secret.data, "data", errs)
    # merged into data by defaulting, so only set here when defaults were not applied
    _config_keys(secret.string_data, "stringData", errs)
    if errs.required("type", secret.type):
        errs.at_most_bytes("type", secret.type, MAX_SECRET_TYPE_BYTES)
    sizes = [len(k.encode()) + len(v) for k, v in secret.data.items()]
    sizes += [len(k.encode()) + len(v.encode()) for k, v in secret.string_data.items()]
    _data_size("data", sizes, errs)


def _config_update(old: Any, new: Any, errs: FieldErrors) -> None:
    """Once ``immutable`` is true the data (and immutable) may not change; a Secret's
    type never may."""
    if isinstance(new, pb.Secret) and old.type != new.type:
        errs.add("type", "field is immutable")
    if not old.immutable:
        return
    why = "field is immutable when `immutable` is set"
    data_fields = [("data", "data")]
    data_fields += [("binary_data", "binaryData")] if isinstance(new, pb.ConfigMap) else []
    for field, json in data_fields:
        if dict(getattr(old, field)) != dict(getattr(new, field)):
            errs.add(json, why)
    if not new.immutable:
        errs.add("immutable", why)


# ---------------------------------------------------------------- updates

_POD_MUTABLE = ("node_name", "tolerations")


def validate_update(old: Message, new: Message) -> list[FieldError]:
    """validate(new) plus the rules on what an update may change.

    Immutable: metadata name, namespace, uid and creationTimestamp; a pod's
    spec except nodeName (may be set once, when empty: binding, which also
    fills every dynamic port: its number and ``assigned``) and tolerations
    (may only be added); the selector of Deployment, ReplicaSet,
    DaemonSet and Job; a Job's template and completions; a Secret's type; the
    data of a ConfigMap or Secret once ``immutable`` is true (which then stays).
    """
    if type(old) is not type(new):
        raise TypeError(f"cannot update a {type(old).__name__} with a {type(new).__name__}")
    errs = FieldErrors()
    errs.items = validate(new)
    o: Any = old
    n: Any = new
    for field, json in (
        ("name", "name"),
        ("namespace", "namespace"),
        ("uid", "uid"),
        ("creation_timestamp", "creationTimestamp"),
    ):
        if getattr(o.metadata, field) != getattr(n.metadata, field):
            errs.add(f"metadata.{json}", "field is immutable")
    match new:
        case pb.Pod():
            _pod_update(o.spec, new.spec, errs)
        case pb.Deployment() | pb.ReplicaSet() | pb.DaemonSet():
            if o.spec.selector != n.spec.selector:
                errs.add("spec.selector", "field is immutable")
        case pb.Job():
            for field, json in (
                ("selector", "selector"),
                ("template", "template"),
                ("completions", "completions"),
            ):
                if getattr(o.spec, field) != getattr(new.spec, field):
                    errs.add(f"spec.{json}", "field is immutable")
        case pb.ConfigMap() | pb.Secret():
            _config_update(o, new, errs)
        case _:
            pass
    return errs.items


def _pod_update(old: pb.PodSpec, new: pb.PodSpec, errs: FieldErrors) -> None:
    if old.node_name and new.node_name != old.node_name:
        errs.add("spec.nodeName", "field is immutable once set")
    old_tolerations = list(old.tolerations)
    if list(new.tolerations)[: len(old_tolerations)] != old_tolerations:
        errs.add("spec.tolerations", "existing tolerations may not be changed; only additions")
    if not old.node_name and new.node_name:
        new = _without_assignments(old, new)
    old_fields = {f.name: v for f, v in old.ListFields()}
    new_fields = {f.name: v for f, v in new.ListFields()}
    for field in pb.PodSpec.DESCRIPTOR.fields:
        if field.name in _POD_MUTABLE:
            continue
        if old_fields.get(field.name) != new_fields.get(field.name):
            errs.add(
                f"spec.{field.json_name}",
                "field is immutable: a pod's spec may change only nodeName (once, with "
                "the dynamic ports the binding assigns) and tolerations (additions)",
            )


def _without_assignments(old: pb.PodSpec, new: pb.PodSpec) -> pb.PodSpec:
    """new with the ports the binding assigned put back as they were in old (dynamic):
    what remains to compare is what the binding may not change."""
    out = pb.PodSpec()
    out.CopyFrom(new)
    for old_process, process in zip(old.processes, out.processes, strict=False):
        for old_port, port in zip(old_process.ports, process.ports, strict=False):
            if is_dynamic(old_port) and port.assigned and port.port > 0:
                port.port, port.assigned = 0, False
    return out


__all__ = ["FieldError", "validate", "validate_update"]
