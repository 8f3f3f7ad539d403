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

Progressing follows Kubernetes: ``ReplicaSetUpdated`` (True) while the
rollout moves — a spec change observed, a new ReplicaSet, more updated, ready
or available replicas, fewer old ones — each move setting its
``lastUpdateTime``; ``NewReplicaSetAvailable`` once every replica is updated
and available (kept after that until the next rollout: a pod that dies later
is not a stuck rollout); ``ProgressDeadlineExceeded`` (False) when a rollout
made no progress for ``spec.progressDeadlineSeconds`` (default 600). The
reconcile that writes ReplicaSetUpdated requeues the Deployment for its
deadline, so the condition turns False on time without polling. Paused:
``DeploymentPaused`` (Unknown), no deadline.

Config rollouts (``controllers.confighash``, docs/controllers.md): the
template a ReplicaSet gets is the Deployment's plus the annotation
``mizzen.io/config-hash`` (the keyed hash of the content of the ConfigMaps and
Secrets it counts), so a content change makes the Deployment's template match
no ReplicaSet and the strategy above rolls out a new one — the Deployment's
own spec and generation do not change. The new ReplicaSet records
``mizzen.io/config-sources`` (one digest per object) and
``mizzen.io/change-cause`` ("config: ConfigMap web changed", or the
Deployment's own ``mizzen.io/change-cause`` for a template change), and a
``ConfigChanged`` Event names what changed. When the content returns to what an
old ReplicaSet recorded, that one is scaled up again (a rollback, with a new
revision). With ``mizzen.io/config-rollout: "false"`` the current ReplicaSet is
the newest whose template equals the Deployment's ignoring the hash: config
changes never roll, template changes still do.

Dependencies (``spec.dependsOn``, docs/controllers.md): a ReplicaSet's
template carries the Deployment's dependsOn, so every pod does. It is not part
of the template's identity (``template_equal`` and ``template_hash`` ignore
it): a change of dependsOn is written in place into the current ReplicaSet
and those that still have replicas, and rolls nothing — dependencies only gate
the start of pods, and running pods are never stopped for them.

One file because it is one controller: the pure rollout decisions (template
hash, RollingUpdate and Recreate steps, revisions) and the controller that
carries them out change together.
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
from controllers.claim import claim, selects
from controllers.config_watch import debounce_of, hasher_for, watch_config
from controllers.confighash import (
    CHANGE_CAUSE,
    CONFIG_SOURCES,
    ConfigState,
    describe_change,
    opted_out,
    parse_sources,
    with_config,
    without_config,
)
from controllers.podutil import mark_condition, seconds_of, set_timestamp
from controllers.rollout import (
    HASH_LABEL,
    REVISION_ANNOTATION,
    max_surge_unavailable,
    new_replicas_for_rollout,
    old_scale_downs,
    restarted_only,
    revision_of,
    template_equal,
    template_hash,
)
from controllers.status import write_status
from mizzen.api.defaults import DEFAULT_PROGRESS_DEADLINE_SECONDS
from mizzen.api.messages import copy_message
from mizzen.api.pods import has_ended
from mizzen.client.errors import AlreadyExistsError, ConflictError, NotFoundError
from protos import objects_pb2 as pb

if TYPE_CHECKING:
    from controllers.config import ManagerConfig

log = structlog.get_logger(__name__)


class DeploymentController(Controller):
    name = "deployment"
    workers = 2
    primary_kind = "Deployment"

    def __init__(self, config: ManagerConfig | None = None) -> None:
        """config: the manager's factory signature; nothing in it applies here."""

    # -- handlers -------------------------------------------------------------------

    def setup(self, ctx: ControllerContext) -> None:
        self._ctx = ctx
        self.enqueue_changes(ctx.informers.get("deployments"))
        rs = ctx.informers.get("replicasets")
        rs.on_add(self._rs_changed)
        rs.on_update(self._rs_updated)
        rs.on_delete(self._rs_changed)
        pods = ctx.informers.get("pods")
        pods.on_delete(self._pod_deleted)
        debounce = debounce_of(ctx)
        watch_config(ctx, "Deployment", lambda key: self.queue.add_after(key, debounce))

    def _rs_changed(self, rs: pb.ReplicaSet) -> None:
        ref = controller_ref(rs)
        if ref is not None:
            self.enqueue_owner(rs, "Deployment")
            return
        for d in self.ctx.informers.get("deployments").in_namespace(rs.metadata.namespace):
            if selects(d, rs):
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
        config = await hasher_for(self.ctx).state(d.spec.template, namespace)
        want = with_config(d.spec.template, config)
        candidates = self.ctx.informers.get("replicasets").in_namespace(namespace)
        owned = await claim(self.ctx.client, d, candidates)
        new = current_replicaset(d, want, owned)
        if not is_terminating(d):
            owned = [
                await self._sync_dependencies(d, rs) if rs is new or rs.spec.replicas else rs
                for rs in owned
            ]
            new = current_replicaset(d, want, owned)
        old = [rs for rs in owned if rs is not new]
        if is_terminating(d):
            return await self._sync_status(d, new, owned)
        if d.spec.paused:
            if new is not None and not any(rs.spec.replicas for rs in old):
                await self._scale(d, new, d.spec.replicas)
            return await self._sync_status(d, new, owned)
        if d.spec.strategy.type == "Recreate":
            new = await self._recreate(d, want, config, new, old)
        else:
            new = await self._rolling(d, want, config, new, old)
        if new is not None:
            d = await self._sync_revision(d, config, new, old)
            owned = [new, *old]
        await self._cleanup(d, old)
        return await self._sync_status(d, new, owned)

    async def _write(self, call: Any, what: str) -> Any:
        try:
            return await call
        except (ConflictError, NotFoundError) as err:
            raise TemporaryError(f"{what}: {err}") from None

    # -- strategies -------------------------------------------------------------------

    async def _rolling(
        self,
        d: pb.Deployment,
        template: pb.PodTemplateSpec,
        config: ConfigState,
        new: pb.ReplicaSet | None,
        old: list[pb.ReplicaSet],
    ) -> pb.ReplicaSet | None:
        surge, unavailable = max_surge_unavailable(d)
        if new is None:
            want = new_replicas_for_rollout(d.spec.replicas, surge, 0, old)
            new = await self._create_rs(d, template, config, want, old)
        else:
            want = new_replicas_for_rollout(d.spec.replicas, surge, new.spec.replicas, old)
            if want != new.spec.replicas:
                new = await self._scale(d, new, want)
        for rs, replicas in old_scale_downs(d.spec.replicas, unavailable, new, old):
            await self._scale(d, rs, replicas)
        return new

    async def _recreate(
        self,
        d: pb.Deployment,
        template: pb.PodTemplateSpec,
        config: ConfigState,
        new: pb.ReplicaSet | None,
        old: list[pb.ReplicaSet],
    ) -> pb.ReplicaSet | None:
        for rs in old:
            if rs.spec.replicas != 0:
                await self._scale(d, rs, 0)
        pods = self.ctx.informers.get("pods")
        running = [p for rs in old for p in pods.by_owner(rs.metadata.uid) if not has_ended(p)]
        if running:
            return new
        if new is None:
            return await self._create_rs(d, template, config, d.spec.replicas, old)
        if new.spec.replicas != d.spec.replicas:
            return await self._scale(d, new, d.spec.replicas)
        return new

    # -- writes -----------------------------------------------------------------------

    async def _create_rs(
        self,
        d: pb.Deployment,
        template: pb.PodTemplateSpec,
        config: ConfigState,
        replicas: int,
        old: list[pb.ReplicaSet],
    ) -> pb.ReplicaSet:
        h = template_hash(template, d.status.collision_count)
        revision = max((revision_of(r) for r in old), default=0) + 1
        cause, config_change = change_cause(d, config, _newest(old))
        rs = pb.ReplicaSet()
        rs.metadata.name = f"{d.metadata.name}-{h}"
        rs.metadata.namespace = d.metadata.namespace
        rs.metadata.labels.update(template.metadata.labels)
        rs.metadata.labels[HASH_LABEL] = h
        rs.metadata.annotations[REVISION_ANNOTATION] = str(revision)
        if config.sources:
            rs.metadata.annotations[CONFIG_SOURCES] = config.sources_text()
        if cause:
            rs.metadata.annotations[CHANGE_CAUSE] = cause
        rs.metadata.owner_references.append(owner_reference(d))
        rs.spec.replicas = replicas
        rs.spec.min_ready_seconds = d.spec.min_ready_seconds
        rs.spec.selector.CopyFrom(d.spec.selector)
        rs.spec.selector.match_labels[HASH_LABEL] = h
        rs.spec.template.CopyFrom(template)
        rs.spec.template.metadata.labels[HASH_LABEL] = h
        rs.spec.template.spec.depends_on.extend(d.spec.depends_on)
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
                and template_equal(existing.spec.template, template)
            ):
                return existing  # ours; the cache had not shown it yet
            bumped = copy_message(d)
            bumped.status.collision_count += 1
            await self._write(self.ctx.client.update_status(bumped), "collision count")
            raise TemporaryError(f"replica set {rs.metadata.name} exists: hash collision") from None
        if config_change:
            self._config_changed(d, config_change, revision, created)
        self.ctx.events.record(
            d,
            "Normal",
            "ScalingReplicaSet",
            f"Scaled up replica set {created.metadata.name} to {replicas}",
        )
        log.info("replicaset_created", deployment=d.metadata.name, rs=created.metadata.name)
        return created

    def _config_changed(
        self, d: pb.Deployment, change: str, revision: int, rs: pb.ReplicaSet
    ) -> None:
        message = f"{change}: rolling out revision {revision} (replica set {rs.metadata.name})"
        self.ctx.events.record(d, "Normal", "ConfigChanged", message)
        log.info(
            "config_rollout",
            deployment=f"{d.metadata.namespace}/{d.metadata.name}",
            change=change,
            revision=revision,
        )

    async def _sync_dependencies(self, d: pb.Deployment, rs: pb.ReplicaSet) -> pb.ReplicaSet:
        """rs with d's dependsOn in its template (written in place when it differs)."""
        if list(rs.spec.template.spec.depends_on) == list(d.spec.depends_on):
            return rs
        changed = copy_message(rs)
        del changed.spec.template.spec.depends_on[:]
        changed.spec.template.spec.depends_on.extend(d.spec.depends_on)
        stored: pb.ReplicaSet = await self._write(
            self.ctx.client.update(changed), f"dependencies of {rs.metadata.name}"
        )
        log.info("replicaset_dependencies_updated", deployment=d.metadata.name, rs=rs.metadata.name)
        return stored

    async def _scale(self, d: pb.Deployment, rs: pb.ReplicaSet, replicas: int) -> pb.ReplicaSet:
        if rs.spec.replicas == replicas:
            return rs
        changed = copy_message(rs)
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
        self, d: pb.Deployment, config: ConfigState, new: pb.ReplicaSet, old: list[pb.ReplicaSet]
    ) -> pb.Deployment:
        """Give new the highest revision and mirror it on d; d as now stored.

        An old ReplicaSet that became new again (a rollback, by undo or because
        the config content went back) gets the cause of this change.
        """
        highest_old = max((revision_of(r) for r in old), default=0)
        revision = revision_of(new)
        if revision <= highest_old:
            changed = copy_message(new)
            revision = highest_old + 1
            cause, config_change = change_cause(d, config, _newest(old))
            annotations = changed.metadata.annotations
            annotations[REVISION_ANNOTATION] = str(revision)
            if cause:
                annotations[CHANGE_CAUSE] = cause
            else:
                annotations.pop(CHANGE_CAUSE, None)
            await self._write(self.ctx.client.update(changed), "revision")
            if config_change:
                self._config_changed(d, config_change, revision, new)
        if d.metadata.annotations.get(REVISION_ANNOTATION) != str(revision):
            changed_d = copy_message(d)
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
        now = self.ctx.clock()
        status = compute_status(d, new, owned, now)
        await write_status(self.ctx.client, d, status)
        return Result(requeue_after=progress_recheck(d, status, now))


def current_replicaset(
    d: pb.Deployment, template: pb.PodTemplateSpec, owned: list[pb.ReplicaSet]
) -> pb.ReplicaSet | None:
    """The ReplicaSet of template (d's template with its config hash), None if there is none.

    Opted out of config rollouts: the newest one whose template equals d's
    ignoring the config hash, so a content change never makes a new one.
    """
    if opted_out(d):
        bare = without_config(template)
        same = [rs for rs in owned if template_equal(without_config(rs.spec.template), bare)]
        if same:
            return max(same, key=lambda rs: (revision_of(rs), rs.metadata.name))
    return next((rs for rs in owned if template_equal(rs.spec.template, template)), None)


def change_cause(
    d: pb.Deployment, config: ConfigState, previous: pb.ReplicaSet | None
) -> tuple[str, str]:
    """(the change-cause of a revision that follows previous, the config change or "").

    A template change takes the Deployment's own ``mizzen.io/change-cause``
    (as kubectl's annotation, set by the user), except a change of only the
    ``mizzen.io/restartedAt`` annotation (``mizzen rollout restart``), which is
    "restart: mizzen rollout restart at <time>"; a config change (same template
    otherwise) is "config: ConfigMap web changed, ...", from the per-object
    digests previous recorded.
    """
    if previous is None:
        return d.metadata.annotations.get(CHANGE_CAUSE, ""), ""
    bare = without_config(d.spec.template)
    if not template_equal(without_config(previous.spec.template), bare):
        restarted = restarted_only(bare, without_config(previous.spec.template))
        if restarted:
            return f"restart: mizzen rollout restart at {restarted}", ""
        return d.metadata.annotations.get(CHANGE_CAUSE, ""), ""
    before = parse_sources(previous.metadata.annotations.get(CONFIG_SOURCES, ""))
    change = describe_change(before, dict(config.sources))
    return (f"config: {change}", change) if change else ("", "")


def _newest(replicasets: list[pb.ReplicaSet]) -> pb.ReplicaSet | None:
    return max(replicasets, key=revision_of, default=None)


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

    def mark(type_: str, value: str, reason: str, message: str) -> bool:
        return mark_condition(status.conditions, type_, value, reason, message, now)

    if status.available_replicas >= d.spec.replicas - max_unavailable:
        mark(
            "Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability."
        )
    else:
        message = "Deployment does not have minimum availability."
        mark("Available", "False", "MinimumReplicasUnavailable", message)
    complete = (
        new is not None
        and status.updated_replicas == d.spec.replicas
        and status.replicas == d.spec.replicas
        and status.available_replicas == d.spec.replicas
    )
    progressing = _progressing(status.conditions)
    what = (
        f'ReplicaSet "{new.metadata.name}"'
        if new is not None
        else f'Deployment "{d.metadata.name}"'
    )
    if d.spec.paused:
        mark("Progressing", "Unknown", "DeploymentPaused", "Deployment is paused")
    elif complete and new is not None:
        message = f'ReplicaSet "{new.metadata.name}" has successfully progressed.'
        if mark("Progressing", "True", NEW_RS_AVAILABLE, message) or (
            progressing is not None and not progressing.HasField("last_update_time")
        ):
            _touch(status.conditions, now)
    elif made_progress(d, status, new):
        mark("Progressing", "True", RS_UPDATED, f"{what} is progressing.")
        _touch(status.conditions, now)
    elif progress_deadline_passed(d, status, now):
        mark("Progressing", "False", DEADLINE_EXCEEDED, f"{what} has timed out progressing.")
        _touch(status.conditions, now)
    return status


NEW_RS_AVAILABLE = "NewReplicaSetAvailable"
RS_UPDATED = "ReplicaSetUpdated"
DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"


def _progressing(conditions: Any) -> pb.Condition | None:
    return next((c for c in conditions if c.type == "Progressing"), None)


def _touch(conditions: Any, now: float) -> None:
    """Progressing's lastUpdateTime := now."""
    cond = _progressing(conditions)
    if cond is not None:
        set_timestamp(cond.last_update_time, now)


def deadline_of(d: pb.Deployment) -> int:
    """progressDeadlineSeconds (a Deployment stored before the field existed: the default)."""
    if d.spec.HasField("progress_deadline_seconds"):
        return d.spec.progress_deadline_seconds
    return DEFAULT_PROGRESS_DEADLINE_SECONDS


def _rs_named(cond: pb.Condition) -> str:
    """The ReplicaSet a Progressing message names ('ReplicaSet "web-5d9c" is ...'), or ""."""
    head, quote, rest = cond.message.partition('ReplicaSet "')
    return rest.partition('"')[0] if quote and not head else ""


def made_progress(d: pb.Deployment, status: pb.DeploymentStatus, new: pb.ReplicaSet | None) -> bool:
    """Whether the rollout moved since d.status was written (Kubernetes' DeploymentProgressing).

    Progress: a spec change observed, a new ReplicaSet, more updated, ready or
    available replicas, fewer old ones; and a rollout that is starting (no
    Progressing condition yet, or one left by a pause).
    """
    before = d.status
    cond = _progressing(before.conditions)
    if cond is None or cond.reason == "DeploymentPaused":
        return True
    if before.observed_generation != d.metadata.generation:
        return True
    if new is not None and _rs_named(cond) != new.metadata.name:
        return True
    old_before = before.replicas - before.updated_replicas
    old_now = status.replicas - status.updated_replicas
    return (
        status.updated_replicas > before.updated_replicas
        or status.ready_replicas > before.ready_replicas
        or status.available_replicas > before.available_replicas
        or old_now < old_before
    )


def _last_progress(cond: pb.Condition) -> float:
    if cond.HasField("last_update_time"):
        return seconds_of(cond.last_update_time)
    return seconds_of(cond.last_transition_time)


def progress_deadline_passed(d: pb.Deployment, status: pb.DeploymentStatus, now: float) -> bool:
    """A rollout under way made no progress for progressDeadlineSeconds."""
    cond = _progressing(status.conditions)
    if cond is None or cond.status != "True" or cond.reason != RS_UPDATED:
        return False
    return now >= _last_progress(cond) + deadline_of(d)


def progress_recheck(d: pb.Deployment, status: pb.DeploymentStatus, now: float) -> float | None:
    """Seconds until status's rollout passes its progress deadline; None when none runs.

    The controller requeues the Deployment for then, so the condition turns
    False without any polling (Kubernetes does the same).
    """
    if d.spec.paused:
        return None
    cond = _progressing(status.conditions)
    if cond is None or cond.status != "True" or cond.reason != RS_UPDATED:
        return None
    return max(_last_progress(cond) + deadline_of(d) - now, 0.0)
