"""A process's pseudo-terminal as the agent holds it (nodeagent.process_tty), on a real pty
without a process: what is written on the slave reaches the log file, attach input and
resizes reach the slave, stdinOnce's end is ^D once (the master stays open, a second
stdin attach is refused), the last output is copied before the master closes; and
`mizzen run -i -t` declares tty: true."""

from __future__ import annotations

import fcntl
import os
import struct
import termios
from pathlib import Path

import pytest

from mizzen.cli.main import build_parser
from mizzen.cli.run_cmd import build_pod
from nodeagent.process_stdin import AttachRefused
from nodeagent.process_tty import ProcessTty
from protos import agent_pb2

WHERE = 'process "main" of pod "default/p"'


def _raw(fd: int) -> None:
    """No echo, no line editing on the slave: what is written is what is read."""
    attrs = termios.tcgetattr(fd)
    attrs[3] &= ~(termios.ECHO | termios.ICANON)
    attrs[1] &= ~termios.OPOST
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


async def test_output_input_resize_and_stdin_once(tmp_path: Path) -> None:
    master, slave = os.openpty()
    log_path = tmp_path / "0.log"
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    tty = ProcessTty(master, log_fd, once=True)
    try:
        _raw(slave)
        tty.start_copy()
        tty.claim("ada", WHERE)
        assert await tty.write(b"typed")
        assert os.read(slave, 100) == b"typed"
        tty.resize(agent_pb2.WindowSize(rows=33, cols=111))
        packed = fcntl.ioctl(slave, termios.TIOCGWINSZ, b"\0" * 8)
        assert struct.unpack("HHHH", packed)[:2] == (33, 111)
        tty.release()  # stdinOnce: ^D, once; the master stays open
        assert os.read(slave, 100) == b"\x04"
        assert not tty.closed
        with pytest.raises(AttachRefused, match=r"closed when its first attach ended"):
            tty.claim("bob", WHERE)
        os.write(slave, b"last words\n")
        os.close(slave)
        slave = -1
        await tty.drain_and_close()  # until EIO: every slave is closed
        assert tty.closed
        assert log_path.read_bytes() == b"last words\n"
    finally:
        tty.close()
        if slave >= 0:
            os.close(slave)


def test_run_it_declares_tty() -> None:
    args = build_parser().parse_args(["run", "x", "-i", "-t", "--", "sh"])
    proc = build_pod(args, "default").spec.processes[0]
    assert (proc.stdin, proc.stdin_once, proc.tty) == (True, True, True)
    args = build_parser().parse_args(["run", "x", "-i", "--", "sh"])
    assert not build_pod(args, "default").spec.processes[0].tty
