"""Workload chaos on 3 test hosts: controllers, nodes and agents fail; pods converge.

Topology: a 1-member store on h1; controller managers ``cm-h1`` (on h1) and
``cm-h2`` (on h2); node agents ``h2`` and ``h3`` (each ``--address`` and
``--listen`` on its host's address, pods under the host's cgroup parent, so
the hosts' teardown removes every pod process). The test drives the store from
the root namespace. Pods run ``sleep 3600``.

Scenario 2: the leading manager is SIGKILLed 2-3 times during a rolling update;
the rollout completes and live pods never exceed replicas + maxSurge, ready pods
never drop below replicas - maxUnavailable.
Scenario 3: a worker host is cut off (agent SIGKILLed, link partitioned, its pods
keep running unseen); its pods are Running again on the other host within the
target; after healing and restarting its agent the stale copies are killed and
exactly the Deployment's replicas run.
Scenario 4: an agent is SIGKILLed and restarted twice while other pods churn;
its pods' processes keep running with the same pids and no restart counted.

Replay with ``MIZZEN_CHAOS_SEED=<seed>`` (printed in failure reports).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SUBNET_ENV, require_test_hosts

from controllers.leader import current_leader
from controllers.node_lifecycle import has_unreachable_taint
from mizzen.api.pods import has_ended
from mizzen.client import Informer, ObjectsClient, StoreClient
from mizzen.client.errors import NotFoundError
from mizzen.testing.host_cluster import HostPki
from mizzen.testing.hosts import CGROUP_ROOT, DEFAULT_SUBNET, HostsError, TestHost, TestHosts
from mizzen.testing.local_cluster import REPO_ROOT
from mizzen.testing.waits import modify, pid_alive
from protos import objects_pb2 as pb

pytestmark = pytest.mark.cluster

ELECTION_KEY = "/mizzen/leader/controllers"
HOST_DOWN_TARGET_S = 20.0
SUBNET_WAIT_S = 300.0
STORE_PORT = 2379
AGENT_PORT = 10250


class Workload:
    """The three hosts with a store on h1, managers on h1/h2 and agents on h2/h3.

    Daemons are tracked by the hosts (``store``, ``cm``, ``agent``), so the
    hosts' teardown kills them; agents put pods under ``host.cgroup_parent``,
    which the teardown empties and removes.
    """

    def __init__(self, hosts: TestHosts, base: Path) -> None:
        self.hosts = hosts
        self.base = base
        self.endpoint = f"{hosts[0].address}:{STORE_PORT}"
        self.env = dict(os.environ)
        path = self.env.get("PYTHONPATH")
        self.env["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{path}" if path else str(REPO_ROOT)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.pki = HostPki(hosts, base / "pki")  # every daemon runs secure
        self.credentials = self.pki.admin

    def _spawn(self, i: int, name: str, argv: list[str], *, host_mounts: bool = False) -> None:
        """Start python argv on host i; host_mounts: with the real cgroup hierarchies (agents)."""
        host = self.hosts[i]
        log = self.base / f"{host.name}-{name}.log"
        full = [sys.executable, *argv]
        host.spawn(full, name, env=self.env, log=log, cwd=REPO_ROOT, host_mounts=host_mounts)

    def start_store(self) -> None:
        h = self.hosts[0]
        self._spawn(0, "store", [
            "-m", "mizzen", "store", "--name", h.name,
            "--data-dir", str(self.base / "store"),
            "--listen-client", self.endpoint,
            "--listen-raft", f"{h.address}:2380",
            "--initial-cluster", f"{h.name}={h.address}:2380",
            *self.pki.store_flags(h),
        ])  # fmt: skip

    def manager_id(self, i: int) -> str:
        return f"cm-{self.hosts[i].name}"

    def start_manager(self, i: int) -> None:
        self._spawn(i, "cm", [
            "-m", "mizzen", "--log-format", "json", "controllers",
            "--endpoints", self.endpoint, "--id", self.manager_id(i),
            "--lease-ttl", "2", "--renew-interval", "0.5",
            *self.pki.client_flags("controller"),
        ])  # fmt: skip

    def start_agent(self, i: int) -> None:
        h = self.hosts[i]
        self._spawn(i, "agent", [
            "-m", "mizzen", "--log-format", "json", "agent",
            "--name", h.name, "--endpoints", self.endpoint,
            "--data-dir", str(self.base / f"agent-{h.name}"),
            "--listen", f"{h.address}:{AGENT_PORT}", "--address", h.address,
            "--cgroup-parent", h.cgroup_parent,
            "--backoff-initial", "0.5", "--backoff-cap", "4", "--logs-linger", "0",
            *self.pki.client_flags(f"node-{h.name}"),
        ], host_mounts=True)  # fmt: skip

    async def wait_nodes_ready(self, client: ObjectsClient, timeout: float = 60) -> None:
        names = {self.hosts[1].name, self.hosts[2].name}

        async def check() -> bool:
            nodes = (await client.list("nodes")).items
            return names <= {n.metadata.name for n in nodes if node_ready(n)}

        await until(f"nodes {sorted(names)} Ready", check, timeout)

    def pod_pids(self, host: TestHost | None = None) -> set[int]:
        """Live pids under the agents' cgroup parents (one host's, or both)."""
        hosts = [host] if host is not None else [self.hosts[1], self.hosts[2]]
        roots = [CGROUP_ROOT]
        if not (CGROUP_ROOT / "cgroup.controllers").exists():
            roots = [p for p in CGROUP_ROOT.iterdir() if p.is_dir() and not p.is_symlink()]
        pids: set[int] = set()
        for h in hosts:
            for root in roots:
                for procs in (root / h.cgroup_parent).rglob("cgroup.procs"):
                    with contextlib.suppress(OSError):
                        pids.update(int(p) for p in procs.read_text().split())
        return {p for p in pids if pid_alive(p)}

    def log_tails(self, lines: int = 40) -> str:
        out = []
        for log in sorted(self.base.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name} ---\n" + "\n".join(tail))
        return "\n".join(out)


def node_ready(node: pb.Node) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)


def _start_hosts(base: Path) -> TestHosts:
    """Three hosts; while another run holds the subnet, wait (bounded) for it."""
    subnet = os.environ.get(SUBNET_ENV, DEFAULT_SUBNET)
    deadline = time.monotonic() + SUBNET_WAIT_S
    while True:
        hosts = TestHosts(3, base, subnet=subnet)
        try:
            return hosts.start()
        except HostsError as err:
            if "already in use" not in str(err) or time.monotonic() > deadline:
                raise
        time.sleep(2)


@pytest.fixture
def workload(tmp_path: Path) -> Iterator[Workload]:
    """Store on h1 and agents on h2/h3 started, store answering; managers left to the test."""
    require_test_hosts()
    hosts = _start_hosts(tmp_path / "hosts")
    w = Workload(hosts, tmp_path)
    try:
        w.start_store()
        w.start_agent(1)
        w.start_agent(2)
        yield w
    finally:
        try:
            print(w.log_tails())  # shown by pytest only when the test failed
        finally:
            hosts.stop()


def deployment(name: str, ns: str, replicas: int, version: str) -> pb.Deployment:
    d = pb.Deployment(metadata=pb.ObjectMeta(name=name, namespace=ns))
    d.spec.replicas = replicas
    d.spec.selector.match_labels["app"] = name
    d.spec.template.metadata.labels["app"] = name
    d.spec.template.spec.termination_grace_period_seconds = 2
    proc = d.spec.template.spec.processes.add(name="main", command=["/bin/sleep", "3600"])
    proc.env.add(name="VERSION", value=version)
    proc.resources.requests.cpu_millis = 10
    proc.resources.requests.memory_bytes = 16 * 1024**2
    return d


def bare_pod(name: str, ns: str, node: str) -> pb.Pod:
    pod = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace=ns))
    pod.spec.node_name = node
    pod.spec.termination_grace_period_seconds = 1
    pod.spec.processes.add(name="main", command=["/bin/sleep", "3600"])
    return pod


def live(pods: list[pb.Pod]) -> list[pb.Pod]:
    """Not terminating and not finished: the pods that count against maxSurge."""
    return [p for p in pods if not p.metadata.HasField("deletion_timestamp") and not has_ended(p)]


def running(pod: pb.Pod) -> bool:
    states = pod.status.process_statuses
    return len(states) == len(pod.spec.processes) and all(
        s.state.HasField("running") for s in states
    )


def ready(pod: pb.Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)


def version_of(pod: pb.Pod) -> str:
    return next((e.value for e in pod.spec.processes[0].env if e.name == "VERSION"), "")


async def until(
    what: str, check: Callable[[], Awaitable[Any]], timeout: float, interval: float = 0.1
) -> Any:
    """check() until truthy; AssertionError naming what after timeout seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = await check()
            if last:
                return last
        except Exception as err:  # the store or an object may briefly be missing
            last = err
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def background(*coros: Awaitable[None]) -> AsyncIterator[list[asyncio.Task[None]]]:
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def pods_in(client: ObjectsClient, ns: str) -> list[pb.Pod]:
    return list((await client.list("pods", ns)).items)


# ------------------------------------------------------------------ scenario 3


async def test_dead_host_pods_replaced_and_stale_copies_killed(
    workload: Workload, chaos_seed: int
) -> None:
    rng = random.Random(chaos_seed)
    w, ns, replicas = workload, "s3", 6
    dead, survivor = w.hosts[2], w.hosts[1]
    w.start_manager(0)
    async with ObjectsClient([w.endpoint], timeout=10, credentials=w.credentials) as client:
        await w.wait_nodes_ready(client)
        await client.create(deployment("web", ns, replicas, "v1"))

        async def placed() -> dict[str, int] | None:
            pods = [p for p in live(await pods_in(client, ns)) if running(p)]
            if len(pods) != replicas:
                return None
            return {p.metadata.name: p.status.process_statuses[0].pid for p in pods}

        await until(f"{replicas} running pods", placed, 60)
        pods = live(await pods_in(client, ns))
        old = {
            p.metadata.name: p.status.process_statuses[0].pid
            for p in pods
            if p.spec.node_name == dead.name
        }
        assert old and len(old) < replicas, (
            f"seed {chaos_seed}: pods not spread over both hosts: "
            f"{[(p.metadata.name, p.spec.node_name) for p in pods]}"
        )

        await asyncio.sleep(rng.uniform(0, 1.0))  # anywhere in the heartbeat cycle
        killed = time.monotonic()
        dead.kill("agent", signal.SIGKILL)
        dead.partition()
        assert all(pid_alive(pid) for pid in old.values()), "partitioned pods must keep running"

        async def replaced() -> bool:
            pods = live(await pods_in(client, ns))
            on_survivor = [p for p in pods if p.spec.node_name == survivor.name and running(p)]
            return len(pods) == replicas and len(on_survivor) == replicas

        await until(f"{replicas} pods running on {survivor.name}", replaced, 25)
        took = time.monotonic() - killed
        print(f"seed {chaos_seed}: host {dead.name} down -> all pods running again in {took:.2f}s")
        assert took <= HOST_DOWN_TARGET_S + 5

        dead.heal()
        healed = time.monotonic()
        w.start_agent(2)

        async def stale_gone() -> bool:
            return not any(pid_alive(pid) for pid in old.values())

        await until("the returned agent to kill its stale pods", stale_gone, 15)
        print(f"seed {chaos_seed}: stale pods killed {time.monotonic() - healed:.2f}s after heal")

        async def converged() -> bool:
            pods = [p for p in live(await pods_in(client, ns)) if running(p)]
            expected = {p.status.process_statuses[0].pid for p in pods}
            return len(pods) == replicas and w.pod_pids() == expected

        await until("exactly the store's pods running on the hosts", converged, 15)
        assert not w.pod_pids(dead), f"seed {chaos_seed}: stale processes on {dead.name}"

        async def back() -> bool:
            node = await client.get("nodes", dead.name)
            return node_ready(node) and not has_unreachable_taint(node)

        await until(f"node {dead.name} Ready and untainted again", back, 15)


# ------------------------------------------------------------------ scenario 2


async def test_rolling_update_survives_leader_kills(workload: Workload, chaos_seed: int) -> None:
    rng = random.Random(chaos_seed)
    w, ns, replicas, surge = workload, "s2", 4, 1
    w.start_manager(0)
    w.start_manager(1)
    ids = {w.manager_id(i): i for i in (0, 1)}
    async with (
        ObjectsClient([w.endpoint], timeout=10, credentials=w.credentials) as client,
        StoreClient([w.endpoint], timeout=10, credentials=w.credentials) as store,
    ):
        await w.wait_nodes_ready(client)
        d = deployment("roll", ns, replicas, "v1")
        d.spec.min_ready_seconds = 1
        d.spec.strategy.type = "RollingUpdate"
        d.spec.strategy.rolling_update.max_surge = str(surge)
        d.spec.strategy.rolling_update.max_unavailable = "0"
        await client.create(d)

        async def rolled_out(version: str) -> bool:
            d = await client.get("deployments", "roll", ns)
            pods = live(await pods_in(client, ns))
            st = d.status
            return (
                st.observed_generation == d.metadata.generation
                and st.updated_replicas == st.ready_replicas == st.available_replicas == replicas
                and st.replicas == replicas
                and len(pods) == replicas
                and all(ready(p) and running(p) and version_of(p) == version for p in pods)
            )

        await until("v1 rolled out", lambda: rolled_out("v1"), 60)

        samples: list[tuple[int, int]] = []
        watcher = Informer(client, "pods", namespace=ns)

        def sample(*_: Any) -> None:
            if watcher.has_synced.is_set():
                pods = live(watcher.list())
                samples.append((len(pods), sum(1 for p in pods if ready(p))))

        for add_handler in (watcher.on_add, watcher.on_update, watcher.on_delete):
            add_handler(sample)
        kills: list[tuple[float, str]] = []
        n_kills = rng.randint(2, 3)

        async def kill_leaders(started: float) -> None:
            for _ in range(n_kills):
                await asyncio.sleep(rng.uniform(0.3, 2.0))
                leader = await until("a leader", lambda: current_leader(store), 20)
                identity, term = leader
                w.hosts[ids[identity]].kill("cm", signal.SIGKILL)
                kills.append((round(time.monotonic() - started, 2), identity))
                w.start_manager(ids[identity])  # back as a standby
                await until("a new leader", functools.partial(_leader_other_than, store, term), 20)

        async with background(watcher.run()):
            await asyncio.wait_for(watcher.has_synced.wait(), 10)
            started = time.monotonic()
            await modify(
                client,
                "deployments",
                "roll",
                ns,
                lambda o: setattr(o.spec.template.spec.processes[0].env[0], "value", "v2"),
            )
            async with background(kill_leaders(started)) as (killer,):
                await until("v2 rolled out", lambda: rolled_out("v2"), 90, interval=0.2)
                took = time.monotonic() - started
                first_kill = kills[0][0] if kills else None
                await asyncio.wait_for(killer, 30)
        print(f"seed {chaos_seed}: rollout {took:.2f}s, kills {kills}, {len(samples)} samples")
        assert len(kills) == n_kills
        assert first_kill is not None and first_kill < took, (
            f"seed {chaos_seed}: the rollout finished ({took:.2f}s) before the first kill"
        )
        assert samples, "no pod event seen during the rollout"
        most = max(total for total, _ in samples)
        fewest_ready = min(r for _, r in samples)
        assert most <= replicas + surge, f"seed {chaos_seed}: {most} live pods; {samples}"
        assert fewest_ready >= replicas, f"seed {chaos_seed}: {fewest_ready} ready; {samples}"


# ------------------------------------------------------------------ scenario 4


async def test_agent_restarts_keep_pods_running(workload: Workload, chaos_seed: int) -> None:
    rng = random.Random(chaos_seed)
    w, ns, keep = workload, "s4", 10
    host = w.hosts[1]
    async with ObjectsClient([w.endpoint], timeout=10, credentials=w.credentials) as client:
        await w.wait_nodes_ready(client)
        for i in range(keep):
            await client.create(bare_pod(f"keep-{i}", ns, host.name))

        async def kept() -> dict[str, pb.Pod]:
            pods = {p.metadata.name: p for p in await pods_in(client, ns)}
            names = [f"keep-{i}" for i in range(keep)]
            return {n: pods[n] for n in names if n in pods and running(pods[n])}

        await until(f"{keep} pods running", lambda: _has(kept, keep), 60)
        before = {n: p.status.process_statuses[0].pid for n, p in (await kept()).items()}
        assert all(before.values()), f"pods report no pid: {before}"
        churned: list[str] = []
        created = [0]
        writer_rng = random.Random(rng.random())

        async def churn() -> None:
            while True:
                name = f"churn-{created[0]}"
                await client.create(bare_pod(name, ns, host.name))
                created[0] += 1
                churned.append(name)
                if len(churned) > 3:
                    await client.delete("pods", churned.pop(0), ns)
                await asyncio.sleep(writer_rng.uniform(0.2, 0.6))

        def churn_running_since(mark: int) -> Callable[[], Awaitable[bool]]:
            """Every current churn pod runs, one created after mark among them."""

            async def check() -> bool:
                pods = {p.metadata.name: p for p in await pods_in(client, ns)}
                names = list(churned)
                fresh = any(int(n.split("-")[1]) >= mark for n in names)
                return fresh and all(n in pods and running(pods[n]) for n in names)

            return check

        started = time.monotonic()
        async with background(churn()) as (writer,):
            for _ in range(2):
                await asyncio.sleep(rng.uniform(1.0, 3.0))
                host.kill("agent", signal.SIGKILL)
                assert all(pid_alive(pid) for pid in before.values()), "pods died with agent"
                await asyncio.sleep(rng.uniform(0.2, 1.5))
                w.start_agent(1)
                mark = created[0]
                await until("the restarted agent to run new pods", churn_running_since(mark), 30)
            assert not writer.done(), f"the writer stopped: {writer}"
        restarts_done = time.monotonic() - started
        # the store's churn pods, not the writer's list: a writer cancelled
        # inside create (or delete) may have made (or kept) one it never noted
        for pod in await pods_in(client, ns):
            if pod.metadata.name.startswith("churn-"):
                with contextlib.suppress(NotFoundError):  # already finished deleting
                    await client.delete("pods", pod.metadata.name, ns)
        left: list[str] = []

        async def settled() -> bool:
            pods = await pods_in(client, ns)
            pids = w.pod_pids(host)
            left[:] = [
                f"{p.metadata.name} (deleting: {p.metadata.HasField('deletion_timestamp')}, "
                f"phase {p.status.phase})"
                for p in pods
                if p.metadata.name.startswith("churn-")
            ]
            if pids != set(before.values()):
                left.append(f"pids {sorted(pids)}, kept {sorted(before.values())}")
            return not left

        try:
            await until("churn pods gone and only the kept processes left", settled, 30)
        except AssertionError as err:
            raise AssertionError(f"{err}; left: {left}") from None
        print(f"seed {chaos_seed}: 2 agent restarts under churn in {restarts_done:.2f}s")
        after = await kept()
        assert set(after) == set(before), (
            f"seed {chaos_seed}: not running: {set(before) - set(after)}"
        )
        for name, pod in after.items():
            st = pod.status.process_statuses[0]
            assert st.pid == before[name], (
                f"seed {chaos_seed}: {name} pid {before[name]} -> {st.pid}"
            )
            assert st.restart_count == 0, f"seed {chaos_seed}: {name} restarted {st.restart_count}x"
            assert pid_alive(st.pid)


async def _leader_other_than(store: StoreClient, term: int) -> bool:
    now = await current_leader(store)
    return now is not None and now[1] != term


async def _has(fetch: Callable[[], Awaitable[dict[str, pb.Pod]]], n: int) -> bool:
    return len(await fetch()) == n
