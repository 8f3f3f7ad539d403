"""Failover benchmark (root): controller-manager failover and dead-node recovery, real daemons.

A one-node store on loopback, then:

(1) controller failover, --rounds times: two `mizzen controllers` (ids cm-a,
    cm-b, default settings: lease TTL 3 s) and a Deployment whose pods can never
    be placed (a node selector no node has: the pods only have to exist). Each
    round SIGKILLs the leader (the identity stored under the election key), at
    once scales the Deployment up by one, and records from the kill: the
    election key deleted (lease expiry), the key re-created by the standby, the
    ReplicaSet's spec.replicas reaching the new value (the new leader's
    deployment controller) and the pod count reaching it (its replicaset
    controller). The killed manager is then restarted as the new standby.
(2) dead node: two real `mizzen agent`s (default heartbeat 1 s) and one
    `mizzen controllers` (defaults: node grace 5 s, eviction timeout 10 s). A
    Deployment of --pods `sleep 3600` pods runs on agent A (B cordoned until
    they run, then uncordoned). Agent A is SIGKILLed (its pods' processes keep
    running, like a host whose agent or network died) and, from the kill, the
    bench records: node A Ready=Unknown, A's pods evicted (first and last), all
    --pods replacements running on B. Then agent A is restarted and the bench
    records when it has killed the stale processes (every pid the old pods
    reported is dead): no duplicate copies once converged.

Times are taken when the watch event showing the change arrives (informers on
replicasets, pods and nodes; a raw watch on the election key). Each kill waits
a random 0-1 s first, so it lands anywhere in the victim's 1 s renewal cycle
(keep-alive or heartbeat) instead of at one phase fixed by the bench. Every daemon,
pod process and cgroup is removed on exit, error, Ctrl-C or SIGTERM (SIGKILL of
the bench kills the daemons through their parent-death signal, not the pods).

    sudo .venv/bin/python bench/failover_bench.py --rounds 5 --pods 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from controllers.leader import DEFAULT_KEY  # noqa: E402
from controllers.node_lifecycle import LEASE_NAMESPACE, has_unreachable_taint  # noqa: E402
from mizzen.client import ConflictError, Informer, ObjectsClient, StoreClient  # noqa: E402
from mizzen.log_config import configure_logging  # noqa: E402
from mizzen.testing.local_cluster import MizzenCluster, free_ports  # noqa: E402
from nodeagent.cgroups import detect  # noqa: E402
from protos import objects_pb2 as pb  # noqa: E402

FAILOVER_NS = "failover-bench"
DEAD_NODE_NS = "dead-node-bench"
FAILOVER_TARGET_S = 3.0
DEAD_NODE_TARGET_S = 20.0


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def spread(values: list[float]) -> dict[str, float]:
    return {
        "min_s": round(min(values), 2),
        "median_s": round(statistics.median(values), 2),
        "max_s": round(max(values), 2),
    }


def pid_alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Daemon:
    """A `python -m ...` daemon in its own session, logging to a file, dying with the bench."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
        argv = [sys.executable, *self.argv]
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                cwd=REPO_ROOT, start_new_session=True,
            )  # fmt: skip

    def send(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        self.send(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.send(signal.SIGKILL)
            self.proc.wait(5)


def manager(endpoints: list[str], name: str, base: Path) -> Daemon:
    """`mizzen controllers` with every default (lease TTL, node grace, eviction timeout)."""
    argv = ["-m", "mizzen", "--log-format", "json", "controllers"]
    argv += ["--endpoints", ",".join(endpoints), "--id", name]
    return Daemon(argv, base / f"{name}.log")


class Agent(Daemon):
    """`mizzen agent` with default timings and its own cgroup parent (removed by destroy)."""

    def __init__(self, endpoints: list[str], base: Path) -> None:
        self.name = f"node-{secrets.token_hex(3)}"
        self.parent = f"mizzen-test-failover-{secrets.token_hex(3)}"
        argv = ["-m", "mizzen", "--log-format", "json", "agent", "--name", self.name]
        argv += ["--endpoints", ",".join(endpoints), "--data-dir", str(base / self.name)]
        argv += ["--listen", f"127.0.0.1:{free_ports(1)[0]}", "--address", "127.0.0.1"]
        argv += ["--cgroup-parent", self.parent]
        super().__init__(argv, base / f"{self.name}.log")

    def destroy(self) -> bool:
        """Kill the agent and every process under its cgroup parent; True when nothing is left."""
        self.stop(signal.SIGKILL)
        driver = detect(parent=self.parent)
        root = driver.open("")
        if root is not None:
            root.kill_all()
            root.remove()
        return driver.open("") is None


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


async def modify(client: ObjectsClient, kind: str, name: str, ns: str, change: Any) -> None:
    """Read, change(obj), update; again on a conflict (status writers bump the version)."""
    for _ in range(50):
        obj = await client.get(kind, name, ns)
        change(obj)
        try:
            await client.update(obj)
            return
        except ConflictError:
            await asyncio.sleep(0.02)
    raise RuntimeError(f"{kind}/{name}: 50 conflicts in a row")


async def until(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


# ------------------------------------------------------------- controller failover


class KeyLog:
    """Every change of the election key: (arrival time, "put" | "delete", value)."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, str]] = []

    async def run(self, store: StoreClient) -> None:
        async with store.watch(DEFAULT_KEY) as watcher:
            async for batch in watcher:
                now = time.monotonic()
                for ev in batch.events:
                    self.events.append((now, ev.type.value, ev.kv.value.decode(errors="replace")))

    def first(self, after: float, kind: str, value: str | None = None) -> float | None:
        for at, k, v in self.events:
            if at >= after and k == kind and (value is None or v == value):
                return at - after
        return None


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


async def controller_failover(endpoints: list[str], rounds: int, settle: float, base: Path) -> Any:
    managers = {name: manager(endpoints, name, base) for name in ("cm-a", "cm-b")}
    ms, keylog, rows = Milestones(), KeyLog(), []
    try:
        for m in managers.values():
            m.start()
        async with (
            ObjectsClient(endpoints, timeout=10) as client,
            StoreClient(endpoints, timeout=10) as store,
        ):
            sets = informer(client, "replicasets", FAILOVER_NS, ms)
            pods = informer(client, "pods", FAILOVER_NS, ms)
            async with background(keylog.run(store), sets.run(), pods.run()):
                await until("a leader", lambda: store.get(DEFAULT_KEY), 30)
                replicas = 1
                d = deployment(FAILOVER_NS, replicas, {"mizzen.io/bench": "nowhere"})
                await client.create(d)
                ms.expect("initial", lambda: len(live(pods.list())) == 1)
                await ms.wait(["initial"], 30)
                await asyncio.sleep(settle + random.uniform(0, 1))
                for i in range(rounds):
                    replicas += 1
                    rows.append(
                        await failover_round(
                            client, store, managers, ms, keylog, sets, pods, replicas
                        )
                    )
                    say(
                        f"failover round {i + 1}: "
                        + " ".join(f"{k}={v}" for k, v in rows[-1].items())
                    )
                    # The restarted manager syncs and campaigns; the jitter puts the next kill
                    # at a random point of the leader's 1 s keep-alive cycle.
                    await asyncio.sleep(settle + random.uniform(0, 1))
    finally:
        for m in managers.values():
            m.stop()
    await remove_all(endpoints, FAILOVER_NS)
    report: dict[str, Any] = {"rounds": rows, "target_s": FAILOVER_TARGET_S}
    for field in dict.fromkeys(k for r in rows for k in r if k.endswith("_s")):
        values = [r[field] for r in rows if r.get(field) is not None]
        if values:
            report[field] = spread(values)
    return report


async def failover_round(
    client: ObjectsClient,
    store: StoreClient,
    managers: dict[str, Daemon],
    ms: Milestones,
    keylog: KeyLog,
    sets: Informer,
    pods: Informer,
    target: int,
) -> dict[str, Any]:
    """SIGKILL the leader, scale to target at once, time the new leader's work; restart it."""
    kv = await store.get(DEFAULT_KEY)
    leader = kv.value.decode() if kv is not None else ""
    if leader not in managers:
        raise RuntimeError(f"unexpected leader {leader!r}")
    standby = next(n for n in managers if n != leader)
    ms.expect("rs", lambda: sum(r.spec.replicas for r in sets.list()) == target)
    ms.expect("pods", lambda: len(live(pods.list())) == target)
    killed = time.monotonic()
    managers[leader].send(signal.SIGKILL)
    await modify(
        client, "deployments", "sleeper", FAILOVER_NS, lambda d: setattr(d.spec, "replicas", target)
    )
    await ms.wait(["rs", "pods"], 30)
    expired, elected = keylog.first(killed, "delete"), keylog.first(killed, "put", standby)
    scaled = ms.at["rs"] - killed
    row: dict[str, Any] = {
        "killed": leader,
        "key_deleted_s": expired,
        "new_leader_s": elected,
        "rs_scaled_s": scaled,
        "pods_created_s": ms.at["pods"] - killed,
    }
    if expired is not None and elected is not None:
        row["election_after_expiry_s"] = elected - expired
        row["reconcile_after_election_s"] = scaled - elected
    managers[leader].stop(signal.SIGKILL)
    managers[leader].start()
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}


async def remove_all(endpoints: list[str], ns: str) -> None:
    async with ObjectsClient(endpoints, timeout=10) as client:
        for kind in ("deployments", "replicasets", "pods"):
            for obj in (await client.list(kind, ns)).items:
                with contextlib.suppress(Exception):
                    await client.delete(kind, obj.metadata.name, ns, grace_period_seconds=0)


# ------------------------------------------------------------- dead node


async def dead_node(endpoints: list[str], n: int, agents: list[Agent], base: Path) -> Any:
    """Pods on agent A; SIGKILL A; time eviction and replacement on B; restart A."""
    a, b = agents
    cm = manager(endpoints, "cm-solo", base)
    ms, report = Milestones(), {}
    try:
        for agent in agents:
            agent.start()
        cm.start()
        async with ObjectsClient(endpoints, timeout=10) as client:
            nodes = informer(client, "nodes", "", ms)
            pods = informer(client, "pods", DEAD_NODE_NS, ms)
            async with background(nodes.run(), pods.run()):
                ms.expect(
                    "agents",
                    lambda: all(ready_status(nodes.get("", x.name)) == "True" for x in agents),
                )
                await ms.wait(["agents"], 60)
                await modify(
                    client, "nodes", b.name, "", lambda o: setattr(o.spec, "unschedulable", True)
                )
                await client.create(deployment(DEAD_NODE_NS, n, {}))

                def on(node: str) -> list[pb.Pod]:
                    return [p for p in live(pods.list()) if p.spec.node_name == node and running(p)]

                ms.expect("placed", lambda: len(on(a.name)) == n)
                await ms.wait(["placed"], 120)
                old = {p.metadata.name: p.status.process_statuses[0].pid for p in on(a.name)}
                await modify(
                    client, "nodes", b.name, "", lambda o: setattr(o.spec, "unschedulable", False)
                )
                # The scheduler sees B schedulable again; the kill lands anywhere in A's
                # heartbeat cycle.
                await asyncio.sleep(2 + random.uniform(0, 1))
                report.update(await kill_and_recover(client, a, b, old, nodes, pods, ms, on))
    finally:
        cm.stop()
    return report


async def kill_and_recover(
    client: ObjectsClient,
    a: Agent,
    b: Agent,
    old: dict[str, int],
    nodes: Informer,
    pods: Informer,
    ms: Milestones,
    on: Callable[[str], list[pb.Pod]],
) -> dict[str, Any]:
    n = len(old)
    names = set(old)
    ms.expect("unknown", lambda: ready_status(nodes.get("", a.name)) == "Unknown")
    ms.expect("tainted", lambda: has_unreachable_taint(nodes.get("", a.name) or pb.Node()))
    ms.expect("first_evicted", lambda: bool(names - {p.metadata.name for p in live(pods.list())}))
    ms.expect("all_evicted", lambda: not names & {p.metadata.name for p in live(pods.list())})
    ms.expect("replaced", lambda: len(on(b.name)) == n)
    killed, killed_wall = time.monotonic(), time.time()
    a.send(signal.SIGKILL)
    lease = await client.get("leases", a.name, LEASE_NAMESPACE)
    since_heartbeat = killed_wall - lease.spec.renew_time.ToNanoseconds() / 1e9
    alive_after_kill = sum(pid_alive(pid) for pid in old.values())
    await ms.wait(["unknown", "tainted", "first_evicted", "all_evicted", "replaced"], 90)
    stale_when_replaced = sum(pid_alive(pid) for pid in old.values())
    out: dict[str, Any] = {
        "pods": n,
        "last_heartbeat_before_kill_s": round(since_heartbeat, 3),
        "old_processes_alive_after_kill": alive_after_kill,
    }
    for name in ("unknown", "tainted", "first_evicted", "all_evicted", "replaced"):
        out[f"{name}_s"] = round(ms.at[name] - killed, 3)
    out["old_processes_alive_when_replaced"] = stale_when_replaced
    out["breakdown"] = {
        "silence_seen_before_unknown_s": round(out["unknown_s"] + since_heartbeat, 3),
        "unknown_to_first_eviction_s": round(out["first_evicted_s"] - out["unknown_s"], 3),
        "eviction_spread_s": round(out["all_evicted_s"] - out["first_evicted_s"], 3),
        "last_eviction_to_all_running_s": round(out["replaced_s"] - out["all_evicted_s"], 3),
    }
    say("dead node: " + " ".join(f"{k}={v}" for k, v in out.items()))

    a.stop(signal.SIGKILL)
    restarted = time.monotonic()
    ms.expect(
        "a_ready",
        lambda: (
            (node := nodes.get("", a.name)) is not None
            and ready_status(node) == "True"
            and not has_unreachable_taint(node)
        ),
    )
    a.start()
    deadline = restarted + 60
    while any(pid_alive(pid) for pid in old.values()):
        if time.monotonic() > deadline:
            raise TimeoutError("the restarted agent left stale processes running after 60 s")
        await asyncio.sleep(0.02)
    out["restart_to_stale_killed_s"] = round(time.monotonic() - restarted, 3)
    await ms.wait(["a_ready"], 60)
    out["restart_to_node_ready_untainted_s"] = round(ms.at["a_ready"] - restarted, 3)
    current = [p for p in live(pods.list()) if running(p)]
    out["converged_running_copies"] = sum(
        pid_alive(p.status.process_statuses[0].pid) for p in current
    ) + sum(pid_alive(pid) for pid in old.values())
    out["target_s"] = DEAD_NODE_TARGET_S
    return out


# ------------------------------------------------------------- main


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rounds", type=int, default=5, help="controller failovers")
    ap.add_argument("--pods", type=int, default=10, help="pods on the node that dies")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds after a manager start")
    ap.add_argument("--keep", action="store_true", help="keep the logs (kept anyway on failure)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("failover_bench: needs root (the agents create cgroups)", file=sys.stderr)
        return 2
    configure_logging("warning", "console")
    signal.signal(signal.SIGTERM, _interrupted)  # clean up on `timeout`/kill as on Ctrl-C
    base = Path(tempfile.mkdtemp(prefix="failover-bench-"))
    report: dict[str, Any] = {}
    agents: list[Agent] = []
    failed = True
    try:
        with MizzenCluster(1, base / "store") as cluster:
            eps = cluster.endpoints
            report["controller_failover"] = asyncio.run(
                controller_failover(eps, args.rounds, args.settle, base)
            )
            agents = [Agent(eps, base), Agent(eps, base)]
            report["dead_node"] = asyncio.run(dead_node(eps, args.pods, agents, base))
            report["leftover_cgroups"] = [x.parent for x in agents if not x.destroy()]
        failed = False
    finally:
        for agent in agents:
            with contextlib.suppress(Exception):
                agent.destroy()
        if args.keep or failed:
            say(f"logs kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    report["settings"] = {
        "lease_ttl_s": 3.0, "node_grace_s": 5.0, "eviction_timeout_s": 10.0,
        "agent_heartbeat_s": 1.0, "store_nodes": 1,
    }  # fmt: skip
    report["machine"] = f"{platform.node()} {os.cpu_count()} cpus, {platform.release()}"
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
