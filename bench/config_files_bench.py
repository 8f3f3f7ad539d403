"""Mounted-file update latency (root): ConfigMap update → file content changed on the host.

A one-node store and a real `mizzen agent` (its own cgroup parent) on this
host; --pods pods bound to the node each mount one ConfigMap as a volume.
Then --updates times: update the ConfigMap (a new value of --size bytes), and
measure from just before the Update call until every pod's mounted file on
the host (read through the mount symlink, as the process would) holds the new
value; --pause seconds between updates. Reports p50 / p99 / max and whether
every pod kept its pid (files are rewritten in place, no restart).

Everything binds 127.0.0.1; pods, agent, cgroups and store are removed on exit.

    sudo .venv/bin/python bench/config_files_bench.py --updates 50
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
from protos import objects_pb2 as pb  # noqa: E402

NODE = "cfg-bench-node"
NS = "cfg-bench"
CM = "bench-config"


def pod(name: str) -> pb.Pod:
    obj = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace=NS))
    obj.spec.node_name = NODE
    obj.spec.termination_grace_period_seconds = 1
    obj.spec.volumes.add(name="conf", config_map=pb.ConfigMapVolumeSource(name=CM))
    proc = obj.spec.processes.add(name="main", command=["/bin/sleep", "3600"])
    proc.volume_mounts.add(name="conf", mount_path="conf")
    return obj


def value(i: int, size: int) -> str:
    head = f"update {i}\n"
    return head + "x" * max(0, size - len(head))


def read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


async def measure(endpoints: list[str], args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    report: dict[str, Any] = {}
    async with ObjectsClient(endpoints, timeout=30) as client:
        await client.create(
            pb.ConfigMap(metadata=pb.ObjectMeta(name=CM, namespace=NS), data={"v": value(0, 1)})
        )
        names = [f"reader-{i}" for i in range(args.pods)]
        for name in names:
            await client.create(pod(name))
        deadline = time.monotonic() + 120
        pids: dict[str, int] = {}
        files: list[Path] = []
        while len(pids) < len(names):
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(pids)} of {len(names)} pods running after 120 s")
            for item in (await client.list("pods", NS)).items:
                st = next(iter(item.status.process_statuses), None)
                if st is not None and st.pid > 0 and item.metadata.name not in pids:
                    pids[item.metadata.name] = st.pid
                    meta = item.metadata
                    home = data_dir / "poddirs" / f"{meta.namespace}_{meta.name}_{meta.uid}"
                    files.append(home / "conf" / "v")
            await asyncio.sleep(0.2)
        latencies: list[float] = []
        for i in range(1, args.updates + 1):
            cm = await client.get("configmaps", CM, NS)
            expected = value(i, args.size)
            cm.data["v"] = expected
            started = time.perf_counter()
            await client.update(cm)
            pending = list(files)
            while pending:
                pending = [f for f in pending if read(f) != expected]
                if pending:
                    if time.perf_counter() - started > 30:
                        raise TimeoutError(f"update {i}: {len(pending)} files unchanged after 30 s")
                    await asyncio.sleep(0.002)
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(args.pause)
        report["update_to_files_changed"] = summary(latencies)
        after = {
            item.metadata.name: next(iter(item.status.process_statuses)).pid
            for item in (await client.list("pods", NS)).items
        }
        report["same_pids"] = after == pids
        for name in names:
            with contextlib.suppress(Exception):
                await client.delete("pods", name, NS, grace_period_seconds=0)
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--pods", type=int, default=1)
    ap.add_argument("--updates", type=int, default=50)
    ap.add_argument("--size", type=int, default=1024, help="bytes per value")
    ap.add_argument("--pause", type=float, default=0.2, help="seconds between updates")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("config_files_bench: needs root (the agent creates cgroups)", file=sys.stderr)
        return 2
    configure_logging("warning", "console")
    report: dict[str, Any] = {"pods": args.pods, "updates": args.updates, "size": args.size}
    with local_node(Path(tempfile.mkdtemp(prefix="cfg-bench-")), NODE) as node:
        report.update(asyncio.run(measure(node.endpoints, args, node.agent_dir)))
        time.sleep(2)
    report["machine"] = f"{platform.node()} {os.cpu_count()} cpus, {platform.release()}"
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
