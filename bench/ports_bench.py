"""Dynamic host ports (issue 17): scheduler throughput, and 100 replicas on one real node.

(a) Scheduler throughput, as bench/sched_bench.py measures it: a one-member
    store, --nodes simulated Ready nodes (no agent), --pods pending pods
    created before a scheduler-only `controllers` process starts; binds per
    second from the store's watch (first to last bind). Three kinds of pods,
    each in its own namespace with a fresh scheduler, --rounds times in turn:
    *fixed* (one port each, a distinct number per pod), *dynamic* (one named
    port without a number: the scheduler picks it in the node's range and
    writes it in the binding) and *none* (no port, for reference). Every bound
    pod's ports are checked: no two pods of a node share one.
(c) The same kinds of pods through the scheduler's decisions alone
    (``ClusterState.decide`` + ``assume``, in this process, no store; per CPU
    second): the cost of picking ports, apart from the store writes that
    dominate (a).
(b) (root) --replicas replicas of a small TCP server with one dynamic port,
    a Deployment on one real node (store, `mizzen controllers`, `mizzen agent`
    on this host): time from the Deployment's creation until every pod is
    Running and Ready (its readiness probe names the port), then one request
    to each pod's port, answered by that pod.

    .venv/bin/python bench/ports_bench.py --skip-node            # (a) only
    sudo .venv/bin/python bench/ports_bench.py                   # (a) and (b)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
for path in (REPO_ROOT, REPO_ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import sched_bench  # noqa: E402
from sched_bench import Manager, add_nodes, bounded, watch_until_bound  # noqa: E402

from mizzen.client import ObjectsClient  # noqa: E402
from mizzen.log_config import configure_logging  # noqa: E402
from mizzen.testing.local_cluster import MizzenCluster  # noqa: E402
from protos import objects_pb2 as pb  # noqa: E402

PHASE_TIMEOUT = 600.0
NODE = "ports-bench-node"
NS = "ports-bench"


# ------------------------------------------------------------------ (a) scheduler


def make_pod(ns: str, i: int, kind: str) -> pb.Pod:
    pod = sched_bench.make_pod(ns, i)
    process = pod.spec.processes[0]
    if kind == "fixed":
        process.ports.add(name="http", port=1024 + i, protocol="TCP")
    elif kind == "dynamic":
        process.ports.add(name="http", protocol="TCP")
    return pod


async def no_collisions(client: ObjectsClient, ns: str) -> tuple[int, int]:
    """(bound pods, ports used twice on one node) of namespace ns."""
    used: Counter[tuple[str, str, int]] = Counter()
    bound = 0
    for pod in (await client.list("pods", ns)).items:
        if pod.spec.node_name:
            bound += 1
            for process in pod.spec.processes:
                for port in process.ports:
                    used[(pod.spec.node_name, port.protocol, port.port)] += 1
    return bound, sum(1 for count in used.values() if count > 1)


async def scheduler_round(
    client: ObjectsClient, eps: list[str], args: Any, tmp: Path, kind: str, round_: int
) -> dict[str, Any]:
    ns = f"{kind}-{round_}"
    await bounded(args.pods, 64, lambda i: client.create(make_pod(ns, i, kind)))
    watch = await watch_until_bound(client, ns, args.pods)
    log = tmp / f"manager-{ns}.log"
    manager = Manager(eps, log, only_scheduler=True, workers=args.workers)
    try:
        await manager.started()
        await asyncio.wait_for(watch.done.wait(), PHASE_TIMEOUT)
    finally:
        manager.stop()
        watch.cancel()
    bound, collisions = await no_collisions(client, ns)
    return {"rate": watch.rate, "span": watch.last - watch.first, "bound": bound,
            "collisions": collisions}  # fmt: skip


async def scheduler_bench(args: Any, tmp: Path) -> list[tuple[str, str]]:
    sched_bench.NODES = args.nodes
    results: dict[str, list[dict[str, Any]]] = {"fixed": [], "dynamic": [], "none": []}
    with MizzenCluster(1, tmp / "store") as cluster:
        eps = cluster.endpoints
        async with ObjectsClient(eps, timeout=30) as client:
            await add_nodes(client)
            for round_ in range(args.rounds):
                for kind in results:
                    result = await scheduler_round(client, eps, args, tmp, kind, round_)
                    results[kind].append(result)
                    print(f"round {round_} {kind}: {result['rate']:.0f} pods/s, "
                          f"{result['bound']} bound, {result['collisions']} collisions",
                          flush=True)  # fmt: skip
    rows = [("(a) setup", f"1 store member, {args.nodes} simulated nodes, {args.pods} pods "
                          f"per run, scheduler workers={args.workers}")]  # fmt: skip
    for kind, runs in results.items():
        rates = ", ".join(f"{r['rate']:.0f}" for r in runs)
        collisions = sum(r["collisions"] for r in runs)
        rows.append(
            (f"(a) {kind} port(s): binds/s per round", f"{rates} ({collisions} collisions)")
        )
    fixed = sorted(r["rate"] for r in results["fixed"])
    dynamic = sorted(r["rate"] for r in results["dynamic"])
    median = len(fixed) // 2
    rows.append(
        ("(a) dynamic / fixed, medians", f"{dynamic[median] / fixed[median]:.2f} (target ≥ 0.80)")
    )
    return rows


# ------------------------------------------------------------------ (c) decisions alone


def decisions(kind: str, nodes: int, pods: int) -> float:
    """Decisions per CPU second of ClusterState alone (decide + assume, no store): pods
    pods of one kind onto nodes simulated nodes."""
    from controllers.scheduling import ClusterState, with_assigned_ports

    state = ClusterState()
    for i in range(nodes):
        node = sched_bench.make_node(i)
        node.status.allocatable.cpu_millis = 10_000_000
        node.status.allocatable.memory_bytes = 1024**5
        node.status.conditions.add(type="Ready", status="True")
        state.set_node(node)
    batch = [make_pod("bench", i, kind) for i in range(pods)]
    t0 = time.process_time()  # CPU time: other jobs on the machine count less
    for pod in batch:
        decision = state.decide(pod, 0.0)
        assert decision.node_name, decision.message
        state.assume(
            with_assigned_ports(pod, decision.node_name, decision.ports), decision.node_name
        )
    return pods / (time.process_time() - t0)


def decision_bench(args: Any) -> list[tuple[str, str]]:
    rows = []
    for nodes, pods in ((args.nodes, args.pods), (1, 1000), (1, 10_000)):
        rates: dict[str, list[float]] = {"fixed": [], "dynamic": []}
        for _ in range(7):  # in turn, so that load from elsewhere hits both alike
            for kind, runs in rates.items():
                runs.append(decisions(kind, nodes, pods))
        best = {kind: max(r) for kind, r in rates.items()}
        rows.append((
            f"(c) decide+assume alone, {pods} pods on {nodes} node(s), best of 7",
            f"fixed {best['fixed']:.0f}/s, dynamic {best['dynamic']:.0f}/s "
            f"(ratio {best['dynamic'] / best['fixed']:.2f})",
        ))  # fmt: skip
    return rows


# ------------------------------------------------------------------ (b) one real node

SERVER = """\
import os, socket
name, port = os.environ["MIZZEN_POD_NAME"], int(os.environ["PORT"])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", port))
s.listen(16)
while True:
    c, _ = s.accept()
    c.sendall(f"{name} {port}\\n".encode())
    c.close()
"""


def deployment(replicas: int) -> pb.Deployment:
    dep = pb.Deployment(metadata=pb.ObjectMeta(name="many", namespace=NS))
    dep.spec.replicas = replicas
    dep.spec.selector.match_labels["app"] = "many"
    template = dep.spec.template
    template.metadata.labels["app"] = "many"
    template.spec.termination_grace_period_seconds = 1
    process = template.spec.processes.add(name="server", command=[sys.executable, "-c", SERVER])
    process.ports.add(name="tcp", protocol="TCP")
    process.resources.requests.memory_bytes = 8 * 1024**2
    probe = process.readiness_probe
    probe.tcp_socket.port_name = "tcp"
    probe.period_seconds = 1
    return dep


def ready(pod: pb.Pod) -> bool:
    return pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions
    )


def ask(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        return s.recv(256).decode().strip()


async def node_bench(args: Any, tmp: Path) -> list[tuple[str, str]]:
    from mizzen.testing.bench_node import local_node

    with local_node(tmp / "node", NODE, controllers=True) as node:
        async with ObjectsClient(node.endpoints, timeout=30) as client:
            deadline = time.monotonic() + 60
            while True:  # the controllers' scheduler needs the node Ready
                with contextlib.suppress(Exception):
                    got = await client.get("nodes", NODE)
                    if any(c.type == "Ready" and c.status == "True" for c in got.status.conditions):
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("the node did not register")
                await asyncio.sleep(0.2)
            t0 = time.monotonic()
            await client.create(deployment(args.replicas))
            first_ready = 0.0
            while True:
                pods = list((await client.list("pods", NS, label_selector="app=many")).items)
                serving = [p for p in pods if ready(p)]
                if serving and not first_ready:
                    first_ready = time.monotonic() - t0
                if len(serving) == args.replicas:
                    break
                if time.monotonic() - t0 > PHASE_TIMEOUT:
                    raise RuntimeError(f"only {len(serving)} of {args.replicas} pods ready")
                await asyncio.sleep(0.2)
            all_ready = time.monotonic() - t0
            ports = {p.metadata.name: p.spec.processes[0].ports[0].port for p in serving}
            failed = sum(1 for p in pods if p.status.phase == "Failed")
            wrong = [
                name
                for name, port in ports.items()
                if await asyncio.to_thread(ask, port) != f"{name} {port}"
            ]
            low, high = min(ports.values()), max(ports.values())
    distinct = len(set(ports.values()))
    return [
        ("(b) setup", f"1 real node, a Deployment of {args.replicas} TCP servers, one dynamic "
                      "port each, readiness tcpSocket by port name, period 1 s"),
        ("(b) create → first pod ready", f"{first_ready:.1f} s"),
        ("(b) create → all pods Running and Ready", f"{all_ready:.1f} s"),
        ("(b) distinct ports / pods", f"{distinct} / {len(ports)} (range used {low}-{high})"),
        ("(b) pods answering with their own name on their port", f"{len(ports) - len(wrong)}"),
        ("(b) pods failed (PortInUse or other)", str(failed)),
    ]  # fmt: skip


async def bench(args: Any) -> None:
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="ports-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        if not args.skip_scheduler:
            rows += decision_bench(args)
            rows += await scheduler_bench(args, tmp)
        if not args.skip_node:
            rows += await node_bench(args, tmp)
    width = max(len(r[0]) for r in rows)
    print(f"| {'metric'.ljust(width)} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--nodes", type=int, default=100, help="(a) simulated nodes")
    p.add_argument("--pods", type=int, default=2000, help="(a) pending pods per run")
    p.add_argument("--rounds", type=int, default=3, help="(a) runs of each kind, in turn")
    p.add_argument("--workers", type=int, default=64, help="(a) scheduler workers")
    p.add_argument("--replicas", type=int, default=100, help="(b) replicas on the real node")
    p.add_argument("--skip-scheduler", action="store_true", help="skip (a)")
    p.add_argument("--skip-node", action="store_true", help="skip (b) (it needs root)")
    args = p.parse_args()
    configure_logging("warning", "console")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(bench(args))


if __name__ == "__main__":
    main()
