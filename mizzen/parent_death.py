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

PARENT_ENV = "MIZZEN_DIE_WITH_PARENT"
_PR_SET_PDEATHSIG = 1


def die_with_parent_from_env() -> None:
    """If the environment names a parent pid: SIGTERM on its death (Linux only).

    The variable is removed so nothing this process starts inherits it. If the
    parent is already gone (it died before the request was made), SIGTERM now.
    """
    want = os.environ.pop(PARENT_ENV, None)
    if not want or not want.isdigit():
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return  # not Linux: the daemon outlives a killed `up`, as before
    if os.getppid() != int(want):
        os.kill(os.getpid(), signal.SIGTERM)
