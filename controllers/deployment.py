"""Deployment controller: one ReplicaSet per pod template, rolled out by strategy.

Each distinct template gets a ReplicaSet named ``<deployment>-<hash>``, where
the hash (``template_hash``) is a stable digest of the template (plus
``status.collision_count``); it is added as label ``pod-template-hash`` to the
RS's selector, its template and so its pods, so ReplicaSets never fight over
pods. The RS whose template equals the Deployment's (ignoring that label) is
the *new* one; every other owned RS is old.

RollingUpdate (Kubernetes' algorithm): the new RS is scaled up while the total
of all RS replicas stays ≤ replicas + maxSurge; old RSes are scaled down —
unhealthy replicas first — while the available pods stay ≥ replicas -
maxUnavailable (surge rounds up, unavailable down; both 0 → unavailable 1).
An old RS's available count is taken as min(status.available, spec.replicas):
right after it was scaled down its status may still count pods it is
deleting, and its deletion order removes unavailable pods first. Recreate:
old RSes go to 0, and the new RS is scaled up only once no old pod is left
running. Paused: nothing is rolled out (no new RS); a lone RS still follows
``replicas``.

Revisions: the new RS carries annotation ``deployment.mizzen.io/revision`` =
1 + the highest revision of the others (also when an old RS becomes new
again, i.e. a rollback), mirrored on the Deployment. Old RSes at 0 replicas
beyond ``revision_history_limit`` are deleted, oldest revision first. Status
(replicas, updated, ready, available, unavailable, conditions Available and
Progressing, observed_generation) is written only when it changed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from controllers.base import (
    Controller,
    ControllerContext,
    Result,
    TemporaryError,
    controller_ref,
    is_terminating,
    owner_reference,
    split_key,
)
from mizzen.api import quantity, selectors
from mizzen.client.errors import AlreadyExistsError, ConflictError, NotFoundError
from protos import objects_pb2 as pb

if TYPE_CHECKING:
    from controllers.manager import ManagerConfig

log = structlog.get_logger(__name__)

HASH_LABEL = "pod-template-hash"
REVISION_ANNOTATION = "deployment.mizzen.io/revision"
_HASH_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


# ------------------------------------------------------------------ pure rollout math


def template_hash(template: pb.PodTemplateSpec, collision_count: int = 0) -> str:
    """A stable short digest of the template (without its hash label) and collision count."""
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
    return t


def template_equal(a: pb.PodTemplateSpec, b: pb.PodTemplateSpec) -> bool:
    """Equal ignoring the pod-template-hash label (how the new ReplicaSet is recognised)."""
    return _without_hash(a) == _without_hash(b)


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
    ts = rs.metadata.creation_timestamp
    return (ts.seconds + ts.nanos / 1e9, rs.metadata.name)


def set_condition(
    status: pb.DeploymentStatus, type: str, value: str, reason: str, message: str, now: float
) -> None:
    """Set condition type; last_transition_time changes only when its status changes."""
    for cond in status.conditions:
        if cond.type == type:
            if cond.status != value:
                cond.last_transition_time.FromNanoseconds(int(now * 1e9))
            cond.status, cond.reason, cond.message = value, reason, message
            return
    cond = status.conditions.add(type=type, status=value, reason=reason, message=message)
    cond.last_transition_time.FromNanoseconds(int(now * 1e9))


def _matcher(d: pb.Deployment) -> selectors.LabelMatcher | None:
    try:
        m = selectors.from_label_selector(d.spec.selector)
    except selectors.SelectorError:
        return None
    return None if m.empty() else m


class DeploymentController(Controller):
    name = "deployment"
    workers = 2
    primary_kind = "Deployment"

    def __init__(self, config: ManagerConfig | None = None) -> None:
        self._ctx: ControllerContext | None = None

    @property
    def ctx(self) -> ControllerContext:
        assert self._ctx is not None, "setup() first"
        return self._ctx

    # -- handlers -------------------------------------------------------------------

    def setup(self, ctx: ControllerContext) -> None:
        self._ctx = ctx
        deployments = ctx.informers.get("deployments")
        deployments.on_add(self.enqueue)
        deployments.on_update(lambda old, new: self.enqueue(new))
        deployments.on_delete(self.enqueue)
        rs = ctx.informers.get("replicasets")
        rs.on_add(self._rs_changed)
        rs.on_update(self._rs_updated)
        rs.on_delete(self._rs_changed)
        pods = ctx.informers.get("pods")
        pods.on_delete(self._pod_deleted)

    def _rs_changed(self, rs: pb.ReplicaSet) -> None:
        ref = controller_ref(rs)
        if ref is not None:
            self.enqueue_owner(rs, "Deployment")
            return
        for d in self.ctx.informers.get("deployments").in_namespace(rs.metadata.namespace):
            matcher = _matcher(d)
            if matcher is not None and matcher.matches(rs.metadata.labels):
                self.enqueue(d)

    def _rs_updated(self, old: pb.ReplicaSet, new: pb.ReplicaSet) -> None:
        old_ref, new_ref = controller_ref(old), controller_ref(new)
        if old_ref is not None and (new_ref is None or new_ref.uid != old_ref.uid):
            self._rs_changed(old)
        self._rs_changed(new)

    def _pod_deleted(self, pod: pb.Pod) -> None:
        ref = controller_ref(pod)
        if ref is None or ref.kind != "ReplicaSet":
            return
        rs = self.ctx.informers.get("replicasets").get(pod.metadata.namespace, ref.name)
        if rs is not None:
            self.enqueue_owner(rs, "Deployment")

    # -- reconcile ------------------------------------------------------------------

    async def reconcile(self, key: str) -> Result:
        namespace, name = split_key(key)
        d = self.ctx.informers.get("deployments").get(namespace, name)
        if d is None:
            return Result()
        owned = await self._claim(d)
        new = next((rs for rs in owned if template_equal(rs.spec.template, d.spec.template)), None)
        old = [rs for rs in owned if rs is not new]
        if is_terminating(d):
            return await self._sync_status(d, new, owned)
        if d.spec.paused:
            if new is not None and not any(rs.spec.replicas for rs in old):
                await self._scale(d, new, d.spec.replicas)
            return await self._sync_status(d, new, owned)
        if d.spec.strategy.type == "Recreate":
            new = await self._recreate(d, new, old)
        else:
            new = await self._rolling(d, new, old)
        if new is not None:
            d = await self._sync_revision(d, new, old)
            owned = [new, *old]
        await self._cleanup(d, old)
        return await self._sync_status(d, new, owned)

    async def _claim(self, d: pb.Deployment) -> list[pb.ReplicaSet]:
        """ReplicaSets controlled by d, after adopting matching orphans and releasing others."""
        matcher = _matcher(d)
        out: list[pb.ReplicaSet] = []
        for rs in self.ctx.informers.get("replicasets").in_namespace(d.metadata.namespace):
            ref = controller_ref(rs)
            matches = matcher is not None and matcher.matches(rs.metadata.labels)
            if ref is not None and ref.uid == d.metadata.uid:
                if matches:
                    out.append(rs)
                elif not is_terminating(rs):
                    changed = _copy(rs)
                    kept = [r for r in changed.metadata.owner_references if r.uid != ref.uid]
                    del changed.metadata.owner_references[:]
                    changed.metadata.owner_references.extend(kept)
                    await self._write(
                        self.ctx.client.update(changed), f"releasing {rs.metadata.name}"
                    )
            elif ref is None and matches and not is_terminating(rs) and not is_terminating(d):
                changed = _copy(rs)
                changed.metadata.owner_references.append(owner_reference(d))
                out.append(
                    await self._write(
                        self.ctx.client.update(changed), f"adopting {rs.metadata.name}"
                    )
                )
        return out

    async def _write(self, call: Any, what: str) -> Any:
        try:
            return await call
        except (ConflictError, NotFoundError) as err:
            raise TemporaryError(f"{what}: {err}") from None

    # -- strategies -------------------------------------------------------------------

    async def _rolling(
        self, d: pb.Deployment, new: pb.ReplicaSet | None, old: list[pb.ReplicaSet]
    ) -> pb.ReplicaSet | None:
        surge, unavailable = max_surge_unavailable(d)
        if new is None:
            want = new_replicas_for_rollout(d.spec.replicas, surge, 0, old)
            new = await self._create_rs(d, want, old)
        else:
            want = new_replicas_for_rollout(d.spec.replicas, surge, new.spec.replicas, old)
            if want != new.spec.replicas:
                new = await self._scale(d, new, want)
        for rs, replicas in old_scale_downs(d.spec.replicas, unavailable, new, old):
            await self._scale(d, rs, replicas)
        return new

    async def _recreate(
        self, d: pb.Deployment, new: pb.ReplicaSet | None, old: list[pb.ReplicaSet]
    ) -> pb.ReplicaSet | None:
        for rs in old:
            if rs.spec.replicas != 0:
                await self._scale(d, rs, 0)
        pods = self.ctx.informers.get("pods")
        running = [
            p
            for rs in old
            for p in pods.by_owner(rs.metadata.uid)
            if p.status.phase not in ("Succeeded", "Failed")
        ]
        if running:
            return new
        if new is None:
            return await self._create_rs(d, d.spec.replicas, old)
        if new.spec.replicas != d.spec.replicas:
            return await self._scale(d, new, d.spec.replicas)
        return new

    # -- writes -----------------------------------------------------------------------

    async def _create_rs(
        self, d: pb.Deployment, replicas: int, old: list[pb.ReplicaSet]
    ) -> pb.ReplicaSet:
        h = template_hash(d.spec.template, d.status.collision_count)
        rs = pb.ReplicaSet()
        rs.metadata.name = f"{d.metadata.name}-{h}"
        rs.metadata.namespace = d.metadata.namespace
        rs.metadata.labels.update(d.spec.template.metadata.labels)
        rs.metadata.labels[HASH_LABEL] = h
        rs.metadata.annotations[REVISION_ANNOTATION] = str(
            max((revision_of(r) for r in old), default=0) + 1
        )
        rs.metadata.owner_references.append(owner_reference(d))
        rs.spec.replicas = replicas
        rs.spec.min_ready_seconds = d.spec.min_ready_seconds
        rs.spec.selector.CopyFrom(d.spec.selector)
        rs.spec.selector.match_labels[HASH_LABEL] = h
        rs.spec.template.CopyFrom(d.spec.template)
        rs.spec.template.metadata.labels[HASH_LABEL] = h
        try:
            created: pb.ReplicaSet = await self.ctx.client.create(rs)
        except AlreadyExistsError:
            existing: pb.ReplicaSet = await self.ctx.client.get(
                "replicasets", rs.metadata.name, d.metadata.namespace
            )
            ref = controller_ref(existing)
            if (
                ref is not None
                and ref.uid == d.metadata.uid
                and template_equal(existing.spec.template, d.spec.template)
            ):
                return existing  # ours; the cache had not shown it yet
            bumped = _copy(d)
            bumped.status.collision_count += 1
            await self._write(self.ctx.client.update_status(bumped), "collision count")
            raise TemporaryError(f"replica set {rs.metadata.name} exists: hash collision") from None
        self.ctx.events.record(
            d,
            "Normal",
            "ScalingReplicaSet",
            f"Scaled up replica set {created.metadata.name} to {replicas}",
        )
        log.info("replicaset_created", deployment=d.metadata.name, rs=created.metadata.name)
        return created

    async def _scale(self, d: pb.Deployment, rs: pb.ReplicaSet, replicas: int) -> pb.ReplicaSet:
        if rs.spec.replicas == replicas:
            return rs
        changed = _copy(rs)
        changed.spec.replicas = replicas
        stored: pb.ReplicaSet = await self._write(
            self.ctx.client.update(changed), f"scaling {rs.metadata.name}"
        )
        direction = "up" if replicas > rs.spec.replicas else "down"
        self.ctx.events.record(
            d,
            "Normal",
            "ScalingReplicaSet",
            f"Scaled {direction} replica set {rs.metadata.name} to {replicas}",
        )
        return stored

    async def _sync_revision(
        self, d: pb.Deployment, new: pb.ReplicaSet, old: list[pb.ReplicaSet]
    ) -> pb.Deployment:
        """Give new the highest revision and mirror it on d; d as now stored."""
        highest_old = max((revision_of(r) for r in old), default=0)
        revision = revision_of(new)
        if revision <= highest_old:
            changed = _copy(new)
            revision = highest_old + 1
            changed.metadata.annotations[REVISION_ANNOTATION] = str(revision)
            await self._write(self.ctx.client.update(changed), "revision")
        if d.metadata.annotations.get(REVISION_ANNOTATION) != str(revision):
            changed_d = _copy(d)
            changed_d.metadata.annotations[REVISION_ANNOTATION] = str(revision)
            stored: pb.Deployment = await self._write(
                self.ctx.client.update(changed_d), "deployment revision"
            )
            return stored
        return d

    async def _cleanup(self, d: pb.Deployment, old: list[pb.ReplicaSet]) -> None:
        idle = [
            rs
            for rs in old
            if rs.spec.replicas == 0 and rs.status.replicas == 0 and not is_terminating(rs)
        ]
        extra = len(idle) - d.spec.revision_history_limit
        if extra <= 0:
            return
        for rs in sorted(idle, key=revision_of)[:extra]:
            try:
                await self.ctx.client.delete("replicasets", rs.metadata.name, rs.metadata.namespace)
            except NotFoundError:
                continue
            log.info("replicaset_cleaned_up", deployment=d.metadata.name, rs=rs.metadata.name)

    async def _sync_status(
        self, d: pb.Deployment, new: pb.ReplicaSet | None, owned: list[pb.ReplicaSet]
    ) -> Result:
        status = compute_status(d, new, owned, self.ctx.clock())
        if status != d.status:
            changed = _copy(d)
            changed.status.CopyFrom(status)
            await self._write(self.ctx.client.update_status(changed), "status")
        return Result()


def compute_status(
    d: pb.Deployment, new: pb.ReplicaSet | None, owned: list[pb.ReplicaSet], now: float
) -> pb.DeploymentStatus:
    """The status d should have given its ReplicaSets (conditions keep transition times)."""
    status = pb.DeploymentStatus()
    status.CopyFrom(d.status)
    status.observed_generation = d.metadata.generation
    status.replicas = sum(rs.status.replicas for rs in owned)
    status.updated_replicas = new.status.replicas if new is not None else 0
    status.ready_replicas = sum(rs.status.ready_replicas for rs in owned)
    status.available_replicas = sum(rs.status.available_replicas for rs in owned)
    status.unavailable_replicas = max(d.spec.replicas - status.available_replicas, 0)
    _, max_unavailable = max_surge_unavailable(d)
    if status.available_replicas >= d.spec.replicas - max_unavailable:
        set_condition(status, "Available", "True", "MinimumReplicasAvailable",
                      "Deployment has minimum availability.", now)  # fmt: skip
    else:
        set_condition(status, "Available", "False", "MinimumReplicasUnavailable",
                      "Deployment does not have minimum availability.", now)  # fmt: skip
    complete = (
        new is not None
        and status.updated_replicas == d.spec.replicas
        and status.replicas == d.spec.replicas
        and status.available_replicas == d.spec.replicas
    )
    if d.spec.paused:
        set_condition(status, "Progressing", "Unknown", "DeploymentPaused",
                      "Deployment is paused", now)  # fmt: skip
    elif complete and new is not None:
        message = f'ReplicaSet "{new.metadata.name}" has successfully progressed.'
        set_condition(status, "Progressing", "True", "NewReplicaSetAvailable", message, now)
    elif new is not None:
        set_condition(status, "Progressing", "True", "ReplicaSetUpdated",
                      f'ReplicaSet "{new.metadata.name}" is progressing.', now)  # fmt: skip
    return status


def _copy(obj: Any) -> Any:
    out = type(obj)()
    out.CopyFrom(obj)
    return out
