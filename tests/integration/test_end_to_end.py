"""End to end with every real component: store, `mizzen controllers`, `mizzen agent`.

A Deployment applied with the CLI is scheduled onto the agent's node, its
processes really run (pids alive, inside the node's cgroups), scaling down
kills the surplus processes, and deleting the Deployment (background
cascade: GC) removes its ReplicaSet, pods and every process.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from agent_fixtures import (
    AgentProcess,
    agent_and_controllers,
    cgroups_unavailable,
    eventually,
    pid_alive,
)

from mizzen.client import ObjectsClient
from mizzen.testing.local_cluster import REPO_ROOT, MizzenCluster
from protos import objects_pb2 as pb

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(cgroups_unavailable() is not None, reason=str(cgroups_unavailable())),
]

NS = "e2e"
MANIFEST = """\
apiVersion: mizzen/v1
kind: Deployment
metadata:
  name: sleeper
  namespace: e2e
spec:
  replicas: 3
  selector:
    matchLabels: {app: sleeper}
  template:
    metadata:
      labels: {app: sleeper}
    spec:
      terminationGracePeriodSeconds: 1
      processes:
        - name: main
          command: ["sleep", "3600"]
          resources:
            requests: {cpu: 10m, memory: 8Mi}
            limits: {memory: 64Mi, pids: 16}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MizzenCluster]:
    with MizzenCluster(1, tmp_path_factory.mktemp("e2e-store")) as c:
        yield c


def mizzen(cluster: MizzenCluster, *args: str, stdin: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIZZEN_")}
    argv = [sys.executable, "-m", "mizzen", *args, "--endpoints", ",".join(cluster.endpoints)]
    out = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, env=env
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def daemons(
    cluster: MizzenCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentProcess]:
    base: Path = tmp_path_factory.mktemp("e2e")
    with agent_and_controllers(base, cluster.endpoints, "e2e") as agent:
        yield agent


@pytest.fixture
async def client(cluster: MizzenCluster) -> AsyncIterator[ObjectsClient]:
    async with ObjectsClient(cluster.endpoints, timeout=10) as c:
        yield c


def running_pids(pods: list[pb.Pod]) -> dict[str, int]:
    return {
        p.metadata.name: ps.pid
        for p in pods
        for ps in p.status.process_statuses
        if ps.state.HasField("running") and ps.pid > 0
    }


async def test_deployment_runs_scales_and_goes_away_for_real(
    cluster: MizzenCluster, daemons: AgentProcess, client: ObjectsClient
) -> None:
    agent = daemons
    assert mizzen(cluster, "apply", "-f", "-", stdin=MANIFEST) == "deployment/sleeper created\n"

    async def pods() -> list[pb.Pod]:
        return list((await client.list("pods", NS, label_selector="app=sleeper")).items)

    listed = await eventually(
        pods,
        lambda ps: len(running_pids(ps)) == 3 and all(p.spec.node_name == agent.name for p in ps),
        timeout=60,
        what="3 pods running on the agent's node",
    )
    pids = running_pids(listed)
    assert all(pid_alive(pid) for pid in pids.values())
    for pid in pids.values():
        cgroups = Path(f"/proc/{pid}/cgroup").read_text()
        assert agent.parent in cgroups, cgroups
    await eventually(
        lambda: client.get("deployments", "sleeper", NS),
        lambda d: d.status.ready_replicas == 3 and d.status.available_replicas == 3,
        timeout=30,
        what="deployment status 3 ready",
    )

    mizzen(cluster, "scale", "deployment/sleeper", "--replicas", "1", "-n", NS)
    remaining = await eventually(
        pods, lambda ps: len(ps) == 1 and len(running_pids(ps)) == 1, timeout=60, what="1 pod"
    )
    survivor = next(iter(running_pids(remaining).values()))
    assert survivor in pids.values()
    await eventually(
        lambda: asyncio.sleep(0, [p for p in pids.values() if pid_alive(p)]),
        lambda alive: alive == [survivor],
        timeout=30,
        what="scaled-down processes gone",
    )

    mizzen(cluster, "delete", "deployment", "sleeper", "-n", NS)
    await eventually(
        lambda: client.list("replicasets", NS),
        lambda r: not r.items,
        timeout=30,
        what="ReplicaSet collected",
    )
    await eventually(pods, lambda ps: not ps, timeout=30, what="pods gone")
    await eventually(
        lambda: asyncio.sleep(0, pid_alive(survivor)),
        lambda alive: not alive,
        timeout=30,
        what="last process gone",
    )


CONFIGURED = """\
apiVersion: mizzen/v1
kind: ConfigMap
metadata: {name: sleeper-config, namespace: e2e}
data: {LEVEL: %s}
---
apiVersion: mizzen/v1
kind: Deployment
metadata: {name: configured, namespace: e2e}
spec:
  replicas: 2
  selector:
    matchLabels: {app: configured}
  strategy:
    rollingUpdate: {maxSurge: "1", maxUnavailable: "0"}
  template:
    metadata:
      labels: {app: configured}
    spec:
      terminationGracePeriodSeconds: 1
      processes:
        - name: main
          command: ["sleep", "3600"]
          envFrom: [{configMapRef: {name: sleeper-config}}]
          resources:
            requests: {cpu: 10m, memory: 8Mi}
            limits: {memory: 64Mi, pids: 16}
"""


async def test_configmap_edit_restarts_every_process_once_for_real(
    cluster: MizzenCluster, daemons: AgentProcess, client: ObjectsClient
) -> None:
    """The controllers' config rollout with the real agent: new processes, old ones gone.

    (What the processes see of the ConfigMap is the agent's part of issue 16.)
    """
    out = mizzen(cluster, "apply", "-f", "-", stdin=CONFIGURED % "debug")
    assert out == "configmap/sleeper-config created\ndeployment/configured created\n"

    async def pods() -> list[pb.Pod]:
        return list((await client.list("pods", NS, label_selector="app=configured")).items)

    def settled(ps: list[pb.Pod]) -> bool:
        hashes = {p.metadata.annotations.get("mizzen.io/config-hash", "") for p in ps}
        return len(ps) == 2 and len(running_pids(ps)) == 2 and len(hashes) == 1 and "" not in hashes

    first = await eventually(pods, settled, timeout=60, what="2 configured processes running")
    old_pids = set(running_pids(first).values())
    old_hash = first[0].metadata.annotations["mizzen.io/config-hash"]

    out = mizzen(cluster, "apply", "-f", "-", stdin=CONFIGURED % "info")
    # (the Deployment shows as configured: apply drops the revision annotation the
    # controller added, and the controller puts it back; its template is unchanged)
    assert out.splitlines()[0] == "configmap/sleeper-config configured"
    after = await eventually(
        pods,
        lambda ps: settled(ps) and ps[0].metadata.annotations["mizzen.io/config-hash"] != old_hash,
        timeout=60,
        what="both processes replaced for the new config",
    )
    assert not old_pids & set(running_pids(after).values())
    await eventually(
        lambda: asyncio.sleep(0, [p for p in old_pids if pid_alive(p)]),
        lambda alive: alive == [],
        timeout=30,
        what="the old processes gone",
    )
    history = mizzen(cluster, "rollout", "history", "deployment/configured", "-n", NS)
    assert history.splitlines()[-1].endswith("config: ConfigMap sleeper-config changed"), history
    mizzen(cluster, "delete", "deployment", "configured", "-n", NS)
    await eventually(pods, lambda ps: not ps, timeout=30, what="pods gone")
