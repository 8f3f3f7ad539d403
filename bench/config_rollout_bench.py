"""Config rollout benchmark (root): a ConfigMap edit vs a template edit, same Deployment, one run.

A one-node store, a `mizzen controllers` process and a real `mizzen agent`
(its own cgroup parent) on this host; a Deployment of --replicas `sleep`
processes (default strategy: 25% surge, 25% unavailable) whose env comes from
ConfigMap bench-config (envFrom). Each round does both rollouts, in
alternating order:

* config: update the ConfigMap's data;
* template: update an env value of the Deployment's template;

and times, from the moment the write is sent: the new ReplicaSet appearing
(detection) and the rollout being complete — every one of the --replicas
pods of the new revision Running and Ready, no old pod left (Deployment
status replicas = updated = available = --replicas). The report gives the
median of each, the rollout after detection (done - detection) and the
ratio config / template of the medians of done (target of issue 16: ≤ 2).

Everything binds 127.0.0.1; pods, agent, cgroups and store are removed on
exit, error or Ctrl-C.

    sudo .venv/bin/python bench/config_rollout_bench.py --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
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
from protos import objects_pb2 as pb  # noqa: E402

NODE = "bench-node"
NS = "config-bench"
POLL = 0.02


def deployment(replicas: int) -> pb.Deployment:
    d = pb.Deployment(metadata=pb.ObjectMeta(name="web", namespace=NS))
    d.spec.replicas = replicas
    d.spec.selector.match_labels["app"] = "web"
    t = d.spec.template
    t.metadata.labels["app"] = "web"
    t.spec.termination_grace_period_seconds = 1
    proc = t.spec.processes.add(name="main", command=["/bin/sleep", "3600"])
    proc.env.add(name="EDIT", value="0")
    proc.env_from.add().config_map_ref.name = "bench-config"
    return d


def _ready(p: pb.Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in p.status.conditions)


async def rollout(
    client: ObjectsClient, replicas: int, write: Any, timeout: float = 120
) -> tuple[float, float]:
    """(seconds to the new ReplicaSet, seconds to the rollout done) after write()."""
    before = {rs.metadata.name for rs in (await client.list("replicasets", NS)).items}
    t0 = time.monotonic()
    await write()
    detected = None
    while True:
        now = time.monotonic() - t0
        if now > timeout:
            raise TimeoutError(f"rollout not done after {timeout}s")
        rss = (await client.list("replicasets", NS)).items
        fresh = [rs for rs in rss if rs.metadata.name not in before]
        if fresh and detected is None:
            detected = now
        if fresh:
            new = fresh[0].metadata.labels["pod-template-hash"]
            pods = (await client.list("pods", NS)).items
            d = await client.get("deployments", "web", NS)
            st = d.status
            if (
                len(pods) == replicas
                and all(
                    p.metadata.labels.get("pod-template-hash") == new
                    and _ready(p)
                    and not p.metadata.HasField("deletion_timestamp")
                    for p in pods
                )
                and st.replicas == st.updated_replicas == st.available_replicas == replicas
            ):
                assert detected is not None
                return detected, now
        await asyncio.sleep(POLL)


async def settle(client: ObjectsClient, replicas: int) -> None:
    deadline = time.monotonic() + 120
    while True:
        pods = (await client.list("pods", NS)).items
        d = await client.get("deployments", "web", NS)
        st = d.status
        if (
            len(pods) == replicas
            and all(_ready(p) for p in pods)
            and st.replicas == st.updated_replicas == st.available_replicas == replicas
        ):
            return
        if time.monotonic() > deadline:
            raise TimeoutError("the Deployment did not settle within 120 s")
        await asyncio.sleep(0.1)


async def measure(endpoints: list[str], args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, list[tuple[float, float]]] = {"config": [], "template": []}
    async with ObjectsClient(endpoints, timeout=30) as client:
        await wait_node_ready(client, NODE)
        cm = pb.ConfigMap(metadata=pb.ObjectMeta(name="bench-config", namespace=NS))
        cm.data["VERSION"] = "0"
        await client.create(cm)
        await client.create(deployment(args.replicas))
        await settle(client, args.replicas)
        edits = 0

        async def config_write() -> None:
            nonlocal edits
            edits += 1
            obj = await client.get("configmaps", "bench-config", NS)
            obj.data["VERSION"] = str(edits)
            await client.update(obj)

        async def template_write() -> None:
            nonlocal edits
            edits += 1
            obj = await client.get("deployments", "web", NS)
            obj.spec.template.spec.processes[0].env[0].value = str(edits)
            await client.update(obj)

        for i in range(args.rounds):
            order = [("config", config_write), ("template", template_write)]
            if i % 2:
                order.reverse()
            for name, write in order:
                await asyncio.sleep(args.pause)
                detected, done = await rollout(client, args.replicas, write)
                results[name].append((detected, done))
                print(f"round {i + 1} {name}: new RS after {detected:.3f}s, done {done:.3f}s")
        await client.delete("deployments", "web", NS)
    report: dict[str, Any] = {"replicas": args.replicas, "rounds": args.rounds}
    for name, runs in results.items():
        report[name] = {
            "detect_median_s": round(statistics.median(d for d, _ in runs), 3),
            "done_median_s": round(statistics.median(t for _, t in runs), 3),
            "after_detect_median_s": round(statistics.median(t - d for d, t in runs), 3),
            "done_s": [round(t, 3) for _, t in runs],
        }
    report["ratio_config_over_template"] = round(
        report["config"]["done_median_s"] / report["template"]["done_median_s"], 2
    )
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--replicas", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pause", type=float, default=1.0, help="seconds between rollouts")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("config_rollout_bench: needs root (the agent creates cgroups)", file=sys.stderr)
        return 2
    configure_logging("warning", "console")
    report: dict[str, Any] = {}
    base = Path(tempfile.mkdtemp(prefix="config-bench-"))
    with local_node(base, NODE, controllers=True) as node:
        report.update(asyncio.run(measure(node.endpoints, args)))
        time.sleep(2)
    report["machine"] = f"{platform.node()} {os.cpu_count()} cpus, {platform.release()}"
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
