"""Node registration and heartbeat: the Node object and its Lease.

Contract (other components rely on it): the Lease ``mizzen-node-lease/<node>``
has ``holder_identity`` = node name, ``lease_duration_seconds`` = 5 and a
``renew_time`` renewed every heartbeat interval; the Node's ``Ready``
condition (True, reason ``AgentReady``) has its ``last_heartbeat_time``
refreshed every ``status_interval`` seconds or whenever anything else in the
status changes. Registration keeps what others own: taints, unschedulable,
labels set by users (ours win on conflict).
"""

from __future__ import annotations

import asyncio
import os
import platform
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from mizzen import __version__
from mizzen.api.quantity import QuantityError, parse_count, parse_cpu, parse_memory
from mizzen.client.errors import AlreadyExistsError, ConflictError, NotFoundError, StoreClientError
from protos import objects_pb2 as pb

log = structlog.get_logger(__name__)

LEASE_NAMESPACE = "mizzen-node-lease"
LEASE_DURATION_SECONDS = 5


def parse_labels(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` → dict; ValueError naming the bad item."""
    out: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"label {item!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def parse_reserved(text: str) -> pb.ResourceList:
    """``cpu=500m,memory=512Mi,pids=1000`` → ResourceList; ValueError on anything else."""
    out = pb.ResourceList()
    for key, value in parse_labels(text).items():
        try:
            if key == "cpu":
                out.cpu_millis = parse_cpu(value)
            elif key == "memory":
                out.memory_bytes = parse_memory(value)
            elif key == "pids":
                out.pids = parse_count(value)
            else:
                raise ValueError(f"reserved: unknown resource {key!r} (cpu, memory, pids)")
        except QuantityError as err:
            raise ValueError(f"reserved {key}: {err}") from None
    return out


DEFAULT_PORT_RANGE = (20000, 32000)


def parse_port_range(text: str) -> tuple[int, int]:
    """``20000-32000`` → (20000, 32000); ValueError saying what is wrong."""
    first, sep, last = text.strip().partition("-")
    try:
        low, high = int(first), int(last)
    except ValueError:
        raise ValueError(f"expected FIRST-LAST (e.g. 20000-32000), got {text!r}") from None
    if not sep or not 1 <= low <= high <= 65535:
        raise ValueError(f"expected FIRST-LAST with 1 <= FIRST <= LAST <= 65535, got {text!r}")
    return low, high


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def mem_total(meminfo: str = "/proc/meminfo") -> int:
    with open(meminfo) as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{meminfo}: no MemTotal")


def read_capacity() -> pb.ResourceList:
    pid_max = _read_int("/proc/sys/kernel/pid_max") or 32768
    threads_max = _read_int("/proc/sys/kernel/threads-max") or pid_max
    return pb.ResourceList(
        cpu_millis=(os.cpu_count() or 1) * 1000,
        memory_bytes=mem_total(),
        pids=min(pid_max, threads_max),
    )


def allocatable(capacity: pb.ResourceList, reserved: pb.ResourceList) -> pb.ResourceList:
    out = pb.ResourceList()
    for name in ("cpu_millis", "memory_bytes", "pids"):
        have = getattr(capacity, name)
        minus = getattr(reserved, name) if reserved.HasField(name) else 0
        setattr(out, name, max(0, have - minus))
    return out


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _os_image() -> str:
    for line in _read_text("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.partition("=")[2].strip('"')
    return platform.system()


def system_info(boot_id: str, cgroup_version: str) -> pb.NodeSystemInfo:
    return pb.NodeSystemInfo(
        machine_id=_read_text("/etc/machine-id"),
        boot_id=boot_id,
        kernel_version=platform.release(),
        os_image=_os_image(),
        architecture=platform.machine(),
        agent_version=__version__,
        cgroup_version=cgroup_version,
    )


def outbound_ip(endpoint: str) -> str:
    """The local address used to reach endpoint (no packet is sent), or 127.0.0.1."""
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host.strip("[]") or "127.0.0.1", int(port or 0) or 9))
            return str(s.getsockname()[0])
    except (OSError, ValueError):
        return "127.0.0.1"


def _ts(seconds: float) -> Timestamp:
    out = Timestamp()
    out.FromNanoseconds(int(seconds * 1e9))
    return out


@dataclass
class NodeFacts:
    """What the agent says about its node; computed once at start."""

    name: str
    labels: Mapping[str, str]
    capacity: pb.ResourceList
    allocatable: pb.ResourceList
    addresses: list[tuple[str, str]]
    info: pb.NodeSystemInfo
    extra: dict[str, Any] = field(default_factory=dict)
    # Where the scheduler picks this node's dynamic ports (--port-range).
    dynamic_ports: tuple[int, int] = DEFAULT_PORT_RANGE

    def all_labels(self) -> dict[str, str]:
        out = {
            "mizzen.io/hostname": self.name,
            "mizzen.io/os": platform.system().lower(),
            "mizzen.io/arch": platform.machine(),
        }
        out.update(self.labels)
        return out


class NodeHeartbeat:
    """Registers the Node, then renews its Lease and refreshes its status."""

    def __init__(
        self,
        client: Any,
        facts: NodeFacts,
        *,
        status_interval: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.facts = facts
        self.status_interval = status_interval
        self.clock = clock
        self._lease: pb.Lease | None = None
        self._last_status = 0.0

    def desired_status(self, old: pb.NodeStatus) -> pb.NodeStatus:
        now = self.clock()
        f = self.facts
        out = pb.NodeStatus(capacity=f.capacity, allocatable=f.allocatable, node_info=f.info)
        out.dynamic_ports.first, out.dynamic_ports.last = f.dynamic_ports
        out.addresses.extend(pb.NodeAddress(type=t, address=a) for t, a in f.addresses)
        ready = pb.Condition(
            type="Ready", status="True", reason="AgentReady", message="the node agent is running"
        )
        previous = next((c for c in old.conditions if c.type == "Ready"), None)
        if previous is not None and previous.status == "True":
            ready.last_transition_time.CopyFrom(previous.last_transition_time)
            ready.last_heartbeat_time.CopyFrom(previous.last_heartbeat_time)
        else:
            ready.last_transition_time.CopyFrom(_ts(now))
        out.conditions.extend(c for c in old.conditions if c.type != "Ready")
        out.conditions.append(ready)
        return out

    async def register(self) -> pb.Node:
        """Create or update the Node (metadata/spec), then write its status."""
        name = self.facts.name
        labels = self.facts.all_labels()
        try:
            node = await self.client.get("nodes", name)
        except NotFoundError:
            node = pb.Node(metadata=pb.ObjectMeta(name=name, labels=labels))
            node.status.CopyFrom(self.desired_status(pb.NodeStatus()))
            try:
                node = await self.client.create(node)
            except AlreadyExistsError:
                node = await self.client.get("nodes", name)
        if any(node.metadata.labels.get(k) != v for k, v in labels.items()):
            node.metadata.labels.update(labels)
            node = await self.client.update(node)
        log.info("node_registered", node=name)
        return await self.update_status(node, force=True)

    async def update_status(self, node: pb.Node | None = None, *, force: bool = False) -> pb.Node:
        """Write the status when it changed or the heartbeat is due; conflicts re-read."""
        name = self.facts.name
        for _ in range(5):
            if node is None:
                node = await self.client.get("nodes", name)
            status = self.desired_status(node.status)
            due = force or self.clock() - self._last_status >= self.status_interval
            if status == node.status and not due:
                return node
            for c in status.conditions:
                if c.type == "Ready":
                    c.last_heartbeat_time.CopyFrom(_ts(self.clock()))
            out = pb.Node()
            out.CopyFrom(node)
            out.status.CopyFrom(status)
            try:
                node = await self.client.update_status(out)
                self._last_status = self.clock()
                return node
            except ConflictError:
                node = None
        raise StoreClientError("node status: too many conflicting writes")

    async def renew_lease(self) -> None:
        name = self.facts.name
        now = _ts(self.clock())
        lease = self._lease
        if lease is None:
            try:
                lease = await self.client.get("leases", name, LEASE_NAMESPACE)
            except NotFoundError:
                fresh = pb.Lease(metadata=pb.ObjectMeta(name=name, namespace=LEASE_NAMESPACE))
                fresh.spec.holder_identity = name
                fresh.spec.lease_duration_seconds = LEASE_DURATION_SECONDS
                fresh.spec.acquire_time.CopyFrom(now)
                fresh.spec.renew_time.CopyFrom(now)
                self._lease = await self.client.create(fresh)
                return
        out = pb.Lease()
        out.CopyFrom(lease)
        if out.spec.holder_identity != name:
            out.spec.holder_identity = name
            out.spec.acquire_time.CopyFrom(now)
            out.spec.lease_transitions += 1
        out.spec.lease_duration_seconds = LEASE_DURATION_SECONDS
        out.spec.renew_time.CopyFrom(now)
        try:
            self._lease = await self.client.update(out)
        except (ConflictError, NotFoundError):
            self._lease = None
            raise

    async def run(self, interval: float) -> None:
        """Renew the lease every interval and the status when due, until cancelled."""
        while True:
            try:
                await self.renew_lease()
                if self.clock() - self._last_status >= self.status_interval:
                    await self.update_status()
            except StoreClientError as err:
                log.warning("heartbeat_failed", node=self.facts.name, error=str(err))
            await asyncio.sleep(interval)
