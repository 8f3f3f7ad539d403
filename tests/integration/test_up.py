"""A newcomer's path: `mizzen up` from a clean data dir, a web Deployment, curl, logs, Ctrl-C.

The example manifest (examples/web.yaml) is applied with its port replaced by
a free one. `mizzen up` is secure by default: the CLI reaches it through the
admin config it writes (``<data-dir>/config``), and a client without a
certificate is refused. After SIGINT nothing may be left: no daemon, no pod
process, no cgroup. A second `mizzen up` resumes with the same data and PKI.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from agent_fixtures import cgroups_unavailable

from mizzen.security.pki import issue
from mizzen.testing.local_cluster import REPO_ROOT, free_ports

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(cgroups_unavailable() is not None, reason=str(cgroups_unavailable())),
]

T = TypeVar("T")


def eventually(fn: Callable[[], T], check: Callable[[T], bool], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if check(last):
                return last
        except (OSError, subprocess.SubprocessError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


class Up:
    def __init__(self, data: Path) -> None:
        self.data = data
        client, raft, agent, web = free_ports(4)
        self.endpoint = f"127.0.0.1:{client}"
        self.web_port = web
        self.parent = f"mizzen-test-up-{secrets.token_hex(3)}"
        self.node = f"up-{secrets.token_hex(3)}"
        self.argv = [
            sys.executable, "-m", "mizzen", "up",
            "--data-dir", str(data),
            "--listen-client", self.endpoint,
            "--listen-raft", f"127.0.0.1:{raft}",
            "--agent-listen", f"127.0.0.1:{agent}",
            "--node-name", self.node,
            "--cgroup-parent", self.parent,
        ]  # fmt: skip
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True, start_new_session=True
        )

    def interrupt(self) -> str:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=90)
        assert self.proc.returncode == 0, err[-3000:]
        assert "Traceback" not in err
        return err

    def run(
        self, *args: str, stdin: str | None = None, config: str = "config"
    ) -> subprocess.CompletedProcess[str]:
        """A `mizzen` command with the admin config `mizzen up` wrote, as its banner says."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MIZZEN_")}
        env["MIZZEN_CONFIG"] = str(self.data / config)
        return subprocess.run(
            [sys.executable, "-m", "mizzen", *args],
            input=stdin, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, env=env,
        )  # fmt: skip

    def mizzen(self, *args: str, stdin: str | None = None) -> str:
        out = self.run(*args, stdin=stdin)
        if out.returncode != 0:
            raise subprocess.SubprocessError(out.stderr)
        return out.stdout

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        # the daemons run in sessions of their own: after a failed test, kill them too
        for pid in daemon_pids(self.endpoint):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        from nodeagent.cgroups import detect

        root = detect(parent=self.parent).open("")
        if root is not None:
            root.kill_all()
            root.remove()


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    u = Up(tmp_path / "data")
    try:
        yield u
    finally:
        u.cleanup()


def daemon_pids(marker: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_up_runs_a_web_deployment_and_leaves_nothing_behind(up: Up) -> None:
    manifest = (REPO_ROOT / "examples" / "web.yaml").read_text().replace("8080", str(up.web_port))
    up.start()
    eventually(
        lambda: up.mizzen("get", "nodes"),
        lambda out: up.node in out and " Ready" in out,
        60,
        "node Ready",
    )
    pki = up.data / "pki"
    keys = sorted(p.name for p in pki.glob("*.key"))
    assert keys == ["admin.key", "ca.key", "controller.key", f"node-{up.node}.key",
                    "store-127.0.0.1.key"]  # fmt: skip
    for secret in [*pki.glob("*.key"), pki / "raft.secret", up.data / "config"]:
        assert mode(secret) == 0o600, secret
    ca = (pki / "ca.crt").read_bytes()
    # TLS with client certificates: without one the store refuses, in one line
    no_cert = up.run(
        "get", "pods", "--endpoints", up.endpoint, "--cacert", str(pki / "ca.crt"),
        config="no-such-config",
    )  # fmt: skip
    assert no_cert.returncode == 1
    assert len(no_cert.stderr.strip().splitlines()) == 1, no_cert.stderr
    assert no_cert.stderr.startswith("mizzen: ")
    assert up.mizzen("apply", "-f", "-", stdin=manifest) == "deployment/web created\n"
    eventually(
        lambda: up.mizzen("get", "pods", "-l", "app=web"),
        lambda out: "1/1" in out and "Running" in out,
        60,
        "web pod running and ready",
    )
    url = f"http://127.0.0.1:{up.web_port}/"
    body = eventually(
        lambda: urllib.request.urlopen(url, timeout=2).read(), bool, 20, "web answers"
    )
    assert b"Directory listing" in body
    pod = up.mizzen("get", "pods", "-l", "app=web", "-o", "name").strip().split("/")[1]
    logs = eventually(lambda: up.mizzen("logs", pod), lambda out: "GET /" in out, 20, "logs")
    assert "GET / HTTP/1.1" in logs
    status = up.mizzen("cluster", "status")
    assert "Controllers: leader" in status and "Nodes: 1/1 ready" in status

    err = up.interrupt()
    assert "mizzen up:" in err
    assert not daemon_pids(up.endpoint), "a daemon survived Ctrl-C"
    from nodeagent.cgroups import detect

    assert detect(parent=up.parent).open("") is None, "pod cgroups left behind"
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)

    # a second `mizzen up` resumes with the same data and CA: the Deployment runs again;
    # a certificate that expires within 90 days is issued again first (as k3s does)
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    issue(pki, "admin", "admin", not_after=soon)
    up.start()
    eventually(lambda: urllib.request.urlopen(url, timeout=2).read(), bool, 60, "web answers again")
    assert up.mizzen("delete", "deploy", "web") == "deployment/web deleted\n"
    eventually(
        lambda: up.mizzen("get", "pods", "-A"),
        lambda out: "web-" not in out,
        60,
        "pods gone after delete",
    )
    assert (pki / "ca.crt").read_bytes() == ca, "the second up made a new CA"
    err = up.interrupt()
    assert "mizzen up: renewed admin.crt (expires " in err
    assert not daemon_pids(up.endpoint)
    assert detect(parent=up.parent).open("") is None


def test_a_killed_up_takes_its_daemons_and_pods_with_it(up: Up) -> None:
    """SIGKILL gives `up` no chance to clean up: its children stop on their own
    (PR_SET_PDEATHSIG), the agent stopping the pods as on Ctrl-C."""
    manifest = (REPO_ROOT / "examples" / "web.yaml").read_text().replace("8080", str(up.web_port))
    up.start()
    eventually(
        lambda: up.mizzen("apply", "-f", "-", stdin=manifest),
        lambda out: "deployment/web" in out,
        60,
        "the Deployment applied",
    )
    url = f"http://127.0.0.1:{up.web_port}/"
    eventually(lambda: urllib.request.urlopen(url, timeout=2).read(), bool, 60, "web answers")
    daemons = daemon_pids(up.endpoint)
    assert len(daemons) >= 3, daemons  # store, controllers, agent
    assert up.proc is not None
    up.proc.kill()  # `up` alone, not its daemons
    up.proc.wait()
    eventually(lambda: daemon_pids(up.endpoint), lambda left: not left, 30, "daemons gone")
    from nodeagent.cgroups import detect

    assert detect(parent=up.parent).open("") is None, "pod cgroups left behind"
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)
