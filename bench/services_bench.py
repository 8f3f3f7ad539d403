"""Service discovery latency (root): pod ready → in its Service's Endpoints → in a live file.

A one-node store, `mizzen controllers` and a real `mizzen agent` on this host.
A Service selects app=bench-web; a consumer pod runs first (its
``$MIZZEN_POD_DIR/services/web.json`` is the live file). Then --pods pods
(a ``sleep`` declaring a fixed port: no readiness probe, so a pod is ready
once its process runs) are created one at a time, --pause seconds apart. For
each pod, from the moment the agent marked it Ready (its Ready condition's
transition time, this host's clock) to:

* the Endpoints watch delivering a version with it among the ready addresses
  (the store → endpoints controller → store → client path);
* the consumer's live file on the host listing it (the file is read every
  2 ms, as a process reading it would see it).

With --burst the pods are created all at once instead (they become ready
within a short while of each other, and every change rewrites the one
Endpoints object and file). Reports p50 / p99 / max of both. Everything
binds 127.0.0.1; pods, daemons, cgroups and the store are removed on exit.

    sudo .venv/bin/python bench/services_bench.py --pods 100 [--burst]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

from mizzen.client import ObjectsClient  # noqa: E402
from mizzen.log_config import configure_logging  # noqa: E402
from mizzen.testing.bench_node import local_node  # noqa: E402
from mizzen.testing.bench_node import summary_ms as summary  # noqa: E402
from mizzen.testing.local_cluster import free_ports  # noqa: E402
from protos import objects_pb2 as pb  # noqa: E402

NODE = "svc-bench-node"
NS = "svc-bench"
APP = "bench-web"


def web_pod(name: str, port: int) -> pb.Pod:
    p = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace=NS, labels={"app": APP}))
    p.spec.node_name = NODE
    p.spec.termination_grace_period_seconds = 0
    proc = p.spec.processes.add(name="main", command=["/bin/sleep", "3600"])
    proc.ports.add(name="http", port=port)
    return p


def consumer() -> pb.Pod:
    p = pb.Pod(metadata=pb.ObjectMeta(name="consumer", namespace=NS))
    p.spec.node_name = NODE
    p.spec.termination_grace_period_seconds = 0
    p.spec.processes.add(name="main", command=["/bin/sleep", "3600"])
    return p


def ready_at(pod: pb.Pod) -> float | None:
    for c in pod.status.conditions:
        if c.type == "Ready" and c.status == "True":
            return float(c.last_transition_time.ToNanoseconds()) / 1e9
    return None


def file_pods(path: Path) -> set[str]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return set()
    return {e["pod"] for e in doc.get("endpoints", [])}


async def wait_for(what: str, check: Any, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout} s")
        await asyncio.sleep(0.05)


async def measure(endpoints: list[str], args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    in_endpoints: dict[str, float] = {}
    in_file: dict[str, float] = {}
    async with ObjectsClient(endpoints, timeout=30) as client:
        svc = pb.Service(metadata=pb.ObjectMeta(name="web", namespace=NS))
        svc.spec.selector["app"] = APP
        svc.spec.ports.add(name="http", target_port="http")
        await client.create(svc)
        await client.create(consumer())

        async def consumer_file() -> Path | None:
            pod = await client.get("pods", "consumer", NS)
            meta = pod.metadata
            path = data_dir / "poddirs" / f"{NS}_consumer_{meta.uid}" / "services" / "web.json"
            return path if path.exists() else None

        live = await wait_for("the consumer's live file", consumer_file)
        ep = await wait_for("the Service's Endpoints", lambda: _get_ep(client))

        async def follow_endpoints() -> None:
            async for _, obj in client.watch(
                "endpoints",
                NS,
                field_selector="metadata.name=web",
                resource_version=ep.metadata.resource_version,
            ):
                now = time.time()
                for subset in obj.subsets:
                    for a in subset.addresses:
                        in_endpoints.setdefault(a.target_ref.name, now)

        async def follow_file() -> None:
            while True:
                now = time.time()
                for name in file_pods(live):
                    in_file.setdefault(name, now)
                await asyncio.sleep(0.002)

        tasks = [asyncio.create_task(follow_endpoints()), asyncio.create_task(follow_file())]
        names = [f"web-{i}" for i in range(args.pods)]
        ports = free_ports(args.pods)
        try:
            if args.burst:
                await asyncio.gather(
                    *(client.create(web_pod(n, p)) for n, p in zip(names, ports, strict=True))
                )
                for name in names:
                    await wait_for(f"{name} in the file", lambda n=name: _seen(in_file, n), 120)
            for name, port in zip(names, ports, strict=True):
                if args.burst:
                    break
                await client.create(web_pod(name, port))
                await wait_for(f"{name} in the file", lambda n=name: _seen(in_file, n), 60)
                await asyncio.sleep(args.pause)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        to_endpoints: list[float] = []
        to_file: list[float] = []
        for name in names:
            ready = ready_at(await client.get("pods", name, NS))
            if ready is None:
                raise RuntimeError(f"{name} has no Ready=True condition")
            to_endpoints.append(in_endpoints[name] - ready)
            to_file.append(in_file[name] - ready)
        for name in [*names, "consumer"]:
            with contextlib.suppress(Exception):
                await client.delete("pods", name, NS, grace_period_seconds=0)
    return {
        "ready_to_endpoints": summary(to_endpoints),
        "ready_to_live_file": summary(to_file),
    }


async def _get_ep(client: ObjectsClient) -> Any:
    try:
        return await client.get("endpoints", "web", NS)
    except Exception:
        return None


async def _seen(seen: dict[str, float], name: str) -> bool:
    return name in seen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--pods", type=int, default=50)
    ap.add_argument("--pause", type=float, default=0.2, help="seconds between pods")
    ap.add_argument("--burst", action="store_true", help="create every pod at once")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("services_bench: needs root (the agent creates cgroups)", file=sys.stderr)
        return 2
    configure_logging("warning", "console")
    report: dict[str, Any] = {"pods": args.pods, "burst": args.burst}
    with local_node(Path(tempfile.mkdtemp(prefix="svc-bench-")), NODE, controllers=True) as node:
        report.update(asyncio.run(measure(node.endpoints, args, node.agent_dir)))
        time.sleep(2)
    report["machine"] = f"{platform.node()} {os.cpu_count()} cpus, {platform.release()}"
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
