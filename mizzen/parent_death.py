"""Daemons started by ``mizzen up`` stop when ``up`` dies, however it dies.

``up`` sets ``MIZZEN_DIE_WITH_PARENT=<its pid>`` in a child's environment; the
child, first thing, asks the kernel for SIGTERM when its parent goes
(``PR_SET_PDEATHSIG``), so even a SIGKILLed ``up`` leaves no store, controller
or agent running (the agent, started with ``--stop-pods-on-exit``, then stops
its pods as on Ctrl-C). Set in the child itself rather than in a
``preexec_fn``, which is unsafe in a process with threads.
"""

from __future__ import annotations

import os
import signal
from typing import Any

PARENT_ENV = "MIZZEN_DIE_WITH_PARENT"
_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux


# resolved once at import: a forked child of a threaded process must not dlopen
_prctl = _load_prctl()


def set_death_signal(sig: int) -> bool:
    """Ask the kernel to send ``sig`` to this process when the thread that forked it exits.

    Safe in a freshly forked child (no allocation beyond the call). False where
    the request is not available.
    """
    if _prctl is None:
        return False
    return bool(_prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0)


def die_with_parent_from_env() -> None:
    """If the environment names a parent pid: SIGTERM on its death (Linux only).

    The variable is removed so nothing this process starts inherits it. If the
    parent is already gone (it died before the request was made), SIGTERM now.
    """
    want = os.environ.pop(PARENT_ENV, None)
    if not want or not want.isdigit():
        return
    if not set_death_signal(signal.SIGTERM):
        return  # not Linux: the daemon outlives a killed `up`, as before
    if os.getppid() != int(want):
        os.kill(os.getpid(), signal.SIGTERM)
