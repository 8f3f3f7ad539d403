"""Scheduler benchmark on a 1-node Mizzen store (loopback).

(a) 100 simulated Node objects (Ready=True, 64 cpu / 256 GiB each, no agent)
    and --pods pending pods created *before* the scheduler starts; then the
    controller manager starts in its own process running only the scheduler.
    Throughput = binds / (time of last bind - time of first bind), both seen
    by a watch on the store, so the figure is what the store recorded, not
    what the scheduler believes.
(b) a Deployment of --replicas replicas, created once a manager running every
    registered controller (ReplicaSet, Deployment, ... plus the scheduler) is
    leading: time from the Deployment's creation until every one of its pods
    is bound, again seen by a watch. Without a Deployment controller it falls
    back to a ReplicaSet, and without that to bare pods (and says so).

Node lifecycle is not run (no agents renew leases), so nothing is evicted. The
managers run as subprocesses (``--manager`` mode of this script), so the
benchmark's own watch and writes do not share the scheduler's interpreter.

    .venv/bin/python bench/sched_bench.py
    .venv/bin/python bench/sched_bench.py --pods 1000 --replicas 200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from mizzen.client import ObjectsClient  # noqa: E402
from mizzen.testing.local_cluster import MizzenCluster  # noqa: E402
from protos import objects_pb2 as pb  # noqa: E402

NODES = 100
PHASE_TIMEOUT = 600.0
GI = 1024**3


# ------------------------------------------------------------------ manager subprocess


def manager_main(endpoints: list[str], only_scheduler: bool, workers: int) -> None:
    """Run a controller manager until SIGTERM (the --manager mode of this script)."""
    from controllers import manager as mgr
    from controllers.scheduler import scheduler_from_config
    from mizzen.log_config import configure_logging

    configure_logging("info", "json")
    config = mgr.ManagerConfig(
        endpoints=endpoints,
        id="sched-bench",
        workers={"scheduler": workers},
        options={"scheduler.scheduled_events": os.environ.get("BENCH_EVENTS", "1") == "1"},
    )
    factories: list[Callable[[Any], Any]] = [] if only_scheduler else list(mgr.CONTROLLERS)
    names = {f(config).name for f in factories}
    if "scheduler" not in names:
        factories.append(scheduler_from_config)
        names.add("scheduler")
    # the simulated nodes have no agents renewing leases: node lifecycle would evict
    config.enabled = tuple(sorted(names - {"node-lifecycle"}))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await mgr.ControllerManager(config, factories).run(stop)

    asyncio.run(main())


class Manager:
    """A manager subprocess; started() waits for its controllers_started log line."""

    def __init__(self, endpoints: list[str], log: Path, *, only_scheduler: bool, workers: int):
        argv = [sys.executable, __file__, "--manager", "--endpoints", ",".join(endpoints)]
        argv += ["--workers", str(workers)]
        if only_scheduler:
            argv.append("--only-scheduler")
        self.log = log
        self._out = log.open("wb")
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        self.proc = subprocess.Popen(argv, stdout=self._out, stderr=subprocess.STDOUT, env=env)

    async def started(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while b"controllers_started" not in self.log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"controller manager did not start:\n{tail}")
            await asyncio.sleep(0.1)

    def controllers(self) -> str:
        for line in self.log.read_text(errors="replace").splitlines():
            if "controllers_started" in line:
                return line
        return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._out.close()


# ------------------------------------------------------------------ objects


def make_node(i: int) -> pb.Node:
    name = f"node-{i:03d}"
    node = pb.Node(metadata=pb.ObjectMeta(name=name))
    node.metadata.labels.update(
        {"mizzen.io/hostname": name, "mizzen.io/os": "linux", "mizzen.io/arch": "amd64"}
    )
    return node


def template_spec(spec: pb.PodSpec) -> None:
    proc = spec.processes.add(name="main", command=["/bin/sleep", "3600"])
    proc.resources.requests.cpu_millis = 100
    proc.resources.requests.memory_bytes = 64 * 1024**2


def make_pod(ns: str, i: int) -> pb.Pod:
    pod = pb.Pod(metadata=pb.ObjectMeta(name=f"pod-{i:05d}", namespace=ns))
    template_spec(pod.spec)
    return pod


async def bounded(n: int, concurrency: int, fn: Callable[[int], Any]) -> None:
    it = iter(range(n))

    async def worker() -> None:
        for i in it:
            await fn(i)

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), PHASE_TIMEOUT)


async def add_nodes(client: ObjectsClient) -> None:
    async def one(i: int) -> None:
        stored = await client.create(make_node(i))
        cap = stored.status.capacity
        cap.cpu_millis, cap.memory_bytes, cap.pids = 64_000, 256 * GI, 100_000
        stored.status.allocatable.CopyFrom(cap)
        stored.status.conditions.add(type="Ready", status="True", reason="AgentReady")
        await client.update_status(stored)

    await bounded(NODES, 16, one)


@dataclass
class BindWatch:
    """Watches a namespace's pods and timestamps each pod's first bind."""

    expected: int
    first: float = 0.0
    last: float = 0.0
    bound: set[str] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def run(self, client: ObjectsClient, ns: str, rv: str) -> None:
        async for _, pod in client.watch("pods", ns, resource_version=rv, resume_timeout=60):
            if pod.spec.node_name and pod.metadata.name not in self.bound:
                now = time.monotonic()
                self.first = self.first or now
                self.last = now
                self.bound.add(pod.metadata.name)
                if len(self.bound) >= self.expected:
                    self.done.set()
                    return

    @property
    def rate(self) -> float:
        span = self.last - self.first
        return (len(self.bound) - 1) / span if span > 0 else float("nan")


async def watch_until_bound(client: ObjectsClient, ns: str, expected: int) -> BindWatch:
    listed = await client.list("pods", ns, limit=1)
    watch = BindWatch(expected)
    watch.task = asyncio.create_task(watch.run(client, ns, listed.resource_version))
    return watch


# ------------------------------------------------------------------ phases


async def phase_pending(
    client: ObjectsClient, eps: list[str], args: Any, tmp: Path
) -> dict[str, Any]:
    ns = "bench-pending"
    t0 = time.monotonic()
    await bounded(args.pods, 64, lambda i: client.create(make_pod(ns, i)))
    created = time.monotonic() - t0
    watch = await watch_until_bound(client, ns, args.pods)
    manager = Manager(eps, tmp / "manager-a.log", only_scheduler=True, workers=args.workers)
    started = time.monotonic()
    try:
        await manager.started()
        await asyncio.wait_for(watch.done.wait(), PHASE_TIMEOUT)
    finally:
        manager.stop()
        watch.cancel()
    return {
        "create": f"{args.pods} pods in {created:.1f} s ({args.pods / created:.0f}/s)",
        "rate": watch.rate,
        "span": watch.last - watch.first,
        "total": watch.last - started,
    }


async def phase_deployment(
    client: ObjectsClient, eps: list[str], args: Any, tmp: Path
) -> dict[str, Any]:
    ns = "bench-deploy"
    manager = Manager(eps, tmp / "manager-b.log", only_scheduler=False, workers=args.workers)
    try:
        await manager.started()
        started_line = manager.controllers()
        labels = {"app": "bench"}
        watch = await watch_until_bound(client, ns, args.replicas)
        t0 = time.monotonic()
        if '"deployment"' in started_line:
            what = f"Deployment, {args.replicas} replicas"
            obj: Any = pb.Deployment(metadata=pb.ObjectMeta(name="bench", namespace=ns))
        elif '"replicaset"' in started_line:
            what = f"ReplicaSet, {args.replicas} replicas (no Deployment controller registered)"
            obj = pb.ReplicaSet(metadata=pb.ObjectMeta(name="bench", namespace=ns))
        else:
            what = f"{args.replicas} bare pods (no ReplicaSet/Deployment controller registered)"
            obj = None
        if obj is None:
            await bounded(args.replicas, 64, lambda i: client.create(make_pod(ns, i)))
        else:
            obj.spec.replicas = args.replicas
            obj.spec.selector.match_labels.update(labels)
            obj.spec.template.metadata.labels.update(labels)
            template_spec(obj.spec.template.spec)
            await client.create(obj)
        await asyncio.wait_for(watch.done.wait(), PHASE_TIMEOUT)
        watch.cancel()
    finally:
        manager.stop()
    return {"what": what, "total": watch.last - t0, "rate": watch.rate}


async def bench(args: Any) -> None:
    with tempfile.TemporaryDirectory(prefix="sched-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        with MizzenCluster(1, tmp / "store") as cluster:
            eps = cluster.endpoints
            async with ObjectsClient(eps, timeout=30) as client:
                await add_nodes(client)
                a = await phase_pending(client, eps, args, tmp)
                b = await phase_deployment(client, eps, args, tmp) if args.replicas else None
    rows = [
        ("setup", f"1 store node, {NODES} nodes, scheduler workers={args.workers}"),
        ("(a) pending pods created before the scheduler", a["create"]),
        (
            "(a) bind throughput, first to last bind",
            f"{a['rate']:.0f} pods/s ({args.pods} in {a['span']:.1f} s)",
        ),
        ("(a) manager start to last bind", f"{a['total']:.1f} s"),
    ]
    if b is not None:
        rows += [
            ("(b) workload", b["what"]),
            ("(b) create to all pods bound", f"{b['total']:.1f} s"),
            ("(b) bind rate, first to last bind", f"{b['rate']:.0f} pods/s"),
        ]
    width = max(len(r[0]) for r in rows)
    print(f"| {'metric'.ljust(width)} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--pods", type=int, default=5000)
    p.add_argument("--replicas", type=int, default=1000, help="0 skips phase (b)")
    p.add_argument("--workers", type=int, default=64, help="scheduler workers (binds in flight)")
    p.add_argument("--manager", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--only-scheduler", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--endpoints", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.manager:
        manager_main(args.endpoints.split(","), args.only_scheduler, args.workers)
        return
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(bench(args))


if __name__ == "__main__":
    main()
