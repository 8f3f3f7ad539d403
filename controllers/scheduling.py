"""Placement decisions of the scheduler: pure functions and an in-memory accounting.

Nothing here performs I/O or reads a clock. ``ClusterState`` is the
scheduler's view of where pods are and what they use: pods the informer shows
bound, plus pods the scheduler has *assumed* onto a node (binding in flight or
not yet echoed by the watch). Both are keyed by the pod key, so a pod is
counted at most once however the informer and the assumption interleave:
consecutive decisions never overcommit a node before the watch catches up.

Filters follow Kubernetes' order and wording (one reason per node, except
resources which lists every insufficient resource); scoring is lexicographic:
fewer untolerated PreferNoSchedule taints, then fewer pods of the same
controller owner (spread), then least (or most) allocated cpu+memory, then
fewer pods, then a stable hash of (pod, node) so ties spread deterministically.

Host ports: a declared port number is exclusive per node and protocol (fixed
ports, as Kubernetes' hostPort). A named port without a number is dynamic
(Nomad's dynamic ports): the node must have enough free ports in its dynamic
range (``NodeStatus.dynamic_ports``, the agent's ``--port-range``; a node that
publishes none has ``DEFAULT_DYNAMIC_PORTS``), and once a node is chosen the
ports are picked there, probing from a point given by a hash of the pod, so
consecutive pods do not all try the same low ports and a pod replacing one that
failed on a port another program holds starts elsewhere. Ports used by another
program (a pod failed with ``PortInUse``) are blocked on that node for a
while (``block_ports``): neither assigned nor granted to a fixed port.

One file because it is the scheduler's whole decision, pure: the accounting of
what nodes hold, the filters and the scoring are read together, in Kubernetes'
order.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from mizzen.api.pods import has_ended
from protos import objects_pb2 as pb

UNREACHABLE_TAINT = "node.mizzen.io/unreachable"
_BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")

REASON_NOT_READY = "node(s) were not ready"
REASON_UNSCHEDULABLE = "node(s) were unschedulable"
REASON_SELECTOR = "node(s) didn't match node selector"
REASON_PORTS = "node(s) didn't have free ports for the requested pod ports"
REASON_DYNAMIC_PORTS = "node(s) didn't have enough free ports in their dynamic port range"
REASON_PORTS_IN_USE = "node(s) had a requested port in use by another program (PortInUse)"

# Nomad's default dynamic range: below Linux's ephemeral ports (32768-60999), so
# outgoing connections of the host do not take the ports pods are given.
DEFAULT_DYNAMIC_PORTS = (20000, 32000)

Port = tuple[str, int]  # (protocol, port)


@dataclass(frozen=True)
class Resources:
    """Amounts of cpu (millicores), memory (bytes) and pids."""

    cpu_millis: int = 0
    memory_bytes: int = 0
    pids: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            self.cpu_millis + other.cpu_millis,
            self.memory_bytes + other.memory_bytes,
            self.pids + other.pids,
        )

    def __sub__(self, other: Resources) -> Resources:
        return Resources(
            self.cpu_millis - other.cpu_millis,
            self.memory_bytes - other.memory_bytes,
            self.pids - other.pids,
        )


@dataclass(frozen=True)
class Allocatable:
    """What a node offers pods; None means the node did not say (no limit)."""

    cpu_millis: int | None = None
    memory_bytes: int | None = None
    pids: int | None = None


def pod_key(pod: Any) -> str:
    return f"{pod.metadata.namespace}/{pod.metadata.name}"


def pod_requests(pod: pb.Pod) -> Resources:
    """The sum of the requests of the pod's processes; unset requests count as zero."""
    cpu = mem = pids = 0
    for process in pod.spec.processes:
        req = process.resources.requests
        cpu += req.cpu_millis
        mem += req.memory_bytes
        pids += req.pids
    return Resources(cpu, mem, pids)


def pod_ports(pod: pb.Pod) -> frozenset[Port]:
    """The host ports the pod's processes declare or were assigned: processes share the
    host's network, so two pods with the same port cannot share a node (Kubernetes'
    hostPort)."""
    return frozenset(
        (port.protocol or "TCP", port.port)
        for process in pod.spec.processes
        for port in process.ports
        if port.port > 0
    )


def _is_dynamic(port: pb.ProcessPort) -> bool:
    return port.port == 0 and not port.assigned


def dynamic_port_protocols(pod: pb.Pod) -> tuple[str, ...]:
    """The protocol of each dynamic port not assigned yet, processes and ports in order."""
    return tuple(
        port.protocol or "TCP"
        for process in pod.spec.processes
        for port in process.ports
        if _is_dynamic(port)
    )


def with_assigned_ports(pod: pb.Pod, node_name: str, ports: Sequence[int]) -> pb.Pod:
    """A copy of pod bound to node_name, its dynamic ports (in dynamic_port_protocols'
    order) given the numbers in ports and marked assigned: the binding Update."""
    out = pb.Pod()
    out.CopyFrom(pod)
    out.spec.node_name = node_name
    numbers = iter(ports)
    for process in out.spec.processes:
        for port in process.ports:
            if _is_dynamic(port):
                port.port = next(numbers)
                port.assigned = True
    return out


def dynamic_range(node: pb.Node) -> tuple[int, int]:
    """The node's dynamic port range (first, last), or the default when it has none."""
    published = node.status.dynamic_ports
    if 0 < published.first <= published.last <= 65535:
        return int(published.first), int(published.last)
    return DEFAULT_DYNAMIC_PORTS


def controller_owner(obj: Any) -> str:
    """The uid of obj's managing controller, or "" when it has none."""
    for ref in obj.metadata.owner_references:
        if ref.controller:
            return str(ref.uid)
    return ""


def is_terminal(pod: pb.Pod) -> bool:
    return has_ended(pod)


def is_pending(pod: pb.Pod) -> bool:
    """Waiting for the scheduler: unbound and not being deleted."""
    return not pod.spec.node_name and not pod.metadata.HasField("deletion_timestamp")


def node_allocatable(node: pb.Node) -> Allocatable:
    """status.allocatable, falling back to capacity field by field."""
    alloc, cap = node.status.allocatable, node.status.capacity

    def pick(name: str) -> int | None:
        if alloc.HasField(name):
            return int(getattr(alloc, name))
        if cap.HasField(name):
            return int(getattr(cap, name))
        return None

    return Allocatable(pick("cpu_millis"), pick("memory_bytes"), pick("pids"))


def node_is_ready(node: pb.Node) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)


def tolerates(toleration: pb.Toleration, taint: pb.Taint) -> bool:
    """Kubernetes' rule: effect empty matches all; empty key with Exists matches every taint."""
    if toleration.effect and toleration.effect != taint.effect:
        return False
    operator = toleration.operator or "Equal"
    if not toleration.key:
        return operator == "Exists"
    if toleration.key != taint.key:
        return False
    return operator == "Exists" or toleration.value == taint.value


def untolerated(
    taints: Iterable[pb.Taint], tolerations: Sequence[pb.Toleration], effects: Sequence[str]
) -> list[pb.Taint]:
    """The taints with one of effects that no toleration matches."""
    return [
        t
        for t in taints
        if t.effect in effects and not any(tolerates(tol, t) for tol in tolerations)
    ]


@dataclass(frozen=True)
class PodInfo:
    """What scheduling needs from a pod, extracted once per decision."""

    key: str
    requests: Resources
    owner: str
    tolerations: tuple[pb.Toleration, ...]
    node_selector: tuple[tuple[str, str], ...]
    hash: int
    ports: frozenset[Port] = frozenset()
    # protocols of the dynamic ports to assign, in order, and how many per protocol
    dynamic: tuple[str, ...] = ()
    dynamic_counts: tuple[tuple[str, int], ...] = ()

    @classmethod
    def of(cls, pod: pb.Pod) -> PodInfo:
        key = pod_key(pod)
        dynamic = dynamic_port_protocols(pod)
        return cls(
            key,
            pod_requests(pod),
            controller_owner(pod),
            tuple(pod.spec.tolerations),
            tuple(pod.spec.node_selector.items()),
            zlib.crc32(key.encode()),
            pod_ports(pod),
            dynamic,
            tuple(Counter(dynamic).items()),
        )


class NodeInfo:
    """One node (fields extracted once) and the pods counted against it."""

    def __init__(self, node: pb.Node) -> None:
        self.node = node
        self.name = str(node.metadata.name)
        self.allocatable = node_allocatable(node)
        self.ready = node_is_ready(node)
        self.unschedulable = bool(node.spec.unschedulable)
        self.labels = dict(node.metadata.labels)
        taints = tuple(node.spec.taints)
        self.blocking_taints = tuple(t for t in taints if t.effect in _BLOCKING_EFFECTS)
        self.prefer_taints = tuple(t for t in taints if t.effect == "PreferNoSchedule")
        self.name_hash = zlib.crc32(self.name.encode())
        self.cpu_used = 0
        self.memory_used = 0
        self.pids_used = 0
        self.pod_count = 0
        self.owner_counts: Counter[str] = Counter()
        self.ports_used: Counter[Port] = Counter()
        self.dynamic_first, self.dynamic_last = dynamic_range(node)
        # distinct used ports inside the dynamic range, per protocol
        self.dynamic_used: Counter[str] = Counter()
        # ports another program holds (a pod failed with PortInUse) -> blocked until
        self.blocked: dict[Port, float] = {}

    @classmethod
    def of(cls, node: pb.Node) -> NodeInfo:
        return cls(node)

    @property
    def requested(self) -> Resources:
        return Resources(self.cpu_used, self.memory_used, self.pids_used)

    def take_accounting(self, other: NodeInfo) -> None:
        """Carry the pods counted on other (the same node, an older version) over."""
        self.cpu_used, self.memory_used, self.pids_used = (
            other.cpu_used,
            other.memory_used,
            other.pids_used,
        )
        self.pod_count = other.pod_count
        self.owner_counts = other.owner_counts
        self.ports_used = other.ports_used
        self.blocked = other.blocked
        if (self.dynamic_first, self.dynamic_last) == (other.dynamic_first, other.dynamic_last):
            self.dynamic_used = other.dynamic_used
        else:
            self.dynamic_used = Counter(
                protocol for protocol, port in self.ports_used if self.in_range(port)
            )

    def in_range(self, port: int) -> bool:
        return self.dynamic_first <= port <= self.dynamic_last

    def _taken(self, port: Port, own: frozenset[Port]) -> bool:
        return port in self.ports_used or port in self.blocked or port in own

    def has_dynamic_room(self, pod: PodInfo) -> bool:
        """Whether the node's range has a free port for every dynamic port of pod."""
        size = self.dynamic_last - self.dynamic_first + 1
        if not self.blocked and not pod.ports:  # the usual case, kept short
            for protocol, wanted in pod.dynamic_counts:
                if size - self.dynamic_used[protocol] < wanted:
                    return False
            return True
        for protocol, wanted in pod.dynamic_counts:
            also = {
                port
                for port in (*self.blocked, *pod.ports)
                if port[0] == protocol and self.in_range(port[1]) and port not in self.ports_used
            }
            taken = self.dynamic_used[protocol] + len(also)
            if size - taken < wanted:
                return False
        return True

    def pick_dynamic(self, pod: PodInfo) -> tuple[int, ...]:
        """Free ports of the range for pod's dynamic ports (has_dynamic_room was True).

        Linear probing from a point given by the pod's hash: deterministic for a pod,
        spread across pods."""
        size = self.dynamic_last - self.dynamic_first + 1
        chosen: set[Port] = set()
        out = []
        for k, protocol in enumerate(pod.dynamic):
            start = ((pod.hash + k * 40503) * 2654435761) % size
            for step in range(size):
                port = (protocol, self.dynamic_first + (start + step) % size)
                if not self._taken(port, pod.ports) and port not in chosen:
                    chosen.add(port)
                    out.append(port[1])
                    break
            else:
                raise ValueError(f"no free {protocol} port left in the dynamic range")
        return tuple(out)

    def add(self, requests: Resources, owner: str, ports: frozenset[Port] = frozenset()) -> None:
        self.cpu_used += requests.cpu_millis
        self.memory_used += requests.memory_bytes
        self.pids_used += requests.pids
        self.pod_count += 1
        if owner:
            self.owner_counts[owner] += 1
        for port in ports:
            self.ports_used[port] += 1
            if self.ports_used[port] == 1 and self.in_range(port[1]):
                self.dynamic_used[port[0]] += 1

    def remove(self, requests: Resources, owner: str, ports: frozenset[Port] = frozenset()) -> None:
        self.cpu_used -= requests.cpu_millis
        self.memory_used -= requests.memory_bytes
        self.pids_used -= requests.pids
        self.pod_count -= 1
        if owner:
            self.owner_counts[owner] -= 1
            if self.owner_counts[owner] <= 0:
                del self.owner_counts[owner]
        for port in ports:
            self.ports_used[port] -= 1
            if self.ports_used[port] <= 0:
                del self.ports_used[port]
                if self.in_range(port[1]):
                    self.dynamic_used[port[0]] -= 1


def _insufficient(info: NodeInfo, req: Resources) -> list[str]:
    alloc = info.allocatable
    out = []
    if alloc.cpu_millis is not None and info.cpu_used + req.cpu_millis > alloc.cpu_millis:
        out.append("Insufficient cpu")
    if alloc.memory_bytes is not None and info.memory_used + req.memory_bytes > alloc.memory_bytes:
        out.append("Insufficient memory")
    if alloc.pids is not None and info.pids_used + req.pids > alloc.pids:
        out.append("Insufficient pids")
    return out


def filter_node(info: NodeInfo, pod: PodInfo) -> list[str]:
    """Why pod cannot go to the node (empty when it fits)."""
    if info.unschedulable:
        return [REASON_UNSCHEDULABLE]
    if not info.ready:
        return [REASON_NOT_READY]
    if info.blocking_taints:
        blocking = untolerated(info.blocking_taints, pod.tolerations, _BLOCKING_EFFECTS)
        if blocking:
            taint = blocking[0]
            return [f"node(s) had untolerated taint {{{taint.key}: {taint.value}}}"]
    if pod.node_selector:
        labels = info.labels
        for key, value in pod.node_selector:
            if labels.get(key) != value:
                return [REASON_SELECTOR]
    if pod.ports:
        if any(port in info.ports_used for port in pod.ports):
            return [REASON_PORTS]
        if info.blocked and any(port in info.blocked for port in pod.ports):
            return [REASON_PORTS_IN_USE]
    if pod.dynamic and not info.has_dynamic_room(pod):
        return [REASON_DYNAMIC_PORTS]
    return _insufficient(info, pod.requests)


def _fraction(used: int, total: int | None) -> float:
    if total is None or total <= 0:
        return 0.0
    return used / total


ScoreKey = tuple[int, int, float, int, int]


def score_key(info: NodeInfo, pod: PodInfo, *, most_allocated: bool = False) -> ScoreKey:
    """Sort key of a feasible node: the smallest is the best placement."""
    prefer = (
        len(untolerated(info.prefer_taints, pod.tolerations, ("PreferNoSchedule",)))
        if info.prefer_taints
        else 0
    )
    spread = info.owner_counts.get(pod.owner, 0) if pod.owner else 0
    req, alloc = pod.requests, info.allocatable
    allocated = (
        _fraction(info.cpu_used + req.cpu_millis, alloc.cpu_millis)
        + _fraction(info.memory_used + req.memory_bytes, alloc.memory_bytes)
    ) / 2
    tie = ((pod.hash ^ info.name_hash) * 2654435761) & 0xFFFFFFFF
    return (prefer, spread, -allocated if most_allocated else allocated, info.pod_count, tie)


def unschedulable_message(total_nodes: int, reasons: Counter[str]) -> str:
    """``0/5 nodes are available: 3 Insufficient memory, 2 node(s) didn't match ...``.

    Reasons are sorted by count (most first), then alphabetically.
    """
    if total_nodes == 0:
        return "0/0 nodes are available: no nodes registered."
    ordered = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
    detail = ", ".join(f"{count} {reason}" for reason, count in ordered)
    return f"0/{total_nodes} nodes are available: {detail}."


@dataclass(frozen=True)
class Decision:
    """node_name is the chosen node, or "" with message saying why none fits; ports are
    the numbers picked there for the pod's dynamic ports (dynamic_port_protocols' order)."""

    node_name: str
    message: str = ""
    ports: tuple[int, ...] = ()


def choose_node(
    nodes: Iterable[NodeInfo], pod: pb.Pod | PodInfo, *, most_allocated: bool = False
) -> Decision:
    """The best feasible node for pod among nodes, or why there is none."""
    info_of_pod = pod if isinstance(pod, PodInfo) else PodInfo.of(pod)
    reasons: Counter[str] = Counter()
    best: tuple[ScoreKey, str, NodeInfo] | None = None
    total = 0
    for info in nodes:
        total += 1
        failed = filter_node(info, info_of_pod)
        if failed:
            reasons.update(failed)
            continue
        score = score_key(info, info_of_pod, most_allocated=most_allocated)
        if best is None or (score, info.name) < best[:2]:
            best = (score, info.name, info)
    if best is None:
        return Decision("", unschedulable_message(total, reasons))
    chosen = best[2]
    ports = chosen.pick_dynamic(info_of_pod) if info_of_pod.dynamic else ()
    return Decision(chosen.name, ports=ports)


@dataclass(frozen=True)
class _Placed:
    node_name: str
    requests: Resources
    owner: str
    assumed: bool
    ports: frozenset[Port] = frozenset()


class ClusterState:
    """Nodes and the pods counted on them: informer-bound ones and assumed ones.

    Guarantees: a pod key contributes to at most one node at a time; an
    assumption is replaced (not added to) when the informer shows the pod
    bound; a terminal, deleted or terminating-and-gone pod contributes nothing.
    Pods with a deletion_timestamp still count until they are gone, because
    their processes run until the agent has stopped them.
    """

    def __init__(self, *, most_allocated: bool = False) -> None:
        self.most_allocated = most_allocated
        self._nodes: dict[str, NodeInfo] = {}
        self._placed: dict[str, _Placed] = {}
        # (node, port) -> until: ports another program holds, see block_ports
        self._blocks: dict[tuple[str, Port], float] = {}

    # -- nodes ---------------------------------------------------------------------

    def set_node(self, node: pb.Node) -> None:
        name = node.metadata.name
        info = NodeInfo(node)
        old = self._nodes.get(name)
        if old is not None:
            info.take_accounting(old)
        else:
            for placed in self._placed.values():
                if placed.node_name == name:
                    info.add(placed.requests, placed.owner, placed.ports)
            info.blocked = {p: t for (n, p), t in self._blocks.items() if n == name}
        self._nodes[name] = info

    def remove_node(self, name: str) -> None:
        self._nodes.pop(name, None)

    def node(self, name: str) -> NodeInfo | None:
        return self._nodes.get(name)

    # -- pods ----------------------------------------------------------------------

    def observe_pod(self, pod: pb.Pod) -> None:
        """The informer's view of pod (add or update)."""
        key = pod_key(pod)
        if is_terminal(pod):
            self._unplace(key)
            return
        if not pod.spec.node_name:
            return  # unbound: an assumption (if any) stays until bound or forgotten
        current = self._placed.get(key)
        placed = _Placed(
            pod.spec.node_name, pod_requests(pod), controller_owner(pod), False, pod_ports(pod)
        )
        if current == placed:
            return
        self._unplace(key)
        self._place(key, placed)

    def forget_pod(self, key: str) -> None:
        """The pod is gone from the store."""
        self._unplace(key)

    def assume(self, pod: pb.Pod, node_name: str) -> None:
        key = pod_key(pod)
        self._unplace(key)
        self._place(
            key,
            _Placed(node_name, pod_requests(pod), controller_owner(pod), True, pod_ports(pod)),
        )

    def unassume(self, key: str) -> None:
        """Drop an assumption (binding failed); a bound pod's accounting is kept."""
        placed = self._placed.get(key)
        if placed is not None and placed.assumed:
            self._unplace(key)

    def is_assumed(self, key: str) -> bool:
        placed = self._placed.get(key)
        return placed is not None and placed.assumed

    def decide(self, pod: pb.Pod, now: float | None = None) -> Decision:
        """Where pod goes (and its dynamic ports); blocks ended by now are lifted first."""
        if now is not None:
            self._unblock(now)
        return choose_node(self._nodes.values(), pod, most_allocated=self.most_allocated)

    # -- ports held by other programs -------------------------------------------------

    def block_ports(self, node_name: str, ports: Iterable[Port], until: float) -> None:
        """Ports found in use on node_name by something other than a pod (the agent failed
        a pod with PortInUse): not assigned, nor granted to a fixed port, until then."""
        info = self._nodes.get(node_name)
        for port in ports:
            key = (node_name, port)
            self._blocks[key] = max(until, self._blocks.get(key, until))
            if info is not None:
                info.blocked[port] = self._blocks[key]

    def block_expiry(self) -> float | None:
        """When the next block ends (None: nothing is blocked)."""
        return min(self._blocks.values(), default=None)

    def _unblock(self, now: float) -> None:
        if not self._blocks:
            return
        for key, until in list(self._blocks.items()):
            if until <= now:
                del self._blocks[key]
                info = self._nodes.get(key[0])
                if info is not None:
                    info.blocked.pop(key[1], None)

    def _place(self, key: str, placed: _Placed) -> None:
        self._placed[key] = placed
        info = self._nodes.get(placed.node_name)
        if info is not None:
            info.add(placed.requests, placed.owner, placed.ports)

    def _unplace(self, key: str) -> None:
        placed = self._placed.pop(key, None)
        if placed is None:
            return
        info = self._nodes.get(placed.node_name)
        if info is not None:
            info.remove(placed.requests, placed.owner, placed.ports)
