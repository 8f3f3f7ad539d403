"""cgroup v2 (unified hierarchy) driver.

Every cgroup lives at ``<root>/<parent>/<path>``. Creating one enables the
cpu, memory and pids controllers (those the kernel offers) in the
``cgroup.subtree_control`` of each ancestor, from the root down, so that the
new cgroup has the limit files. Limits follow Kubernetes' conversions (CFS
quota from the CPU limit, cpu.weight from the CPU request via shares).

kill_all uses ``cgroup.kill`` (Linux >= 5.14), which kills the whole subtree
atomically with respect to fork; older kernels get freeze, SIGKILL every
listed pid, thaw, repeated until every ``cgroup.procs`` below is empty.
"""

from __future__ import annotations

import errno
import os

import structlog

from .base import Cgroup, CgroupError, Limits, Usage
from .cgroupfs import (
    CPU_PERIOD_US,
    DEFAULT_CPU_WEIGHT,
    SysOps,
    check_relpath,
    child_names,
    cpu_quota_us,
    cpu_shares,
    kill_until_empty,
    make_dirs,
    read_field,
    read_int,
    read_keyed,
    read_text,
    remove_tree,
    sigkill_all,
    subtree_pids,
    wait_for,
    write_text,
)

log = structlog.get_logger("nodeagent.cgroups.v2")

CONTROLLERS = ("cpu", "memory", "pids")
_FREEZE_WAIT_S = 1.0


def cpu_weight(request_millis: int) -> int:
    """Kubernetes' CPUSharesToCPUWeight: shares 2..262144 map linearly onto weight 1..10000."""
    shares = cpu_shares(request_millis)
    return min(10_000, max(1, 1 + ((shares - 2) * 9999) // 262_142))


def limit_files(limits: Limits) -> list[tuple[str, str, bool]]:
    """(file, value, required) to write; required means a value was asked for, not a default."""

    def bytes_or_max(n: int | None) -> str:
        return "max" if n is None else str(n)

    cpu = limits.cpu_limit_millis
    req = limits.cpu_request_millis
    quota = "max" if cpu is None else str(cpu_quota_us(cpu))
    weight = DEFAULT_CPU_WEIGHT if req is None else cpu_weight(req)
    mem, high, pids = limits.memory_limit_bytes, limits.memory_high_bytes, limits.pids_limit
    return [
        ("cpu.max", f"{quota} {CPU_PERIOD_US}", cpu is not None),
        ("cpu.weight", str(weight), req is not None),
        ("memory.max", bytes_or_max(mem), mem is not None),
        ("memory.high", bytes_or_max(high), high is not None),
        ("pids.max", bytes_or_max(pids), pids is not None),
    ]


class V2Cgroup:
    """One cgroup of the unified hierarchy; the handle holds no state beyond its directory."""

    def __init__(self, driver: V2Driver, path: str) -> None:
        self._driver = driver
        self._path = path
        self._dir = os.path.join(driver.base, path) if path else driver.base

    def __repr__(self) -> str:
        return f"V2Cgroup({self._dir!r})"

    @property
    def path(self) -> str:
        return self._path

    @property
    def directory(self) -> str:
        return self._dir

    def _file(self, name: str) -> str:
        return os.path.join(self._dir, name)

    def procs_files(self) -> list[str]:
        return [self._file("cgroup.procs")]

    def set_limits(self, limits: Limits) -> None:
        """Write every limit; None restores the kernel default where the controller exists.

        A requested limit whose controller is not enabled here is an error, never
        silently dropped.
        """
        for name, value, required in limit_files(limits):
            path = self._file(name)
            if not os.path.exists(path):
                if not required:
                    continue
                controller = name.split(".", 1)[0]
                raise CgroupError(
                    f"cannot set {path}: the {controller} controller is not enabled for this "
                    f"cgroup (see {os.path.dirname(self._dir)}/cgroup.subtree_control)"
                )
            write_text(path, value)

    def pids(self) -> set[int]:
        return subtree_pids(self._dir)

    def usage(self) -> Usage:
        cpu, memory = self.cpu_and_memory()
        return Usage(
            cpu_usage_ns=cpu,
            memory_bytes=memory,
            pids=read_int(self._file("pids.current")),
            # memory.events is hierarchical (unlike memory.events.local), so a
            # pod's count includes OOM kills in its process cgroups.
            oom_kills=read_keyed(self._file("memory.events")).get("oom_kill", 0),
        )

    def cpu_and_memory(self) -> tuple[int, int]:
        return (
            read_field(self._file("cpu.stat"), "usage_usec") * 1000,
            read_int(self._file("memory.current")),
        )

    def kill_all(self) -> None:
        ops = self._driver.ops
        kill_file = self._file("cgroup.kill")
        if self._driver.use_cgroup_kill and os.path.exists(kill_file):

            def kill_round() -> None:
                write_text(kill_file, "1")

        else:
            kill_round = self._freeze_kill_thaw
        kill_until_empty(self._dir, self.pids, kill_round, ops, self._driver.kill_timeout)

    def _freeze_kill_thaw(self) -> None:
        """Frozen tasks cannot fork, so the pid list read while frozen is complete."""
        ops = self._driver.ops
        freeze = self._file("cgroup.freeze")
        if not os.path.exists(freeze):
            sigkill_all(self.pids(), ops)
            return
        write_text(freeze, "1")
        try:
            events = self._file("cgroup.events")
            if not wait_for(lambda: read_keyed(events).get("frozen") == 1, ops, _FREEZE_WAIT_S):
                log.warning("cgroup_freeze_incomplete", cgroup=self._dir)
            sigkill_all(self.pids(), ops)
        finally:
            write_text(freeze, "0")

    def remove(self) -> None:
        remove_tree(self._dir, self._driver.ops, self._driver.remove_timeout)


class V2Driver:
    """Cgroups under ``<root>/<parent>`` of a cgroup v2 mount."""

    def __init__(
        self,
        root: str = "/sys/fs/cgroup",
        parent: str = "mizzen",
        *,
        ops: SysOps | None = None,
        kill_timeout: float = 5.0,
        remove_timeout: float = 2.0,
        use_cgroup_kill: bool = True,
    ) -> None:
        self.root = root
        self.parent = parent
        self._parent_parts = check_relpath(parent, "parent")
        if not self._parent_parts:
            raise CgroupError("parent must not be empty: mizzen never manages the root cgroup")
        self.base = os.path.join(root, parent)
        self.ops = ops or SysOps()
        self.kill_timeout = kill_timeout
        self.remove_timeout = remove_timeout
        self.use_cgroup_kill = use_cgroup_kill

    @property
    def version(self) -> str:
        return "v2"

    def create(self, path: str, limits: Limits | None = None) -> Cgroup:
        parts = self._parent_parts + check_relpath(path)
        current = self.root
        for part in parts:
            self._enable_controllers(current)
            make_dirs(current, [part], self.ops, lambda _: None)
            current = os.path.join(current, part)
        cgroup = V2Cgroup(self, path)
        if limits is not None:
            cgroup.set_limits(limits)
        return cgroup

    def open(self, path: str) -> Cgroup | None:
        check_relpath(path)
        cgroup = V2Cgroup(self, path)
        return cgroup if os.path.isdir(cgroup.directory) else None

    def children(self, path: str = "") -> list[str]:
        check_relpath(path)
        directory = os.path.join(self.base, path) if path else self.base
        return [f"{path}/{name}" if path else name for name in child_names(directory)]

    def _enable_controllers(self, directory: str) -> None:
        """Make cpu/memory/pids (where offered) available to directory's children."""
        offered = set(read_text(os.path.join(directory, "cgroup.controllers")).split())
        control = os.path.join(directory, "cgroup.subtree_control")
        enabled = set(read_text(control).split())
        missing = [c for c in CONTROLLERS if c in offered and c not in enabled]
        if not missing:
            return
        value = " ".join(f"+{c}" for c in missing)
        try:
            with open(control, "w") as f:
                f.write(value)
        except OSError as e:
            if e.errno == errno.EBUSY:
                raise CgroupError(
                    f"cannot write {value!r} to {control}: {directory} has processes of its "
                    "own, and cgroup v2 lets only cgroups without processes hand controllers "
                    "to children; move those processes into a leaf cgroup or pick a different "
                    "parent"
                ) from e
            raise CgroupError(f"cannot write {value!r} to {control}: {e.strerror or e}") from e
        log.info("cgroup_controllers_enabled", cgroup=directory, controllers=missing)
