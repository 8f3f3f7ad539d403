"""The local terminal of `mizzen exec -t` and `mizzen run -i -t`: its size, raw mode, resizes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import termios
import tty
from collections.abc import Callable, Iterator
from typing import Any

from protos import agent_pb2

NOT_A_TERMINAL = "Unable to use a TTY - input is not a terminal or the right kind of file"
"""What kubectl says (and then goes on without a terminal) when -t is asked without one."""


def window() -> agent_pb2.WindowSize | None:
    """The local terminal's size (stdin's, else stdout's); None when neither is a terminal."""
    for fd in (sys.stdin.fileno(), sys.stdout.fileno()):
        try:
            size = os.get_terminal_size(fd)
        except (OSError, ValueError):
            continue
        return agent_pb2.WindowSize(rows=size.lines, cols=size.columns)
    return None


def stdin_is_terminal() -> bool:
    try:
        return os.isatty(sys.stdin.fileno())
    except (OSError, ValueError, AttributeError):
        return False


@contextlib.contextmanager
def remote_terminal(
    on_resize: Callable[[agent_pb2.WindowSize], None], *, raw: bool
) -> Iterator[None]:
    """While inside (on the running loop): window size changes (SIGWINCH) go to on_resize,
    and with raw the local terminal (stdin) is in raw mode, so every key goes to the remote
    terminal (^C and ^D included). The terminal is restored on the way out, whatever
    ends it (an error, a cancellation)."""
    loop = asyncio.get_running_loop()

    def resized() -> None:
        size = window()
        if size is not None:
            on_resize(size)

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGWINCH, resized)
    saved: list[Any] | None = None
    try:
        if raw:
            saved = termios.tcgetattr(sys.stdin.fileno())
            # TCSADRAIN, not setraw's default TCSAFLUSH: what was typed ahead is kept.
            tty.setraw(sys.stdin.fileno(), termios.TCSADRAIN)
        yield
    finally:
        if saved is not None:
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGWINCH)
