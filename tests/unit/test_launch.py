"""Launching a process through the cgroup-joining wrapper, and the runtime's exit reports.

Real processes; the "cgroup.procs" files are plain files here, which is enough
to see that the wrapper writes the process's own pid before exec.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeagent import runtime
from nodeagent.cgroups.base import Limits, Usage
from nodeagent.launch import (
    LaunchError,
    LaunchSpec,
    launch,
    process_env,
    resolve_command,
    resolve_user,
    wrap_argv,
)


class FileCgroup:
    """A cgroup stand-in: procs files are plain files; kill_all SIGKILLs the pids in them."""

    def __init__(self, root: Path) -> None:
        self.path = "pod-u/main"
        self.files = [str(root / "a.procs"), str(root / "b.procs")]
        self.oom_kills = 0
        self.kills = 0

    def procs_files(self) -> list[str]:
        return self.files

    def set_limits(self, limits: Limits) -> None:
        pass

    def pids(self) -> set[int]:
        out = set()
        for f in self.files:
            if os.path.exists(f):
                out |= {int(x) for x in Path(f).read_text().split()}
        return out

    def cpu_and_memory(self) -> tuple[int, int]:
        usage = self.usage()
        return usage.cpu_usage_ns, usage.memory_bytes

    def usage(self) -> Usage:
        return Usage(0, 0, 0, self.oom_kills)

    def kill_all(self) -> None:
        self.kills += 1
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def remove(self) -> None:
        pass


def spec(cg: FileCgroup, *argv: str, cwd: str | None = None, user: str = "") -> LaunchSpec:
    env = process_env([("GREETING", "hi")], namespace="ns", pod="p", uid="u")
    return LaunchSpec(argv=argv, env=env, cwd=cwd, user=user, procs_files=tuple(cg.files))


@pytest.fixture
def cg(tmp_path: Path) -> FileCgroup:
    return FileCgroup(tmp_path)


@pytest.fixture
def log_fd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path / "out.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    yield fd
    os.close(fd)


async def test_process_joins_every_procs_file_then_runs_with_the_pod_env(
    cg: FileCgroup, log_fd: int, tmp_path: Path
) -> None:
    run = runtime.start(
        spec(cg, "sh", "-c", 'echo "$GREETING $MIZZEN_POD_NAME $$ $(pwd)"', cwd=str(tmp_path)),
        cg,
        log_fd,
    )
    result = await run.wait()
    assert (result.exit_code, result.reason) == (0, "Completed")
    for f in cg.files:
        assert Path(f).read_text().split() == [str(run.pid)]
    # exec kept the pid: the shell's $$ is the pid we track
    assert (tmp_path / "out.log").read_text().split() == ["hi", "p", str(run.pid), str(tmp_path)]


async def test_exit_codes_and_signals(cg: FileCgroup, log_fd: int) -> None:
    run = runtime.start(spec(cg, "sh", "-c", "exit 3"), cg, log_fd)
    result = await run.wait()
    assert (result.exit_code, result.signal, result.reason) == (3, 0, "Error")
    run = runtime.start(spec(cg, "sleep", "30"), cg, log_fd)
    os.kill(run.pid, signal.SIGTERM)
    result = await run.wait()
    assert (result.exit_code, result.signal, result.reason) == (143, 15, "Error")
    assert await run.wait() == result  # idempotent


async def test_sigkill_with_an_oom_kill_in_the_cgroup_is_oomkilled(
    cg: FileCgroup, log_fd: int
) -> None:
    run = runtime.start(spec(cg, "sleep", "30"), cg, log_fd)
    cg.oom_kills = 1
    os.kill(run.pid, signal.SIGKILL)
    result = await run.wait()
    assert (result.exit_code, result.signal, result.reason) == (137, 9, "OOMKilled")


async def test_stop_sends_sigterm_to_the_group_first(
    cg: FileCgroup, log_fd: int, tmp_path: Path
) -> None:
    marker = tmp_path / "got-term"
    script = f"trap 'echo x > {marker}; exit 0' TERM; while :; do sleep 0.05; done"
    run = runtime.start(spec(cg, "sh", "-c", script), cg, log_fd)
    await asyncio.sleep(0.3)
    result = await runtime.stop(run, grace=5.0)
    assert result.exit_code == 0 and marker.exists()
    assert cg.kills == 0


async def test_stop_kills_the_cgroup_after_the_grace_period(cg: FileCgroup, log_fd: int) -> None:
    script = "trap '' TERM; while :; do sleep 0.05; done"
    run = runtime.start(spec(cg, "sh", "-c", script), cg, log_fd)
    await asyncio.sleep(0.3)
    result = await runtime.stop(run, grace=0.5)
    assert result.signal == signal.SIGKILL
    assert cg.kills >= 1


def test_checks_before_spawning(cg: FileCgroup, log_fd: int, tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match='executable "no-such-cmd" not found in PATH'):
        launch(spec(cg, "no-such-cmd"), log_fd)
    with pytest.raises(LaunchError, match=r'working directory ".*missing" does not exist'):
        launch(spec(cg, "true", cwd=str(tmp_path / "missing")), log_fd)
    with pytest.raises(LaunchError, match='user "no-such-user-xyz" does not exist'):
        launch(spec(cg, "true", user="no-such-user-xyz"), log_fd)
    plain = tmp_path / "plain"
    plain.write_text("")
    plain.chmod(0o644)
    with pytest.raises(LaunchError, match="is not executable"):
        launch(spec(cg, str(plain)), log_fd)
    with pytest.raises(LaunchError, match="no command"):
        launch(spec(cg), log_fd)


async def test_an_unwritable_procs_file_stops_the_process_before_exec(
    log_fd: int, tmp_path: Path
) -> None:
    cg = FileCgroup(tmp_path)
    cg.files = [str(tmp_path / "missing-dir" / "cgroup.procs")]
    marker = tmp_path / "ran"
    run = runtime.start(spec(cg, "touch", str(marker)), cg, log_fd)
    result = await run.wait()
    assert result.exit_code == 126 and "could not be executed" in result.message
    assert not marker.exists()


def test_resolution_helpers() -> None:
    assert resolve_command("sh", {"PATH": "/bin:/usr/bin"}, None).endswith("/sh")
    assert resolve_user("") is None
    root = resolve_user("root")
    assert root is not None and (root.uid, root.known) == (0, True)
    numeric = resolve_user("54321")
    assert numeric is not None and (numeric.uid, numeric.gid, numeric.known) == (
        54321,
        54321,
        False,
    )
    argv = wrap_argv(["/cg/a", "/cg/b"], ["/bin/echo", "x"])
    assert argv[:2] == ["/bin/sh", "-c"] and argv[3:] == [
        "sh",
        "/cg/a",
        "/cg/b",
        "--",
        "/bin/echo",
        "x",
    ]
    env = process_env([("PATH", "/opt/bin")], namespace="n", pod="p", uid="u")
    assert env["PATH"] == "/opt/bin" and env["MIZZEN_POD_UID"] == "u"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")
async def test_runs_as_another_user(cg: FileCgroup, log_fd: int, tmp_path: Path) -> None:
    run = runtime.start(spec(cg, "sh", "-c", "id -u", user="65534"), cg, log_fd)
    assert (await run.wait()).exit_code == 0
    assert (tmp_path / "out.log").read_text().split() == ["65534"]


async def test_pods_get_the_usual_umask_not_the_agents(
    cg: FileCgroup, log_fd: int, tmp_path: Path
) -> None:
    """The agent runs with umask 077 (its own files are private); a pod's process gets
    022, what a login shell or a container runtime gives."""
    old = os.umask(0o077)
    try:
        run = runtime.start(spec(cg, "sh", "-c", "umask"), cg, log_fd)
        result = await run.wait()
    finally:
        os.umask(old)
    assert result.exit_code == 0
    assert (tmp_path / "out.log").read_text().strip() == "0022"
