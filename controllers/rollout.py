"""Deployment rollout math: template hashes, revisions, surge and unavailability budgets.

Pure functions of the Deployment and its ReplicaSets (no client, no clock);
``controllers.deployment`` carries out what they decide. The algorithms are
Kubernetes': see that module's doc for the rollout rules they implement.
"""

from __future__ import annotations

from controllers.podutil import creation_seconds
from mizzen.api import quantity
from protos import objects_pb2 as pb

HASH_LABEL = "pod-template-hash"
REVISION_ANNOTATION = "deployment.mizzen.io/revision"
RESTARTED_AT = "mizzen.io/restartedAt"
"""Pod template annotation written by ``mizzen rollout restart`` (RFC 3339)."""
_HASH_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def template_hash(template: pb.PodTemplateSpec, collision_count: int = 0) -> str:
    """A stable short digest of the template (without its hash label and dependsOn) and
    collision count."""
    t = _without_hash(template)
    data = t.SerializeToString(deterministic=True)
    if collision_count:
        data += collision_count.to_bytes(4, "big")
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    out = []
    while True:
        h, digit = divmod(h, len(_HASH_ALPHABET))
        out.append(_HASH_ALPHABET[digit])
        if h == 0:
            return "".join(out)


def _without_hash(template: pb.PodTemplateSpec) -> pb.PodTemplateSpec:
    t = pb.PodTemplateSpec()
    t.CopyFrom(template)
    t.metadata.labels.pop(HASH_LABEL, None)
    t.spec.ClearField("depends_on")
    return t


def template_equal(a: pb.PodTemplateSpec, b: pb.PodTemplateSpec) -> bool:
    """Equal ignoring the pod-template-hash label and dependsOn (how the new ReplicaSet is
    recognised).

    A ReplicaSet's template carries its Deployment's spec.dependsOn, which is
    kept equal in place (``controllers.deployment``): a change of dependencies
    gates the start of new pods and is no new revision.
    """
    return _without_hash(a) == _without_hash(b)


def restarted_only(new: pb.PodTemplateSpec, old: pb.PodTemplateSpec) -> str:
    """new's restartedAt annotation when that is all new changes from old, else ""."""
    stamp = new.metadata.annotations.get(RESTARTED_AT, "")
    if not stamp or stamp == old.metadata.annotations.get(RESTARTED_AT, ""):
        return ""
    a, b = pb.PodTemplateSpec(), pb.PodTemplateSpec()
    a.CopyFrom(new)
    b.CopyFrom(old)
    a.metadata.annotations.pop(RESTARTED_AT, None)
    b.metadata.annotations.pop(RESTARTED_AT, None)
    return stamp if template_equal(a, b) else ""


def revision_of(rs: pb.ReplicaSet) -> int:
    value = rs.metadata.annotations.get(REVISION_ANNOTATION, "")
    return int(value) if value.isdigit() else 0


def max_surge_unavailable(d: pb.Deployment) -> tuple[int, int]:
    """(max surge, max unavailable) in pods: surge rounds up, unavailable down; never both 0."""
    if d.spec.strategy.type == "Recreate":
        return 0, d.spec.replicas
    ru = d.spec.strategy.rolling_update
    replicas = d.spec.replicas
    surge = quantity.resolve_int_or_percent(ru.max_surge or "25%", replicas, round_up=True)
    unavailable = quantity.resolve_int_or_percent(
        ru.max_unavailable or "25%", replicas, round_up=False
    )
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, min(unavailable, replicas)


def new_replicas_for_rollout(
    replicas: int, max_surge: int, new_current: int, old: list[pb.ReplicaSet]
) -> int:
    """The new RS's replicas: up toward replicas while the total stays ≤ replicas + surge."""
    if new_current >= replicas:
        return replicas
    total = new_current + sum(rs.spec.replicas for rs in old)
    room = replicas + max_surge - total
    if room <= 0:
        return new_current
    return new_current + min(room, replicas - new_current)


def _available(rs: pb.ReplicaSet) -> int:
    return min(rs.status.available_replicas, rs.spec.replicas)


def old_scale_downs(
    replicas: int,
    max_unavailable: int,
    new: pb.ReplicaSet | None,
    old: list[pb.ReplicaSet],
) -> list[tuple[pb.ReplicaSet, int]]:
    """(old RS, its new replicas) to keep ≥ replicas - max_unavailable pods available.

    Unhealthy replicas (spec - available) of old RSes go first, bounded by how
    far the total may shrink; then available ones, oldest RS first, while
    enough stay available.
    """
    active_old = sorted((rs for rs in old if rs.spec.replicas > 0), key=_age_key)
    if not active_old:
        return []
    min_available = replicas - max_unavailable
    new_spec = new.spec.replicas if new is not None else 0
    new_unavailable = new_spec - (_available(new) if new is not None else 0)
    total = new_spec + sum(rs.spec.replicas for rs in active_old)
    budget = total - min_available - new_unavailable
    if budget <= 0:
        return []
    target = {rs.metadata.name: rs.spec.replicas for rs in active_old}
    for rs in active_old:
        if budget <= 0:
            break
        unhealthy = rs.spec.replicas - _available(rs)
        cut = min(unhealthy, budget)
        if cut > 0:
            target[rs.metadata.name] -= cut
            budget -= cut
    available = (_available(new) if new is not None else 0) + sum(
        min(_available(rs), target[rs.metadata.name]) for rs in active_old
    )
    spare = available - min_available
    for rs in active_old:
        if spare <= 0:
            break
        cut = min(target[rs.metadata.name], spare)
        target[rs.metadata.name] -= cut
        spare -= cut
    return [
        (rs, target[rs.metadata.name])
        for rs in active_old
        if target[rs.metadata.name] != rs.spec.replicas
    ]


def _age_key(rs: pb.ReplicaSet) -> tuple[float, str]:
    return (creation_seconds(rs), rs.metadata.name)
