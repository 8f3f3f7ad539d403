"""Endpoints controller: one Endpoints object per Service, listing where its pods serve.

For every Service with a selector, the Endpoints object of the same name lists
the pods of its namespace whose labels include the selector, bound to a node
and neither terminating nor finished (Kubernetes' shape):

* ``ip`` is the node's address (its ``InternalIP``, else its ``Hostname``,
  else the pod's ``status.hostIP``; a pod with none of these is left out);
  ``nodeName`` the node; ``targetRef`` the pod;
* a pod whose ``Ready`` condition is True is in ``addresses``, any other in
  ``notReadyAddresses``;
* each Service port becomes an ``EndpointPort`` with the Service port's name
  and protocol and the pod's host port for its ``targetPort``: a number is
  used as it is (pods share their host's network); a name is looked up among
  the pod's process ports (``processes[].ports[].name``) and gives that
  port's number (a dynamic port once the scheduler assigned it; a pod whose
  dynamic port is not assigned yet is left out until it is);
* addresses with the same ports share one subset (with dynamic ports,
  usually one pod per subset); subsets, and addresses in them, are sorted, so
  the same pods always give the same object.

A Service whose named ``targetPort`` no process of a selected pod declares
gets the condition ``TargetPortsResolved=False`` (reason
``TargetPortNotFound``, the message names the port and the pods) and a Warning
Event, and those pods are left out; otherwise the condition is True. A Service
that selects no pod has an Endpoints object with no subsets: not an error. A
Service without a selector is left alone (as in Kubernetes: its Endpoints are
written by hand, e.g. for something outside the cluster).

Endpoints the controller writes carry the label ``mizzen.io/managed-by:
endpoints-controller``; when their Service is deleted they are deleted too
(Endpoints without that label are never deleted by the controller).

Everything is driven by the shared informers (Services, Pods, Nodes,
Endpoints): a pod becoming ready or not, changing labels, or going away
queues the Services selecting it at once. The controller remembers the last
Endpoints it wrote per Service, so a cache that has not yet seen its own
write does not cost a conflict and a retry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from controllers.base import (
    BY_NODE,
    Controller,
    ControllerContext,
    Result,
    TemporaryError,
    is_terminating,
    split_key,
)
from controllers.podutil import is_ready, mark_condition
from controllers.status import write_status
from mizzen.api.pods import has_ended
from mizzen.api.service_validation import parse_target_port
from mizzen.client.errors import AlreadyExistsError, ConflictError, NotFoundError
from protos import objects_pb2 as pb

if TYPE_CHECKING:
    from controllers.config import ManagerConfig

log = structlog.get_logger(__name__)

CONDITION = "TargetPortsResolved"
MANAGED_BY = "mizzen.io/managed-by"
MANAGER = "endpoints-controller"
MAX_PODS_NAMED = 5

PortKey = tuple[tuple[str, int, str], ...]
"""A subset's ports: (name, port, protocol) per Service port, in the Service's order."""


# ------------------------------------------------------------------ pure helpers


def node_address(node: pb.Node | None) -> str:
    """The address clients reach a node at: its InternalIP, else its Hostname ("" if none)."""
    if node is None:
        return ""
    by_type: dict[str, str] = {}
    for address in node.status.addresses:
        by_type.setdefault(address.type, address.address)
    return by_type.get("InternalIP") or by_type.get("Hostname") or ""


def selects(svc: pb.Service, pod: pb.Pod) -> bool:
    """Whether svc's (non-empty) selector picks pod: every selector label is on the pod."""
    selector = svc.spec.selector
    if not selector or pod.metadata.namespace != svc.metadata.namespace:
        return False
    labels = pod.metadata.labels
    return all(labels.get(k) == v for k, v in selector.items())


def host_port(pod: pb.Pod, target_port: str) -> int | None:
    """The host port of pod for a targetPort; None when no process declares that name.

    0 means the name is declared by a dynamic port not assigned yet.
    """
    target = parse_target_port(target_port)
    if isinstance(target, int):
        return target
    for process in pod.spec.processes:
        for port in process.ports:
            if port.name == target:
                return int(port.port)
    return None


def in_service(pod: pb.Pod) -> bool:
    """Whether a selected pod can be listed at all: bound, not terminating, not finished."""
    return bool(pod.spec.node_name) and not is_terminating(pod) and not has_ended(pod)


@dataclass
class Computed:
    """What the Endpoints of a Service should hold, and what could not be resolved."""

    subsets: list[pb.EndpointSubset]
    # Service port index -> pods selected whose processes declare no port of that name.
    unresolved: dict[int, list[str]] = field(default_factory=dict)


def compute_endpoints(
    svc: pb.Service, pods: Iterable[pb.Pod], nodes: Mapping[str, pb.Node]
) -> Computed:
    """The subsets for svc from the pods of its namespace (pure; see the module doc)."""
    groups: dict[PortKey, tuple[list[pb.EndpointAddress], list[pb.EndpointAddress]]] = {}
    unresolved: dict[int, list[str]] = {}
    for pod in pods:
        if not selects(svc, pod) or not in_service(pod):
            continue
        ports: list[tuple[str, int, str]] = []
        missing = False
        for i, sp in enumerate(svc.spec.ports):
            port = host_port(pod, sp.target_port)
            if port is None:
                unresolved.setdefault(i, []).append(pod.metadata.name)
                missing = True
            elif port <= 0:
                missing = True  # a dynamic port the scheduler has not assigned yet
            else:
                ports.append((sp.name, port, sp.protocol or "TCP"))
        if missing:
            continue
        ip = node_address(nodes.get(pod.spec.node_name)) or pod.status.host_ip
        if not ip:
            continue
        address = pb.EndpointAddress(
            ip=ip,
            node_name=pod.spec.node_name,
            target_ref=pb.ObjectReference(
                kind="Pod",
                namespace=pod.metadata.namespace,
                name=pod.metadata.name,
                uid=pod.metadata.uid,
            ),
        )
        ready, not_ready = groups.setdefault(tuple(ports), ([], []))
        (ready if is_ready(pod) else not_ready).append(address)
    subsets = []
    for key in sorted(groups):
        ready, not_ready = groups[key]
        subset = pb.EndpointSubset()
        subset.addresses.extend(sorted(ready, key=_address_order))
        subset.not_ready_addresses.extend(sorted(not_ready, key=_address_order))
        for name, port, protocol in key:
            subset.ports.add(name=name, port=port, protocol=protocol)
        subsets.append(subset)
    for names in unresolved.values():
        names.sort()
    return Computed(subsets, unresolved)


def _address_order(address: pb.EndpointAddress) -> tuple[str, str]:
    return (address.ip, address.target_ref.name)


def resolution_condition(svc: pb.Service, computed: Computed) -> tuple[str, str, str]:
    """(status, reason, message) of the Service's TargetPortsResolved condition."""
    if not computed.unresolved:
        return "True", "TargetPortsFound", ""
    parts = []
    for i in sorted(computed.unresolved):
        sp = svc.spec.ports[i]
        pods = computed.unresolved[i]
        shown = ", ".join(pods[:MAX_PODS_NAMED])
        if len(pods) > MAX_PODS_NAMED:
            shown += f" and {len(pods) - MAX_PODS_NAMED} more"
        label = f"spec.ports[{i}]" + (f" ({sp.name})" if sp.name else "")
        parts.append(
            f'{label}: targetPort "{sp.target_port}" is not a port name declared by any '
            f"process of pod {shown}"
        )
    return "False", "TargetPortNotFound", "; ".join(parts) + " (those pods are left out)"


def desired_endpoints(svc: pb.Service, subsets: Sequence[pb.EndpointSubset]) -> pb.Endpoints:
    ep = pb.Endpoints()
    ep.metadata.name = svc.metadata.name
    ep.metadata.namespace = svc.metadata.namespace
    ep.metadata.labels.update(svc.metadata.labels)
    ep.metadata.labels[MANAGED_BY] = MANAGER
    ep.subsets.extend(subsets)
    return ep


def is_managed(ep: pb.Endpoints) -> bool:
    return ep.metadata.labels.get(MANAGED_BY) == MANAGER


def _rv(obj: Any) -> int:
    rv = obj.metadata.resource_version
    return int(rv) if rv.isdigit() else 0


def _pod_facts(pod: pb.Pod) -> tuple[Any, ...]:
    """What of a pod its Endpoints depend on: an update changing none of it is ignored."""
    ports = tuple(
        (p.name, p.port) for proc in pod.spec.processes for p in proc.ports if p.name or p.port
    )
    return (
        tuple(sorted(pod.metadata.labels.items())),
        pod.spec.node_name,
        pod.status.phase,
        pod.status.host_ip,
        is_ready(pod),
        is_terminating(pod),
        ports,
    )


# ------------------------------------------------------------------ the controller


class EndpointsController(Controller):
    name = "endpoints"
    workers = 4
    primary_kind = "Service"

    def __init__(self, config: ManagerConfig | None = None) -> None:
        # The last Endpoints this controller wrote per Service key (newer than the cache
        # until the cache sees it).
        self._written: dict[str, pb.Endpoints] = {}

    # -- handlers -------------------------------------------------------------------

    def setup(self, ctx: ControllerContext) -> None:
        self._ctx = ctx
        informers = ctx.informers
        self.services = informers.get("services")
        self.endpoints = informers.get("endpoints")
        self.pods = informers.get("pods")
        self.nodes = informers.get("nodes")
        self.enqueue_changes(self.services)
        self.enqueue_changes(self.endpoints)
        self.pods.on_add(self._pod_changed)
        self.pods.on_update(self._pod_updated)
        self.pods.on_delete(self._pod_changed)
        self.nodes.on_update(self._node_updated)

    def _pod_changed(self, pod: pb.Pod) -> None:
        for svc in self.services.in_namespace(pod.metadata.namespace):
            if selects(svc, pod):
                self.enqueue(svc)

    def _pod_updated(self, old: pb.Pod, new: pb.Pod) -> None:
        if _pod_facts(old) == _pod_facts(new):
            return
        for svc in self.services.in_namespace(new.metadata.namespace):
            if selects(svc, new) or selects(svc, old):
                self.enqueue(svc)

    def _node_updated(self, old: pb.Node, new: pb.Node) -> None:
        if node_address(old) == node_address(new):
            return
        for pod in self.pods.by_index(BY_NODE, new.metadata.name):
            self._pod_changed(pod)

    # -- reconcile ------------------------------------------------------------------

    async def reconcile(self, key: str) -> Result:
        namespace, name = split_key(key)
        svc = self.services.get(namespace, name)
        current = self._current(key)
        if svc is None or is_terminating(svc):
            if current is not None and is_managed(current):
                await self._delete(key, current)
            if svc is None:
                self._written.pop(key, None)
            return Result()
        if not svc.spec.selector:
            return Result()  # Endpoints written by hand: not ours
        nodes = {n.metadata.name: n for n in self.nodes.list()}
        computed = compute_endpoints(svc, self.pods.in_namespace(namespace), nodes)
        desired = desired_endpoints(svc, computed.subsets)
        await self._write(key, current, desired)
        await self._update_condition(svc, computed)
        return Result()

    def _current(self, key: str) -> pb.Endpoints | None:
        cached = self.endpoints.get_key(key)
        written = self._written.get(key)
        if written is not None and (cached is None or _rv(written) > _rv(cached)):
            return written
        if written is not None and cached is not None:
            del self._written[key]  # the cache has caught up
        return cached

    async def _write(self, key: str, current: pb.Endpoints | None, desired: pb.Endpoints) -> None:
        client = self.ctx.client
        try:
            if current is None:
                self._written[key] = await client.create(desired)
                log.info("endpoints_created", key=key, subsets=len(desired.subsets))
                return
            if (
                list(current.subsets) == list(desired.subsets)
                and current.metadata.labels == desired.metadata.labels
            ):
                return
            changed = pb.Endpoints()
            changed.CopyFrom(current)
            changed.metadata.labels.clear()
            changed.metadata.labels.update(desired.metadata.labels)
            del changed.subsets[:]
            changed.subsets.extend(desired.subsets)
            self._written[key] = await client.update(changed)
        except (AlreadyExistsError, ConflictError, NotFoundError) as err:
            self._written.pop(key, None)
            raise TemporaryError(f"endpoints {key}: {err}") from None

    async def _delete(self, key: str, current: pb.Endpoints) -> None:
        meta = current.metadata
        try:
            await self.ctx.client.delete(
                "endpoints", meta.name, meta.namespace, resource_version=meta.resource_version
            )
            log.info("endpoints_deleted", key=key)
        except NotFoundError:
            pass
        except ConflictError as err:
            raise TemporaryError(f"endpoints {key}: {err}") from None
        finally:
            self._written.pop(key, None)

    async def _update_condition(self, svc: pb.Service, computed: Computed) -> None:
        status, reason, message = resolution_condition(svc, computed)
        new = pb.ServiceStatus()
        new.CopyFrom(svc.status)
        was = next((c.status for c in svc.status.conditions if c.type == CONDITION), "")
        if not mark_condition(new.conditions, CONDITION, status, reason, message, self.ctx.clock()):
            return
        if await write_status(self.ctx.client, svc, new) and status == "False" and was != "False":
            self.ctx.events.record(svc, "Warning", reason, message)


def endpoints_controller_from_config(config: ManagerConfig) -> EndpointsController:
    return EndpointsController(config)


__all__ = [
    "CONDITION",
    "Computed",
    "EndpointsController",
    "compute_endpoints",
    "host_port",
    "node_address",
    "resolution_condition",
]
