"""Failover benchmark (root): store, controller and worker-host failures, real daemons on hosts.

Five test hosts (network namespaces on one bridge, ``bench/failover_hosts.py``):
h1-h3 each run a store member and a ``mizzen controllers``; h4-h5 each run a
``mizzen agent``; every daemon with its default settings. The bench runs in
the root namespace and talks to the three stores over the bridge. Then:

(1) store leader killed (``bench/failover_store.py``), --rounds times plus one
    round where the leader's whole host dies (link cut, every process
    SIGKILLed): 6 writers through one StoreClient; from the kill, the first
    acknowledgment of a write sent after it, the longest silence and the
    return to a steady write rate; the member is restarted after each round;
    at the end every acknowledged key is read back (lost = missing ones).
(2) controller failover, --rounds times: a Deployment whose pods can never be
    placed (a node selector no node has: the pods only have to exist). Each
    round SIGKILLs the leading manager (the identity under the election key),
    at once scales the Deployment up by one, and records from the kill: the
    election key deleted (lease expiry), re-created by a standby, the
    ReplicaSet's spec.replicas reaching the new value (the new leader's
    deployment controller) and the pod count reaching it (its replicaset
    controller). The killed manager is restarted as a standby.
(3) worker host lost, twice. A Deployment of --pods ``sleep 3600`` pods runs
    on h4 (h5 cordoned until they run, then uncordoned). "cutoff": h4's link
    is cut and its agent SIGKILLed; its pod processes keep running unseen.
    From the cut: node Ready=Unknown + unreachable taint, first/last pod
    evicted, all --pods replacements Running on h5. Then h4 is healed and its
    agent restarted: time until every stale pod process is killed, and the
    copies running once converged. "poweroff": the same pods, now on h5, and
    h5's link cut and every process in it (agent and pods) SIGKILLed;
    replacements on h4; then h5 healed, its agent restarted: time to Ready.

Times are taken when the watch event showing the change arrives (informers on
replicasets, pods and nodes; a raw watch on the election key) or, for the
store, when the write's acknowledgment arrives. Each kill waits a random
0-1 s first, so it lands anywhere in the victim's 1 s renewal cycle
(keep-alive or heartbeat). Hosts, daemons, pod processes and cgroups are
removed on exit, error, Ctrl-C or SIGTERM; a SIGKILLed bench leaves what the
next TestHosts sweeps away. The machine's 2 CPUs carry all ten daemons, the
pods and the bench.

    sudo .venv/bin/python bench/failover_bench.py --rounds 5 --pods 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from failover_hosts import (  # noqa: E402
    Milestones,
    Plane,
    background,
    deployment,
    informer,
    live,
    pid_alive,
    ready_status,
    remove_all,
    running,
    say,
    summarize,
    until,
)
from failover_store import store_failover  # noqa: E402

from controllers.leader import DEFAULT_KEY  # noqa: E402
from controllers.node_lifecycle import LEASE_NAMESPACE, has_unreachable_taint  # noqa: E402
from mizzen.client import Informer, ObjectsClient, StoreClient  # noqa: E402
from mizzen.log_config import configure_logging  # noqa: E402
from mizzen.testing.hosts import TestHost  # noqa: E402
from mizzen.testing.waits import modify  # noqa: E402
from protos import objects_pb2 as pb  # noqa: E402

FAILOVER_NS = "failover-bench"
DEAD_HOST_NS = "dead-host-bench"
FAILOVER_TARGET_S = 3.0
DEAD_HOST_TARGET_S = 20.0
DEFAULT_SUBNET = "198.18.1.0/24"


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


async def controller_failover(plane: Plane, rounds: int, settle: float) -> dict[str, Any]:
    ms, keylog, rows = Milestones(), KeyLog(), []
    eps = plane.endpoints
    creds = plane.credentials
    async with (
        ObjectsClient(eps, timeout=10, credentials=creds) as client,
        StoreClient(eps, timeout=10, credentials=creds) as store,
    ):
        sets = informer(client, "replicasets", FAILOVER_NS, ms)
        pods = informer(client, "pods", FAILOVER_NS, ms)
        async with background(keylog.run(store), sets.run(), pods.run()):
            await until("a leader", lambda: store.get(DEFAULT_KEY), 30)
            await client.create(deployment(FAILOVER_NS, 1, {"mizzen.io/bench": "nowhere"}))
            ms.expect("initial", lambda: len(live(pods.list())) == 1)
            await ms.wait(["initial"], 30)
            for i in range(rounds):
                # The restarted manager syncs and campaigns; the jitter puts the kill at a
                # random point of the leader's 1 s keep-alive cycle.
                await asyncio.sleep(settle + random.uniform(0, 1))
                rows.append(await failover_round(plane, client, store, ms, keylog, sets, pods))
                say(f"failover round {i + 1}: " + " ".join(f"{k}={v}" for k, v in rows[-1].items()))
    await remove_all(eps, FAILOVER_NS, creds)
    return {"rounds": rows, **summarize(rows), "target_s": FAILOVER_TARGET_S}


async def failover_round(
    plane: Plane,
    client: ObjectsClient,
    store: StoreClient,
    ms: Milestones,
    keylog: KeyLog,
    sets: Informer,
    pods: Informer,
) -> dict[str, Any]:
    """SIGKILL the leader, scale up by one at once, time the new leader's work; restart it."""
    kv = await store.get(DEFAULT_KEY)
    leader = kv.value.decode() if kv is not None else ""
    host = plane.host_of_manager(leader)
    target = len(live(pods.list())) + 1
    ms.expect("rs", lambda: sum(r.spec.replicas for r in sets.list()) == target)
    ms.expect("pods", lambda: len(live(pods.list())) == target)
    killed = time.monotonic()
    host.kill("cm", signal.SIGKILL)
    await modify(
        client, "deployments", "sleeper", FAILOVER_NS, lambda d: setattr(d.spec, "replicas", target)
    )
    await ms.wait(["rs", "pods"], 30)
    expired = keylog.first(killed, "delete")
    elected = next(
        (at - killed for at, k, v in keylog.events if at >= killed and k == "put" and v != leader),
        None,
    )
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
    plane.start_manager(host)
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}


# ------------------------------------------------------------- worker host lost


async def dead_host(plane: Plane, n: int) -> dict[str, Any]:
    """n pods on h4; cut h4 off (agent killed); then power h5 off; time recovery each time."""
    a, b = plane.workers
    ms = Milestones()
    report: dict[str, Any] = {}
    async with ObjectsClient(plane.endpoints, timeout=10, credentials=plane.credentials) as client:
        nodes = informer(client, "nodes", "", ms)
        pods = informer(client, "pods", DEAD_HOST_NS, ms)

        def on(node: str) -> list[pb.Pod]:
            return [p for p in live(pods.list()) if p.spec.node_name == node and running(p)]

        def healthy(host: TestHost) -> Callable[[], bool]:
            def check() -> bool:
                node = nodes.get("", host.name)
                return (
                    node is not None
                    and ready_status(node) == "True"
                    and not (has_unreachable_taint(node) or node.spec.unschedulable)
                )

            return check

        async with background(nodes.run(), pods.run()):
            ms.expect(
                "agents", lambda: all(ready_status(nodes.get("", h.name)) == "True" for h in (a, b))
            )
            await ms.wait(["agents"], 60)
            await modify(
                client, "nodes", b.name, "", lambda o: setattr(o.spec, "unschedulable", True)
            )
            await client.create(deployment(DEAD_HOST_NS, n, {}))
            ms.expect("placed", lambda: len(on(a.name)) == n)
            await ms.wait(["placed"], 120)
            await modify(
                client, "nodes", b.name, "", lambda o: setattr(o.spec, "unschedulable", False)
            )
            for mode, victim, survivor in (("cutoff", a, b), ("poweroff", b, a)):
                ms.expect("survivor", healthy(survivor))
                await ms.wait(["survivor"], 60)
                # The scheduler sees the survivor schedulable; the kill lands anywhere in the
                # victim's heartbeat cycle.
                await asyncio.sleep(2 + random.uniform(0, 1))
                report[mode] = await lose_host(
                    plane, client, mode, victim, survivor, nodes, pods, ms, on
                )
                ms.expect("back", healthy(victim))
                await ms.wait(["back"], 60)
                report[mode]["restart_to_node_ready_untainted_s"] = round(
                    ms.at["back"] - report[mode].pop("_restarted"), 3
                )
                say(f"host {mode}: " + " ".join(f"{k}={v}" for k, v in report[mode].items()))
    report["target_s"] = DEAD_HOST_TARGET_S
    return report


async def lose_host(
    plane: Plane,
    client: ObjectsClient,
    mode: str,
    victim: TestHost,
    survivor: TestHost,
    nodes: Informer,
    pods: Informer,
    ms: Milestones,
    on: Callable[[str], list[pb.Pod]],
) -> dict[str, Any]:
    old = {p.metadata.name: p.status.process_statuses[0].pid for p in on(victim.name)}
    n, names = len(old), set(old)
    ms.expect("unknown", lambda: ready_status(nodes.get("", victim.name)) == "Unknown")
    ms.expect("tainted", lambda: has_unreachable_taint(nodes.get("", victim.name) or pb.Node()))
    ms.expect("first_evicted", lambda: bool(names - {p.metadata.name for p in live(pods.list())}))
    ms.expect("all_evicted", lambda: not names & {p.metadata.name for p in live(pods.list())})
    ms.expect("replaced", lambda: len(on(survivor.name)) == n)
    killed, killed_wall = time.monotonic(), time.time()
    victim.partition()
    if mode == "cutoff":
        victim.kill("agent", signal.SIGKILL)
    else:
        victim.kill_all()
    lease = await client.get("leases", victim.name, LEASE_NAMESPACE)
    since_heartbeat = killed_wall - lease.spec.renew_time.ToNanoseconds() / 1e9
    alive_after_kill = sum(pid_alive(pid) for pid in old.values())
    steps = ["unknown", "tainted", "first_evicted", "all_evicted", "replaced"]
    await ms.wait(steps, 90)
    out: dict[str, Any] = {
        "host": victim.name,
        "pods": n,
        "last_heartbeat_before_kill_s": round(since_heartbeat, 3),
        "old_processes_alive_after_kill": alive_after_kill,
        **{f"{s}_s": round(ms.at[s] - killed, 3) for s in steps},
        "old_processes_alive_when_replaced": sum(pid_alive(pid) for pid in old.values()),
    }
    out["breakdown"] = {
        "silence_seen_before_unknown_s": round(out["unknown_s"] + since_heartbeat, 3),
        "unknown_to_first_eviction_s": round(out["first_evicted_s"] - out["unknown_s"], 3),
        "eviction_spread_s": round(out["all_evicted_s"] - out["first_evicted_s"], 3),
        "last_eviction_to_all_running_s": round(out["replaced_s"] - out["all_evicted_s"], 3),
    }
    victim.heal()
    restarted = out["_restarted"] = time.monotonic()
    plane.start_agent(victim)
    if mode == "cutoff":
        deadline = restarted + 60
        while any(pid_alive(pid) for pid in old.values()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{victim.name}: the restarted agent left stale processes")
            await asyncio.sleep(0.02)
        out["restart_to_stale_killed_s"] = round(time.monotonic() - restarted, 3)
    await asyncio.sleep(1.0)
    current = {p.status.process_statuses[0].pid for p in live(pods.list()) if running(p)}
    out["converged_running_copies"] = sum(pid_alive(pid) for pid in current)
    out["processes_on_returned_host"] = len(plane.pod_pids(victim))
    return out


# ------------------------------------------------------------- main


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


async def run_all(plane: Plane, args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {}
    only = set(args.only.split(",")) if args.only else {"store", "controllers", "hosts"}
    if "store" in only:
        report["store_failover"] = await store_failover(
            plane, args.rounds, args.writers, not args.no_host_kill, args.observe
        )
    if "controllers" in only:
        report["controller_failover"] = await controller_failover(plane, args.rounds, args.settle)
    if "hosts" in only:
        report["dead_host"] = await dead_host(plane, args.pods)
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    ap.add_argument("--rounds", type=int, default=5, help="store and controller failovers")
    ap.add_argument("--pods", type=int, default=10, help="pods on the host that dies")
    ap.add_argument("--writers", type=int, default=6, help="concurrent store writers")
    ap.add_argument("--observe", type=float, default=6.0, help="seconds of writes after a kill")
    ap.add_argument("--no-host-kill", action="store_true", help="skip the whole-host store round")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds after a manager start")
    ap.add_argument("--subnet", default=DEFAULT_SUBNET, help="the hosts' subnet (own bridge)")
    ap.add_argument("--keep", action="store_true", help="keep the logs (kept anyway on failure)")
    ap.add_argument("--only", default="", help="some of store,controllers,hosts (default all)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        say("failover_bench: needs root (network namespaces, cgroups)")
        return 2
    configure_logging("warning", "console")
    signal.signal(signal.SIGTERM, _interrupted)  # clean up on `timeout`/kill as on Ctrl-C
    base = Path(tempfile.mkdtemp(prefix="failover-bench-"))
    failed = True
    plane = Plane(base, args.subnet)
    try:
        plane.start()
        try:
            report = asyncio.run(run_all(plane, args))
        finally:
            plane.close()
        failed = False
    finally:
        if args.keep or failed:
            say(f"logs kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    report["settings"] = {
        "store_members": 3, "managers": 3, "agents": 2, "lease_ttl_s": 2.0,
        "node_grace_s": 5.0, "eviction_timeout_s": 10.0, "agent_heartbeat_s": 1.0,
    }  # fmt: skip
    report["machine"] = f"{platform.node()} {os.cpu_count()} cpus, {platform.release()}"
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
