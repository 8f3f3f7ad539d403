"""What both cgroup drivers do the same way on a mounted cgroup filesystem.

Interface files are read and written with plain ``open``; every failure
becomes a :class:`CgroupError` naming the file (and the value written), so a
pod's status says which knob the kernel refused. The side effects a fake
sysfs tree cannot imitate (mkdir/rmdir of cgroups, signals, time) go through
:class:`SysOps`, which unit tests replace.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from .base import CgroupError

log = structlog.get_logger("nodeagent.cgroups")

CPU_PERIOD_US = 100_000
# The kernel refuses CFS quotas below 1 ms; Kubernetes clamps the same way.
MIN_CPU_QUOTA_US = 1_000
MIN_CPU_SHARES = 2
MAX_CPU_SHARES = 262_144
DEFAULT_CPU_SHARES = 1024
DEFAULT_CPU_WEIGHT = 100

_FIRST_POLL_S = 0.01
_MAX_POLL_S = 0.1


@dataclass(frozen=True)
class SysOps:
    """Side effects outside plain file reads/writes; tests substitute a fake kernel."""

    mkdir: Callable[[str], None] = os.mkdir
    rmdir: Callable[[str], None] = os.rmdir
    kill: Callable[[int, int], None] = os.kill
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


def cpu_quota_us(limit_millis: int) -> int:
    """CFS quota per CPU_PERIOD_US for a CPU limit in millicores (1000m = one CPU)."""
    return max(MIN_CPU_QUOTA_US, limit_millis * CPU_PERIOD_US // 1000)


def cpu_shares(request_millis: int) -> int:
    """Kubernetes' MilliCPUToShares: 1000m = 1024 shares, clamped to the kernel's range."""
    return min(MAX_CPU_SHARES, max(MIN_CPU_SHARES, request_millis * 1024 // 1000))


def check_relpath(path: str, what: str = "cgroup path") -> list[str]:
    """Split a relative cgroup path into components; "" is the driver's parent itself."""
    if path == "":
        return []
    parts = path.split("/")
    if path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise CgroupError(f"invalid {what} {path!r}: want a relative path like 'pod-1/web'")
    return parts


def read_text(path: str) -> str:
    """The whole file; plain os.read (a third of ``open().read()``'s cost: the usage
    sampler reads a few files of every pod every interval)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            chunks = [os.read(fd, 4096)]
            while chunks[-1]:
                chunks.append(os.read(fd, 65536))
        finally:
            os.close(fd)
    except OSError as e:
        raise CgroupError(f"cannot read {path}: {e.strerror or e}") from e
    return b"".join(chunks).decode()


def read_int(path: str) -> int:
    text = read_text(path).strip()
    try:
        return int(text)
    except ValueError as e:
        raise CgroupError(f"unexpected content in {path}: {text!r}") from e


def read_keyed(path: str) -> dict[str, int]:
    """Parse "key value" lines (cpu.stat, memory.events, memory.oom_control, cgroup.events)."""
    out: dict[str, int] = {}
    for line in read_text(path).splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].lstrip("-").isdigit():
            out[fields[0]] = int(fields[1])
    return out


def read_field(path: str, key: str) -> int:
    values = read_keyed(path)
    if key not in values:
        raise CgroupError(f"no {key!r} field in {path}")
    return values[key]


def write_text(path: str, value: str) -> None:
    """Write one value; the kernel applies it on write, and errors surface on write/close."""
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        raise CgroupError(f"cannot write {value!r} to {path}: {e.strerror or e}") from e


def read_pids(procs_file: str) -> set[int]:
    """The pids in one cgroup.procs; a cgroup removed meanwhile has none."""
    try:
        with open(procs_file) as f:
            return {int(line) for line in f.read().split()}
    except FileNotFoundError:
        return set()
    except OSError as e:
        if e.errno == errno.ENODEV:
            return set()
        raise CgroupError(f"cannot read {procs_file}: {e.strerror or e}") from e


def subtree_dirs(top: str) -> list[str]:
    """top and every directory below it, parents before children; [] when top is missing."""
    if not os.path.isdir(top):
        return []
    out = [top]
    for dirpath, dirnames, _ in os.walk(top):
        dirnames.sort()
        out.extend(os.path.join(dirpath, d) for d in dirnames)
    return out


def subtree_pids(top: str) -> set[int]:
    pids: set[int] = set()
    for d in subtree_dirs(top):
        pids |= read_pids(os.path.join(d, "cgroup.procs"))
    return pids


def child_names(directory: str) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(directory) if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


def make_dirs(base: str, parts: list[str], ops: SysOps, on_create: Callable[[str], None]) -> str:
    """mkdir base/parts[0]/parts[1]/... one level at a time; on_create runs after each new one."""
    current = base
    for part in parts:
        current = os.path.join(current, part)
        if os.path.isdir(current):
            continue
        try:
            ops.mkdir(current)
        except FileExistsError:
            continue
        except OSError as e:
            raise CgroupError(f"cannot create cgroup {current}: {e.strerror or e}") from e
        on_create(current)
    return current


def remove_tree(top: str, ops: SysOps, timeout: float) -> None:
    """rmdir every cgroup under top, leaves first, retrying EBUSY while exiting tasks leave.

    A missing tree is fine. Raises CgroupError naming the directory still busy
    after timeout (usually: live processes; call kill_all first).
    """
    deadline = ops.clock() + timeout
    delay = _FIRST_POLL_S
    for d in reversed(subtree_dirs(top)):
        while True:
            try:
                ops.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno not in (errno.EBUSY, errno.ENOTEMPTY) or ops.clock() >= deadline:
                    raise CgroupError(f"cannot remove cgroup {d}: {e.strerror or e}") from e
            ops.sleep(delay)
            delay = min(delay * 2, _MAX_POLL_S)


def sigkill_all(pids: set[int], ops: SysOps) -> None:
    """SIGKILL each pid; one already gone is what we wanted."""
    for pid in sorted(pids):
        try:
            ops.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except OSError as e:
            log.warning("cgroup_kill_failed", pid=pid, error=str(e))


def kill_until_empty(
    what: str,
    list_pids: Callable[[], set[int]],
    kill_round: Callable[[], None],
    ops: SysOps,
    timeout: float,
) -> None:
    """Run kill rounds until list_pids() is empty; CgroupError naming survivors after timeout.

    Repeating rounds catches processes that were forked or moved in between.
    Killed processes exit asynchronously, so the loop polls with a short backoff.
    """
    deadline = ops.clock() + timeout
    delay = _FIRST_POLL_S
    rounds = 0
    while True:
        remaining = list_pids()
        if not remaining:
            if rounds > 1:
                log.info("cgroup_kill_needed_rounds", cgroup=what, rounds=rounds)
            return
        if ops.clock() >= deadline:
            raise CgroupError(
                f"processes {sorted(remaining)} still in {what} after {timeout:g}s of SIGKILL"
            )
        kill_round()
        rounds += 1
        ops.sleep(delay)
        delay = min(delay * 2, _MAX_POLL_S)


def wait_for(pred: Callable[[], bool], ops: SysOps, timeout: float) -> bool:
    """Poll pred until true or timeout; returns its last value."""
    deadline = ops.clock() + timeout
    delay = _FIRST_POLL_S
    while not pred():
        if ops.clock() >= deadline:
            return False
        ops.sleep(delay)
        delay = min(delay * 2, _MAX_POLL_S)
    return True
