"""The failover bench's cluster on test hosts, and the helpers its measurements share.

``Plane`` builds five test hosts (``mizzen.testing.hosts.TestHosts``) on one
bridge: h1-h3 are the control plane, each running a store member and a
``mizzen controllers`` (identity ``cm-h<i>``); h4-h5 are workers, each running
a ``mizzen agent`` named after its host (pods under the host's cgroup parent,
in the real cgroup tree through ``spawn(..., host_mounts=True)``). Every daemon
runs with its default settings. The bench itself stays in the root namespace
and reaches the stores over the bridge. ``Plane.close()`` stops everything
through the hosts' teardown: daemons, pod processes, cgroups, namespaces,
links and the bridge.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, Self

from mizzen.client import Informer, ObjectsClient
from mizzen.security.tls import ClientCredentials
from mizzen.testing.host_cluster import HostPki, HostStoreCluster, store_on_hosts
from mizzen.testing.hosts import CGROUP_ROOT, TestHost, TestHosts
from mizzen.testing.local_cluster import REPO_ROOT
from mizzen.testing.waits import pid_alive
from protos import objects_pb2 as pb

AGENT_PORT = 10250


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def spread(values: list[float]) -> dict[str, float]:
    return {
        "min_s": round(min(values), 2),
        "median_s": round(statistics.median(values), 2),
        "max_s": round(max(values), 2),
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """min/median/max of every ``*_s`` field over the rows that have it."""
    out: dict[str, Any] = {}
    for field in dict.fromkeys(k for r in rows for k in r if k.endswith("_s")):
        values = [r[field] for r in rows if isinstance(r.get(field), int | float)]
        if values:
            out[field] = spread(values)
    return out


class Plane:
    """Three control-plane hosts (store + manager) and two worker hosts (agent)."""

    def __init__(self, base: Path, subnet: str) -> None:
        self.base = base
        self.hosts = TestHosts(5, base / "hosts", subnet=subnet)
        self.control: list[TestHost] = self.hosts.hosts[:3]
        self.workers: list[TestHost] = self.hosts.hosts[3:]
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        path = self.env.get("PYTHONPATH")
        self.env["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{path}" if path else str(REPO_ROOT)
        self._store: HostStoreCluster | None = None
        self._pki: HostPki | None = None

    @property
    def store(self) -> HostStoreCluster:
        if self._store is None:
            raise RuntimeError("the plane is not started")
        return self._store

    @property
    def pki(self) -> HostPki:
        if self._pki is None:
            raise RuntimeError("the plane is not started")
        return self._pki

    @property
    def credentials(self) -> ClientCredentials:
        """The admin's: every daemon runs secure (TLS, client certificates), as deployed."""
        return self.pki.admin

    @property
    def endpoints(self) -> list[str]:
        return self.store.endpoints

    def start(self) -> Self:
        self.hosts.start()
        try:
            self._pki = HostPki(self.hosts.hosts, self.base / "pki")
            self._store = store_on_hosts(
                self.control, self.base / "store", pki=self._pki, start_timeout=60
            )
            for host in self.control:
                self.start_manager(host)
            for host in self.workers:
                self.start_agent(host)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        try:
            if self._store is not None:
                self._store.stop()
        finally:
            self.hosts.stop()

    def _spawn(self, host: TestHost, name: str, argv: list[str], host_mounts: bool) -> None:
        full = [sys.executable, "-m", "mizzen", "--log-format", "json", *argv]
        log = self.base / f"{host.name}-{name}.log"
        host.spawn(full, name, env=self.env, log=log, cwd=REPO_ROOT, host_mounts=host_mounts)

    @staticmethod
    def manager_id(host: TestHost) -> str:
        return f"cm-{host.name}"

    def start_manager(self, host: TestHost) -> None:
        """`mizzen controllers`, all defaults (lease TTL 3 s, node grace 5 s, eviction 10 s)."""
        argv = ["controllers", "--endpoints", ",".join(self.endpoints)]
        argv += self.pki.client_flags("controller")
        self._spawn(host, "cm", [*argv, "--id", self.manager_id(host)], host_mounts=False)

    def start_agent(self, host: TestHost) -> None:
        """`mizzen agent` with default timings (heartbeat 1 s), pods under host.cgroup_parent."""
        self._spawn(host, "agent", [
            "agent", "--name", host.name, "--endpoints", ",".join(self.endpoints),
            "--data-dir", str(self.base / f"agent-{host.name}"),
            "--listen", f"{host.address}:{AGENT_PORT}", "--address", host.address,
            "--cgroup-parent", host.cgroup_parent, *self.pki.client_flags(f"node-{host.name}"),
        ], host_mounts=True)  # fmt: skip

    def host_of_manager(self, identity: str) -> TestHost:
        for host in self.control:
            if self.manager_id(host) == identity:
                return host
        raise RuntimeError(f"unexpected leader {identity!r}")

    @staticmethod
    def pod_pids(host: TestHost) -> set[int]:
        """Live pids under host's cgroup parent (its pods' processes), any hierarchy."""
        roots = [CGROUP_ROOT]
        if not (CGROUP_ROOT / "cgroup.controllers").exists():
            roots = [p for p in CGROUP_ROOT.iterdir() if p.is_dir() and not p.is_symlink()]
        pids: set[int] = set()
        for root in roots:
            for procs in (root / host.cgroup_parent).rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(p) for p in procs.read_text().split())
        return {p for p in pids if pid_alive(p)}


class Milestones:
    """The first moment each named condition held, re-checked on every watch event."""

    def __init__(self) -> None:
        self._checks: dict[str, Callable[[], bool]] = {}
        self.at: dict[str, float] = {}

    def expect(self, name: str, check: Callable[[], bool]) -> None:
        self.at.pop(name, None)
        self._checks[name] = check
        self.poke()

    def poke(self, *_: Any) -> None:
        now = time.monotonic()
        for name, check in list(self._checks.items()):
            if check():
                self.at[name] = now
                del self._checks[name]

    async def wait(self, names: Iterable[str], timeout: float) -> None:
        wanted = list(names)
        deadline = time.monotonic() + timeout
        while not all(n in self.at for n in wanted):
            if time.monotonic() > deadline:
                missing = ", ".join(n for n in wanted if n not in self.at)
                raise TimeoutError(f"not reached within {timeout}s: {missing}")
            await asyncio.sleep(0.02)


def informer(client: ObjectsClient, kind: str, ns: str, ms: Milestones) -> Informer:
    inf = Informer(client, kind, namespace=ns)
    inf.on_add(ms.poke)
    inf.on_update(ms.poke)
    inf.on_delete(ms.poke)
    return inf


def live(pods: Iterable[pb.Pod]) -> list[pb.Pod]:
    return [p for p in pods if not p.metadata.HasField("deletion_timestamp")]


def running(pod: pb.Pod) -> bool:
    states = pod.status.process_statuses
    return len(states) == len(pod.spec.processes) and all(
        s.state.HasField("running") for s in states
    )


def ready_status(node: pb.Node | None) -> str:
    for cond in node.status.conditions if node is not None else ():
        if cond.type == "Ready":
            return str(cond.status)
    return ""


def deployment(ns: str, replicas: int, node_selector: dict[str, str]) -> pb.Deployment:
    d = pb.Deployment(metadata=pb.ObjectMeta(name="sleeper", namespace=ns))
    d.spec.replicas = replicas
    d.spec.selector.match_labels["app"] = "sleeper"
    d.spec.template.metadata.labels["app"] = "sleeper"
    spec = d.spec.template.spec
    spec.node_selector.update(node_selector)
    spec.termination_grace_period_seconds = 2
    proc = spec.processes.add(name="main", command=["/bin/sleep", "3600"])
    proc.resources.requests.cpu_millis = 10
    proc.resources.requests.memory_bytes = 16 * 1024**2
    return d


async def until(
    what: str, check: Callable[[], Awaitable[Any]], timeout: float, interval: float = 0.1
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def background(*coros: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run coros as tasks for the body's duration; cancelled and awaited on the way out."""
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def remove_all(endpoints: list[str], ns: str, credentials: ClientCredentials) -> None:
    async with ObjectsClient(endpoints, timeout=10, credentials=credentials) as client:
        for kind in ("deployments", "replicasets", "pods"):
            for obj in (await client.list(kind, ns)).items:
                with contextlib.suppress(Exception):
                    await client.delete(kind, obj.metadata.name, ns, grace_period_seconds=0)
