"""The process runtime: start, recover, wait, stop — one run of one process.

Nomad's driver protocol, small: ``start`` spawns a run inside its cgroup,
``recover`` re-adopts a run recorded before the agent restarted, ``ProcessRun.wait``
resolves when the run exits (through a pidfd, which works for children and for
re-adopted processes that are no longer our children), ``stop`` asks politely
and then kills the whole cgroup.

Exit status: for our own children it is exact. A re-adopted process is not our
child, so when it exits its status cannot be read: it is reported as exit code
-1, reason ``Unknown`` — or ``OOMKilled`` when its cgroup's OOM-kill counter
grew. A run whose cgroup OOM-kill counter grew while it died of SIGKILL is
``OOMKilled``; exit 0 is ``Completed``; anything else ``Error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from nodeagent.cgroups.base import Cgroup, CgroupDriver, CgroupError
from nodeagent.launch import WRAPPER_CANNOT_EXEC, LaunchSpec, launch
from nodeagent.state import ProcessRecord, Terminated, read_start_ticks

if TYPE_CHECKING:
    from nodeagent.process_stdin import ProcessStdin

log = structlog.get_logger(__name__)

Clock = Callable[[], float]


def _oom_kills(cgroup: Cgroup) -> int:
    try:
        return cgroup.usage().oom_kills
    except (CgroupError, OSError):
        return 0


class ProcessRun:
    """One run of a process: its pid (pinned by a pidfd), cgroup and start facts."""

    def __init__(
        self,
        *,
        pid: int,
        pidfd: int,
        cgroup: Cgroup,
        started_at: float,
        start_ticks: int,
        oom_kills_at_start: int,
        popen: subprocess.Popen[bytes] | None,
        clock: Clock = time.time,
    ) -> None:
        self.pid = pid
        self.cgroup = cgroup
        self.started_at = started_at
        self.start_ticks = start_ticks
        self.oom_kills_at_start = oom_kills_at_start
        self._pidfd = pidfd
        self._popen = popen
        self._clock = clock
        self._exited: asyncio.Future[Terminated] | None = None
        # The write end of the run's stdin pipe (spec stdin: true), held by the agent;
        # a ProcessTty (its pty's master) with tty: true.
        self.stdin: ProcessStdin | None = None

    @property
    def adopted(self) -> bool:
        """True when this run was recovered: not our child, its exit status is unknown."""
        return self._popen is None

    @property
    def result(self) -> Terminated | None:
        if self._exited is not None and self._exited.done():
            return self._exited.result()
        return None

    async def wait(self) -> Terminated:
        """How the run ended; safe to await from several tasks."""
        if self._exited is None:
            loop = asyncio.get_running_loop()
            self._exited = loop.create_future()
            fut = self._exited

            def on_exit() -> None:
                loop.remove_reader(self._pidfd)
                if not fut.done():
                    fut.set_result(self._collect())

            loop.add_reader(self._pidfd, on_exit)
        return await asyncio.shield(self._exited)

    def _collect(self) -> Terminated:
        finished = self._clock()
        grew = _oom_kills(self.cgroup) > self.oom_kills_at_start
        with contextlib.suppress(OSError):
            os.close(self._pidfd)
        if self._popen is None:
            if grew:
                return self._oom(finished)
            return Terminated(
                exit_code=-1,
                signal=0,
                reason="Unknown",
                message="exited while the agent was not its parent",
                started_at=self.started_at,
                finished_at=finished,
            )
        code = self._popen.wait()
        if code < 0:
            sig = -code
            if sig == signal.SIGKILL and grew:
                return self._oom(finished)
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = str(sig)
            return Terminated(
                exit_code=128 + sig,
                signal=sig,
                reason="Error",
                message=f"killed by signal {name}",
                started_at=self.started_at,
                finished_at=finished,
            )
        message = ""
        if code in WRAPPER_CANNOT_EXEC and finished - self.started_at < 1.0:
            message = f"exit code {code}: the command could not be executed (or the cgroup joined)"
        return Terminated(
            exit_code=code,
            signal=0,
            reason="Completed" if code == 0 else "Error",
            message=message,
            started_at=self.started_at,
            finished_at=finished,
        )

    def _oom(self, finished: float) -> Terminated:
        return Terminated(
            exit_code=137,
            signal=int(signal.SIGKILL),
            reason="OOMKilled",
            message="killed by the kernel's OOM killer: the process exceeded its memory limit",
            started_at=self.started_at,
            finished_at=finished,
        )

    def signal_group(self, sig: int) -> bool:
        """Signal the run's process group, only while its leader (our pid) is alive;
        whether the signal was sent."""
        if self.result is not None:
            return False
        try:
            signal.pidfd_send_signal(self._pidfd, 0)
        except OSError:
            return False
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def send_signal(self, sig: int) -> bool:
        """Signal the run's own process (not its group) through its pidfd; False if it is gone."""
        if self.result is not None:
            return False
        try:
            signal.pidfd_send_signal(self._pidfd, sig)
        except OSError:
            return False
        return True

    def kill_cgroup(self) -> None:
        try:
            self.cgroup.kill_all()
        except CgroupError as err:
            log.warning("cgroup_kill_failed", cgroup=self.cgroup.path, error=str(err))

    def record_into(self, record: ProcessRecord, boot_id: str) -> None:
        record.pid = self.pid
        record.start_ticks = self.start_ticks
        record.boot_id = boot_id
        record.cgroup_path = self.cgroup.path
        record.started_at = self.started_at
        record.oom_kills_at_start = self.oom_kills_at_start


def start(
    spec: LaunchSpec,
    cgroup: Cgroup,
    log_fd: int,
    *,
    clock: Clock = time.time,
    new_cgroup: bool = False,
    stdin_fd: int | None = None,
    tty_fd: int | None = None,
) -> ProcessRun:
    """Spawn a run in cgroup; LaunchError (from ``launch``) when it cannot start.

    new_cgroup: the cgroup was just created, so its OOM-kill count is 0 (not read).
    stdin_fd: the run's stdin (the read end of its pipe), else /dev/null.
    tty_fd: a pty's slave, the run's stdin, stdout, stderr and controlling terminal.
    """
    oom_before = 0 if new_cgroup else _oom_kills(cgroup)
    started = clock()
    popen = launch(spec, log_fd, stdin_fd, tty_fd)
    pidfd = os.pidfd_open(popen.pid)
    ticks = read_start_ticks(popen.pid) or 0
    return ProcessRun(
        pid=popen.pid,
        pidfd=pidfd,
        cgroup=cgroup,
        started_at=started,
        start_ticks=ticks,
        oom_kills_at_start=oom_before,
        popen=popen,
        clock=clock,
    )


def recover(
    record: ProcessRecord, driver: CgroupDriver, boot_id: str, *, clock: Clock = time.time
) -> ProcessRun | None:
    """Re-adopt the recorded run if it is provably the same process, else None.

    The pidfd is opened first, so once the checks pass it cannot refer to a
    reused pid.
    """
    if record.pid <= 0 or record.boot_id != boot_id:
        return None
    try:
        pidfd = os.pidfd_open(record.pid)
    except OSError:
        return None
    cgroup = driver.open(record.cgroup_path) if record.cgroup_path else None
    ours = (
        cgroup is not None
        and read_start_ticks(record.pid) == record.start_ticks
        and record.pid in _pids(cgroup)
    )
    if not ours or cgroup is None:
        os.close(pidfd)
        return None
    return ProcessRun(
        pid=record.pid,
        pidfd=pidfd,
        cgroup=cgroup,
        started_at=record.started_at,
        start_ticks=record.start_ticks,
        oom_kills_at_start=record.oom_kills_at_start,
        popen=None,
        clock=clock,
    )


def _pids(cgroup: Cgroup) -> set[int]:
    try:
        return cgroup.pids()
    except (CgroupError, OSError):
        return set()


async def stop(run: ProcessRun, grace: float) -> Terminated:
    """SIGTERM the run's process group, wait up to grace, then kill its whole cgroup."""
    if grace > 0:
        run.signal_group(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                return await run.wait()
        except TimeoutError:
            pass
    run.kill_cgroup()
    return await run.wait()
