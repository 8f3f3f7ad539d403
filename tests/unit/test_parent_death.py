"""A daemon started by `mizzen up` stops when `up` dies (mizzen/parent_death.py).

Real processes: a parent starts a child that asks for SIGTERM on its parent's
death, the parent is SIGKILLed, the child must go. Linux only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from mizzen.parent_death import PARENT_ENV
from mizzen.testing.local_cluster import REPO_ROOT
from mizzen.testing.waits import pid_alive

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")

CHILD = textwrap.dedent(
    """
    import os, sys, time
    from mizzen.parent_death import die_with_parent_from_env
    die_with_parent_from_env()
    print(os.getpid(), os.environ.get("MIZZEN_DIE_WITH_PARENT"), flush=True)
    time.sleep(60)
    """
)

# the parent starts the child with its own pid in the environment, prints the
# child's pid line, then sleeps until killed
PARENT = textwrap.dedent(
    """
    import os, subprocess, sys, time
    env = dict(os.environ, MIZZEN_DIE_WITH_PARENT=str(os.getpid()))
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env=env,
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    print(child.stdout.readline().strip(), flush=True)
    time.sleep(60)
    """
)


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_the_child_stops_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT
    )
    child_pid = 0
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline().split()
        child_pid = int(line[0])
        assert line[1] == "None", "the variable must not reach the child's own children"
        assert pid_alive(child_pid)
        parent.kill()
        parent.wait()
        assert _gone_within(child_pid, 10), "the child outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child_pid and pid_alive(child_pid):
            os.kill(child_pid, signal.SIGKILL)


def test_a_child_whose_parent_is_already_gone_stops_at_once() -> None:
    # the variable names a pid that is not the parent: as if `up` died before the request
    env = dict(os.environ, **{PARENT_ENV: "1" if os.getppid() != 1 else "2"})
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=30,
        cwd=REPO_ROOT,
    )  # fmt: skip
    assert out.returncode == -signal.SIGTERM, (out.returncode, out.stderr)
    assert out.stdout == ""


def test_without_the_variable_nothing_changes() -> None:
    env = {k: v for k, v in os.environ.items() if k != PARENT_ENV}
    code = "from mizzen.parent_death import die_with_parent_from_env as d; d(); print('ok')"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30,
        cwd=REPO_ROOT,
    )  # fmt: skip
    assert (out.returncode, out.stdout) == (0, "ok\n"), out.stderr
