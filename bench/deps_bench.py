"""Dependencies benchmark (root): from a dependency met to the waiting processes running.

A one-node store, a `mizzen controllers` process and a real `mizzen agent`
(its own cgroup parent) on this host. Each round:

* a Service ``db-<i>`` and a Deployment ``api-<i>`` of --replicas `sleep`
  processes with ``dependsOn: [{service: db-<i>}]``; the round waits until
  every pod is bound and its process Waiting (DependenciesNotReady);
* t0 = just before the Endpoints ``db-<i>`` with one ready address are
  written (what the endpoints controller does when a db pod turns ready);
* per pod: **condition** = the transition time of its DependenciesReady
  condition to True (written by the dependencies controller) - t0, and
  **started** = its process's start time (written by the agent) - t0.

Then, once: the cost of ``dependsOn`` on a pod start when the dependency is
already met, i.e. Deployment created → every process started, for the same
--replicas pods with and without ``dependsOn`` (one Deployment each, one
after the other, median per pod over --rounds).

All times are wall-clock timestamps of this host written into the objects, so
the polling interval does not enter the figures. ``--graph N`` adds the cost
of the cycle search alone (``controllers.dependencies.find_cycles``, no
cluster): N Deployments, each depending on the Service of the next, the last
on the first's (one cycle through all N), and N unrelated ones. Everything binds 127.0.0.1;
pods, agent, cgroups and store are removed on exit, error or Ctrl-C.

    sudo .venv/bin/python bench/deps_bench.py --rounds 10 --replicas 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from controllers.dependencies import Node, find_cycles  # noqa: E402
from mizzen.api.dependencies import Target  # noqa: E402
from mizzen.client import ObjectsClient  # noqa: E402
from mizzen.log_config import configure_logging  # noqa: E402
from mizzen.testing.bench_node import local_node, summary_ms, wait_node_ready  # noqa: E402
from protos import objects_pb2 as pb  # noqa: E402

NODE = "bench-node"
NS = "deps-bench"
POLL = 0.05
CONDITION = "DependenciesReady"


def deployment(name: str, replicas: int, needs: str | None) -> pb.Deployment:
    d = pb.Deployment(metadata=pb.ObjectMeta(name=name, namespace=NS))
    d.spec.replicas = replicas
    d.spec.selector.match_labels["app"] = name
    t = d.spec.template
    t.metadata.labels["app"] = name
    t.spec.termination_grace_period_seconds = 0
    t.spec.processes.add(name="main", command=["/bin/sleep", "3600"])
    if needs:
        d.spec.depends_on.add(service=needs)
    return d


def service(name: str) -> pb.Service:
    svc = pb.Service(metadata=pb.ObjectMeta(name=name, namespace=NS))
    svc.spec.selector["app"] = name
    svc.spec.ports.add(name="http", target_port="8000")
    return svc


def endpoints(name: str) -> pb.Endpoints:
    ep = pb.Endpoints(metadata=pb.ObjectMeta(name=name, namespace=NS))
    subset = ep.subsets.add()
    subset.addresses.add(ip="127.0.0.1", node_name=NODE)
    subset.ports.add(name="http", port=8000, protocol="TCP")
    return ep


def seconds(ts: Any) -> float:
    return float(ts.ToNanoseconds()) / 1e9


def started(pod: pb.Pod) -> float | None:
    if not pod.status.process_statuses:
        return None
    state = pod.status.process_statuses[0].state
    return seconds(state.running.started_at) if state.HasField("running") else None


def waiting(pod: pb.Pod) -> bool:
    if not pod.spec.node_name or not pod.status.process_statuses:
        return False
    return pod.status.process_statuses[0].state.waiting.reason == "DependenciesNotReady"


def met_at(pod: pb.Pod) -> float | None:
    for c in pod.status.conditions:
        if c.type == CONDITION and c.status == "True":
            return seconds(c.last_transition_time)
    return None


async def pods_until(
    client: ObjectsClient, app: str, replicas: int, check: Any, timeout: float = 120
) -> list[pb.Pod]:
    deadline = time.monotonic() + timeout
    while True:
        pods = list((await client.list("pods", NS, label_selector=f"app={app}")).items)
        if len(pods) == replicas and all(check(p) for p in pods):
            return pods
        if time.monotonic() > deadline:
            raise TimeoutError(f"{app}: pods not there after {timeout}s")
        await asyncio.sleep(POLL)


async def remove(client: ObjectsClient, app: str) -> None:
    await client.delete("deployments", app, NS, propagation_policy="Foreground")
    deadline = time.monotonic() + 120
    while (await client.list("pods", NS, label_selector=f"app={app}")).items:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{app}: pods still there after 120 s")
        await asyncio.sleep(0.2)


async def met_to_started(client: ObjectsClient, i: int, replicas: int) -> list[tuple[float, float]]:
    """One round: (condition - t0, started - t0) per pod."""
    db, api = f"db-{i}", f"api-{i}"
    await client.create(service(db))
    await client.create(deployment(api, replicas, db))
    await pods_until(client, api, replicas, waiting)
    t0 = time.time()
    await client.create(endpoints(db))
    pods = await pods_until(client, api, replicas, lambda p: started(p) is not None)
    out = []
    for p in pods:
        met, run = met_at(p), started(p)
        assert met is not None and run is not None
        out.append((met - t0, run - t0))
    await remove(client, api)
    for kind in ("endpoints", "services"):
        await client.delete(kind, db, NS)
    return out


async def create_to_started(
    client: ObjectsClient, name: str, replicas: int, needs: str | None
) -> list[float]:
    t0 = time.time()
    await client.create(deployment(name, replicas, needs))
    pods = await pods_until(client, name, replicas, lambda p: started(p) is not None)
    out = [started(p) - t0 for p in pods]  # type: ignore[operator]
    await remove(client, name)
    return out


async def measure(endpoints_: list[str], args: argparse.Namespace) -> dict[str, Any]:
    conditions: list[float] = []
    starts: list[float] = []
    plain: list[float] = []
    gated: list[float] = []
    async with ObjectsClient(endpoints_, timeout=30) as client:
        await wait_node_ready(client, NODE)
        for i in range(args.rounds):
            runs = await met_to_started(client, i, args.replicas)
            conditions += [c for c, _ in runs]
            starts += [s for _, s in runs]
            print(
                f"round {i + 1}: condition max {max(c for c, _ in runs) * 1000:.0f} ms, "
                f"started max {max(s for _, s in runs) * 1000:.0f} ms",
                flush=True,
            )
        await client.create(service("ready-db"))
        await client.create(endpoints("ready-db"))
        for i in range(args.rounds):
            plain += await create_to_started(client, f"plain-{i}", args.replicas, None)
            gated += await create_to_started(client, f"gated-{i}", args.replicas, "ready-db")
    return {
        "replicas": args.replicas,
        "rounds": args.rounds,
        "met_to_condition": summary_ms(conditions),
        "met_to_started": summary_ms(starts),
        "create_to_started_without_dependsOn": summary_ms(plain),
        "create_to_started_with_met_dependsOn": summary_ms(gated),
    }


def graph_cost(n: int) -> dict[str, Any]:
    """Seconds find_cycles takes on a namespace of 2n workloads and n Services (median of 5)."""
    nodes = [
        Node(f"Deployment/w{i}", {"app": f"w{i}"}, (Target("Service", f"s{(i + 1) % n}"),))
        for i in range(n)
    ]
    nodes += [Node(f"Deployment/x{i}", {"app": f"x{i}"}, ()) for i in range(n)]
    services = {f"s{i}": {"app": f"w{i}"} for i in range(n)}
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        found = find_cycles(nodes, services)
        runs.append(time.perf_counter() - t0)
    assert len(found) == n
    runs.sort()
    return {"workloads": 2 * n, "services": n, "in_cycle": n, "median_ms": round(runs[2] * 1000, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--replicas", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--graph", type=int, default=0, help="also time the cycle search on N")
    args = ap.parse_args()
    if args.graph:
        print(json.dumps({"find_cycles": graph_cost(args.graph)}), flush=True)
    if os.geteuid() != 0:
        print("deps_bench: needs root (the agent creates cgroups)", file=sys.stderr)
        return 2
    configure_logging("warning", "console")
    base = Path(tempfile.mkdtemp(prefix="deps-bench-"))
    report: dict[str, Any] = {}
    with local_node(base, NODE, controllers=True) as node:
        report.update(asyncio.run(measure(node.endpoints, args)))
    report["machine"] = f"{platform.node()} {os.cpu_count()} cpus, {platform.release()}"
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
