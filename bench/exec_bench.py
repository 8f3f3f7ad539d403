"""`mizzen exec POD -- true` round trip on a local agent (root).

A one-node store and a real `mizzen agent` on this host (bench_node.local_node),
one pod bound to the node running `sleep`. Then, each --runs times, one after
another:

(a) RPC alone: a Python client on one open channel to the agent calls
    NodeAgent.Exec with ``true`` and reads until the exit message (the agent
    resolves the target, records the Event, spawns the command through the
    cgroup-joining wrapper, streams, reaps and cleans up);
(b) CLI: the wall time of ``python -m mizzen exec POD -- true`` as a user runs it
    (interpreter start, imports, a Get of the Pod and the Node from the store,
    a new TLS-less channel to the agent, the Exec call);
and, for scale, in the same run:
(c) ``python -m mizzen exec --help`` (the interpreter start and the imports of
    the exec command, no network: the floor of (b));
(d) ``subprocess.run(["true"])`` from this process (a bare fork/exec/wait).

Prints p50/p99/max of each in ms as JSON. Everything binds 127.0.0.1 and is
removed on exit.

    sudo .venv/bin/python bench/exec_bench.py --runs 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import grpc  # noqa: E402

from mizzen.client import ObjectsClient  # noqa: E402
from mizzen.log_config import configure_logging  # noqa: E402
from mizzen.testing.bench_node import local_node  # noqa: E402
from mizzen.testing.bench_node import summary_ms as summary  # noqa: E402
from protos import agent_pb2, agent_pb2_grpc  # noqa: E402
from protos import objects_pb2 as pb  # noqa: E402

NODE = "bench-node"
NS = "exec-bench"
POD = "target"


async def prepare(endpoints: list[str]) -> str:
    """Create the pod, wait until it runs; the agent's gRPC address."""
    async with ObjectsClient(endpoints, timeout=30) as client:
        obj = pb.Pod(metadata=pb.ObjectMeta(name=POD, namespace=NS))
        obj.spec.node_name = NODE
        obj.spec.termination_grace_period_seconds = 1
        obj.spec.processes.add(name="main", command=["/bin/sleep", "3600"])
        await client.create(obj)
        deadline = time.monotonic() + 60
        while True:
            pod = await client.get("pods", POD, NS)
            if pod.status.phase == "Running":
                break
            if time.monotonic() > deadline:
                raise SystemExit("the pod did not start in 60 s")
            await asyncio.sleep(0.1)
        node = await client.get("nodes", NODE)
        return next(a.address for a in node.status.addresses if a.type == "AgentGRPC")


async def rpc_runs(address: str, runs: int) -> list[float]:
    start = agent_pb2.ExecRequest(
        start=agent_pb2.ExecStart(namespace=NS, pod=POD, command=["true"])
    )
    out = []
    async with grpc.aio.insecure_channel(address) as channel:
        await channel.channel_ready()
        stub = agent_pb2_grpc.NodeAgentStub(channel)
        for i in range(runs + 1):
            t = time.perf_counter()
            exits = [r.exit.code async for r in stub.Exec(iter([start])) if r.HasField("exit")]
            elapsed = time.perf_counter() - t
            if exits != [0]:
                raise SystemExit(f"exec true: {exits}")
            if i:  # the first call warms the channel up
                out.append(elapsed)
    return out


def wall(argv: list[str], runs: int, expect: int = 0) -> list[float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIZZEN_")}
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, cwd=REPO_ROOT, env=env)
        out.append(time.perf_counter() - t)
        if done.returncode != expect:
            raise SystemExit(f"{argv}: exit {done.returncode}: {done.stderr.decode()[-300:]}")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=50)
    args = p.parse_args()
    if os.geteuid() != 0:
        print("exec_bench needs root (the agent runs cgroups)", file=sys.stderr)
        return 2
    configure_logging("warning", "console")
    results: dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "runs": args.runs,
    }
    base = Path(tempfile.mkdtemp(prefix="exec-bench-"))
    with local_node(base, NODE) as node:
        address = asyncio.run(prepare(node.endpoints))
        endpoints = ",".join(node.endpoints)
        mizzen = [sys.executable, "-m", "mizzen"]
        results["rpc_exec_true"] = summary(asyncio.run(rpc_runs(address, args.runs)))
        cli = [*mizzen, "exec", POD, "-n", NS, "--endpoints", endpoints, "--", "true"]
        wall(cli, 1)  # warm the page cache
        results["cli_exec_true"] = summary(wall(cli, args.runs))
        results["cli_start_only"] = summary(wall([*mizzen, "exec", "--help"], args.runs))
        results["subprocess_true"] = summary(wall(["true"], args.runs))
    results["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
