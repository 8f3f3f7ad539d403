"""A real node agent (``python -m mizzen agent``) as a subprocess, for integration tests.

Each ``AgentProcess`` gets its own node name, data directory, gRPC port and
cgroup parent (``mizzen-test-<random>``). ``destroy()`` is the last-resort
cleanup: it kills the agent, then every process in the cgroup parent (through
the cgroup driver's kill_all, so nothing escapes by setsid) and removes the
parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from mizzen.testing.local_cluster import free_ports

REPO_ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def cgroups_unavailable() -> str | None:
    """Why real-cgroup agent tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (cgroups, setpriv)"
    try:
        from nodeagent.cgroups import detect

        detect(parent=f"mizzen-test-probe-{secrets.token_hex(3)}")
    except Exception as err:
        return f"no usable cgroups: {err}"
    return None


class AgentProcess:
    def __init__(
        self,
        base: Path,
        endpoints: list[str],
        *,
        extra: list[str] | None = None,
        name: str | None = None,
    ):
        self.name = name or f"node-{secrets.token_hex(3)}"
        self.parent = f"mizzen-test-{secrets.token_hex(4)}"
        self.data_dir = base / self.name
        self.log_path = base / f"{self.name}.log"
        self.port = free_ports(1)[0]
        self.argv = [
            sys.executable, "-m", "mizzen", "--log-format", "json", "agent",
            "--name", self.name,
            "--endpoints", ",".join(endpoints),
            "--data-dir", str(self.data_dir),
            "--listen", f"127.0.0.1:{self.port}",
            "--address", "127.0.0.1",
            "--cgroup-parent", self.parent,
            "--heartbeat-interval", "0.5",
            "--status-interval", "2",
            "--stats-interval", "1",
            "--backoff-initial", "0.5",
            "--backoff-cap", "4",
            "--logs-linger", "0",
            *(extra or []),
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = os.environ.copy()
        env["PYTHONPATH"] = str(REPO_ROOT)
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                cwd=str(REPO_ROOT),
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def count_log_events(self, event: str) -> int:
        """How many times the agent (all its runs) logged event."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return 0
        return text.count(f'"event": "{event}"')

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def destroy(self) -> None:
        """Kill the agent and everything in its cgroup parent; remove the parent; unmount
        the agent's tmpfs for Secret volumes if it mounted one."""
        self.kill()
        from nodeagent.cgroups import detect
        from nodeagent.tmpfs import SecretsRoot

        driver = detect(parent=self.parent)
        root = driver.open("")
        if root is not None:
            root.kill_all()
            root.remove()
        SecretsRoot(str(self.data_dir / "secrets")).unmount()


@contextlib.contextmanager
def agent_and_controllers(
    base: Path,
    endpoints: list[str],
    name: str,
    agent_args: list[str] | None = None,
    controller_args: list[str] | None = None,
) -> Iterator[AgentProcess]:
    """A started ``AgentProcess`` and a ``mizzen controllers`` (id ``<name>-cm``, log in
    ``base/controllers.log``) on ``endpoints``; both killed and cleaned up on exit."""
    agent = AgentProcess(base, endpoints, extra=agent_args or [])
    log = open(base / "controllers.log", "wb")  # noqa: SIM115
    controllers = subprocess.Popen(
        [
            sys.executable, "-m", "mizzen", "--log-format", "json", "controllers",
            "--endpoints", ",".join(endpoints), "--id", f"{name}-cm",
            *(controller_args or []),
        ],
        stdout=log, stderr=log, cwd=REPO_ROOT, start_new_session=True,
    )  # fmt: skip
    try:
        agent.start()
        yield agent
    finally:
        controllers.kill()
        controllers.wait()
        log.close()
        print(agent.log_tail(60))
        agent.destroy()


async def eventually(
    fn: Callable[[], Awaitable[T]],
    check: Callable[[T], bool],
    *,
    timeout: float = 20.0,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    """Poll fn() until check(value); AssertionError with the last value after timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = await fn()
            if check(last):
                return last
        except Exception as err:  # the store may briefly not have the object
            last = err
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {last}")
        await asyncio.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
