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

The cache lags the controller's own writes, so creations and deletions are
recorded as ``Expectations`` before they are sent; until the informer has
seen them all (or they expire) the RS is not scaled again, which is what
prevents double creation. Status (replicas, fully_labeled, ready, available
after min_ready_seconds, observed_generation) is written with update_status
only when it changed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
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
from mizzen.api import selectors
from mizzen.client.errors import ConflictError, FencedError, NotFoundError, StoreClientError
from protos import objects_pb2 as pb

if TYPE_CHECKING:
    from controllers.manager import ManagerConfig

log = structlog.get_logger(__name__)

BURST = 500
EXPECTATIONS_TTL = 60.0
_PHASE_RANK = {"Pending": 0, "Unknown": 1, "Running": 2}


# ------------------------------------------------------------------ pure helpers


def is_active(pod: pb.Pod) -> bool:
    """Counts as a replica: not terminating and not finished."""
    return not is_terminating(pod) and pod.status.phase not in ("Succeeded", "Failed")


def ready_condition(pod: pb.Pod) -> pb.Condition | None:
    for cond in pod.status.conditions:
        if cond.type == "Ready":
            return cond
    return None


def is_ready(pod: pb.Pod) -> bool:
    cond = ready_condition(pod)
    return cond is not None and cond.status == "True"


def _seconds(ts: Any) -> float:
    return float(ts.seconds) + ts.nanos / 1e9


def available_in(pod: pb.Pod, min_ready_seconds: int, now: float) -> float | None:
    """0 when the pod is available now, seconds until it will be if ready, None if not ready."""
    cond = ready_condition(pod)
    if cond is None or cond.status != "True":
        return None
    if min_ready_seconds <= 0:
        return 0.0
    since = _seconds(cond.last_transition_time) if cond.HasField("last_transition_time") else 0.0
    return max(since + min_ready_seconds - now, 0.0)


def deletion_rank(pod: pb.Pod) -> tuple[Any, ...]:
    """Sort key: the pod to delete first sorts first (Kubernetes' ActivePods order)."""
    cond = ready_condition(pod)
    ready = cond is not None and cond.status == "True"
    ready_since = _seconds(cond.last_transition_time) if ready and cond is not None else 0.0
    restarts = sum(s.restart_count for s in pod.status.process_statuses)
    return (
        bool(pod.spec.node_name),
        _PHASE_RANK.get(pod.status.phase, 0),
        ready,
        -ready_since,
        -restarts,
        -_seconds(pod.metadata.creation_timestamp),
        pod.metadata.name,
    )


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


@dataclass
class _Expected:
    adds: int
    deletes: int
    at: float


class Expectations:
    """Creations and deletions a controller has sent but its cache has not shown yet.

    Counts per key: ``expect`` before sending, ``observed_add`` /
    ``observed_delete`` from informer handlers, ``lower`` for a write that
    failed. ``satisfied`` once both counts reached zero or after ``ttl``.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, ttl: float = EXPECTATIONS_TTL):
        self._clock = clock
        self.ttl = ttl
        self._by_key: dict[str, _Expected] = {}

    def expect(self, key: str, adds: int = 0, deletes: int = 0) -> None:
        current = self._by_key.get(key)
        if current is None or self.satisfied(key):
            self._by_key[key] = _Expected(adds, deletes, self._clock())
        else:
            current.adds += adds
            current.deletes += deletes
            current.at = self._clock()

    def lower(self, key: str, adds: int = 0, deletes: int = 0) -> None:
        current = self._by_key.get(key)
        if current is not None:
            current.adds -= adds
            current.deletes -= deletes

    def observed_add(self, key: str) -> None:
        self.lower(key, adds=1)

    def observed_delete(self, key: str) -> None:
        self.lower(key, deletes=1)

    def satisfied(self, key: str) -> bool:
        current = self._by_key.get(key)
        if current is None:
            return True
        if current.adds <= 0 and current.deletes <= 0:
            return True
        return self._clock() - current.at > self.ttl

    def forget(self, key: str) -> None:
        self._by_key.pop(key, None)


# ------------------------------------------------------------------ the controller


def _owner_key(pod: pb.Pod, kind: str) -> str | None:
    ref = controller_ref(pod)
    if ref is None or ref.kind != kind:
        return None
    return f"{pod.metadata.namespace}/{ref.name}"


class ReplicaSetController(Controller):
    name = "replicaset"
    workers = 4
    primary_kind = "ReplicaSet"

    def __init__(self, config: ManagerConfig | None = None, *, burst: int = BURST) -> None:
        self.burst = burst
        self.expectations = Expectations()
        self._ctx: ControllerContext | None = None

    @property
    def ctx(self) -> ControllerContext:
        assert self._ctx is not None, "setup() first"
        return self._ctx

    # -- handlers -------------------------------------------------------------------

    def setup(self, ctx: ControllerContext) -> None:
        self._ctx = ctx
        rs = ctx.informers.get("replicasets")
        rs.on_add(self.enqueue)
        rs.on_update(lambda old, new: self.enqueue(new))
        rs.on_delete(self._rs_deleted)
        pods = ctx.informers.get("pods")
        pods.on_add(self._pod_added)
        pods.on_update(self._pod_updated)
        pods.on_delete(self._pod_deleted)

    def _rs_deleted(self, rs: pb.ReplicaSet) -> None:
        self.enqueue(rs)

    def _pod_added(self, pod: pb.Pod) -> None:
        key = _owner_key(pod, "ReplicaSet")
        if key is not None:
            self.expectations.observed_add(key)
            self.queue.add(key)
        elif controller_ref(pod) is None:
            self._enqueue_matching(pod)

    def _pod_updated(self, old: pb.Pod, new: pb.Pod) -> None:
        key = _owner_key(new, "ReplicaSet")
        if key is not None and not is_terminating(old) and is_terminating(new):
            self.expectations.observed_delete(key)
        old_key = _owner_key(old, "ReplicaSet")
        if old_key is not None and old_key != key:
            self.queue.add(old_key)
        if key is not None:
            self.queue.add(key)
        elif controller_ref(new) is None:
            self._enqueue_matching(new)

    def _pod_deleted(self, pod: pb.Pod) -> None:
        key = _owner_key(pod, "ReplicaSet")
        if key is not None:
            if not is_terminating(pod):
                self.expectations.observed_delete(key)
            self.queue.add(key)

    def _enqueue_matching(self, pod: pb.Pod) -> None:
        for rs in self.ctx.informers.get("replicasets").in_namespace(pod.metadata.namespace):
            if _selects(rs, pod):
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
        pods = await self._claim(rs, candidates)
        active = [p for p in pods if is_active(p)]
        can_scale = self.expectations.satisfied(key) and not is_terminating(rs)
        if can_scale and await self._scale(key, rs, active):
            return Result()  # the pods' events bring this key back with the new counts
        return await self._update_status(rs, active)

    async def _claim(self, rs: pb.ReplicaSet, candidates: Iterable[pb.Pod]) -> list[pb.Pod]:
        """Pods owned by rs after adopting matching orphans and releasing non-matching ones."""
        owned: list[pb.Pod] = []
        uid = rs.metadata.uid
        matcher = _matcher(rs)
        for pod in candidates:
            ref = controller_ref(pod)
            matches = matcher is not None and matcher.matches(pod.metadata.labels)
            if ref is not None and ref.uid == uid:
                if matches:
                    owned.append(pod)
                elif not is_terminating(pod):
                    await self._release(rs, pod)
            elif ref is None and matches and not is_terminating(pod) and not is_terminating(rs):
                adopted = await self._adopt(rs, pod)
                if adopted is not None:
                    owned.append(adopted)
        return owned

    async def _adopt(self, rs: pb.ReplicaSet, pod: pb.Pod) -> pb.Pod | None:
        changed = pb.Pod()
        changed.CopyFrom(pod)
        changed.metadata.owner_references.append(owner_reference(rs))
        try:
            stored: pb.Pod = await self.ctx.client.update(changed)
        except (ConflictError, NotFoundError) as err:
            raise TemporaryError(f"adopting pod {pod.metadata.name}: {err}") from None
        log.info("pod_adopted", rs=rs.metadata.name, pod=pod.metadata.name)
        return stored

    async def _release(self, rs: pb.ReplicaSet, pod: pb.Pod) -> None:
        changed = pb.Pod()
        changed.CopyFrom(pod)
        refs = [r for r in changed.metadata.owner_references if r.uid != rs.metadata.uid]
        del changed.metadata.owner_references[:]
        changed.metadata.owner_references.extend(refs)
        try:
            await self.ctx.client.update(changed)
        except NotFoundError:
            return
        except ConflictError as err:
            raise TemporaryError(f"releasing pod {pod.metadata.name}: {err}") from None
        log.info("pod_released", rs=rs.metadata.name, pod=pod.metadata.name)

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
        self.expectations.expect(key, adds=count)
        template = pod_from_template(rs, rs.spec.template)
        created = 0
        batches = slow_start_batches(count)
        for i, size in enumerate(batches):
            results = await asyncio.gather(
                *(self.ctx.client.create(template) for _ in range(size)), return_exceptions=True
            )
            errors = [r for r in results if isinstance(r, BaseException)]
            created += size - len(errors)
            if errors:
                skipped = sum(batches[i + 1 :])
                self.expectations.lower(key, adds=len(errors) + skipped)
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
        self.expectations.expect(key, deletes=len(victims))
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
                self.expectations.lower(key, deletes=1)
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
        if status != rs.status:
            changed = pb.ReplicaSet()
            changed.CopyFrom(rs)
            changed.status.CopyFrom(status)
            try:
                await self.ctx.client.update_status(changed)
            except ConflictError as err:
                raise TemporaryError(f"status: {err}") from None
            except NotFoundError:
                return Result()
        return Result(requeue_after=wait)


def _matcher(rs: pb.ReplicaSet) -> selectors.LabelMatcher | None:
    """The RS's selector; None for an empty or malformed one (selects nothing, like Kubernetes)."""
    try:
        matcher = selectors.from_label_selector(rs.spec.selector)
    except selectors.SelectorError:
        return None
    return None if matcher.empty() else matcher


def _selects(rs: pb.ReplicaSet, pod: pb.Pod) -> bool:
    matcher = _matcher(rs)
    return matcher is not None and matcher.matches(pod.metadata.labels)


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
