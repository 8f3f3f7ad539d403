"""ReplicaSet controller: keep ``spec.replicas`` active pods matching the selector.

A pod belongs to a ReplicaSet when its controller reference has the RS's uid.
Reconcile claims pods like Kubernetes: orphans (no controller) in the
namespace that match the selector are adopted (owner reference added by an
update); owned pods that no longer match are released (reference removed).
Terminating pods (deletion_timestamp) and finished pods (Succeeded/Failed)
are not active and not counted. Too few → create from the template with
``generate_name "<rs>-"`` in slow-start batches (1, 2, 4, ... at most
``burst`` per reconcile); too many → delete the most expendable first
(unscheduled < pending < not ready < ready most recently < older).

The cache lags the controller's own writes, so the pods created (by uid, as
the store returns them) and the pods about to be deleted are recorded as
``Expectations``; until the cache shows them all (or they expire) the RS is
not scaled again, which is what prevents double creation. Status (replicas,
fully_labeled, ready, available after min_ready_seconds, observed_generation)
is written with update_status only when it changed.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog

from controllers.base import (
    Controller,
    ControllerContext,
    Result,
    TemporaryError,
    controller_ref,
    is_terminating,
    owner_key,
    split_key,
)
from controllers.claim import claim, selects
from controllers.expectations import Expectations
from controllers.podutil import (
    available_in,
    creation_seconds,
    is_active,
    is_ready,
    pod_from_template,
    ready_condition,
    seconds_of,
)
from controllers.status import write_status
from mizzen.client.errors import FencedError, NotFoundError, StoreClientError
from protos import objects_pb2 as pb

if TYPE_CHECKING:
    from controllers.config import ManagerConfig

log = structlog.get_logger(__name__)

BURST = 500
EXPECTATIONS_TTL = 60.0
_PHASE_RANK = {"Pending": 0, "Unknown": 1, "Running": 2}


# ------------------------------------------------------------------ pure helpers


def deletion_rank(pod: pb.Pod) -> tuple[Any, ...]:
    """Sort key: the pod to delete first sorts first (Kubernetes' ActivePods order)."""
    cond = ready_condition(pod)
    ready = cond is not None and cond.status == "True"
    ready_since = seconds_of(cond.last_transition_time) if ready and cond is not None else 0.0
    restarts = sum(s.restart_count for s in pod.status.process_statuses)
    return (
        bool(pod.spec.node_name),
        _PHASE_RANK.get(pod.status.phase, 0),
        ready,
        -ready_since,
        -restarts,
        -creation_seconds(pod),
        pod.metadata.name,
    )


def slow_start_batches(total: int, initial: int = 1) -> list[int]:
    """Sizes 1, 2, 4, ... summing to total (Kubernetes' slowStartBatch)."""
    out: list[int] = []
    size = initial
    while total > 0:
        n = min(size, total)
        out.append(n)
        total -= n
        size *= 2
    return out


# ------------------------------------------------------------------ the controller


class ReplicaSetController(Controller):
    name = "replicaset"
    workers = 4
    primary_kind = "ReplicaSet"

    def __init__(self, config: ManagerConfig | None = None, *, burst: int = BURST) -> None:
        self.burst = burst
        self.expectations = Expectations(ttl=EXPECTATIONS_TTL)

    # -- handlers -------------------------------------------------------------------

    def setup(self, ctx: ControllerContext) -> None:
        self._ctx = ctx
        self.expectations.clock = ctx.clock
        self.enqueue_changes(ctx.informers.get("replicasets"))
        pods = ctx.informers.get("pods")
        pods.on_add(self._pod_added)
        pods.on_update(self._pod_updated)
        pods.on_delete(self._pod_deleted)

    def _pod_added(self, pod: pb.Pod) -> None:
        key = owner_key(pod, "ReplicaSet")
        if key is not None:
            self.queue.add(key)
        elif controller_ref(pod) is None:
            self._enqueue_matching(pod)

    def _pod_updated(self, old: pb.Pod, new: pb.Pod) -> None:
        key = owner_key(new, "ReplicaSet")
        old_key = owner_key(old, "ReplicaSet")
        if old_key is not None and old_key != key:
            self.queue.add(old_key)
        if key is not None:
            self.queue.add(key)
        elif controller_ref(new) is None:
            self._enqueue_matching(new)

    def _pod_deleted(self, pod: pb.Pod) -> None:
        key = owner_key(pod, "ReplicaSet")
        if key is not None:
            self.expectations.observe_deleted(key, pod.metadata.uid)
            self.queue.add(key)

    def _enqueue_matching(self, pod: pb.Pod) -> None:
        for rs in self.ctx.informers.get("replicasets").in_namespace(pod.metadata.namespace):
            if selects(rs, pod):
                self.enqueue(rs)

    # -- reconcile ------------------------------------------------------------------

    async def reconcile(self, key: str) -> Result:
        ctx = self.ctx
        namespace, name = split_key(key)
        rs = ctx.informers.get("replicasets").get(namespace, name)
        if rs is None:
            self.expectations.forget(key)
            return Result()
        informer = ctx.informers.get("pods")
        candidates = [*informer.by_owner(rs.metadata.uid), *informer.orphans(namespace)]
        pods = await claim(ctx.client, rs, candidates)
        active = [p for p in pods if is_active(p)]
        can_scale = self.expectations.satisfied(key, candidates) and not is_terminating(rs)
        if can_scale and await self._scale(key, rs, active):
            return Result()  # the pods' events bring this key back with the new counts
        return await self._update_status(rs, active)

    async def _scale(self, key: str, rs: pb.ReplicaSet, active: list[pb.Pod]) -> bool:
        """Create or delete pods toward spec.replicas; whether anything was sent."""
        diff = len(active) - rs.spec.replicas
        if diff < 0:
            await self._create(key, rs, min(-diff, self.burst))
        elif diff > 0:
            victims = sorted(active, key=deletion_rank)[: min(diff, self.burst)]
            await self._delete(key, rs, victims)
        return diff != 0

    async def _create(self, key: str, rs: pb.ReplicaSet, count: int) -> None:
        template = pod_from_template(rs, rs.spec.template)
        created = 0
        for size in slow_start_batches(count):
            results = await asyncio.gather(
                *(self.ctx.client.create(template) for _ in range(size)), return_exceptions=True
            )
            pods = [r for r in results if not isinstance(r, BaseException)]
            errors = [r for r in results if isinstance(r, BaseException)]
            self.expectations.expect_creations(key, (p.metadata.uid for p in pods))
            created += len(pods)
            if errors:
                first = errors[0]
                if isinstance(first, FencedError):
                    raise first
                self.ctx.events.record(rs, "Warning", "FailedCreate", f"Error creating: {first}")
                if not isinstance(first, StoreClientError):
                    raise first
                raise TemporaryError(f"created {created} of {count} pods: {first}")
        log.info("pods_created", rs=rs.metadata.name, count=created)
        self.ctx.events.record(rs, "Normal", "SuccessfulCreate", f"Created {created} pod(s)")

    async def _delete(self, key: str, rs: pb.ReplicaSet, victims: list[pb.Pod]) -> None:
        self.expectations.expect_deletions(key, (p.metadata.uid for p in victims))
        results = await asyncio.gather(
            *(
                self.ctx.client.delete("pods", p.metadata.name, p.metadata.namespace)
                for p in victims
            ),
            return_exceptions=True,
        )
        errors = []
        for pod, result in zip(victims, results, strict=True):
            if isinstance(result, BaseException):
                self.expectations.lower(key, pod.metadata.uid)
                if not isinstance(result, NotFoundError):
                    errors.append(result)
            else:
                self.ctx.events.record(
                    rs, "Normal", "SuccessfulDelete", f"Deleted pod: {pod.metadata.name}"
                )
        if errors:
            first = errors[0]
            if isinstance(first, FencedError) or not isinstance(first, StoreClientError):
                raise first
            self.ctx.events.record(rs, "Warning", "FailedDelete", f"Error deleting: {first}")
            raise TemporaryError(f"deleting pods: {first}")

    async def _update_status(self, rs: pb.ReplicaSet, active: list[pb.Pod]) -> Result:
        now = self.ctx.clock()
        status, wait = compute_status(rs, active, now)
        if status != rs.status and not await write_status(self.ctx.client, rs, status):
            return Result()
        return Result(requeue_after=wait)


def compute_status(
    rs: pb.ReplicaSet, active: list[pb.Pod], now: float
) -> tuple[pb.ReplicaSetStatus, float | None]:
    """(the status rs should have, seconds until a ready pod becomes available or None)."""
    status = pb.ReplicaSetStatus()
    status.CopyFrom(rs.status)
    template_labels = rs.spec.template.metadata.labels
    status.replicas = len(active)
    status.fully_labeled_replicas = sum(
        1 for p in active if all(p.metadata.labels.get(k) == v for k, v in template_labels.items())
    )
    status.ready_replicas = sum(1 for p in active if is_ready(p))
    available = 0
    wait: float | None = None
    for pod in active:
        remaining = available_in(pod, rs.spec.min_ready_seconds, now)
        if remaining is None:
            continue
        if remaining <= 0:
            available += 1
        else:
            wait = remaining if wait is None else min(wait, remaining)
    status.available_replicas = available
    status.observed_generation = rs.metadata.generation
    return status, wait
