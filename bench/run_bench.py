"""`mizzen run --rm NAME -- true` end to end on `mizzen up` (root): wall time per run.

Starts a real `mizzen up` (one-member store, controllers, agent; secure by
default: TLS with client certificates, its own cgroup parent, free ports, a
temporary data dir), waits until its node is Ready, then runs
``mizzen run --rm NAME -- true`` --runs times, one after the other, each as a
new `mizzen` process the way a user types it, and measures the wall time from
starting that process to its exit (the pod created, scheduled, started, its
output read, the exit code taken and the pod deleted and gone). As the
baseline in the same run: ``mizzen get pods`` (the CLI's start-up and one
store round trip), also --runs times. Side by side, the same with stdin
attached: ``echo hi | mizzen run -i --rm NAME -- cat`` (the pod declares
stdin, the CLI attaches through the agent's Attach call, cat echoes the line
and exits at the end of input), also --runs times. Prints one JSON object.

    sudo .venv/bin/python bench/run_bench.py --runs 20

Everything `mizzen up` started (daemons, pods, cgroups, data dir) is removed
on exit, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from mizzen.testing.bench_node import summary_ms as summary  # noqa: E402
from mizzen.testing.local_cluster import free_ports  # noqa: E402


class Up:
    """A `mizzen up` in a temporary data dir; the `mizzen` commands use the config it wrote."""

    def __init__(self, base: Path) -> None:
        self.data = base / "data"
        client, raft, agent = free_ports(3)
        self.parent = f"mizzen-bench-run-{secrets.token_hex(3)}"
        self.node = f"bench-{secrets.token_hex(3)}"
        self.log = base / "up.log"
        self.argv = [
            sys.executable, "-m", "mizzen", "up",
            "--data-dir", str(self.data),
            "--listen-client", f"127.0.0.1:{client}",
            "--listen-raft", f"127.0.0.1:{raft}",
            "--agent-listen", f"127.0.0.1:{agent}",
            "--node-name", self.node,
            "--cgroup-parent", self.parent,
        ]  # fmt: skip
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MIZZEN_")}
        self.env["MIZZEN_CONFIG"] = str(self.data / "config")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=REPO_ROOT, stdout=log, stderr=log, start_new_session=True
            )

    def mizzen(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mizzen", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO_ROOT,
            env=self.env,
        )

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (self.data / "config").exists():
                out = self.mizzen("get", "nodes")
                if out.returncode == 0 and self.node in out.stdout and " Ready" in out.stdout:
                    return
            time.sleep(0.5)
        raise SystemExit(f"mizzen up not ready within {timeout}s; see {self.log}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        from nodeagent.cgroups import detect

        root = detect(parent=self.parent).open("")
        if root is not None:
            root.kill_all()
            root.remove()


@contextlib.contextmanager
def mizzen_up() -> Iterator[Up]:
    base = Path(tempfile.mkdtemp(prefix="mizzen-run-bench-"))
    up = Up(base)
    try:
        up.start()
        up.wait_ready()
        yield up
    finally:
        up.stop()
        shutil.rmtree(base, ignore_errors=True)


def timed(up: Up, *args: str, expect: int = 0, stdin: str = "", output: str = "") -> float:
    t = time.perf_counter()
    out = up.mizzen(*args, stdin=stdin)
    elapsed = time.perf_counter() - t
    if out.returncode != expect or (output and out.stdout != output):
        raise SystemExit(
            f"mizzen {' '.join(args)}: exit {out.returncode}: {out.stdout!r} {out.stderr}"
        )
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: the node agent runs pods in cgroups")
    with mizzen_up() as up:
        load = os.getloadavg()[0]
        check = up.mizzen("run", "--rm", "check", "--", "sh", "-c", "echo hi; exit 3")
        if (check.returncode, check.stdout) != (3, "hi\n"):
            raise SystemExit(
                f"run --rm is broken: {check.returncode} {check.stdout!r} {check.stderr}"
            )
        timed(up, "run", "--rm", "warmup", "--", "true")
        run_times: list[float] = []
        stdin_times: list[float] = []
        for i in range(args.runs):  # alternated, so that a change of load hits both alike
            run_times.append(timed(up, "run", "--rm", f"once-{i}", "--", "true"))
            stdin_times.append(
                timed(up, "run", "-i", "--rm", f"in-{i}", "--", "cat", stdin="hi\n", output="hi\n")
            )
        get_times = [timed(up, "get", "pods") for _ in range(args.runs)]
        left = up.mizzen("get", "pods")
    result = {
        "bench": "run_bench",
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": f"{platform.node()} {os.cpu_count()} cores {platform.machine()}",
        "load_1m_before": round(load, 2),
        "run_rm_true": summary(run_times),
        "get_pods_baseline": summary(get_times),
        "run_i_rm_cat": summary(stdin_times),
        "pods_left": (left.stdout + left.stderr).strip(),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
