"""The scheduler: binds pending pods to nodes.

Decisions are serial and binds are concurrent. ``reconcile`` decides and
*assumes* the pod onto the chosen node in one synchronous step (no await in
between, so two workers never decide on the same accounting), then awaits the
bind; with ``workers`` > 1 several binds are in flight while the next pod is
decided. The assumption is counted by ``ClusterState`` until the informer
shows the pod bound, so consecutive decisions never overcommit a node before
the watch catches up.

Binding is ``update(pod)`` with ``spec.node_name`` set, carrying the
resource_version read: a conflict means the pod changed, so the assumption is
dropped, the pod re-read and, if still pending, retried later with backoff —
never bound twice (the store also refuses to change a set nodeName). Then
``PodScheduled=True`` is written with ``update_status``.

Dynamic ports (a named port without a number) are picked with the node
(``controllers.scheduling``) and written into the pod's spec in the same
Update that binds it (``port`` and ``assigned``); the assumption counts them,
so the next decision never picks them again. A pod the agent failed with
``PortInUse`` (another program holds one of its ports) blocks its ports on
that node for ``PORT_IN_USE_BLOCK`` seconds: its replacement gets other
dynamic ports, and a fixed port waits instead of failing again at once.

A pod that fits nowhere gets ``PodScheduled=False`` / ``Unschedulable`` with
Kubernetes' reason string and a Warning Event ``FailedScheduling``; it is
retried with exponential backoff and at once when a node appears or changes
in a way that matters to placement, or when a bound pod goes away.

With ``metrics`` set, every decision is reported: ``scheduled`` (bound, with
the time the bind write took), ``unschedulable``, or ``error`` (the bind
failed); a pod found gone or no longer pending while binding is not counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from controllers.base import Controller, ControllerContext, Result, TemporaryError, queue_key
from controllers.podutil import mark_condition
from controllers.scheduling import (
    ClusterState,
    is_pending,
    is_terminal,
    node_allocatable,
    pod_ports,
    with_assigned_ports,
)
from controllers.scheduling import node_is_ready as _ready
from mizzen.api.messages import copy_message
from mizzen.client.errors import (
    AmbiguousWriteError,
    ConflictError,
    NotFoundError,
)
from protos import objects_pb2 as pb

if TYPE_CHECKING:
    from controllers.config import ManagerConfig

log = structlog.get_logger(__name__)

POD_SCHEDULED = "PodScheduled"
PORT_IN_USE = "PortInUse"
# How long ports another program held stay blocked on that node.
PORT_IN_USE_BLOCK = 30.0


class SchedulingObserver(Protocol):
    def attempt(self, result: str) -> None: ...

    def binding(self, seconds: float) -> None: ...


def _placement_view(node: pb.Node) -> tuple[Any, ...]:
    """What of a node matters to placement (heartbeats alone do not re-trigger pods)."""
    return (
        node.spec.SerializeToString(deterministic=True),
        tuple(sorted(node.metadata.labels.items())),
        node_allocatable(node),
        _ready(node),
        node.status.dynamic_ports.SerializeToString(deterministic=True),
    )


class Scheduler(Controller):
    """Places pending pods; see the module doc."""

    name = "scheduler"
    primary_kind = None

    def __init__(
        self,
        *,
        workers: int = 64,
        most_allocated: bool = False,
        scheduled_events: bool = True,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        port_in_use_block: float = PORT_IN_USE_BLOCK,
    ) -> None:
        self.workers = workers
        self.state = ClusterState(most_allocated=most_allocated)
        self.scheduled_events = scheduled_events
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.port_in_use_block = port_in_use_block
        self.unschedulable: dict[str, int] = {}
        self.bound = 0
        self.metrics: SchedulingObserver | None = None
        self._ctx: ControllerContext | None = None

    @property
    def ctx(self) -> ControllerContext:
        if self._ctx is None:
            raise RuntimeError("setup() was not called")
        return self._ctx

    @property
    def _clock(self) -> Callable[[], float]:
        return self._ctx.clock if self._ctx is not None else time.time

    # -- handlers (only accounting and enqueueing) ------------------------------------

    def setup(self, ctx: ControllerContext) -> None:
        self._ctx = ctx
        nodes = ctx.informers.get("nodes")
        nodes.on_add(self._node_added)
        nodes.on_update(self._node_updated)
        nodes.on_delete(lambda node: self.state.remove_node(node.metadata.name))
        pods = ctx.informers.get("pods")
        pods.on_add(self._pod_changed)
        pods.on_update(lambda old, new: self._pod_changed(new, old))
        pods.on_delete(self._pod_deleted)

    def _node_added(self, node: pb.Node) -> None:
        self.state.set_node(node)
        self._retry_unschedulable()

    def _node_updated(self, old: pb.Node, new: pb.Node) -> None:
        self.state.set_node(new)
        if _placement_view(old) != _placement_view(new):
            self._retry_unschedulable()

    def _pod_changed(self, pod: pb.Pod, old: pb.Pod | None = None) -> None:
        self.state.observe_pod(pod)
        if _failed_port_in_use(pod) and (old is None or not _failed_port_in_use(old)):
            self._block_ports(pod)
        key = queue_key(pod)
        if is_pending(pod):
            if old is None or old.spec != pod.spec or not is_pending(old):
                self.queue.add(key)  # not for status-only echoes of our own writes
            return
        self.unschedulable.pop(key, None)
        if old is not None and old.spec.node_name and not is_terminal(old) and is_terminal(pod):
            self._retry_unschedulable()

    def _pod_deleted(self, pod: pb.Pod) -> None:
        key = queue_key(pod)
        self.state.forget_pod(key)
        self.unschedulable.pop(key, None)
        if pod.spec.node_name and not is_terminal(pod):
            self._retry_unschedulable()

    def _block_ports(self, pod: pb.Pod) -> None:
        """The agent found one of pod's ports held by another program: block them all there
        for a while, from when the pod started (the agent checks before starting)."""
        now = self._clock()
        start = (
            pod.status.start_time.ToNanoseconds() / 1e9
            if pod.status.HasField("start_time")
            else now
        )
        until = min(start, now) + self.port_in_use_block
        if until > now:
            self.state.block_ports(pod.spec.node_name, pod_ports(pod), until)
            log.info("ports_blocked", node=pod.spec.node_name, pod=queue_key(pod), until=until)

    def _retry_unschedulable(self) -> None:
        for key in list(self.unschedulable):
            self.queue.add(key)

    # -- reconcile ----------------------------------------------------------------------

    async def reconcile(self, key: str) -> Result:
        pods = self.ctx.informers.get("pods")
        pod = pods.get_key(key)
        if pod is None or not is_pending(pod):
            self.unschedulable.pop(key, None)
            return Result()
        if self.state.is_assumed(key):
            return Result()  # a bind is in flight, or done and not yet echoed by the watch
        decision = self.state.decide(pod, self._clock())
        if not decision.node_name:
            if self.metrics is not None:
                self.metrics.attempt("unschedulable")
            return await self._unschedulable(pod, decision.message)
        wanted = with_assigned_ports(pod, decision.node_name, decision.ports)
        self.state.assume(wanted, decision.node_name)
        try:
            return await self._bind(wanted, decision.node_name)
        except Exception:
            if self.metrics is not None:
                self.metrics.attempt("error")
            raise

    async def _bind(self, pod: pb.Pod, node_name: str) -> Result:
        """Write pod: the pending pod with nodeName (and its dynamic ports) set."""
        key = queue_key(pod)
        client = self.ctx.client
        started = time.perf_counter()
        try:
            stored = await client.update(pod)
        except ConflictError:
            self.state.unassume(key)
            return await self._after_conflict(pod)
        except NotFoundError:
            self.state.unassume(key)
            return Result()
        except AmbiguousWriteError:
            stored = await self._resolve_ambiguous(pod, node_name)
            if stored is None:
                raise
        except BaseException:
            self.state.unassume(key)
            raise
        self.unschedulable.pop(key, None)
        self.bound += 1
        if self.metrics is not None:
            self.metrics.binding(time.perf_counter() - started)
            self.metrics.attempt("scheduled")
        # the store sets PodScheduled=True in the binding write itself (as Kubernetes' Binding)
        log.debug("pod_bound", pod=key, node=node_name)
        if self.scheduled_events:
            self.ctx.events.record(
                stored, "Normal", "Scheduled", f"Successfully assigned {key} to {node_name}"
            )
        return Result()

    async def _after_conflict(self, pod: pb.Pod) -> Result:
        """The pod changed under us: done if it is no longer pending, else retry later."""
        try:
            fresh = await self.ctx.client.get("pods", pod.metadata.name, pod.metadata.namespace)
        except NotFoundError:
            return Result()
        if not is_pending(fresh):
            return Result()
        raise TemporaryError(f"pod {queue_key(pod)} changed while binding; will retry")

    async def _resolve_ambiguous(self, pod: pb.Pod, node_name: str) -> pb.Pod | None:
        """After a write that may or may not have happened: the bound pod, or None (unassumed)."""
        key = queue_key(pod)
        try:
            fresh = await self.ctx.client.get("pods", pod.metadata.name, pod.metadata.namespace)
        except Exception:
            self.state.unassume(key)
            return None
        if fresh.spec.node_name == node_name:
            return fresh
        self.state.unassume(key)
        return None

    async def _unschedulable(self, pod: pb.Pod, message: str) -> Result:
        key = queue_key(pod)
        attempts = self.unschedulable.get(key, 0) + 1
        self.unschedulable[key] = attempts
        status_pod = copy_message(pod)
        if mark_condition(
            status_pod.status.conditions,
            POD_SCHEDULED,
            "False",
            "Unschedulable",
            message,
            self._clock(),
        ):
            try:
                await self.ctx.client.update_status(status_pod)
            except ConflictError:
                raise TemporaryError(f"pod {key} changed; will retry") from None
            except NotFoundError:
                self.unschedulable.pop(key, None)
                return Result()
        self.ctx.events.record(pod, "Warning", "FailedScheduling", message)
        log.info("pod_unschedulable", pod=key, reason=message, attempt=attempts)
        delay = min(self.backoff_initial * 2 ** (attempts - 1), self.backoff_max)
        expiry = self.state.block_expiry()
        if expiry is not None and expiry > self._clock():
            delay = min(delay, expiry - self._clock() + 0.1)  # retry when a block ends
        return Result(requeue_after=delay)


def _failed_port_in_use(pod: pb.Pod) -> bool:
    """The agent refused the pod: another program holds one of its ports on its node."""
    status = pod.status
    return bool(pod.spec.node_name) and status.phase == "Failed" and status.reason == PORT_IN_USE


def scheduler_from_config(config: ManagerConfig) -> Scheduler:
    """The manager's factory; options ``scheduler.most_allocated`` (pack nodes instead of
    spreading), ``scheduler.scheduled_events`` (default true) and
    ``scheduler.port_in_use_block`` (seconds, `mizzen controllers --port-in-use-block`)."""
    options = config.options
    return Scheduler(
        most_allocated=bool(options.get("scheduler.most_allocated", False)),
        scheduled_events=bool(options.get("scheduler.scheduled_events", True)),
        port_in_use_block=float(options.get("scheduler.port_in_use_block", PORT_IN_USE_BLOCK)),
    )
