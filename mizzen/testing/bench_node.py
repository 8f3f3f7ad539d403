"""One node on this host for benches: a one-member store, a real agent, optionally controllers.

    with local_node(base, "bench-node", controllers=True) as node:
        asyncio.run(measure(node.endpoints, ...))

The agent runs under its own fresh cgroup parent; on exit (error or Ctrl-C
too) the daemons are stopped, every cgroup under that parent is killed and
removed, and ``base`` is deleted. The agent needs root.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mizzen.testing.local_cluster import REPO_ROOT, MizzenCluster, free_ports
from nodeagent.cgroups import detect


@dataclass
class LocalNode:
    cluster: MizzenCluster
    agent: subprocess.Popen[bytes]
    agent_dir: Path
    daemons: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def endpoints(self) -> list[str]:
        return self.cluster.endpoints


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "mizzen", *args], stdout=out, stderr=out, cwd=REPO_ROOT
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _remove_cgroups(parent: str) -> None:
    driver = detect(parent=parent)
    for child in driver.children():
        group = driver.open(child)
        if group is not None:
            group.kill_all()
            group.remove()
    root = driver.open("")
    if root is not None:
        root.remove()


@contextlib.contextmanager
def local_node(base: Path, name: str, *, controllers: bool = False) -> Iterator[LocalNode]:
    """The store, the agent for node ``name`` (and ``mizzen controllers``), logs in base."""
    parent = f"mizzen-bench-{secrets.token_hex(3)}"
    daemons: list[subprocess.Popen[bytes]] = []
    try:
        with MizzenCluster(1, base / "store") as cluster:
            endpoints = ",".join(cluster.endpoints)
            (port,) = free_ports(1)
            agent = _spawn(
                ["agent", "--name", name, "--endpoints", endpoints,
                 "--data-dir", str(base / "agent"), "--listen", f"127.0.0.1:{port}",
                 "--cgroup-parent", parent],
                base / "agent.log",
            )  # fmt: skip
            daemons.append(agent)
            if controllers:
                daemons.append(
                    _spawn(
                        ["controllers", "--endpoints", endpoints, "--id", "bench"],
                        base / "controllers.log",
                    )
                )
            yield LocalNode(cluster, agent, base / "agent", daemons)
    finally:
        for proc in reversed(daemons):
            _stop(proc)
        _remove_cgroups(parent)
        shutil.rmtree(base, ignore_errors=True)


async def wait_node_ready(client: Any, name: str, timeout: float = 60.0) -> None:
    """Until the agent registered Node ``name`` with Ready=True (TimeoutError after timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        for n in (await client.list("nodes")).items:
            if n.metadata.name == name and any(
                c.type == "Ready" and c.status == "True" for c in n.status.conditions
            ):
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the agent did not register a Ready node within {timeout:g} s")
        await asyncio.sleep(0.2)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank-ish percentile (q in 0..1) of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary_ms(values: list[float]) -> dict[str, float]:
    """n, p50, p99 and max of seconds, in milliseconds."""
    ms = [v * 1000 for v in values]
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 1),
        "p99_ms": round(percentile(ms, 0.99), 1),
        "max_ms": round(max(ms), 1),
    }
