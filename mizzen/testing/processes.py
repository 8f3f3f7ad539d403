"""Child processes of the test harnesses: started to die with their parent, reaped whole.

Shared by ``local_cluster`` (store members on loopback) and ``hosts`` (daemons
in network namespaces): both start every child in a session of its own, so it
and whatever it forks form one process group, and reap that group.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence

TERMINATING = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})
"""Signals after which a daemon is no longer expected to run."""

_SETPRIV = shutil.which("setpriv")


def dies_with_parent(argv: Sequence[str]) -> list[str]:
    """argv run through ``setpriv --pdeathsig KILL`` when started from the main thread
    (a parent-death signal follows the thread that forked: a worker thread's exit would
    kill the child), so a test runner killed with SIGKILL leaves no daemon behind."""
    if _SETPRIV is not None and threading.current_thread() is threading.main_thread():
        return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]
    return list(argv)


def has_exited(proc: subprocess.Popen[bytes]) -> bool:
    """True once the process is dead, without reaping it (its pgid stays reserved)."""
    if proc.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Send sig to proc's process group (nothing if it is already reaped or gone)."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def reap_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Wait up to grace seconds for proc to exit, SIGKILL what is left of its group, and
    reap it. subprocess.TimeoutExpired only if the kernel cannot kill it."""
    if proc.returncode is not None:
        return
    deadline = time.monotonic() + max(grace, 0.0)
    while not has_exited(proc) and time.monotonic() < deadline:
        time.sleep(0.02)
    kill_group(proc, signal.SIGKILL)
    proc.wait(timeout=10)
