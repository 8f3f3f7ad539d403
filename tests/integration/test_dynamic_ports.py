"""Dynamic host ports end to end: store, `mizzen controllers`, a real `mizzen agent`.

examples/hello.yaml scaled to 5 replicas on one node: every pod gets its own
port from the agent's --port-range, its process serves on it ($PORT) and its
probes find it by name. A port another program holds fails the pod with
PortInUse (nothing is started), the scheduler keeps that port away from the
node for a while, and the replacement runs once the port is free. Bad port
declarations are one-line CLI errors.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from agent_fixtures import AgentProcess, agent_and_controllers, cgroups_unavailable, eventually

from mizzen.client import ObjectsClient
from mizzen.testing.local_cluster import REPO_ROOT, MizzenCluster, free_ports
from protos import objects_pb2 as pb

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(cgroups_unavailable() is not None, reason=str(cgroups_unavailable())),
]

NS = "ports"
# A narrow range of its own (other test runs on this host use the default one).
FIRST = random.randrange(21000, 31000, 100)
LAST = FIRST + 49


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MizzenCluster]:
    with MizzenCluster(1, tmp_path_factory.mktemp("ports-store")) as c:
        yield c


def run(
    cluster: MizzenCluster, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIZZEN_")}
    argv = [sys.executable, "-m", "mizzen", *args, "--endpoints", ",".join(cluster.endpoints)]
    return subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, env=env
    )


def mizzen(cluster: MizzenCluster, *args: str, stdin: str | None = None) -> str:
    out = run(cluster, *args, stdin=stdin)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def daemons(
    cluster: MizzenCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentProcess]:
    base: Path = tmp_path_factory.mktemp("ports")
    with agent_and_controllers(
        base,
        cluster.endpoints,
        "ports",
        ["--port-range", f"{FIRST}-{LAST}"],
        # a port another program holds stays blocked for 10 s, not 30: long enough for
        # the test to see the replacement wait, short enough not to wait for nothing
        controller_args=["--port-in-use-block", "10"],
    ) as agent:
        yield agent


@pytest.fixture
async def client(cluster: MizzenCluster) -> AsyncIterator[ObjectsClient]:
    async with ObjectsClient(cluster.endpoints, timeout=10) as c:
        yield c


def ready(pod: pb.Pod) -> bool:
    return pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions
    )


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as response:
        return str(response.read().decode())


async def test_five_replicas_on_one_node_serve_on_distinct_ports(
    cluster: MizzenCluster, daemons: AgentProcess, client: ObjectsClient
) -> None:
    manifest = (REPO_ROOT / "examples" / "hello.yaml").read_text()
    manifest = manifest.replace("  name: hello\n", f"  name: hello\n  namespace: {NS}\n", 1)
    assert mizzen(cluster, "apply", "-f", "-", stdin=manifest) == "deployment/hello created\n"
    # the node published its range
    node = await eventually(
        lambda: client.get("nodes", daemons.name),
        lambda n: n.status.dynamic_ports.first == FIRST,
        what="node registered",
    )
    assert node.status.dynamic_ports.last == LAST
    mizzen(cluster, "scale", "deploy/hello", "--replicas", "5", "-n", NS)

    async def serving() -> list[pb.Pod]:
        listed = await client.list("pods", NS, label_selector="app=hello")
        return [p for p in listed.items if ready(p)]

    pods = await eventually(serving, lambda ps: len(ps) == 5, timeout=90, what="5 pods ready")
    assert {p.spec.node_name for p in pods} == {daemons.name}
    ports = {}
    for pod in pods:
        (declared,) = pod.spec.processes[0].ports
        assert declared.assigned and declared.name == "http", declared
        assert FIRST <= declared.port <= LAST, declared
        ports[pod.metadata.name] = declared.port
    assert len(set(ports.values())) == 5, ports
    # every process serves on its own port: $PORT, which its probes found by name
    for name, port in ports.items():
        body = await asyncio.to_thread(get, f"http://127.0.0.1:{port}/")
        assert body == f"hello from {name} on port {port}\n"
    wide = mizzen(cluster, "get", "pods", "-n", NS, "-l", "app=hello", "-o", "wide")
    for name, port in ports.items():
        line = next(line for line in wide.splitlines() if line.startswith(name))
        assert line.split()[-1] == f"{port}/TCP", wide
    described = mizzen(cluster, "describe", "pod", next(iter(ports)), "-n", NS)
    assert f"{ports[next(iter(ports))]}/TCP (http, dynamic)" in described
    mizzen(cluster, "delete", "deploy", "hello", "-n", NS)


TAKEN = """\
apiVersion: mizzen/v1
kind: Deployment
metadata: {name: taken, namespace: ports}
spec:
  replicas: 1
  selector: {matchLabels: {app: taken}}
  template:
    metadata: {labels: {app: taken}}
    spec:
      terminationGracePeriodSeconds: 1
      processes:
        - name: main
          command: [sleep, "3600"]
          ports: [{name: http, port: PORT}]
"""


async def test_a_port_held_by_another_program_fails_the_pod_not_a_crash_loop(
    cluster: MizzenCluster, daemons: AgentProcess, client: ObjectsClient
) -> None:
    (port,) = free_ports(1)
    other = socket.socket()
    other.bind(("127.0.0.1", port))
    other.listen()
    try:
        mizzen(cluster, "apply", "-f", "-", stdin=TAKEN.replace("PORT", str(port)))

        async def pods() -> list[pb.Pod]:
            return list((await client.list("pods", NS, label_selector="app=taken")).items)

        listed = await eventually(
            pods,
            lambda ps: any(p.status.phase == "Failed" for p in ps) and len(ps) >= 2,
            timeout=60,
            what="the pod Failed and a replacement created",
        )
        failed = next(p for p in listed if p.status.phase == "Failed")
        assert failed.status.reason == "PortInUse"
        assert failed.status.message == (
            f"port {port}/TCP (http, process main) is in use on the host by another program"
        )
        (ps,) = failed.status.process_statuses
        assert ps.state.waiting.reason == "PortInUse" and ps.restart_count == 0 and ps.pid == 0
        events = mizzen(cluster, "events", "-n", NS, "--for", f"pod/{failed.metadata.name}")
        assert "PortInUse" in events
        # the replacement waits instead of failing again at once
        pending = await eventually(
            pods,
            lambda ps: any(
                c.reason == "Unschedulable" and "PortInUse" in c.message
                for p in ps
                for c in p.status.conditions
            ),
            timeout=30,
            what="replacement unschedulable: port in use",
        )
        assert sum(p.status.phase == "Failed" for p in pending) == 1
    finally:
        other.close()
    # once the port is free (and the block has passed) the replacement runs
    running = await eventually(
        pods,
        lambda ps: any(p.status.phase == "Running" for p in ps),
        timeout=90,
        what="replacement running",
    )
    assert sum(p.status.phase == "Failed" for p in running) == 1
    mizzen(cluster, "delete", "deploy", "taken", "-n", NS)


BAD = {
    "no name, no number": (
        "kind: Pod\nmetadata: {name: bad, namespace: ports}\n"
        "spec: {processes: [{name: m, command: [sleep, '1'], ports: [{protocol: TCP}]}]}\n",
        'Pod "bad" is invalid: spec.processes[0].ports[0].port: required: a number (1-65535), '
        "or a name to get a dynamic port",
    ),
    "probe names no port": (
        "kind: Pod\nmetadata: {name: bad, namespace: ports}\n"
        "spec: {processes: [{name: m, command: [sleep, '1'], ports: [{name: http}],"
        " readinessProbe: {tcpSocket: {port: admin}}}]}\n",
        'spec.processes[0].readinessProbe.tcpSocket.port: no port named "admin" in this '
        "process's ports (http)",
    ),
    "daemonset": (
        "kind: DaemonSet\nmetadata: {name: bad, namespace: ports}\n"
        "spec: {selector: {matchLabels: {a: b}}, template: {metadata: {labels: {a: b}},"
        " spec: {processes: [{name: m, command: [sleep, '1'], ports: [{name: http}]}]}}}\n",
        "spec.template.spec.processes[0].ports[0].port: a DaemonSet's pods are bound",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_port_declarations_are_one_line_errors(cluster: MizzenCluster, case: str) -> None:
    manifest, expected = BAD[case]
    out = run(cluster, "apply", "-f", "-", stdin="apiVersion: mizzen/v1\n" + manifest)
    assert out.returncode == 1
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert expected in out.stderr, out.stderr
