"""One ``mizzen exec`` command on this node: spawn it beside a process, stream it, end it.

The command starts exactly as the process's own runs do (``launch.checked_argv``):
it joins the process's cgroup before anything of it runs, then drops to the
process's user, with the process's environment (its variables, injected
ConfigMap/Secret values and Service variables as the supervisor computed them
for the current run) and working directory. It leads its own session and
process group; with a tty that session's controlling terminal is a new
pseudo-terminal (``setsid --ctty``, no ``preexec_fn`` in a threaded process).

Every process it starts carries ``MIZZEN_EXEC_SESSION=<random id>`` in its
environment. When the session ends — the command exited, or the client went
away (the call is cancelled) — the agent kills the command's process group,
then every process in the process's cgroup whose environment carries the
session's id (what forked away into another session or group), until none is
left. The pod's own processes are never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import os
import secrets
import shutil
import signal
import struct
import subprocess
import termios
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any

import structlog

from nodeagent.cgroups.base import Cgroup, CgroupError
from nodeagent.launch import DEFAULT_PATH, LaunchError, LaunchSpec, checked_argv
from protos import agent_pb2

log = structlog.get_logger(__name__)

SESSION_VARIABLE = "MIZZEN_EXEC_SESSION"
_READ = 64 * 1024
# Output messages buffered towards a slow client before the command's writes block.
_QUEUE = 16
# After the command exited (and what it left was killed), how long its output may take
# to reach end of file.
DRAIN_SECONDS = 1.0
_KILL_ROUNDS = 20
EOT = b"\x04"


def set_window(fd: int, size: agent_pb2.WindowSize) -> None:
    if size.rows and size.cols:
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size.rows, size.cols, 0, 0))


def _close(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def _carries(pid: int, mark: bytes) -> bool:
    """Whether an entry of pid's environment starts with mark (each entry ends with NUL,
    so a mark ending with NUL matches a whole entry)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:
        return False
    return b"\0" + mark in b"\0" + environ


def _kill_marked(pids: Callable[[], set[int]], mark: bytes, keep: set[int]) -> int:
    """SIGKILL every pid carrying mark (keep excepted) until a scan finds none new;
    how many were killed."""
    killed: set[int] = set()
    for _ in range(_KILL_ROUNDS):
        try:
            found = {p for p in pids() - keep - killed if _carries(p, mark)}
        except (CgroupError, OSError):
            break
        if not found:
            break
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        killed |= found
    return len(killed)


def kill_stale_sessions(root: Cgroup, keep: set[int]) -> int:
    """At agent start, before any exec can begin: kill what the exec sessions of a
    previous agent run left in the pods' cgroups (that agent died without ending
    them); keep holds the pods' own recorded pids. How many were killed."""
    return _kill_marked(root.pids, f"{SESSION_VARIABLE}=".encode(), keep)


class ExecSession:
    """A spawned command: its pid (pinned by a pidfd), its stdio and its session id."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        cgroup: Cgroup,
        session: str,
        *,
        stdin_fd: int | None,
        outputs: Sequence[tuple[int, str]],
        tty: bool,
    ) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.pidfd = os.pidfd_open(popen.pid)
        self.cgroup = cgroup
        self.session = session
        self.stdin_fd = stdin_fd
        self.outputs = list(outputs)
        self.tty = tty
        self.reaped = False
        # False: stdin messages are dropped (a tty without -i: the terminal is only output).
        self.accepts_stdin = stdin_fd is not None
        self._closed = False
        for fd in {stdin_fd, *(fd for fd, _ in outputs)} - {None}:
            assert fd is not None
            os.set_blocking(fd, False)

    @classmethod
    def spawn(
        cls,
        process: LaunchSpec,
        cgroup: Cgroup,
        command: Sequence[str],
        *,
        stdin: bool,
        tty: bool,
        size: agent_pb2.WindowSize | None = None,
    ) -> ExecSession:
        """Start command beside process (blocking: run it off the event loop); LaunchError."""
        session = secrets.token_hex(8)
        env = dict(process.env)
        env[SESSION_VARIABLE] = session
        if tty:
            env.setdefault("TERM", "xterm")
        spec = dataclasses.replace(process, argv=tuple(command), env=env)
        prefix: list[str] = []
        if tty:
            setsid = shutil.which("setsid", path=DEFAULT_PATH)
            if setsid is None:
                raise LaunchError("setsid (util-linux) is needed for a terminal (-t)")
            prefix = [setsid, "--ctty"]
        argv = checked_argv(spec, prefix)
        cwd = spec.cwd or "/"
        if tty:
            master, slave = os.openpty()
            if size is not None:
                set_window(master, size)
            try:
                # Not a new session here: setsid must not be a group leader, or it forks.
                popen = subprocess.Popen(
                    argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd, close_fds=True
                )
            except OSError as err:
                _close(master)
                raise LaunchError(f"cannot start the command: {err}") from None
            finally:
                _close(slave)
            session_ = cls(
                popen, cgroup, session, stdin_fd=master, outputs=[(master, "stdout")], tty=True
            )
            session_.accepts_stdin = stdin
            return session_
        try:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=cwd,
                close_fds=True,
                start_new_session=True,
            )
        except OSError as err:
            raise LaunchError(f"cannot start the command: {err}") from None
        assert popen.stdout is not None and popen.stderr is not None
        stdin_fd = popen.stdin.fileno() if popen.stdin is not None else None
        outputs = [(popen.stdout.fileno(), "stdout"), (popen.stderr.fileno(), "stderr")]
        return cls(popen, cgroup, session, stdin_fd=stdin_fd, outputs=outputs, tty=False)

    # -- streaming -------------------------------------------------------------------

    async def _readable(self, fd: int, write: bool = False) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        if write:
            loop.add_writer(fd, ready)
        else:
            loop.add_reader(fd, ready)
        try:
            await fut
        finally:
            if write:
                loop.remove_writer(fd)
            else:
                loop.remove_reader(fd)

    async def _pump(self, fd: int, kind: str, queue: asyncio.Queue[Any]) -> None:
        """Copy fd's output into queue until end of file (EIO on a pty), then None.

        Cancelled (the call ended), it puts nothing more: nobody reads the queue then,
        and a full queue would block it forever."""
        while True:
            await self._readable(fd)
            try:
                data = os.read(fd, _READ)
            except BlockingIOError:
                continue
            except OSError as err:
                if err.errno != errno.EIO:
                    log.warning("exec_read_failed", pid=self.pid, error=str(err))
                break
            if not data:
                break
            if kind == "stderr":
                await queue.put(agent_pb2.ExecResponse(stderr=data))
            else:
                await queue.put(agent_pb2.ExecResponse(stdout=data))
        await queue.put(None)

    async def _write(self, data: bytes) -> None:
        fd = self.stdin_fd
        view = memoryview(data)
        while view and fd is not None and fd == self.stdin_fd:
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                await self._readable(fd, write=True)
                continue
            except OSError:
                return  # the command closed its stdin (or exited): drop the rest
            view = view[n:]

    async def feed(self, requests: AsyncIterator[agent_pb2.ExecRequest]) -> None:
        """Pass the client's stdin, its end and resizes to the command."""
        async for request in requests:
            kind = request.WhichOneof("kind")
            if kind in ("stdin", "stdin_close") and not self.accepts_stdin:
                continue
            if kind == "stdin":
                await self._write(request.stdin)
            elif kind == "stdin_close":
                if self.tty:
                    await self._write(EOT)
                elif self.stdin_fd is not None and self.popen.stdin is not None:
                    self.stdin_fd = None
                    with contextlib.suppress(OSError):
                        self.popen.stdin.close()
            elif kind == "resize" and self.tty and self.stdin_fd is not None:
                set_window(self.stdin_fd, request.resize)

    async def _wait_exit(self) -> agent_pb2.ExecExit:
        await self._readable(self.pidfd)
        # Still a zombie: its pid (and so its process group id) cannot be reused yet.
        self.kill_group()
        code = self.popen.wait()
        self.reaped = True
        if code < 0:
            return agent_pb2.ExecExit(code=128 - code, signal=-code)
        return agent_pb2.ExecExit(code=code)

    async def stream(
        self, requests: AsyncIterator[agent_pb2.ExecRequest]
    ) -> AsyncGenerator[agent_pb2.ExecResponse, None]:
        """The command's output as it comes, then its exit; everything it started is killed
        when this ends (also when it is cancelled or closed early)."""
        queue: asyncio.Queue[Any] = asyncio.Queue(_QUEUE)
        pumps = [asyncio.create_task(self._pump(fd, kind, queue)) for fd, kind in self.outputs]
        feeding = asyncio.create_task(self.feed(requests))
        exited = asyncio.create_task(self._wait_exit())
        loop = asyncio.get_running_loop()
        open_streams = len(pumps)
        deadline: float | None = None
        getter: asyncio.Future[Any] | None = None
        try:
            while open_streams:
                getter = asyncio.ensure_future(queue.get())
                waiting: set[asyncio.Future[Any]] = {getter}
                if not exited.done():
                    waiting.add(exited)
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                done, _ = await asyncio.wait(
                    waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if exited.done() and deadline is None:
                    self.kill_leftovers()
                    deadline = loop.time() + DRAIN_SECONDS
                if getter not in done:
                    getter.cancel()
                    if deadline is not None and loop.time() >= deadline:
                        break
                    continue
                item = getter.result()
                if item is None:
                    open_streams -= 1
                else:
                    yield item
            yield agent_pb2.ExecResponse(exit=await exited)
        finally:
            tasks = [*pumps, feeding, exited, *([getter] if getter is not None else [])]
            for task in tasks:
                task.cancel()
            try:
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:  # also when the call is cancelled again meanwhile
                self.close()

    # -- ending ----------------------------------------------------------------------

    def kill_group(self) -> None:
        """SIGKILL the command's process group (only while its pid is not reaped)."""
        if self.reaped:
            return
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def kill_leftovers(self) -> None:
        """Kill the group, then every process in the cgroup marked with this session
        until a scan finds none new (a process already sent SIGKILL forks nothing more)."""
        self.kill_group()
        _kill_marked(self.cgroup.pids, f"{SESSION_VARIABLE}={self.session}\0".encode(), set())

    def close(self) -> None:
        """Kill everything the command started, reap it and close its descriptors (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.kill_leftovers()
        if not self.reaped:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=5)
            self.reaped = True
        self.stdin_fd = None
        if self.tty:
            _close(self.outputs[0][0])  # the pty's master (the pipes belong to popen)
        for stream in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        _close(self.pidfd)
