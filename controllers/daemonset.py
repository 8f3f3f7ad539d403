"""The DaemonSet controller: one pod on every eligible node.

A node is eligible when its labels match the template's ``node_selector`` and
the template tolerates every ``NoSchedule`` / ``NoExecute`` taint on it (the
scheduler's predicates, ``controllers.scheduling``). Cordoned nodes stay
eligible, as in Kubernetes. Pods are created already bound
(``spec.node_name``), so the scheduler never sees them.

``plan_daemonset`` is the pure decision; ``DaemonSetController`` carries it
out. What is guaranteed:

* a pod is created on an eligible node without one, but not while an old pod
  there is still terminating (a node runs at most one copy of the daemon,
  except during a surge);
* a daemon pod that ended (Failed, or Succeeded) is deleted and replaced
  after a per-node backoff (1 s, doubling, capped at 15 min) and a
  ``FailedDaemonPod`` Warning Event;
* pods on nodes no longer eligible are deleted; pods on nodes that no longer
  exist are deleted with grace 0 (no agent is left to stop them);
* the template's hash is the pod label ``controller-revision-hash``.
  RollingUpdate replaces old pods while at most ``max_unavailable`` (rounded
  up from a percentage; default 1) eligible nodes lack an available pod; with
  ``max_surge`` > 0 the new pod starts beside the old one, which is deleted
  once the new one is available. OnDelete never deletes an old pod;
* status counts nodes (desired, current, ready, updated, available,
  misscheduled) and ``observed_generation``; it is written only when it
  changed;
* config rollouts (``controllers.confighash``, docs/controllers.md): pods
  carry the annotation ``mizzen.io/config-hash`` of the content of the
  ConfigMaps and Secrets the template counts; a pod whose hash is not the
  current one is old like a pod of an older template, and is replaced by the
  same RollingUpdate (a ``ConfigChanged`` Event names the objects that
  changed). The ``controller-revision-hash`` label stays a hash of the
  template alone. With ``mizzen.io/config-rollout: "false"`` on the DaemonSet
  the pods' config hash is not compared (new pods still record it);
* every pod carries the DaemonSet's ``spec.dependsOn`` (its processes start
  once they are met); it is not part of the template's hash, so a change of
  it replaces no pod and applies to the pods created afterwards.

One file because it is one controller: the pure ``plan_daemonset`` and the
controller that carries it out change together, as in every controller module.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from controllers.base import (
    Controller,
    ControllerContext,
    Result,
    is_terminating,
    owner_key,
    queue_key,
)
from controllers.config_watch import debounce_of, hasher_for, watch_config
from controllers.confighash import (
    CONFIG_HASH,
    CONFIG_SOURCES,
    ConfigState,
    describe_change,
    opted_out,
    parse_sources,
)
from controllers.expectations import Expectations
from controllers.job import CREATE_BURST
from controllers.podutil import available_in, creation_seconds, is_ready, pod_from_template
from controllers.scheduling import untolerated
from controllers.status import write_status
from mizzen.api.pods import has_ended
from mizzen.api.quantity import resolve_int_or_percent
from mizzen.client.errors import NotFoundError
from protos import objects_pb2 as pb

if TYPE_CHECKING:
    from controllers.config import ManagerConfig

log = structlog.get_logger(__name__)

HASH_LABEL = "controller-revision-hash"
FAILED_BACKOFF_BASE = 1.0
FAILED_BACKOFF_CAP = 900.0
EXPECTATIONS_TTL = 30.0
_BLOCKING = ("NoSchedule", "NoExecute")


def template_hash(template: pb.PodTemplateSpec) -> str:
    """A stable short hash of the pod template (deterministic serialization)."""
    digest = hashlib.sha256(template.SerializeToString(deterministic=True)).hexdigest()
    return digest[:10]


def should_run(spec: pb.PodSpec, node: pb.Node) -> bool:
    """Whether a daemon pod of spec belongs on node (selector and taints)."""
    labels = node.metadata.labels
    if any(labels.get(k) != v for k, v in spec.node_selector.items()):
        return False
    return not untolerated(node.spec.taints, spec.tolerations, _BLOCKING)


@dataclass(frozen=True)
class Deletion:
    pod: pb.Pod
    force: bool = False


@dataclass(frozen=True)
class DaemonSetPlan:
    create_on: tuple[str, ...]
    delete: tuple[Deletion, ...]
    status: pb.DaemonSetStatus
    requeue_after: float | None = None
    # Nodes whose daemon pod ended (Failed or Succeeded) and is being replaced.
    failed_on: tuple[str, ...] = ()


@dataclass
class _NodePods:
    new: list[pb.Pod]
    old: list[pb.Pod]
    terminating: int


def is_current(pod: pb.Pod, revision: str, config_hash: str | None) -> bool:
    """Whether pod runs the template of revision with the config of config_hash.

    config_hash None: any config (opted out of config rollouts).
    """
    if pod.metadata.labels.get(HASH_LABEL) != revision:
        return False
    return config_hash is None or pod.metadata.annotations.get(CONFIG_HASH, "") == config_hash


def _by_node(pods: list[pb.Pod], current: str, config_hash: str | None) -> dict[str, _NodePods]:
    out: dict[str, _NodePods] = defaultdict(lambda: _NodePods([], [], 0))
    for pod in sorted(pods, key=lambda p: (creation_seconds(p), p.metadata.name)):
        slot = out[pod.spec.node_name]
        if is_terminating(pod):
            slot.terminating += 1
        elif is_current(pod, current, config_hash):
            slot.new.append(pod)
        else:
            slot.old.append(pod)
    return out


def _budgets(ds: pb.DaemonSet, desired: int) -> tuple[int, int]:
    """(max unavailable, max surge) for a RollingUpdate; Kubernetes' rounding."""
    rolling = ds.spec.update_strategy.rolling_update
    surge = resolve_int_or_percent(rolling.max_surge or "0", desired, round_up=True)
    unavailable = resolve_int_or_percent(rolling.max_unavailable or "1", desired, round_up=True)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return unavailable, surge


def plan_daemonset(
    ds: pb.DaemonSet,
    nodes: list[pb.Node],
    pods: list[pb.Pod],
    now: float,
    hold: Mapping[str, float] | None = None,
    config: ConfigState | None = None,
) -> DaemonSetPlan:
    """The next step for ds given every node and the pods it controls, at wall time now.

    hold maps node names to the time before which no pod is created there
    (the backoff after daemon pods that ended); config is what the template's
    references hold now (default: nothing counted).
    """
    hold = hold or {}
    failed_on: list[str] = []
    current = template_hash(ds.spec.template)
    config_hash = None if opted_out(ds) else (config or ConfigState()).hash
    min_ready = ds.spec.min_ready_seconds
    slots = _by_node(pods, current, config_hash)
    node_names = {n.metadata.name for n in nodes}
    create: list[str] = []
    delete: list[Deletion] = []
    waits: list[float] = []
    status = pb.DaemonSetStatus()

    def available(pod: pb.Pod) -> bool:
        left = available_in(pod, min_ready, now)
        if left is not None and left > 0:
            waits.append(left)
        return left is not None and left <= 0

    for name, slot in slots.items():
        if name not in node_names:
            delete.extend(Deletion(p, force=True) for p in slot.new + slot.old)
    rollout: list[tuple[str, _NodePods]] = []
    for node in sorted(nodes, key=lambda n: n.metadata.name):
        name = node.metadata.name
        slot = slots.get(name) or _NodePods([], [], 0)
        if not should_run(ds.spec.template.spec, node):
            if slot.new or slot.old:
                status.number_misscheduled += 1
                delete.extend(Deletion(p) for p in slot.new + slot.old)
            continue
        status.desired_number_scheduled += 1
        for group in (slot.new, slot.old):
            ended = [p for p in group if has_ended(p)]
            if ended:
                failed_on.append(name)
                delete.extend(Deletion(p) for p in ended)
            group[:] = [p for p in group if not has_ended(p)]
            delete.extend(Deletion(p) for p in group[1:])
            del group[1:]
        live = slot.new + slot.old
        if not live:
            held = hold.get(name, 0.0) - now
            if held > 0:
                waits.append(held)
            elif slot.terminating == 0 and name not in failed_on:
                create.append(name)
            continue
        status.current_number_scheduled += 1
        status.number_ready += any(is_ready(p) for p in live)
        status.number_available += any(available(p) for p in live)
        status.updated_number_scheduled += bool(slot.new)
        rollout.append((name, slot))

    status.number_unavailable = status.desired_number_scheduled - status.number_available
    status.observed_generation = ds.metadata.generation
    status.conditions.extend(ds.status.conditions)
    if ds.spec.update_strategy.type == "RollingUpdate":
        _roll(ds, status, rollout, create, delete, available)
    else:
        delete.extend(Deletion(s.old[0]) for _, s in rollout if s.new and s.old)
    return DaemonSetPlan(
        tuple(create[:CREATE_BURST]),
        tuple(delete),
        status,
        min(waits, default=None),
        tuple(failed_on),
    )


def _roll(
    ds: pb.DaemonSet,
    status: pb.DaemonSetStatus,
    rollout: list[tuple[str, _NodePods]],
    create: list[str],
    delete: list[Deletion],
    available: Any,
) -> None:
    """RollingUpdate steps on nodes that still run an old pod."""
    max_unavailable, max_surge = _budgets(ds, status.desired_number_scheduled)
    if max_surge > 0:
        surging = sum(1 for _, s in rollout if s.new and s.old and not available(s.new[0]))
        for name, slot in rollout:
            if not slot.old:
                continue
            replaced = available(slot.new[0]) if slot.new else not available(slot.old[0])
            if replaced:
                delete.append(Deletion(slot.old[0]))
            elif not slot.new and surging < max_surge:
                create.append(name)
                surging += 1
        return
    budget = max_unavailable - status.number_unavailable
    for _, slot in rollout:
        if not slot.old:
            continue
        if slot.new or not available(slot.old[0]):
            delete.append(Deletion(slot.old[0]))
        elif budget > 0:
            delete.append(Deletion(slot.old[0]))
            budget -= 1


class NodeBackoff:
    """Per (DaemonSet, node) delay before replacing a daemon pod that ended.

    Each end doubles the delay (base, 2 base, ... cap); a node whose last end
    is older than twice the cap starts again from base, as Kubernetes does.
    """

    def __init__(self, base: float, cap: float) -> None:
        self.base = base
        self.cap = cap
        self._entries: dict[str, dict[str, tuple[int, float]]] = {}

    def failed(self, key: str, node: str, now: float) -> float:
        """Record an end on node; the delay before the replacement."""
        nodes = self._entries.setdefault(key, {})
        count, until = nodes.get(node, (0, 0.0))
        if now - until > 2 * self.cap:
            count = 0
        delay = min(self.base * 2**count, self.cap)
        nodes[node] = (count + 1, now + delay)
        return delay

    def holds(self, key: str, now: float) -> dict[str, float]:
        """node -> the time before which no pod is created there (only future times)."""
        return {n: until for n, (_, until) in self._entries.get(key, {}).items() if until > now}

    def forget(self, key: str) -> None:
        self._entries.pop(key, None)


def new_pod(
    ds: pb.DaemonSet, node_name: str, revision: str, config: ConfigState | None = None
) -> pb.Pod:
    """A pod of ds's template bound to node_name, owned by ds, with config's hash."""
    pod = pod_from_template(ds, ds.spec.template)
    pod.spec.depends_on.extend(ds.spec.depends_on)
    pod.metadata.labels[HASH_LABEL] = revision
    annotations = pod.metadata.annotations
    annotations.pop(CONFIG_HASH, None)
    if config is not None and config.hash:
        annotations[CONFIG_HASH] = config.hash
        annotations[CONFIG_SOURCES] = config.sources_text()
    pod.spec.node_name = node_name
    return pod


class DaemonSetController(Controller):
    """Drives DaemonSets with ``plan_daemonset``; see the module doc."""

    name = "daemonset"
    primary_kind = "DaemonSet"

    def __init__(
        self,
        *,
        workers: int = 2,
        backoff_base: float = FAILED_BACKOFF_BASE,
        backoff_cap: float = FAILED_BACKOFF_CAP,
    ) -> None:
        self.workers = workers
        self.expectations = Expectations(ttl=EXPECTATIONS_TTL)
        self.backoff = NodeBackoff(backoff_base, backoff_cap)
        # key -> the config hash a ConfigChanged Event was recorded for
        self._announced: dict[str, str] = {}

    def setup(self, ctx: ControllerContext) -> None:
        self._ctx = ctx
        self.sets = ctx.informers.get("DaemonSet")
        self.pods = ctx.informers.get("Pod")
        self.nodes = ctx.informers.get("Node")
        self.expectations.clock = ctx.clock
        self.enqueue_changes(self.sets, on_delete=self._ds_deleted)
        self.pods.on_add(self._pod_changed)
        self.pods.on_update(lambda old, new: self._pod_changed(new))
        self.pods.on_delete(self._pod_deleted)
        self.nodes.on_add(self._node_changed)
        self.nodes.on_update(self._node_updated)
        self.nodes.on_delete(self._node_changed)
        debounce = debounce_of(ctx)
        watch_config(ctx, "DaemonSet", lambda key: self.queue.add_after(key, debounce))

    def _ds_deleted(self, ds: Any) -> None:
        self.expectations.forget(queue_key(ds))
        self.backoff.forget(queue_key(ds))
        self._announced.pop(queue_key(ds), None)

    def _pod_changed(self, pod: Any) -> None:
        self.enqueue_owner(pod, "DaemonSet")

    def _pod_deleted(self, pod: Any) -> None:
        key = owner_key(pod, "DaemonSet")
        if key is not None:
            self.expectations.observe_deleted(key, pod.metadata.uid)
            self.queue.add(key)

    def _node_updated(self, old: Any, new: Any) -> None:
        if old.metadata.labels != new.metadata.labels or list(old.spec.taints) != list(
            new.spec.taints
        ):
            self._node_changed(new)

    def _node_changed(self, node: Any) -> None:
        for ds in self.sets.list():
            self.enqueue(ds)

    async def reconcile(self, key: str) -> Result:
        ds: pb.DaemonSet | None = self.sets.get_key(key)
        if ds is None or is_terminating(ds):
            return Result()
        pods = self.pods.owned_by(ds)
        if not self.expectations.satisfied(key, pods):
            return Result(requeue_after=self.expectations.recheck_in(key))
        config = await hasher_for(self.ctx).state(ds.spec.template, ds.metadata.namespace)
        now = self.ctx.clock()
        plan = plan_daemonset(
            ds, self.nodes.list(), pods, now, self.backoff.holds(key, now), config
        )
        revision = template_hash(ds.spec.template)
        self._announce_config_change(key, ds, pods, revision, config)
        waits = [plan.requeue_after] if plan.requeue_after is not None else []
        for node_name in plan.failed_on:
            delay = self.backoff.failed(key, node_name, now)
            waits.append(delay)
            self.ctx.events.record(
                ds,
                "Warning",
                "FailedDaemonPod",
                f"daemon pod on node {node_name} ended; replacing it in {delay:g}s",
            )
        for deletion in plan.delete:
            await self._delete(key, ds, deletion)
        for node_name in plan.create_on:
            await self._create(key, ds, node_name, revision, config)
        await write_status(self.ctx.client, ds, plan.status)
        return Result(requeue_after=min(waits, default=None))

    def _announce_config_change(
        self, key: str, ds: pb.DaemonSet, pods: list[pb.Pod], revision: str, config: ConfigState
    ) -> None:
        """A ConfigChanged Event, once per new hash, when pods of this template have old config."""
        if not config.hash or opted_out(ds) or self._announced.get(key) == config.hash:
            return
        stale = [
            p
            for p in pods
            if not is_terminating(p)
            and is_current(p, revision, None)
            and not is_current(p, revision, config.hash)
        ]
        if not stale:
            return
        self._announced[key] = config.hash
        before = parse_sources(stale[0].metadata.annotations.get(CONFIG_SOURCES, ""))
        change = describe_change(before, dict(config.sources)) or "configuration changed"
        self.ctx.events.record(
            ds, "Normal", "ConfigChanged", f"{change}: rolling out to {len(stale)} pod(s)"
        )
        log.info("config_rollout", daemonset=key, change=change, pods=len(stale))

    async def _create(
        self, key: str, ds: pb.DaemonSet, node_name: str, revision: str, config: ConfigState
    ) -> None:
        try:
            pod = await self.ctx.client.create(new_pod(ds, node_name, revision, config))
        except Exception:
            self.expectations.forget(key)
            raise
        self.expectations.expect_create(key, pod.metadata.uid)
        self.ctx.events.record(
            ds, "Normal", "SuccessfulCreate", f"Created pod: {pod.metadata.name} on {node_name}"
        )

    async def _delete(self, key: str, ds: pb.DaemonSet, deletion: Deletion) -> None:
        pod = deletion.pod
        self.expectations.expect_delete(key, pod.metadata.uid)
        try:
            await self.ctx.client.delete(
                "Pod",
                pod.metadata.name,
                pod.metadata.namespace,
                grace_period_seconds=0 if deletion.force else None,
            )
        except NotFoundError:
            return
        except Exception:
            self.expectations.forget(key)
            raise
        self.ctx.events.record(
            ds, "Normal", "SuccessfulDelete", f"Deleted pod: {pod.metadata.name}"
        )


def daemonset_controller_from_config(config: ManagerConfig) -> DaemonSetController:
    """The manager's factory."""
    return DaemonSetController()
