"""The small cgroup protocol the node agent uses; v1 and v2 implement it.

Layout: one cgroup per pod, one per process inside it, all under a
configurable parent (default ``mizzen``)::

    <parent>/pod-<pod uid>/<process name>

Paths handed to a driver are relative to the parent ("pod-<uid>" or
"pod-<uid>/<process>"). A process joins its cgroup *before* it executes any
user code: the launcher writes its own pid into every file of
``Cgroup.procs_files()`` and only then execs the user's command.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class CgroupError(Exception):
    """A cgroup operation failed; the message names the file and the value."""


@dataclass(frozen=True)
class Limits:
    """What to enforce; None leaves the kernel default (unlimited)."""

    # Hard CPU cap in millicores (v2 cpu.max, v1 cfs_quota_us/cfs_period_us).
    cpu_limit_millis: int | None = None
    # Relative CPU share from the CPU request (v2 cpu.weight, v1 cpu.shares).
    cpu_request_millis: int | None = None
    # Hard memory cap in bytes (v2 memory.max, v1 memory.limit_in_bytes).
    memory_limit_bytes: int | None = None
    # Reclaim pressure point (v2 memory.high only; ignored by v1).
    memory_high_bytes: int | None = None
    # Maximum tasks (pids.max).
    pids_limit: int | None = None


@dataclass(frozen=True)
class Usage:
    """A cgroup's resource use, including its descendants."""

    cpu_usage_ns: int  # cumulative CPU time
    memory_bytes: int  # current memory use
    pids: int  # current number of tasks
    oom_kills: int  # processes killed by the OOM killer in this cgroup, cumulative


class Cgroup(Protocol):
    @property
    def path(self) -> str:
        """Relative to the driver's parent, e.g. "pod-1234/web"."""
        ...

    def procs_files(self) -> list[str]:
        """Absolute cgroup.procs files a process writes its pid to, to join (one per hierarchy)."""
        ...

    def set_limits(self, limits: Limits) -> None:
        """Apply limits; CgroupError naming the file when the kernel refuses one."""
        ...

    def pids(self) -> set[int]:
        """Every process in this cgroup and its descendants."""
        ...

    def usage(self) -> Usage: ...

    def cpu_and_memory(self) -> tuple[int, int]:
        """(cumulative CPU ns, current memory bytes): the two reads periodic sampling needs."""
        ...

    def kill_all(self) -> None:
        """SIGKILL every process in the cgroup and its descendants until none is left.

        Nothing escapes by forking or by setsid (v2: cgroup.kill; v1: freeze,
        kill, thaw, repeated until empty).
        """
        ...

    def remove(self) -> None:
        """Remove the cgroup and its descendants (leaves first); missing is fine."""
        ...


class CgroupDriver(Protocol):
    @property
    def version(self) -> str:
        """Either "v1" or "v2"."""
        ...

    def create(self, path: str, limits: Limits | None = None) -> Cgroup:
        """Create (or reuse) the cgroup at path, with its parents, and apply limits."""
        ...

    def open(self, path: str) -> Cgroup | None:
        """The existing cgroup at path, or None."""
        ...

    def children(self, path: str = "") -> list[str]:
        """Relative paths of the direct child cgroups of path ("" is the parent)."""
        ...
