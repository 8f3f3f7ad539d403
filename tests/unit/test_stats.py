"""UsageSampler with fake cgroups, fake /proc and a stepped clock."""

from __future__ import annotations

from dataclasses import dataclass, field

from nodeagent.cgroups.base import CgroupError, Limits, Usage
from nodeagent.stats import (
    NodeUsage,
    PodRef,
    PodUsage,
    ProcessUsage,
    UsageSampler,
    parse_meminfo,
    parse_proc_stat,
)


@dataclass
class FakeCgroup:
    path: str
    cpu_ns: int = 0
    memory: int = 0
    gone: bool = False
    _pids: set[int] = field(default_factory=set)

    def procs_files(self) -> list[str]:
        return []

    def set_limits(self, limits: Limits) -> None:
        pass

    def pids(self) -> set[int]:
        return self._pids

    def usage(self) -> Usage:
        if self.gone:
            raise CgroupError(f"{self.path}: no such cgroup")
        return Usage(cpu_usage_ns=self.cpu_ns, memory_bytes=self.memory, pids=1, oom_kills=0)

    def cpu_and_memory(self) -> tuple[int, int]:
        usage = self.usage()
        return usage.cpu_usage_ns, usage.memory_bytes

    def kill_all(self) -> None:
        pass

    def remove(self) -> None:
        pass


class FakeProc:
    """/proc/stat with 2 CPUs at 100 Hz and /proc/meminfo, advanced by the test."""

    def __init__(self) -> None:
        self.busy = 1000
        self.idle = 5000
        self.mem_total_kb = 4_000_000
        self.mem_available_kb = 3_000_000

    def __call__(self, path: str) -> str:
        if path == "/proc/stat":
            line = f"cpu  {self.busy} 0 0 {self.idle} 0 0 0 0 0 0"
            return f"{line}\ncpu0 1 0 0 1 0 0 0 0 0 0\ncpu1 1 0 0 1 0 0 0 0 0 0\nintr 1 2\n"
        if path == "/proc/meminfo":
            return (
                f"MemTotal:       {self.mem_total_kb} kB\nMemFree:          10 kB\n"
                f"MemAvailable:   {self.mem_available_kb} kB\n"
            )
        raise FileNotFoundError(path)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Table = dict[PodRef, tuple[FakeCgroup, dict[str, FakeCgroup]]]


def _setup() -> tuple[UsageSampler, Clock, FakeProc, dict[str, FakeCgroup], Table]:
    clock, proc = Clock(), FakeProc()
    cgs = {
        "pod": FakeCgroup("pod-u1"),
        "web": FakeCgroup("pod-u1/web"),
        "side": FakeCgroup("pod-u1/side"),
    }
    table: Table = {
        PodRef("default", "web", "u1"): (cgs["pod"], {"web": cgs["web"], "side": cgs["side"]})
    }
    sampler = UsageSampler(
        lambda: table,
        clock=clock,
        wall_clock=lambda: 1_700_000_000.0,
        read_proc=proc,
        clock_ticks=100,
    )
    return sampler, clock, proc, cgs, table


def test_parsers() -> None:
    cpu = parse_proc_stat("cpu  10 2 3 100 7 1 1 1 5 0\ncpu0 1\ncpu1 1\ncpu2 1\n")
    assert (cpu.busy_jiffies, cpu.cpus) == (18, 3)
    assert parse_meminfo("MemTotal: 100 kB\nMemAvailable: 40 kB\n") == (102400, 61440)


def test_first_sample_has_no_rates_second_has() -> None:
    sampler, clock, proc, cgs, _ = _setup()
    cgs["pod"].cpu_ns, cgs["pod"].memory = 5_000_000_000, 300
    sampler.sample()
    assert sampler.pods() == []
    assert sampler.sampled_at is None
    assert sampler.node() == NodeUsage(0, 1_024_000_000, 4_096_000_000, 2000)

    clock.now += 2.0
    cgs["pod"].cpu_ns += 1_000_000_000  # 1 s of CPU in 2 s: 500m
    cgs["pod"].memory = 400
    cgs["web"].cpu_ns, cgs["web"].memory = 600_000_000, 250
    cgs["side"].cpu_ns, cgs["side"].memory = 0, 150
    proc.busy += 300  # 3 s of CPU at 100 Hz in 2 s: 1500m
    proc.mem_available_kb = 2_000_000
    sampler.sample()
    assert sampler.node() == NodeUsage(1500, 2_048_000_000, 4_096_000_000, 2000)
    assert sampler.sampled_at == 1_700_000_000.0
    (pod,) = sampler.pods()
    assert pod == PodUsage(
        "default",
        "web",
        "u1",
        500,
        400,
        (ProcessUsage("side", 0, 150), ProcessUsage("web", 300, 250)),
    )


def test_process_rates_over_each_interval() -> None:
    sampler, clock, _, cgs, _ = _setup()
    sampler.sample()
    clock.now += 1.0
    cgs["web"].cpu_ns = 250_000_000
    sampler.sample()
    clock.now += 4.0
    cgs["web"].cpu_ns += 1_000_000_000
    cgs["pod"].cpu_ns = 1_000_000_000
    sampler.sample()
    (pod,) = sampler.pods()
    assert pod.cpu_millis == 250
    assert {p.name: p.cpu_millis for p in pod.processes} == {"web": 250, "side": 0}


def test_vanished_pods_are_dropped_and_new_ones_need_a_baseline() -> None:
    sampler, clock, _, cgs, table = _setup()
    sampler.sample()
    clock.now += 2.0
    cgs["pod"].gone = True
    new = FakeCgroup("pod-u2", cpu_ns=10**9, memory=7)
    table[PodRef("default", "db", "u2")] = (new, {})
    sampler.sample()
    assert sampler.pods() == []  # web is unreadable, db has no baseline yet
    clock.now += 1.0
    new.cpu_ns += 10**8
    sampler.sample()
    assert [(p.name, p.cpu_millis, p.memory_bytes) for p in sampler.pods()] == [("db", 100, 7)]


def test_counter_reset_never_goes_negative() -> None:
    sampler, clock, _, cgs, _ = _setup()
    cgs["pod"].cpu_ns = 10**10
    sampler.sample()
    clock.now += 1.0
    cgs["pod"].cpu_ns = 10**6  # cgroup recreated under the same path
    sampler.sample()
    assert sampler.pods()[0].cpu_millis == 0


def test_unreadable_proc_keeps_pod_sampling() -> None:
    def broken(path: str) -> str:
        raise PermissionError(path)

    table: dict[PodRef, tuple[FakeCgroup, dict[str, FakeCgroup]]] = {
        PodRef("ns", "p", "u"): (FakeCgroup("pod-u", cpu_ns=0), {})
    }
    clock = Clock()
    sampler = UsageSampler(
        lambda: table,
        clock=clock,
        read_proc=broken,
        clock_ticks=100,
    )
    sampler.sample()
    clock.now += 1
    table[PodRef("ns", "p", "u")][0].cpu_ns = 2 * 10**9
    sampler.sample()
    assert sampler.pods()[0].cpu_millis == 2000
    assert sampler.node() == NodeUsage(0, 0, 0, 0)
