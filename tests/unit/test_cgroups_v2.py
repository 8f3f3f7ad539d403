"""V2Driver against a fake unified hierarchy in tmp_path.

FakeV2Kernel plays the kernel's part that plain files cannot: mkdir populates
interface files, rmdir refuses a cgroup with tasks, kill removes a pid,
and "time passing" (sleep) carries out cgroup.kill and cgroup.freeze writes.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from nodeagent.cgroups import v2
from nodeagent.cgroups.base import CgroupError, Limits
from nodeagent.cgroups.cgroupfs import SysOps
from nodeagent.cgroups.v2 import V2Cgroup, V2Driver, cpu_weight

MI = 1024 * 1024


class FakeV2Kernel:
    def __init__(self, root: Path, controllers: str = "cpu memory pids", kill_file: bool = True):
        self.root = root
        self.kill_file = kill_file
        self.now = 0.0
        self.killed: list[int] = []
        self.unkillable: set[int] = set()
        self.forks_on_kill: dict[int, tuple[Path, int]] = {}
        self.freeze_state_at_kill: list[str] = []
        self.enabled: dict[Path, set[str]] = {root: set()}
        self.shown: dict[Path, str] = {}
        self.exit_at: dict[int, float] = {}
        (root / "cgroup.controllers").write_text(controllers + "\n")
        (root / "cgroup.subtree_control").write_text("\n")
        (root / "cgroup.procs").write_text("1\n")
        self.ops = SysOps(
            mkdir=self.mkdir, rmdir=self.rmdir, kill=self.kill, clock=self.clock, sleep=self.sleep
        )

    def _sync_subtree_control(self, d: Path) -> set[str]:
        """Apply "+cpu -memory" writes; the file then reads back as names, like the kernel's."""
        enabled = self.enabled.setdefault(d, set())
        control = d / "cgroup.subtree_control"
        text = control.read_text()
        if text != self.shown.get(d, "\n"):
            for token in text.split():
                assert token[0] in "+-", f"kernel would refuse {token!r} with EINVAL"
                (enabled.add if token[0] == "+" else enabled.discard)(token[1:])
        self.shown[d] = " ".join(sorted(enabled)) + "\n"
        control.write_text(self.shown[d])
        return enabled

    def mkdir(self, path: str) -> None:
        d = Path(path)
        offered = self._sync_subtree_control(d.parent)
        os.mkdir(d)
        files = {
            "cgroup.controllers": " ".join(sorted(offered)),
            "cgroup.subtree_control": "",
            "cgroup.procs": "",
            "cgroup.events": "populated 0\nfrozen 0\n",
            "cgroup.freeze": "0",
            "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
        }
        if self.kill_file:
            files["cgroup.kill"] = ""
        if "cpu" in offered:
            files |= {"cpu.max": "max 100000", "cpu.weight": "100"}
        if "memory" in offered:
            files |= {
                "memory.max": "max",
                "memory.high": "max",
                "memory.current": "0",
                "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
            }
        if "pids" in offered:
            files |= {"pids.max": "max", "pids.current": "0"}
        for name, text in files.items():
            (d / name).write_text(text + "\n" if text else "")

    def rmdir(self, path: str) -> None:
        d = Path(path)
        if not d.is_dir():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        if self.procs(d) or any(p.is_dir() for p in d.iterdir()):
            raise OSError(errno.EBUSY, "Device or resource busy", path)
        for f in d.iterdir():
            f.unlink()
        d.rmdir()

    def procs(self, d: Path) -> list[int]:
        return [int(x) for x in (d / "cgroup.procs").read_text().split()]

    def add(self, d: Path, *pids: int) -> None:
        (d / "cgroup.procs").write_text("".join(f"{p}\n" for p in self.procs(d) + list(pids)))

    def remove_pid(self, pid: int) -> bool:
        for procs in self.root.rglob("cgroup.procs"):
            pids = [int(x) for x in procs.read_text().split()]
            if pid in pids:
                procs.write_text("".join(f"{p}\n" for p in pids if p != pid))
                return True
        return False

    def kill(self, pid: int, sig: int) -> None:
        assert sig == signal.SIGKILL
        self.killed.append(pid)
        for freeze in self.root.rglob("cgroup.freeze"):
            if freeze.read_text().strip() == "1":
                self.freeze_state_at_kill.append(str(freeze.parent))
        if pid in self.unkillable:
            return
        if not self.remove_pid(pid):
            raise ProcessLookupError(errno.ESRCH, "No such process")
        if pid in self.forks_on_kill:
            where, child = self.forks_on_kill.pop(pid)
            self.add(where, child)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        for kill in self.root.rglob("cgroup.kill"):
            if kill.read_text().strip() == "1":
                for procs in kill.parent.rglob("cgroup.procs"):
                    left = [p for p in self.procs(procs.parent) if p in self.unkillable]
                    procs.write_text("".join(f"{p}\n" for p in left))
                kill.write_text("")
        for freeze in self.root.rglob("cgroup.freeze"):
            frozen = freeze.read_text().strip() == "1"
            (freeze.parent / "cgroup.events").write_text(f"populated 1\nfrozen {int(frozen)}\n")
        for pid, when in list(self.exit_at.items()):
            if self.now >= when:
                self.remove_pid(pid)
                del self.exit_at[pid]


@pytest.fixture
def kernel(tmp_path: Path) -> FakeV2Kernel:
    return FakeV2Kernel(tmp_path)


def driver_for(kernel: FakeV2Kernel, **kw: Any) -> V2Driver:
    return V2Driver(str(kernel.root), "mizzen", ops=kernel.ops, **kw)


def test_create_enables_offered_controllers_down_the_tree(kernel: FakeV2Kernel) -> None:
    driver = driver_for(kernel)
    cg = driver.create("pod-1/web")
    root = kernel.root
    assert cg.path == "pod-1/web"
    assert (root / "mizzen/pod-1/web").is_dir()
    for d in (root, root / "mizzen", root / "mizzen/pod-1"):
        kernel._sync_subtree_control(d)
        assert (d / "cgroup.subtree_control").read_text().split() == ["cpu", "memory", "pids"]
    assert (root / "mizzen/pod-1/web/cgroup.subtree_control").read_text() == ""
    assert (root / "mizzen/pod-1/web/memory.max").exists()
    assert cg.procs_files() == [str(root / "mizzen/pod-1/web/cgroup.procs")]


def test_create_enables_only_what_the_kernel_offers(tmp_path: Path) -> None:
    kernel = FakeV2Kernel(tmp_path, controllers="cpu io pids")
    driver_for(kernel).create("pod-1")
    assert kernel.enabled[tmp_path] == {"cpu", "pids"}
    assert (tmp_path / "mizzen/cgroup.controllers").read_text() == "cpu pids\n"
    assert (tmp_path / "mizzen/pod-1/cpu.max").exists()
    assert not (tmp_path / "mizzen/pod-1/memory.max").exists()


def test_create_again_reuses_without_rewriting_subtree_control(kernel: FakeV2Kernel) -> None:
    driver = driver_for(kernel)
    driver.create("pod-1/web")
    driver.create("pod-1/db")
    for d in (kernel.root, kernel.root / "mizzen"):
        assert (d / "cgroup.subtree_control").read_text() == "cpu memory pids\n"
    assert driver.children("pod-1") == ["pod-1/db", "pod-1/web"]
    assert driver.children() == ["pod-1"]


def test_set_limits_writes_kubernetes_values(kernel: FakeV2Kernel) -> None:
    limits = Limits(
        cpu_limit_millis=250,
        cpu_request_millis=500,
        memory_limit_bytes=64 * MI,
        memory_high_bytes=48 * MI,
        pids_limit=20,
    )
    driver_for(kernel).create("pod-1", limits)
    d = kernel.root / "mizzen/pod-1"
    assert (d / "cpu.max").read_text() == "25000 100000"
    assert (d / "cpu.weight").read_text() == "20"
    assert (d / "memory.max").read_text() == str(64 * MI)
    assert (d / "memory.high").read_text() == str(48 * MI)
    assert (d / "pids.max").read_text() == "20"


def test_set_limits_none_restores_defaults(kernel: FakeV2Kernel) -> None:
    cg = driver_for(kernel).create("pod-1", Limits(cpu_limit_millis=100, pids_limit=5))
    cg.set_limits(Limits())
    d = kernel.root / "mizzen/pod-1"
    assert (d / "cpu.max").read_text() == "max 100000"
    assert (d / "cpu.weight").read_text() == "100"
    assert (d / "memory.max").read_text() == "max"
    assert (d / "memory.high").read_text() == "max"
    assert (d / "pids.max").read_text() == "max"


def test_tiny_cpu_limit_is_clamped_to_the_kernel_minimum(kernel: FakeV2Kernel) -> None:
    driver_for(kernel).create("pod-1", Limits(cpu_limit_millis=3))
    assert (kernel.root / "mizzen/pod-1/cpu.max").read_text() == "1000 100000"


@pytest.mark.parametrize(
    ("millis", "weight"),
    [
        (0, 1),
        (1, 1),
        (100, 4),
        (500, 20),
        (1000, 39),
        (2000, 79),
        (256_000, 10_000),
        (10**7, 10_000),
    ],
)
def test_cpu_weight_matches_kubernetes(millis: int, weight: int) -> None:
    assert cpu_weight(millis) == weight


def test_requested_limit_without_controller_names_the_file(tmp_path: Path) -> None:
    kernel = FakeV2Kernel(tmp_path, controllers="cpu pids")
    cg = driver_for(kernel).create("pod-1")
    cg.set_limits(Limits(cpu_limit_millis=500))
    with pytest.raises(CgroupError, match=r"memory\.max.*memory controller is not enabled"):
        cg.set_limits(Limits(memory_limit_bytes=MI))


def test_usage_parses_stat_files(kernel: FakeV2Kernel) -> None:
    cg = driver_for(kernel).create("pod-1")
    d = kernel.root / "mizzen/pod-1"
    (d / "cpu.stat").write_text("usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\n")
    (d / "memory.current").write_text("52428800\n")
    (d / "pids.current").write_text("7\n")
    (d / "memory.events").write_text("low 0\nhigh 3\nmax 9\noom 2\noom_kill 2\n")
    usage = cg.usage()
    assert usage.cpu_usage_ns == 1_234_567_000
    assert usage.memory_bytes == 52_428_800
    assert usage.pids == 7
    assert usage.oom_kills == 2


def test_usage_without_memory_controller_names_the_file(tmp_path: Path) -> None:
    kernel = FakeV2Kernel(tmp_path, controllers="")
    cg = driver_for(kernel).create("pod-1")
    with pytest.raises(CgroupError, match=r"pod-1/memory\.current"):
        cg.usage()


def test_enable_refused_for_cgroup_with_processes(
    kernel: FakeV2Kernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = driver_for(kernel)
    driver.create("pod-1")

    def busy_open(path: str, mode: str = "r", *a: Any, **kw: Any) -> Any:
        if "w" in mode and path.endswith("pod-1/cgroup.subtree_control"):
            raise OSError(errno.EBUSY, "Device or resource busy", path)
        return open(path, mode, *a, **kw)

    monkeypatch.setattr(v2, "open", busy_open, raising=False)
    with pytest.raises(CgroupError, match=r"pod-1/cgroup\.subtree_control.*processes of its own"):
        driver.create("pod-1/web")


def test_pids_include_descendants(kernel: FakeV2Kernel) -> None:
    driver = driver_for(kernel)
    pod = driver.create("pod-1")
    driver.create("pod-1/web")
    kernel.add(kernel.root / "mizzen/pod-1", 10)
    kernel.add(kernel.root / "mizzen/pod-1/web", 11, 12)
    assert pod.pids() == {10, 11, 12}
    web = driver.open("pod-1/web")
    assert web is not None and web.pids() == {11, 12}


def test_kill_all_uses_cgroup_kill(kernel: FakeV2Kernel) -> None:
    driver = driver_for(kernel)
    pod = driver.create("pod-1")
    driver.create("pod-1/web")
    kernel.add(kernel.root / "mizzen/pod-1/web", 11, 12)
    pod.kill_all()
    assert pod.pids() == set()
    assert kernel.killed == []


def test_kill_all_freezes_kills_thaws_and_repeats(tmp_path: Path) -> None:
    kernel = FakeV2Kernel(tmp_path, kill_file=False)
    driver = driver_for(kernel)
    pod = driver.create("pod-1")
    driver.create("pod-1/web")
    web = tmp_path / "mizzen/pod-1/web"
    kernel.add(web, 11, 12)
    kernel.forks_on_kill[12] = (web, 13)
    pod.kill_all()
    assert pod.pids() == set()
    assert kernel.killed == [11, 12, 13]
    assert kernel.freeze_state_at_kill == [str(tmp_path / "mizzen/pod-1")] * 3
    assert (tmp_path / "mizzen/pod-1/cgroup.freeze").read_text() == "0"


def test_kill_all_can_skip_cgroup_kill(kernel: FakeV2Kernel) -> None:
    pod = driver_for(kernel, use_cgroup_kill=False).create("pod-1")
    kernel.add(kernel.root / "mizzen/pod-1", 21)
    pod.kill_all()
    assert kernel.killed == [21]


@pytest.mark.parametrize("kill_file", [True, False])
def test_kill_all_gives_up_after_timeout(tmp_path: Path, kill_file: bool) -> None:
    kernel = FakeV2Kernel(tmp_path, kill_file=kill_file)
    pod = driver_for(kernel, kill_timeout=3.0).create("pod-1")
    kernel.add(tmp_path / "mizzen/pod-1", 31, 32)
    kernel.unkillable.add(32)
    with pytest.raises(CgroupError, match=r"processes \[32\] still in .*pod-1 after 3s"):
        pod.kill_all()
    assert kernel.now >= 3.0
    assert (tmp_path / "mizzen/pod-1/cgroup.freeze").read_text().strip() == "0"


def test_remove_deletes_leaves_first_and_tolerates_missing(kernel: FakeV2Kernel) -> None:
    driver = driver_for(kernel)
    pod = driver.create("pod-1")
    driver.create("pod-1/web")
    driver.create("pod-1/db")
    pod.remove()
    assert not (kernel.root / "mizzen/pod-1").exists()
    assert driver.open("pod-1") is None
    pod.remove()
    assert driver.children() == []


def test_remove_retries_while_tasks_exit(kernel: FakeV2Kernel) -> None:
    pod = driver_for(kernel).create("pod-1")
    kernel.add(kernel.root / "mizzen/pod-1", 41)
    kernel.exit_at[41] = 0.2
    pod.remove()
    assert not (kernel.root / "mizzen/pod-1").exists()
    assert kernel.now >= 0.2


def test_remove_reports_busy_cgroup(kernel: FakeV2Kernel) -> None:
    pod = driver_for(kernel, remove_timeout=1.0).create("pod-1")
    kernel.add(kernel.root / "mizzen/pod-1", 51)
    with pytest.raises(CgroupError, match=r"cannot remove cgroup .*mizzen/pod-1: Device or res"):
        pod.remove()


def test_parent_itself_is_path_empty(kernel: FakeV2Kernel) -> None:
    driver = driver_for(kernel)
    driver.create("pod-1/web")
    kernel.add(kernel.root / "mizzen/pod-1/web", 61)
    top = driver.open("")
    assert isinstance(top, V2Cgroup) and top.directory == str(kernel.root / "mizzen")
    top.kill_all()
    top.remove()
    assert not (kernel.root / "mizzen").exists()


@pytest.mark.parametrize("bad", ["/pod-1", "../x", "pod-1/../../etc", "a//b", "a/", "."])
def test_bad_paths_are_refused(kernel: FakeV2Kernel, bad: str) -> None:
    driver = driver_for(kernel)
    with pytest.raises(CgroupError, match="invalid cgroup path"):
        driver.create(bad)
    with pytest.raises(CgroupError, match="invalid cgroup path"):
        driver.open(bad)
