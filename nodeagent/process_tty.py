"""The agent's end of a process's pseudo-terminal (a process whose spec says ``tty: true``).

The supervisor opens a pty at each start of such a process: the slave is the
process's stdin, stdout, stderr and controlling terminal (``setsid --ctty``,
a new session); the master is this ``ProcessTty``, held by the agent for as
long as the run lives. Everything read from the master is appended to the
run's log file, so ``mizzen logs`` and Attach read a tty process's output as
any other's. Attach calls claim it as they claim a stdin pipe (one writer at
a time, ``nodeagent.process_stdin``), write what their client types into it
and resize it. With stdinOnce the end of the first attach's input is end of
file as a terminal gives it (^D, canonical mode) and later stdin attaches are
refused; the master itself stays open until the run exits, then its last
output is copied (bounded) and it is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os

import structlog

from nodeagent.pod_exec import EOT, set_window
from nodeagent.process_stdin import AttachRefused, ProcessStdin
from protos import agent_pb2

log = structlog.get_logger(__name__)

_READ = 64 * 1024
DRAIN_SECONDS = 1.0
"""After the run exited (and its cgroup was killed), how long its last output may take."""


class ProcessTty(ProcessStdin):
    """A run's pty master: its input (claimed like a stdin pipe), its output into log_fd."""

    def __init__(self, master: int, log_fd: int, *, once: bool) -> None:
        super().__init__(master, once=once)
        self.master = master
        self._log_fd = log_fd
        self._input_ended = False  # stdinOnce: the first attach's input ended (^D sent)
        self._copied = asyncio.Event()  # the output reached its end (EIO) or the copy stopped
        self._copying = False

    def claim(self, who: str, where: str) -> None:
        if self._input_ended and not self.closed:
            raise AttachRefused(
                f"{where}: cannot attach stdin: it was closed when its first attach ended "
                "(stdinOnce)"
            )
        super().claim(who, where)

    def end_input(self) -> None:
        """stdinOnce: the first writer's input ended: ^D, once; the master stays open."""
        if not self.once or self._input_ended or self.closed:
            return
        self._input_ended = True
        with contextlib.suppress(OSError):
            os.write(self.master, EOT)

    def resize(self, size: agent_pb2.WindowSize) -> None:
        if not self.closed:
            set_window(self.master, size)

    # -- output ----------------------------------------------------------------------

    def start_copy(self) -> None:
        """On the loop: copy what the process writes into its log file, as it comes."""
        if self._copying or self.closed:
            return
        self._copying = True
        asyncio.get_running_loop().add_reader(self.master, self._copy)

    def _copy(self) -> None:
        try:
            data = os.read(self.master, _READ)
        except BlockingIOError:
            return
        except OSError as err:  # EIO: every slave is closed (the process and its children)
            if err.errno != errno.EIO:
                log.warning("tty_read_failed", error=str(err))
            data = b""
        if not data:
            self._stop_copy()
            return
        try:
            os.write(self._log_fd, data)
        except OSError as err:
            log.warning("tty_log_write_failed", error=str(err))

    def _stop_copy(self) -> None:
        if self._copying and not self.closed:
            asyncio.get_running_loop().remove_reader(self.master)
        self._copying = False
        self._copied.set()

    async def drain_and_close(self, timeout: float = DRAIN_SECONDS) -> None:
        """The run exited: copy its last output (until EIO, at most timeout), then close."""
        if self._copying:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._copied.wait()
        self.close()

    def close(self) -> None:
        if self._copying and not self.closed:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_reader(self.master)
            self._copying = False
            self._copied.set()
        super().close()
        fd, self._log_fd = self._log_fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
