"""Metrics of the controller manager and the node agent, scraped during a real run.

A 1-node store, a `mizzen controllers` process (scheduler, replicaset,
deployment) and a real agent, both with ``--metrics-listen``. Applying a
Deployment must move the reconcile and scheduling counters; the agent must
count its running process, and a restart once that process is killed from
outside. Needs root and cgroups (the agent runs real processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from agent_fixtures import (
    REPO_ROOT,
    AgentProcess,
    cgroups_unavailable,
    eventually,
)
from prometheus_client.parser import text_string_to_metric_families

from mizzen.client import ObjectsClient
from mizzen.testing.local_cluster import MizzenCluster, free_ports
from mizzen.testing.processes import dies_with_parent
from protos import objects_pb2 as pb

_why = cgroups_unavailable()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(_why is not None, reason=_why or ""),
    pytest.mark.timeout(120),
]

NS = "metrics"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


async def scraped(port: int) -> Samples:
    return await asyncio.to_thread(scrape, port)


class ControllersProcess:
    """`mizzen controllers --metrics-listen` in its own process group."""

    def __init__(self, endpoint: str, log_path: Path) -> None:
        self.metrics_port = free_ports(1)[0]
        self.log_path = log_path
        argv = [
            sys.executable, "-m", "mizzen", "--log-format", "json",
            "controllers", "--endpoints", endpoint, "--id", "metrics-test",
            "--election-key", "/mizzen/leader/metrics-test",
            "--lease-ttl", "2", "--renew-interval", "0.5",
            "--controllers", "scheduler,replicaset,deployment",
            "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
        ]  # fmt: skip
        argv = dies_with_parent(argv)
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MizzenCluster]:
    with MizzenCluster(1, tmp_path_factory.mktemp("metrics-store")) as c:
        yield c


@pytest.fixture(scope="module")
def agent(
    cluster: MizzenCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentProcess]:
    metrics_port = free_ports(1)[0]
    a = AgentProcess(
        tmp_path_factory.mktemp("metrics-agent"),
        cluster.endpoints,
        extra=["--metrics-listen", f"127.0.0.1:{metrics_port}"],
    )
    a.metrics_port = metrics_port  # type: ignore[attr-defined]
    a.start()
    try:
        yield a
    finally:
        print(a.log_tail(60))
        a.destroy()


@pytest.fixture(scope="module")
def controllers(
    cluster: MizzenCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControllersProcess]:
    log_path = tmp_path_factory.mktemp("metrics-controllers") / "controllers.log"
    c = ControllersProcess(cluster.endpoints[0], log_path)
    try:
        yield c
    finally:
        c.stop()
        print(f"--- controllers log tail ---\n{c.tail()}")


@pytest.fixture
async def client(cluster: MizzenCluster) -> AsyncIterator[ObjectsClient]:
    async with ObjectsClient(cluster.endpoints, timeout=10) as c:
        yield c


def deployment(node: str) -> pb.Deployment:
    d = pb.Deployment(metadata=pb.ObjectMeta(name="sleeper", namespace=NS))
    d.spec.replicas = 1
    d.spec.selector.match_labels["app"] = "sleeper"
    t = d.spec.template
    t.metadata.labels["app"] = "sleeper"
    t.spec.node_selector["mizzen.io/hostname"] = node
    t.spec.termination_grace_period_seconds = 1
    t.spec.processes.add(name="main", command=["/bin/sleep", "600"])
    return d


async def running_pod(client: ObjectsClient) -> pb.Pod:
    pods = (await client.list("pods", NS)).items
    live = [
        p
        for p in pods
        if p.status.phase == "Running" and not p.metadata.HasField("deletion_timestamp")
    ]
    assert len(live) == 1, [(p.metadata.name, p.status.phase) for p in pods]
    return live[0]


async def test_controller_and_agent_metrics_move(
    client: ObjectsClient, agent: AgentProcess, controllers: ControllersProcess
) -> None:
    cport = controllers.metrics_port
    aport: int = agent.metrics_port  # type: ignore[attr-defined]
    reconcile = "mizzen_controller_reconcile_total"
    before = await eventually(
        lambda: scraped(cport),
        lambda s: sample(s, "mizzen_controller_is_leader") == 1,
        what="the controller manager to lead",
    )
    assert await asyncio.to_thread(healthz, cport) == 200
    await eventually(
        lambda: scraped(aport),
        lambda s: sample(s, "mizzen_agent_serving") == 1,
        what="the agent to register and heartbeat",
    )
    assert await asyncio.to_thread(healthz, aport) == 200

    await client.create(deployment(agent.name))
    pod = await eventually(
        lambda: running_pod(client), lambda p: p.status.process_statuses[0].pid > 0,
        what="the deployment's pod to run", timeout=30,
    )  # fmt: skip
    after = await eventually(
        lambda: scraped(cport),
        lambda s: sample(s, "mizzen_controller_scheduler_attempts_total", result="scheduled") >= 1,
        what="a scheduling attempt",
    )
    for controller in ("deployment", "replicaset"):
        key = {"controller": controller, "result": "success"}
        assert sample(after, reconcile, **key) > sample(before, reconcile, **key), controller
        assert sample(after, "mizzen_controller_workqueue_adds_total", controller=controller) >= 1
    assert sample(after, "mizzen_controller_scheduler_binding_duration_seconds_count") >= 1
    assert sample(after, "mizzen_controller_fenced_writes_total") == 0

    agent_before = await eventually(
        lambda: scraped(aport),
        lambda s: sample(s, "mizzen_agent_processes", state="running") >= 1,
        what="the agent to count the running process",
    )
    assert sample(agent_before, "mizzen_agent_pods", phase="Running") >= 1
    assert sample(agent_before, "mizzen_agent_start_latency_seconds_count") >= 1
    restarts = sample(agent_before, "mizzen_agent_restarts_total")

    os.kill(pod.status.process_statuses[0].pid, signal.SIGKILL)
    await eventually(
        lambda: scraped(aport),
        lambda s: sample(s, "mizzen_agent_restarts_total") > restarts,
        what="the agent to count the restart",
        timeout=30,
    )
    await eventually(
        lambda: scraped(aport),
        lambda s: (
            sample(s, "mizzen_agent_pod_memory_bytes", namespace=NS, pod=pod.metadata.name) > 0
        ),
        what="per-pod memory usage",
    )
    await client.delete("deployments", "sleeper", NS, propagation_policy="Foreground")
