"""Node agent benchmark (root): bound-to-running latency and supervision overhead.

A one-node store and a real `mizzen agent` (its own cgroup parent) on this
host. Then:

(a) baseline in the same run: --pods `sleep` processes spawned directly with
    subprocess.Popen — the cost of starting a process with nothing around it;
(b) paced: --pods pods created already bound to the node, one every --pace
    seconds, so each start is measured without a queue;
(c) burst: --pods more pods created at once by 16 concurrent writers;
for (b) and (c) two latencies per pod: agent-side = the process's
``state.running.started_at`` minus the pod's ``creation_timestamp`` (both
written on this host), and observed = first watch event showing the process
running minus the moment the create call was sent;
(d) with the burst pods deleted again, so --pods processes run, the agent's
    CPU (utime + stime from /proc over --idle seconds, as % of one core) and RSS.

Everything binds 127.0.0.1; the pods, the agent, the cgroups and the store are
removed on exit, error or Ctrl-C.

    sudo .venv/bin/python bench/agent_bench.py --pods 200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

from mizzen.client import ObjectsClient  # noqa: E402
from mizzen.log_config import configure_logging  # noqa: E402
from mizzen.testing.bench_node import local_node, wait_node_ready  # noqa: E402
from mizzen.testing.bench_node import summary_ms as summary  # noqa: E402
from protos import objects_pb2 as pb  # noqa: E402

NODE = "bench-node"
NS = "agent-bench"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pod(name: str) -> pb.Pod:
    obj = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace=NS))
    obj.spec.node_name = NODE
    obj.spec.restart_policy = "Never"
    obj.spec.termination_grace_period_seconds = 1
    obj.spec.processes.add(name="main", command=["/bin/sleep", "3600"])
    return obj


def baseline(n: int) -> list[float]:
    out, procs = [], []
    try:
        for _ in range(n):
            t = time.perf_counter()
            procs.append(subprocess.Popen(["/bin/sleep", "3600"], start_new_session=True))
            out.append(time.perf_counter() - t)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return out


class Tracker:
    """Watches the bench namespace and records when each pod's process is first running."""

    def __init__(self) -> None:
        self.sent: dict[str, float] = {}
        self.seen: dict[str, float] = {}
        self.agent_side: dict[str, float] = {}

    async def run(self, client: ObjectsClient, rv: str) -> None:
        async for _, obj in client.watch("pods", NS, resource_version=rv, resume_timeout=60):
            name = obj.metadata.name
            if name in self.seen:
                continue
            for st in obj.status.process_statuses:
                if st.state.HasField("running"):
                    self.seen[name] = time.monotonic()
                    started = st.state.running.started_at.ToNanoseconds() / 1e9
                    created = obj.metadata.creation_timestamp.ToNanoseconds() / 1e9
                    self.agent_side[name] = started - created
                    break

    async def wait(self, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(n in self.seen for n in names):
            if time.monotonic() > deadline:
                missing = [n for n in names if n not in self.seen]
                raise TimeoutError(f"{len(missing)} pods not running after {timeout}s")
            await asyncio.sleep(0.05)

    def results(self, names: list[str]) -> tuple[list[float], list[float]]:
        observed = [self.seen[n] - self.sent[n] for n in names]
        return [self.agent_side[n] for n in names], observed


async def create(client: ObjectsClient, tracker: Tracker, name: str) -> None:
    tracker.sent[name] = time.monotonic()
    await client.create(pod(name))


async def measure(endpoints: list[str], args: argparse.Namespace, agent_pid: int) -> dict[str, Any]:
    report: dict[str, Any] = {}
    async with ObjectsClient(endpoints, timeout=30) as client:
        await wait_node_ready(client, NODE)
        tracker = Tracker()
        rv = (await client.list("pods", NS)).resource_version
        watcher = asyncio.create_task(tracker.run(client, rv))
        try:
            paced = [f"paced-{i}" for i in range(args.pods)]
            for name in paced:
                await create(client, tracker, name)
                await asyncio.sleep(args.pace)
            await tracker.wait(paced, 120)
            agent_side, observed = tracker.results(paced)
            report["paced_agent_side"] = summary(agent_side)
            report["paced_observed"] = summary(observed)

            burst = [f"burst-{i}" for i in range(args.pods)]
            queue = list(burst)
            spy_burst = None
            if args.py_spy_burst:
                spy_burst = await asyncio.create_subprocess_exec(
                    "py-spy", "record", "--format", "raw", "-o", args.py_spy_burst,
                    "-d", "6", "-p", str(agent_pid), "--nonblocking",
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                )  # fmt: skip

            async def writer() -> None:
                while queue:
                    await create(client, tracker, queue.pop())

            await asyncio.gather(*(writer() for _ in range(16)))
            await tracker.wait(burst, 300)
            if spy_burst is not None:
                await spy_burst.wait()
            agent_side, observed = tracker.results(burst)
            report["burst_agent_side"] = summary(agent_side)
            report["burst_observed"] = summary(observed)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
        for name in burst:  # measure supervision with exactly --pods processes
            await client.delete("pods", name, NS, grace_period_seconds=0)
        await asyncio.sleep(5)  # the agent stops them; let that work settle
        c0, t0 = cpu_seconds(agent_pid), time.monotonic()
        spy = None
        if args.py_spy:
            spy = await asyncio.create_subprocess_exec(
                "py-spy", "record", "--format", "raw", "-o", args.py_spy,
                "-d", str(int(args.idle)), "-p", str(agent_pid), "--nonblocking",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        await asyncio.sleep(args.idle)
        if spy is not None:
            await spy.wait()
        c1, t1 = cpu_seconds(agent_pid), time.monotonic()
        report["idle_processes"] = args.pods
        report["agent_cpu_pct_of_one_core"] = round(100 * (c1 - c0) / (t1 - t0), 2)
        report["agent_rss_mb"] = round(rss_mb(agent_pid), 1)
        for name in paced:
            with contextlib.suppress(Exception):
                await client.delete("pods", name, NS, grace_period_seconds=0)
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--pods", type=int, default=200)
    ap.add_argument("--pace", type=float, default=0.05)
    ap.add_argument("--idle", type=float, default=30.0)
    ap.add_argument("--py-spy", default="", metavar="FILE", help="profile the idle agent")
    ap.add_argument("--py-spy-burst", default="", metavar="FILE", help="profile the burst")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("agent_bench: needs root (the agent creates cgroups)", file=sys.stderr)
        return 2
    configure_logging("warning", "console")
    report: dict[str, Any] = {"baseline_popen": summary(baseline(args.pods))}
    with local_node(Path(tempfile.mkdtemp(prefix="agent-bench-")), NODE) as node:
        report.update(asyncio.run(measure(node.endpoints, args, node.agent.pid)))
        time.sleep(2)
    report["machine"] = f"{platform.node()} {os.cpu_count()} cpus, {platform.release()}"
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
