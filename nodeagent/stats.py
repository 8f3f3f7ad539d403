"""Resource usage of the node and its pods, as ``mizzen top`` shows it.

CPU counters are cumulative (cgroup cpu usage in ns, /proc/stat jiffies), so
a rate needs two samples: ``UsageSampler.sample()`` is called periodically and
each call turns the difference to the previous call into millicores over that
interval. Memory is the current value at the last sample. A pod appears in
``pods()`` from its second sample on (its first CPU rate needs a baseline),
and disappears at the first sample after its cgroups are gone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import structlog

from nodeagent.cgroups.base import Cgroup, CgroupError

log = structlog.get_logger(__name__)


class PodRef(NamedTuple):
    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class ProcessUsage:
    name: str
    cpu_millis: int
    memory_bytes: int


@dataclass(frozen=True)
class PodUsage:
    namespace: str
    name: str
    uid: str
    cpu_millis: int
    memory_bytes: int
    processes: tuple[ProcessUsage, ...]


@dataclass(frozen=True)
class NodeUsage:
    cpu_millis: int
    memory_bytes: int
    memory_total: int
    cpu_capacity_millis: int


PodCgroups = Mapping[PodRef, tuple[Cgroup, Mapping[str, Cgroup]]]


def read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


@dataclass(frozen=True)
class _CpuTimes:
    busy_jiffies: int
    cpus: int


def parse_proc_stat(text: str) -> _CpuTimes:
    """Busy jiffies of all CPUs (everything but idle and iowait) and the CPU count."""
    busy = 0
    cpus = 0
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if fields[0] == "cpu":
            values = [int(v) for v in fields[1:]]
            # user nice system idle iowait irq softirq steal guest guest_nice;
            # guest time is already counted in user/nice.
            total = sum(values[:8])
            idle = values[3] + (values[4] if len(values) > 4 else 0)
            busy = total - idle
        elif fields[0].startswith("cpu") and fields[0][3:].isdigit():
            cpus += 1
    return _CpuTimes(busy, max(cpus, 1))


def parse_meminfo(text: str) -> tuple[int, int]:
    """(total, used) bytes; used = MemTotal - MemAvailable, like `free`."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key.strip()] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    total = values.get("MemTotal", 0)
    available = values.get("MemAvailable", values.get("MemFree", 0))
    return total, max(total - available, 0)


def _millis(delta_ns: int, interval_s: float) -> int:
    if interval_s <= 0 or delta_ns <= 0:
        return 0
    return round(delta_ns / 1e6 / interval_s)


@dataclass(frozen=True)
class _PodSample:
    pod_ns: int
    memory: int
    processes: dict[str, tuple[int, int]]  # name -> (cpu ns, memory bytes)


class UsageSampler:
    """Keeps the latest usage rates; ``sample()`` is the only method doing I/O."""

    def __init__(
        self,
        pod_cgroups: Callable[[], PodCgroups],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        read_proc: Callable[[str], str] = read_text,
        clock_ticks: int | None = None,
    ) -> None:
        self._pod_cgroups = pod_cgroups
        self._clock = clock
        self._wall_clock = wall_clock
        self._read_proc = read_proc
        self._hz = clock_ticks or os.sysconf("SC_CLK_TCK")
        self._last_at: float | None = None
        self._last_cpu: _CpuTimes | None = None
        self._last_pods: dict[PodRef, _PodSample] = {}
        self._pods: list[PodUsage] = []
        self._node = NodeUsage(0, 0, 0, 0)
        self._sampled_at: float | None = None

    @property
    def sampled_at(self) -> float | None:
        """Wall-clock time (epoch seconds) of the last sample with rates, or None."""
        return self._sampled_at

    def pods(self) -> list[PodUsage]:
        return list(self._pods)

    def node(self) -> NodeUsage:
        return self._node

    def sample(self) -> None:
        """Read every counter once and update the rates since the previous call."""
        now = self._clock()
        interval = now - self._last_at if self._last_at is not None else 0.0
        self._sample_node(interval)
        current: dict[PodRef, _PodSample] = {}
        pods: list[PodUsage] = []
        for ref, (pod_cg, process_cgs) in self._pod_cgroups().items():
            taken = self._read_pod(ref, pod_cg, process_cgs)
            if taken is None:
                continue
            current[ref] = taken
            before = self._last_pods.get(ref)
            if before is None or interval <= 0:
                continue
            processes = tuple(
                ProcessUsage(
                    name,
                    _millis(cpu - before.processes.get(name, (cpu, 0))[0], interval),
                    mem,
                )
                for name, (cpu, mem) in sorted(taken.processes.items())
            )
            pods.append(
                PodUsage(
                    ref.namespace,
                    ref.name,
                    ref.uid,
                    _millis(taken.pod_ns - before.pod_ns, interval),
                    taken.memory,
                    processes,
                )
            )
        self._last_pods = current
        self._pods = pods
        if interval > 0:
            self._sampled_at = self._wall_clock()
        self._last_at = now

    def _sample_node(self, interval: float) -> None:
        try:
            cpu = parse_proc_stat(self._read_proc("/proc/stat"))
            memory_total, memory_used = parse_meminfo(self._read_proc("/proc/meminfo"))
        except (OSError, ValueError, IndexError) as exc:
            log.warning("node_usage_unreadable", error=str(exc))
            return
        cpu_millis = 0
        if self._last_cpu is not None and interval > 0:
            delta = max(cpu.busy_jiffies - self._last_cpu.busy_jiffies, 0)
            cpu_millis = round(delta * 1000 / self._hz / interval)
        self._last_cpu = cpu
        self._node = NodeUsage(cpu_millis, memory_used, memory_total, cpu.cpus * 1000)

    def _read_pod(
        self, ref: PodRef, pod_cg: Cgroup, process_cgs: Mapping[str, Cgroup]
    ) -> _PodSample | None:
        try:
            pod_cpu, pod_memory = pod_cg.cpu_and_memory()
        except (CgroupError, OSError) as exc:
            log.debug("pod_usage_unreadable", pod=f"{ref.namespace}/{ref.name}", error=str(exc))
            return None
        processes: dict[str, tuple[int, int]] = {}
        for name, cg in process_cgs.items():
            try:
                processes[name] = cg.cpu_and_memory()
            except (CgroupError, OSError):
                continue
        return _PodSample(pod_cpu, pod_memory, processes)
