"""cgroup v1 driver: one directory per hierarchy (cpu, cpuacct, memory, pids, freezer).

A cgroup at path exists as ``<root>/<hierarchy>/<parent>/<path>`` in each
hierarchy; cpu and cpuacct may be co-mounted (``<root>/cpu,cpuacct`` with
``cpu`` and ``cpuacct`` symlinks), in which case they are one directory and
one ``cgroup.procs``. freezer is optional: without it kill_all falls back to
repeated pid walks, which a fast fork loop can outrun until the timeout.

OOM kills: ``memory.oom_control``'s ``oom_kill`` counter (Linux >= 4.13) is
counted only in the victim's own memory cgroup in v1, so usage() sums it
over the subtree. On older kernels, which lack the field, oom_kills is a
heuristic: 1 when any cgroup in the subtree has hit its limit
(``memory.failcnt`` > 0), which also happens when reclaim succeeded.
"""

from __future__ import annotations

import errno
import os

import structlog

from .base import Cgroup, CgroupError, Limits, Usage
from .cgroupfs import (
    CPU_PERIOD_US,
    DEFAULT_CPU_SHARES,
    SysOps,
    check_relpath,
    child_names,
    cpu_quota_us,
    cpu_shares,
    kill_until_empty,
    make_dirs,
    read_int,
    read_keyed,
    read_text,
    remove_tree,
    sigkill_all,
    subtree_dirs,
    subtree_pids,
    wait_for,
    write_text,
)

log = structlog.get_logger("nodeagent.cgroups.v1")

CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "freezer")
REQUIRED = ("cpu", "cpuacct", "memory", "pids")
_FREEZE_WAIT_S = 1.0


def find_hierarchies(root: str) -> dict[str, str]:
    """Controller -> directory of its mounted hierarchy; an exact-name entry beats a co-mount."""
    found: dict[str, str] = {}
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return found
    for name in names:
        directory = os.path.join(root, name)
        if not os.path.isfile(os.path.join(directory, "cgroup.procs")):
            continue
        for controller in name.split(","):
            if controller in CONTROLLERS and (controller not in found or name == controller):
                found[controller] = directory
    return found


def limit_files(limits: Limits) -> list[tuple[str, str, str]]:
    """(controller, file, value) in write order; None writes the kernel default."""
    cpu = limits.cpu_limit_millis
    req = limits.cpu_request_millis
    mem = limits.memory_limit_bytes
    pids = limits.pids_limit
    return [
        ("cpu", "cpu.cfs_period_us", str(CPU_PERIOD_US)),
        ("cpu", "cpu.cfs_quota_us", str(-1 if cpu is None else cpu_quota_us(cpu))),
        ("cpu", "cpu.shares", str(DEFAULT_CPU_SHARES if req is None else cpu_shares(req))),
        ("memory", "memory.limit_in_bytes", str(-1 if mem is None else mem)),
        ("pids", "pids.max", "max" if pids is None else str(pids)),
    ]


class V1Cgroup:
    """One cgroup, present as a directory in each hierarchy."""

    def __init__(self, driver: V1Driver, path: str) -> None:
        self._driver = driver
        self._path = path
        suffix = [driver.parent, path] if path else [driver.parent]
        self._dirs = {c: os.path.join(h, *suffix) for c, h in driver.hierarchies.items()}
        self._unique = [os.path.join(h, *suffix) for h in driver.unique_hierarchies]

    def __repr__(self) -> str:
        return f"V1Cgroup({self._path!r}, {self._unique!r})"

    @property
    def path(self) -> str:
        return self._path

    def directory(self, controller: str) -> str:
        return self._dirs[controller]

    def exists(self) -> bool:
        return any(os.path.isdir(d) for d in self._unique)

    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self._unique if os.path.isdir(d)]

    def set_limits(self, limits: Limits) -> None:
        """Write every limit (None restores the default); memory_high_bytes has no v1 knob."""
        for controller, name, value in limit_files(limits):
            path = os.path.join(self._dirs[controller], name)
            try:
                write_text(path, value)
            except CgroupError as e:
                cause = e.__cause__
                if name == "memory.limit_in_bytes" and getattr(cause, "errno", None) == errno.EBUSY:
                    raise CgroupError(
                        f"cannot write {value!r} to {path}: current usage is above the new "
                        "limit and the kernel could not reclaim enough memory"
                    ) from cause
                raise

    def pids(self) -> set[int]:
        pids: set[int] = set()
        for d in self._unique:
            pids |= subtree_pids(d)
        return pids

    def usage(self) -> Usage:
        cpu, memory = self.cpu_and_memory()
        return Usage(
            cpu_usage_ns=cpu,
            memory_bytes=memory,
            pids=read_int(os.path.join(self._dirs["pids"], "pids.current")),
            oom_kills=self._oom_kills(),
        )

    def cpu_and_memory(self) -> tuple[int, int]:
        return (
            read_int(os.path.join(self._dirs["cpuacct"], "cpuacct.usage")),
            read_int(os.path.join(self._dirs["memory"], "memory.usage_in_bytes")),
        )

    def _oom_kills(self) -> int:
        total = 0
        dirs = subtree_dirs(self._dirs["memory"])
        if not dirs:
            raise CgroupError(f"cannot read {self._dirs['memory']}/memory.oom_control: no cgroup")
        for d in dirs:
            fields = read_keyed(os.path.join(d, "memory.oom_control"))
            if "oom_kill" not in fields:
                return int(any(read_int(os.path.join(x, "memory.failcnt")) > 0 for x in dirs))
            total += fields["oom_kill"]
        return total

    def kill_all(self) -> None:
        freezer = self._dirs.get("freezer")
        if freezer is not None and os.path.exists(os.path.join(freezer, "freezer.state")):
            kill_round = self._freeze_kill_thaw
        else:

            def kill_round() -> None:
                sigkill_all(self.pids(), self._driver.ops)

        what = os.path.join(self._driver.parent, self._path)
        kill_until_empty(what, self.pids, kill_round, self._driver.ops, self._driver.kill_timeout)

    def _freeze_kill_thaw(self) -> None:
        """Frozen tasks cannot fork; SIGKILLed ones die as soon as they are thawed."""
        ops = self._driver.ops
        state = os.path.join(self._dirs["freezer"], "freezer.state")
        write_text(state, "FROZEN")
        try:
            if not wait_for(lambda: read_text(state).strip() == "FROZEN", ops, _FREEZE_WAIT_S):
                log.warning("cgroup_freeze_incomplete", cgroup=state)
            sigkill_all(self.pids(), ops)
        finally:
            write_text(state, "THAWED")

    def remove(self) -> None:
        """Remove the subtree in every hierarchy; tries them all before reporting a failure."""
        errors: list[CgroupError] = []
        for d in self._unique:
            try:
                remove_tree(d, self._driver.ops, self._driver.remove_timeout)
            except CgroupError as e:
                errors.append(e)
        if errors:
            raise CgroupError("; ".join(str(e) for e in errors))


class V1Driver:
    """Cgroups under ``<root>/<hierarchy>/<parent>`` of cgroup v1 mounts."""

    def __init__(
        self,
        root: str = "/sys/fs/cgroup",
        parent: str = "mizzen",
        *,
        ops: SysOps | None = None,
        kill_timeout: float = 5.0,
        remove_timeout: float = 2.0,
    ) -> None:
        self.root = root
        self.parent = parent
        self._parent_parts = check_relpath(parent, "parent")
        if not self._parent_parts:
            raise CgroupError("parent must not be empty: mizzen never manages the root cgroup")
        self.hierarchies = find_hierarchies(root)
        missing = [c for c in REQUIRED if c not in self.hierarchies]
        if missing:
            raise CgroupError(
                f"cgroup v1 hierarchies {', '.join(missing)} not mounted under {root} "
                f"(looked for {root}/<controller> or a co-mount like {root}/cpu,cpuacct)"
            )
        self.unique_hierarchies: list[str] = []
        seen: set[str] = set()
        for controller in CONTROLLERS:
            directory = self.hierarchies.get(controller)
            if directory is not None and os.path.realpath(directory) not in seen:
                seen.add(os.path.realpath(directory))
                self.unique_hierarchies.append(directory)
        memory_real = os.path.realpath(self.hierarchies["memory"])
        self._memory_hierarchies = {
            h for h in self.unique_hierarchies if os.path.realpath(h) == memory_real
        }
        self.ops = ops or SysOps()
        self.kill_timeout = kill_timeout
        self.remove_timeout = remove_timeout

    @property
    def version(self) -> str:
        return "v1"

    @property
    def has_freezer(self) -> bool:
        return "freezer" in self.hierarchies

    def create(self, path: str, limits: Limits | None = None) -> Cgroup:
        parts = self._parent_parts + check_relpath(path)
        for hierarchy in self.unique_hierarchies:
            is_memory = hierarchy in self._memory_hierarchies
            make_dirs(hierarchy, parts, self.ops, _use_hierarchy if is_memory else _nothing)
        cgroup = V1Cgroup(self, path)
        if limits is not None:
            cgroup.set_limits(limits)
        return cgroup

    def open(self, path: str) -> Cgroup | None:
        check_relpath(path)
        cgroup = V1Cgroup(self, path)
        return cgroup if cgroup.exists() else None

    def children(self, path: str = "") -> list[str]:
        check_relpath(path)
        names: set[str] = set()
        for hierarchy in self.unique_hierarchies:
            names.update(child_names(os.path.join(hierarchy, self.parent, path)))
        return [f"{path}/{name}" if path else name for name in sorted(names)]


def _nothing(_: str) -> None:
    return None


def _use_hierarchy(directory: str) -> None:
    """Charge children to their ancestors (already forced on since Linux 5.x; older needs it).

    Only possible before the cgroup has children, hence right after mkdir.
    """
    path = os.path.join(directory, "memory.use_hierarchy")
    try:
        if read_text(path).strip() == "1":
            return
        write_text(path, "1")
    except CgroupError as e:
        log.warning("memory_use_hierarchy_not_set", error=str(e))
