"""The cgroup drivers against the host's real cgroups, with real processes.

Needs root. v1 runs where the v1 hierarchies are mounted; v2 runs on a pure
v2 host (all checks), or on a hybrid host's controller-less
``/sys/fs/cgroup/unified`` (join, kill and remove only). Each test uses its own
parent cgroup ``mizzen-test-<random>``, kills and removes it at the end, and
makes itself the child subreaper so that orphaned grandchildren are reaped
here instead of lingering as zombies under pid 1.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent.cgroups import Cgroup, CgroupDriver, CgroupError, Limits, V1Driver, V2Driver

pytestmark = pytest.mark.integration

ROOT = "/sys/fs/cgroup"
MI = 1024 * 1024
PR_SET_CHILD_SUBREAPER = 36


def _v2_root(need_limits: bool) -> str:
    """Where to run v2: the pure v2 root, or (without limits) a hybrid's unified mount."""
    if os.path.exists(f"{ROOT}/cgroup.controllers"):
        offered = set(Path(ROOT, "cgroup.controllers").read_text().split())
        if need_limits and not {"cpu", "memory", "pids"} <= offered:
            pytest.skip(f"cgroup v2 at {ROOT} lacks the cpu/memory/pids controllers")
        return ROOT
    if need_limits:
        pytest.skip("no pure cgroup v2: a hybrid unified hierarchy has no controllers for limits")
    if os.path.exists(f"{ROOT}/unified/cgroup.controllers"):
        return f"{ROOT}/unified"
    pytest.skip("no cgroup v2 mount")


def _make_driver(kind: str, need_limits: bool) -> CgroupDriver:
    if os.geteuid() != 0:
        pytest.skip("creating cgroups needs root")
    parent = f"mizzen-test-{secrets.token_hex(4)}"
    if kind == "v1":
        try:
            return V1Driver(ROOT, parent)
        except CgroupError as e:
            pytest.skip(f"no cgroup v1 hierarchies: {e}")
    return V2Driver(_v2_root(need_limits), parent, use_cgroup_kill=kind == "v2")


def _set_subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


class Procs:
    """Processes a test starts; at teardown their cgroups are killed and all are reaped."""

    def __init__(self) -> None:
        self.popens: list[subprocess.Popen[bytes]] = []
        self.cgroups: list[Cgroup] = []
        self.others: set[int] = set()

    def start(self, cg: Cgroup, command: str, **kw: Any) -> subprocess.Popen[bytes]:
        """sh joins cg through every procs file, then runs command (exec'd unless a loop)."""
        joins = "".join(f"echo $$ > {f}; " for f in cg.procs_files())
        p = subprocess.Popen(["sh", "-c", f"set -e; {joins}{command}"], **kw)
        self.popens.append(p)
        self.cgroups.append(cg)
        return p

    def reap(self) -> None:
        try:
            for cg in self.cgroups:
                cg.kill_all()
        finally:
            for p in self.popens:
                if p.poll() is None:
                    p.kill()
                p.wait(timeout=10)
            deadline = time.monotonic() + 5
            for pid in self.others:
                while True:
                    try:
                        if os.waitpid(pid, os.WNOHANG)[0] == pid:
                            break
                    except ChildProcessError:
                        break
                    if time.monotonic() > deadline:
                        raise AssertionError(f"test process {pid} still running at teardown")
                    time.sleep(0.02)


def _driver_fixture(request: pytest.FixtureRequest, need_limits: bool) -> Iterator[CgroupDriver]:
    driver = _make_driver(request.param, need_limits)
    _set_subreaper(True)
    try:
        yield driver
    finally:
        try:
            top = driver.open("")
            if top is not None:
                top.kill_all()
                top.remove()
        finally:
            _set_subreaper(False)


@pytest.fixture(params=["v1", "v2", "v2-freezer"])
def driver(request: pytest.FixtureRequest) -> Iterator[CgroupDriver]:
    yield from _driver_fixture(request, need_limits=False)


@pytest.fixture(params=["v1", "v2"])
def limited(request: pytest.FixtureRequest) -> Iterator[CgroupDriver]:
    yield from _driver_fixture(request, need_limits=True)


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.reap()


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def parent_dirs(driver: CgroupDriver) -> list[str]:
    """The parent cgroup's directory in every hierarchy the driver uses."""
    if isinstance(driver, V1Driver):
        return [os.path.join(h, driver.parent) for h in driver.unique_hierarchies]
    assert isinstance(driver, V2Driver)
    return [driver.base]


def is_dead(pid: int) -> bool:
    """Gone, or a zombie nobody has reaped yet (it runs no code either way)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_process_joins_every_procs_file(driver: CgroupDriver, procs: Procs) -> None:
    cg = driver.create("pod-join/app")
    p = procs.start(cg, "exec sleep 100")
    joined = lambda: all(str(p.pid) in Path(f).read_text().split() for f in cg.procs_files())  # noqa: E731
    wait_until(joined, 5, "the process to appear in every procs file")
    assert p.pid in cg.pids()
    pod = driver.open("pod-join")
    assert pod is not None and pod.pids() == {p.pid}
    own = Path(f"/proc/{p.pid}/cgroup").read_text()
    assert own.count("pod-join/app") == len(cg.procs_files())
    pod.kill_all()
    assert p.wait(timeout=5) == -signal.SIGKILL
    assert pod.pids() == set()


def test_kill_all_leaves_nothing_of_a_setsid_double_forked_tree(
    driver: CgroupDriver, procs: Procs, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pids"
    script = f"""
import os, time
def note():
    with open({str(pid_file)!r}, "a") as f:
        f.write(f"{{os.getpid()}}\\n")
for daemonize in (True, True, False):
    child = os.fork()
    if child == 0:
        os.setsid()
        if daemonize and os.fork() != 0:
            os._exit(0)
        note()
        time.sleep(100)
        os._exit(0)
    if daemonize:
        os.waitpid(child, 0)
note()
time.sleep(100)
"""
    pod = driver.create("pod-tree")
    cg = driver.create("pod-tree/app")
    p = procs.start(cg, f"exec {sys.executable} -c {shlex.quote(script)}")
    lines = lambda: pid_file.read_text().split() if pid_file.exists() else []  # noqa: E731
    wait_until(lambda: len(lines()) == 4, 10, "four processes to write their pids")
    pids = {int(x) for x in lines()}
    procs.others |= pids - {p.pid}
    assert pids <= pod.pids()
    assert len({os.getsid(pid) for pid in pids}) == 4

    pod.kill_all()
    assert pod.pids() == set()
    assert p.wait(timeout=5) == -signal.SIGKILL
    wait_until(lambda: all(is_dead(pid) for pid in pids), 5, "every process of the tree to die")


def test_remove_leaves_no_directories(driver: CgroupDriver, procs: Procs) -> None:
    pod = driver.create("pod-rm")
    a = driver.create("pod-rm/a")
    driver.create("pod-rm/b")
    p = procs.start(a, "exec sleep 100")
    wait_until(lambda: p.pid in a.pids(), 5, "the process to join")
    pod.kill_all()
    pod.remove()
    assert driver.open("pod-rm") is None
    assert driver.children() == []
    top = driver.open("")
    assert top is not None
    top.remove()
    assert driver.open("") is None
    assert [d for d in parent_dirs(driver) if os.path.exists(d)] == []


def test_memory_limit_oom_kills_and_is_counted(limited: CgroupDriver, procs: Procs) -> None:
    pod = limited.create("pod-oom", Limits(memory_limit_bytes=32 * MI))
    app = limited.create("pod-oom/app")
    alloc = 'x = b"x" * (100 << 20); print(len(x))'
    p = procs.start(app, f"exec {sys.executable} -c {shlex.quote(alloc)}", stdout=subprocess.PIPE)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == -signal.SIGKILL, out
    assert pod.usage().oom_kills >= 1
    assert app.usage().oom_kills >= 1


def test_cpu_limit_caps_a_busy_loop(limited: CgroupDriver, procs: Procs) -> None:
    cg = limited.create("pod-cpu", Limits(cpu_limit_millis=200))
    p = procs.start(cg, "while :; do :; done")
    wait_until(lambda: p.pid in cg.pids(), 5, "the busy loop to join")
    time.sleep(0.3)
    used0, t0 = cg.usage().cpu_usage_ns, time.monotonic()
    time.sleep(2.0)
    used1, t1 = cg.usage().cpu_usage_ns, time.monotonic()
    cpus_per_second = (used1 - used0) / 1e9 / (t1 - t0)
    assert 0 < cpus_per_second <= 0.3, cpus_per_second


def test_pids_limit_stops_a_fork_loop(limited: CgroupDriver, procs: Procs) -> None:
    cg = limited.create("pod-pids", Limits(pids_limit=20))
    script = """
import json, os, sys, time
children, failures = [], 0
for _ in range(60):
    try:
        pid = os.fork()
    except OSError:
        failures += 1
        continue
    if pid == 0:
        time.sleep(100)
        os._exit(0)
    children.append(pid)
print(json.dumps({"children": children, "failures": failures}), flush=True)
time.sleep(100)
"""
    p = procs.start(cg, f"exec {sys.executable} -c {shlex.quote(script)}", stdout=subprocess.PIPE)
    assert p.stdout is not None
    report = json.loads(p.stdout.readline())
    procs.others |= set(report["children"])
    assert report["failures"] > 0
    assert len(report["children"]) <= 19
    assert cg.usage().pids <= 20
    assert len(cg.pids()) == len(report["children"]) + 1
    cg.kill_all()
    assert cg.pids() == set()


def test_memory_limit_below_usage_is_refused_naming_the_file(procs: Procs) -> None:
    """v1 only: lowering memory.limit_in_bytes under unreclaimable usage fails with EBUSY."""
    driver = _make_driver("v1", need_limits=True)
    try:
        cg = driver.create("pod-shrink", Limits(memory_limit_bytes=256 * MI))
        hold = 'x = b"x" * (64 << 20); print(1, flush=True); import time; time.sleep(100)'
        p = procs.start(cg, f"exec {sys.executable} -c {shlex.quote(hold)}", stdout=subprocess.PIPE)
        assert p.stdout is not None and p.stdout.readline().strip() == b"1"
        with pytest.raises(CgroupError, match=r"memory\.limit_in_bytes: current usage is above"):
            cg.set_limits(Limits(memory_limit_bytes=8 * MI))
        assert p.poll() is None
    finally:
        top = driver.open("")
        if top is not None:
            top.kill_all()
            top.remove()
