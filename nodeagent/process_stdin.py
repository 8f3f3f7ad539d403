"""The agent's end of a process's stdin pipe (a process whose spec says ``stdin: true``).

The supervisor creates the pipe at each start of such a process; the read end
becomes the process's stdin, the write end is this ``ProcessStdin``, held by
the agent for as long as the run lives (closed when it exits), so the process
sees end of file only when the agent closes it. Attach calls
(``nodeagent.pod_attach``) claim it one at a time and write what their client
sends; with ``once`` (stdinOnce) the first claim's end closes it for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import os


class AttachRefused(Exception):
    """The process runs, but this attach cannot have its stdin (FAILED_PRECONDITION)."""


class ProcessStdin:
    """The agent's (non-blocking) write end of a process's stdin pipe."""

    def __init__(self, fd: int, *, once: bool) -> None:
        os.set_blocking(fd, False)
        self._fd: int | None = fd
        self.once = once
        self.holder: str | None = None  # who is attached with stdin now
        self.used = False  # a stdin attach has happened
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def closed(self) -> bool:
        return self._fd is None

    def claim(self, who: str, where: str) -> None:
        """Make who the writer; AttachRefused when closed or someone else writes."""
        if self._fd is None:
            why = (
                "it was closed when its first attach ended (stdinOnce)"
                if self.used and self.once
                else "the process's stdin is closed"
            )
            raise AttachRefused(f"{where}: cannot attach stdin: {why}")
        if self.holder is not None:
            raise AttachRefused(f"{where}: stdin is already attached by {self.holder}")
        self.holder = who
        self.used = True

    def end_input(self) -> None:
        """The writer's input ended: with stdinOnce the process gets end of file."""
        if self.once:
            self.close()

    def release(self) -> None:
        """The writer's call ended (stdinOnce: the stdin is closed)."""
        self.holder = None
        self.end_input()

    async def write(self, data: bytes) -> bool:
        """Write all of data (waiting while the pipe is full); False once the pipe is closed
        or the process no longer reads it (the rest is dropped)."""
        view = memoryview(data)
        while view:
            fd = self._fd
            if fd is None:
                return False
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                await self._writable(fd)
                continue
            except OSError:  # EPIPE: the process closed its stdin, or exited
                return False
            view = view[n:]
        return True

    async def _writable(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiter, self._loop = fut, loop

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        loop.add_writer(fd, ready)
        try:
            await fut
        finally:
            self._waiter = None
            if self._fd == fd:
                loop.remove_writer(fd)

    def close(self) -> None:
        """Close the write end (idempotent); a write waiting on it returns False."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._waiter is not None and self._loop is not None:
            self._loop.remove_writer(fd)
            if not self._waiter.done():
                self._waiter.set_result(None)
        with contextlib.suppress(OSError):
            os.close(fd)
