"""V1Driver against fake v1 hierarchies in tmp_path.

FakeV1Kernel populates a new cgroup's interface files per hierarchy on mkdir,
refuses rmdir of a cgroup with tasks, and removes a pid from every hierarchy
when it is SIGKILLed, recording whether its freezer cgroup was FROZEN then.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from nodeagent.cgroups import cgroupfs
from nodeagent.cgroups.base import CgroupError, Limits
from nodeagent.cgroups.cgroupfs import SysOps
from nodeagent.cgroups.v1 import V1Cgroup, V1Driver, find_hierarchies

MI = 1024 * 1024
UNLIMITED = "9223372036854771712"
FILES = {
    "cpu": {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "-1", "cpu.shares": "1024"},
    "cpuacct": {"cpuacct.usage": "0"},
    "memory": {
        "memory.limit_in_bytes": UNLIMITED,
        "memory.usage_in_bytes": "0",
        "memory.use_hierarchy": "0",
        "memory.failcnt": "0",
        "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0",
    },
    "pids": {"pids.max": "max", "pids.current": "0"},
    "freezer": {"freezer.state": "THAWED"},
}


class FakeV1Kernel:
    def __init__(
        self, root: Path, hierarchies: tuple[str, ...], links: dict[str, str] | None = None
    ):
        self.root = root
        self.now = 0.0
        self.killed: list[int] = []
        self.frozen_at_kill: list[bool] = []
        self.unkillable: set[int] = set()
        self.forks_on_kill: dict[int, tuple[str, int]] = {}
        for name in hierarchies:
            (root / name).mkdir()
            (root / name / "cgroup.procs").write_text("1\n")
        for link, target in (links or {}).items():
            (root / link).symlink_to(target)
        self.ops = SysOps(
            mkdir=self.mkdir, rmdir=self.rmdir, kill=self.kill, clock=self.clock, sleep=self.sleep
        )

    def mkdir(self, path: str) -> None:
        os.mkdir(path)
        hierarchy = Path(path).relative_to(self.root).parts[0]
        (Path(path) / "cgroup.procs").write_text("")
        for controller in hierarchy.split(","):
            for name, text in FILES.get(controller, {}).items():
                (Path(path) / name).write_text(text + "\n")

    def rmdir(self, path: str) -> None:
        d = Path(path)
        if not d.is_dir():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        if (d / "cgroup.procs").read_text().split() or any(p.is_dir() for p in d.iterdir()):
            raise OSError(errno.EBUSY, "Device or resource busy", path)
        for f in d.iterdir():
            f.unlink()
        d.rmdir()

    def cgroup_dirs(self) -> list[Path]:
        return [p.parent for p in self.root.rglob("cgroup.procs") if not p.parent.is_symlink()]

    def add(self, rel: str, *pids: int, hierarchies: tuple[str, ...] | None = None) -> None:
        """Put pids into cgroup rel (below "mizzen") of the given (default: all) hierarchies."""
        for h in hierarchies or tuple(p.name for p in self.root.iterdir() if not p.is_symlink()):
            procs = self.root / h / "mizzen" / rel / "cgroup.procs"
            if hierarchies is None and not procs.exists():
                continue
            procs.write_text(procs.read_text() + "".join(f"{p}\n" for p in pids))

    def kill(self, pid: int, sig: int) -> None:
        assert sig == signal.SIGKILL
        self.killed.append(pid)
        states = [p.read_text().strip() for p in self.root.rglob("freezer.state")]
        self.frozen_at_kill.append("FROZEN" in states)
        if pid in self.unkillable:
            return
        found = False
        for d in self.cgroup_dirs():
            pids = (d / "cgroup.procs").read_text().split()
            if str(pid) in pids:
                found = True
                (d / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids if p != str(pid)))
        if not found:
            raise ProcessLookupError(errno.ESRCH, "No such process")
        if pid in self.forks_on_kill:
            rel, child = self.forks_on_kill.pop(pid)
            self.add(rel, child)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


SEPARATE = ("cpu", "cpuacct", "memory", "pids", "freezer", "blkio")


@pytest.fixture
def kernel(tmp_path: Path) -> FakeV1Kernel:
    return FakeV1Kernel(tmp_path, SEPARATE)


@pytest.fixture
def comounted(tmp_path: Path) -> FakeV1Kernel:
    return FakeV1Kernel(
        tmp_path,
        ("cpu,cpuacct", "memory", "pids", "freezer"),
        links={"cpu": "cpu,cpuacct", "cpuacct": "cpu,cpuacct"},
    )


def driver_for(kernel: FakeV1Kernel, **kw: Any) -> V1Driver:
    return V1Driver(str(kernel.root), "mizzen", ops=kernel.ops, **kw)


def test_find_hierarchies_prefers_exact_names_and_sees_comounts(
    comounted: FakeV1Kernel, tmp_path: Path
) -> None:
    found = find_hierarchies(str(tmp_path))
    assert found["cpu"] == str(tmp_path / "cpu")
    assert found["cpuacct"] == str(tmp_path / "cpuacct")
    assert found["memory"] == str(tmp_path / "memory")
    (tmp_path / "cpu").unlink()
    (tmp_path / "cpuacct").unlink()
    assert find_hierarchies(str(tmp_path))["cpu"] == str(tmp_path / "cpu,cpuacct")


def test_create_makes_every_hierarchy_and_one_procs_file_each(kernel: FakeV1Kernel) -> None:
    cg = driver_for(kernel).create("pod-1/web")
    root = kernel.root
    for h in ("cpu", "cpuacct", "memory", "pids", "freezer"):
        assert (root / h / "mizzen/pod-1/web").is_dir()
    assert not (root / "blkio/mizzen").exists()
    assert cg.procs_files() == [
        str(root / h / "mizzen/pod-1/web/cgroup.procs")
        for h in ("cpu", "cpuacct", "memory", "pids", "freezer")
    ]
    for level in ("mizzen", "mizzen/pod-1", "mizzen/pod-1/web"):
        assert (root / "memory" / level / "memory.use_hierarchy").read_text() == "1"


def test_comounted_cpu_cpuacct_is_one_hierarchy(comounted: FakeV1Kernel) -> None:
    cg = driver_for(comounted).create("pod-1", Limits(cpu_limit_millis=500))
    root = comounted.root
    assert cg.procs_files() == [
        str(root / h / "mizzen/pod-1/cgroup.procs") for h in ("cpu", "memory", "pids", "freezer")
    ]
    assert (root / "cpu,cpuacct/mizzen/pod-1/cpu.cfs_quota_us").read_text() == "50000"
    (root / "cpu,cpuacct/mizzen/pod-1/cpuacct.usage").write_text("987654321\n")
    assert cg.usage().cpu_usage_ns == 987_654_321


def test_set_limits_writes_exact_values(kernel: FakeV1Kernel) -> None:
    limits = Limits(
        cpu_limit_millis=250,
        cpu_request_millis=500,
        memory_limit_bytes=64 * MI,
        memory_high_bytes=48 * MI,
        pids_limit=20,
    )
    driver_for(kernel).create("pod-1", limits)
    root = kernel.root
    assert (root / "cpu/mizzen/pod-1/cpu.cfs_period_us").read_text() == "100000"
    assert (root / "cpu/mizzen/pod-1/cpu.cfs_quota_us").read_text() == "25000"
    assert (root / "cpu/mizzen/pod-1/cpu.shares").read_text() == "512"
    assert (root / "memory/mizzen/pod-1/memory.limit_in_bytes").read_text() == str(64 * MI)
    assert (root / "pids/mizzen/pod-1/pids.max").read_text() == "20"


def test_set_limits_none_restores_defaults(kernel: FakeV1Kernel) -> None:
    cg = driver_for(kernel).create("pod-1", Limits(cpu_limit_millis=1, cpu_request_millis=1))
    assert (kernel.root / "cpu/mizzen/pod-1/cpu.cfs_quota_us").read_text() == "1000"
    assert (kernel.root / "cpu/mizzen/pod-1/cpu.shares").read_text() == "2"
    cg.set_limits(Limits())
    assert (kernel.root / "cpu/mizzen/pod-1/cpu.cfs_quota_us").read_text() == "-1"
    assert (kernel.root / "cpu/mizzen/pod-1/cpu.shares").read_text() == "1024"
    assert (kernel.root / "memory/mizzen/pod-1/memory.limit_in_bytes").read_text() == "-1"
    assert (kernel.root / "pids/mizzen/pod-1/pids.max").read_text() == "max"


def test_memory_limit_below_usage_names_the_file(
    kernel: FakeV1Kernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    cg = driver_for(kernel).create("pod-1")

    def busy_open(path: str, mode: str = "r", *a: Any, **kw: Any) -> Any:
        if "w" in mode and path.endswith("memory.limit_in_bytes"):
            raise OSError(errno.EBUSY, "Device or resource busy", path)
        return open(path, mode, *a, **kw)

    monkeypatch.setattr(cgroupfs, "open", busy_open, raising=False)
    with pytest.raises(CgroupError, match=r"'1048576' to .*pod-1/memory\.limit_in_bytes: current"):
        cg.set_limits(Limits(memory_limit_bytes=MI))


def test_usage_parses_files_and_sums_oom_kills_over_the_subtree(kernel: FakeV1Kernel) -> None:
    driver = driver_for(kernel)
    pod = driver.create("pod-1")
    driver.create("pod-1/web")
    driver.create("pod-1/db")
    mem = kernel.root / "memory/mizzen/pod-1"
    (kernel.root / "cpuacct/mizzen/pod-1/cpuacct.usage").write_text("5000000000\n")
    (mem / "memory.usage_in_bytes").write_text("33554432\n")
    (kernel.root / "pids/mizzen/pod-1/pids.current").write_text("4\n")
    (mem / "web/memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    (mem / "db/memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 1\noom_kill 1\n")
    usage = pod.usage()
    assert (usage.cpu_usage_ns, usage.memory_bytes, usage.pids) == (5_000_000_000, 32 * MI, 4)
    assert usage.oom_kills == 3
    web = driver.open("pod-1/web")
    assert web is not None and web.usage().oom_kills == 2


def test_oom_falls_back_to_failcnt_without_oom_kill_field(kernel: FakeV1Kernel) -> None:
    driver = driver_for(kernel)
    pod = driver.create("pod-1")
    driver.create("pod-1/web")
    mem = kernel.root / "memory/mizzen/pod-1"
    for d in (mem, mem / "web"):
        (d / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\n")
    assert pod.usage().oom_kills == 0
    (mem / "web/memory.failcnt").write_text("17\n")
    assert pod.usage().oom_kills == 1


def test_pids_are_the_union_of_hierarchies_and_descendants(kernel: FakeV1Kernel) -> None:
    driver = driver_for(kernel)
    pod = driver.create("pod-1")
    driver.create("pod-1/web")
    kernel.add("pod-1", 10)
    kernel.add("pod-1/web", 11)
    kernel.add("pod-1/web", 12, hierarchies=("memory",))
    kernel.add("pod-1/web", 13, hierarchies=("pids",))
    assert pod.pids() == {10, 11, 12, 13}


def test_kill_all_freezes_kills_thaws_until_empty(kernel: FakeV1Kernel) -> None:
    driver = driver_for(kernel)
    pod = driver.create("pod-1")
    driver.create("pod-1/web")
    kernel.add("pod-1/web", 11, 12)
    kernel.add("pod-1/web", 14, hierarchies=("memory",))
    kernel.forks_on_kill[12] = ("pod-1", 13)
    pod.kill_all()
    assert pod.pids() == set()
    assert sorted(kernel.killed) == [11, 12, 13, 14]
    assert all(kernel.frozen_at_kill)
    assert (kernel.root / "freezer/mizzen/pod-1/freezer.state").read_text() == "THAWED"


def test_kill_all_without_freezer_walks_pids(tmp_path: Path) -> None:
    kernel = FakeV1Kernel(tmp_path, ("cpu", "cpuacct", "memory", "pids"))
    driver = driver_for(kernel)
    assert not driver.has_freezer
    pod = driver.create("pod-1")
    kernel.add("pod-1", 21, 22)
    kernel.forks_on_kill[21] = ("pod-1", 23)
    pod.kill_all()
    assert pod.pids() == set()
    assert kernel.killed == [21, 22, 23]


def test_kill_all_gives_up_after_timeout_and_thaws(kernel: FakeV1Kernel) -> None:
    pod = driver_for(kernel, kill_timeout=2.0).create("pod-1")
    kernel.add("pod-1", 31, 32)
    kernel.unkillable.add(31)
    with pytest.raises(CgroupError, match=r"processes \[31\] still in mizzen/pod-1 after 2s"):
        pod.kill_all()
    assert kernel.now >= 2.0
    assert (kernel.root / "freezer/mizzen/pod-1/freezer.state").read_text() == "THAWED"


def test_remove_every_hierarchy_leaves_first(kernel: FakeV1Kernel) -> None:
    driver = driver_for(kernel)
    pod = driver.create("pod-1")
    driver.create("pod-1/web")
    driver.create("pod-2")
    assert driver.children() == ["pod-1", "pod-2"]
    assert driver.children("pod-1") == ["pod-1/web"]
    pod.remove()
    for h in ("cpu", "cpuacct", "memory", "pids", "freezer"):
        assert not (kernel.root / h / "mizzen/pod-1").exists()
    assert driver.open("pod-1") is None
    pod.remove()
    assert driver.children() == ["pod-2"]


def test_remove_reports_busy_and_still_tries_other_hierarchies(kernel: FakeV1Kernel) -> None:
    pod = driver_for(kernel, remove_timeout=0.5).create("pod-1")
    kernel.add("pod-1", 41, hierarchies=("memory",))
    with pytest.raises(CgroupError, match=r"cannot remove cgroup .*memory/mizzen/pod-1"):
        pod.remove()
    assert (kernel.root / "memory/mizzen/pod-1").exists()
    assert not (kernel.root / "pids/mizzen/pod-1").exists()


def test_open_finds_partially_created_cgroup(kernel: FakeV1Kernel) -> None:
    (kernel.root / "memory/mizzen/pod-9").mkdir(parents=True)
    (kernel.root / "memory/mizzen/pod-9/cgroup.procs").write_text("")
    cg = driver_for(kernel).open("pod-9")
    assert isinstance(cg, V1Cgroup)
    assert cg.procs_files() == [str(kernel.root / "memory/mizzen/pod-9/cgroup.procs")]


def test_missing_required_hierarchy_is_named(tmp_path: Path) -> None:
    FakeV1Kernel(tmp_path, ("cpu", "memory", "freezer"))
    with pytest.raises(CgroupError, match=r"hierarchies cpuacct, pids not mounted under"):
        V1Driver(str(tmp_path))
