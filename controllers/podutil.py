"""Small pure helpers the workload controllers share: pod state, timestamps, conditions.

Timestamps are protobuf ``Timestamp`` fields read and written as Unix
seconds (floats), the unit of every controller clock. Conditions are the
repeated ``Condition`` fields of statuses; their ``last_transition_time``
moves only when their status changes, as in Kubernetes.
"""

from __future__ import annotations

from typing import Any

from controllers.base import is_terminating, owner_reference
from mizzen.api.pods import has_ended
from protos import objects_pb2 as pb

# ------------------------------------------------------------------ timestamps


def seconds_of(ts: Any) -> float:
    """A protobuf Timestamp as Unix seconds (0.0 when unset)."""
    return float(ts.ToNanoseconds()) / 1e9


def set_timestamp(ts: Any, seconds: float) -> None:
    """Set a protobuf Timestamp to Unix seconds."""
    ts.FromNanoseconds(int(seconds * 1e9))


def creation_seconds(obj: Any) -> float:
    """When obj was created, in Unix seconds."""
    return seconds_of(obj.metadata.creation_timestamp)


# ------------------------------------------------------------------ conditions


def mark_condition(
    conditions: Any, type_: str, status: str, reason: str, message: str, now: float
) -> bool:
    """Set condition type_ in a repeated Condition field; whether anything changed.

    The transition time moves (to now) only when the status changes or the
    condition is new.
    """
    for cond in conditions:
        if cond.type == type_:
            changed = (cond.status, cond.reason, cond.message) != (status, reason, message)
            if cond.status != status:
                cond.status = status
                set_timestamp(cond.last_transition_time, now)
            cond.reason, cond.message = reason, message
            return changed
    cond = conditions.add(type=type_, status=status, reason=reason, message=message)
    set_timestamp(cond.last_transition_time, now)
    return True


# ------------------------------------------------------------------ pods


def is_active(pod: pb.Pod) -> bool:
    """Counts as a replica: not terminating and not finished."""
    return not is_terminating(pod) and not has_ended(pod)


def ready_condition(pod: pb.Pod) -> pb.Condition | None:
    for cond in pod.status.conditions:
        if cond.type == "Ready":
            return cond
    return None


def is_ready(pod: pb.Pod) -> bool:
    cond = ready_condition(pod)
    return cond is not None and cond.status == "True"


def available_in(pod: pb.Pod, min_ready_seconds: int, now: float) -> float | None:
    """0 when the pod is available now, seconds until it will be if ready, None if not ready."""
    cond = ready_condition(pod)
    if cond is None or cond.status != "True":
        return None
    if min_ready_seconds <= 0:
        return 0.0
    since = seconds_of(cond.last_transition_time)
    return max(since + min_ready_seconds - now, 0.0)


def pod_from_template(owner: Any, template: pb.PodTemplateSpec) -> pb.Pod:
    """A new pod of owner (a ReplicaSet, Job, ...): template labels, spec and owner reference."""
    pod = pb.Pod()
    meta = pod.metadata
    meta.namespace = owner.metadata.namespace
    meta.generate_name = f"{owner.metadata.name}-"
    meta.labels.update(template.metadata.labels)
    meta.annotations.update(template.metadata.annotations)
    meta.finalizers.extend(template.metadata.finalizers)
    meta.owner_references.append(owner_reference(owner))
    pod.spec.CopyFrom(template.spec)
    return pod
