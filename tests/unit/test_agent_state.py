"""Local pod records (atomic JSON files) and the identity checks of re-adoption."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent import runtime
from nodeagent.cgroups.base import Limits, Usage
from nodeagent.state import (
    PodRecord,
    ProcessRecord,
    StateDir,
    Terminated,
    read_boot_id,
    read_start_ticks,
)


def record() -> PodRecord:
    r = PodRecord(namespace="default", name="web", uid="u-1", grace_seconds=7)
    r.processes["main"] = ProcessRecord(
        name="main",
        restart_count=2,
        pid=1234,
        start_ticks=555,
        boot_id="b",
        cgroup_path="pod-u-1/main",
        started_at=1.5,
        oom_kills_at_start=1,
        log_instance=2,
        last_terminated=Terminated(1, 0, "Error", "", 0.5, 1.0),
    )
    return r


def test_save_load_roundtrip_and_remove(tmp_path: Path) -> None:
    d = StateDir(tmp_path / "pods")
    d.save(record())
    assert d.load("u-1") == record()
    assert d.load_all() == [record()]
    assert sorted(os.listdir(tmp_path / "pods")) == ["u-1.json"]  # no temporary left
    d.remove("u-1")
    d.remove("u-1")
    assert d.load("u-1") is None
    assert d.load_all() == []


def test_unreadable_records_are_skipped(tmp_path: Path) -> None:
    d = StateDir(tmp_path)
    d.save(record())
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "partial.json").write_text('{"namespace": "x"}')
    assert [r.uid for r in d.load_all()] == ["u-1"]


def test_start_ticks_parse_a_comm_with_spaces_and_parens(tmp_path: Path) -> None:
    fields = ["S"] + [str(i) for i in range(4, 22)] + ["987654", "0"]
    (tmp_path / "77").mkdir()
    (tmp_path / "77" / "stat").write_text(f"77 (a (weird) name) {' '.join(fields)}\n")
    assert read_start_ticks(77, proc=str(tmp_path)) == 987654
    assert read_start_ticks(78, proc=str(tmp_path)) is None


def test_start_ticks_of_a_real_process_match_proc_stat() -> None:
    # field 22 of /proc/<pid>/stat, read independently of the parser under test
    after_comm = Path(f"/proc/{os.getpid()}/stat").read_text().rpartition(")")[2].split()
    assert read_start_ticks(os.getpid()) == int(after_comm[19])
    assert read_start_ticks(1) != read_start_ticks(os.getpid())
    assert len(read_boot_id()) == 36


class FakeCgroup:
    def __init__(self, path: str, pids: set[int]) -> None:
        self.path = path
        self._pids = pids
        self.oom_kills = 0
        self.killed = 0

    def procs_files(self) -> list[str]:
        return []

    def set_limits(self, limits: Limits) -> None:
        pass

    def pids(self) -> set[int]:
        return set(self._pids)

    def cpu_and_memory(self) -> tuple[int, int]:
        usage = self.usage()
        return usage.cpu_usage_ns, usage.memory_bytes

    def usage(self) -> Usage:
        return Usage(0, 0, len(self._pids), self.oom_kills)

    def kill_all(self) -> None:
        self.killed += 1

    def remove(self) -> None:
        pass


class FakeDriver:
    version = "v2"

    def __init__(self, groups: dict[str, FakeCgroup]) -> None:
        self.groups = groups

    def create(self, path: str, limits: Limits | None = None) -> FakeCgroup:
        return self.groups.setdefault(path, FakeCgroup(path, set()))

    def open(self, path: str) -> FakeCgroup | None:
        return self.groups.get(path)

    def children(self, path: str = "") -> list[str]:
        return []


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "30"])
    yield proc
    proc.kill()
    proc.wait()


def _rec(pid: int, **changes: Any) -> ProcessRecord:
    rec = ProcessRecord(
        name="main",
        pid=pid,
        start_ticks=read_start_ticks(pid) or 0,
        boot_id=read_boot_id(),
        cgroup_path="pod-u/main",
    )
    return dataclasses.replace(rec, **changes)


def test_recover_only_a_provably_identical_process(sleeper: subprocess.Popen[bytes]) -> None:
    pid = sleeper.pid
    driver = FakeDriver({"pod-u/main": FakeCgroup("pod-u/main", {pid})})
    boot = read_boot_id()
    run = runtime.recover(_rec(pid), driver, boot)
    assert run is not None and run.adopted and run.pid == pid
    assert runtime.recover(_rec(pid, boot_id="other-boot"), driver, boot) is None
    assert runtime.recover(_rec(pid, start_ticks=1), driver, boot) is None
    assert runtime.recover(_rec(pid, cgroup_path="pod-x/y"), driver, boot) is None
    not_member = FakeDriver({"pod-u/main": FakeCgroup("pod-u/main", set())})
    assert runtime.recover(_rec(pid), not_member, boot) is None
    assert runtime.recover(_rec(0), driver, boot) is None


async def test_an_adopted_process_exits_with_unknown_status(
    sleeper: subprocess.Popen[bytes],
) -> None:
    pid = sleeper.pid
    cg = FakeCgroup("pod-u/main", {pid})
    run = runtime.recover(_rec(pid), FakeDriver({"pod-u/main": cg}), read_boot_id())
    assert run is not None
    sleeper.terminate()
    result = await run.wait()
    assert (result.exit_code, result.reason) == (-1, "Unknown")
    assert "not its parent" in result.message


async def test_an_adopted_process_whose_cgroup_saw_an_oom_kill_is_oomkilled(
    sleeper: subprocess.Popen[bytes],
) -> None:
    pid = sleeper.pid
    cg = FakeCgroup("pod-u/main", {pid})
    run = runtime.recover(_rec(pid), FakeDriver({"pod-u/main": cg}), read_boot_id())
    assert run is not None
    cg.oom_kills = 1
    sleeper.kill()
    result = await run.wait()
    assert (result.exit_code, result.signal, result.reason) == (137, 9, "OOMKilled")
