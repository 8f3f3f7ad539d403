"""The node agent for real: a 1-node store, `mizzen agent`, real processes and cgroups.

Pods are created already bound to the agent's node (no scheduler). One agent
serves the module (its own cgroup parent and data dir); the re-adoption test
kills and restarts it. Every process and cgroup is removed at the end, even on
failure (``AgentProcess.destroy``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from agent_fixtures import (
    AgentProcess,
    cgroups_unavailable,
    eventually,
    pid_alive,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mizzen.client import ObjectsClient
from mizzen.client.errors import NotFoundError
from mizzen.testing.local_cluster import MizzenCluster, free_ports
from protos import agent_pb2, agent_pb2_grpc
from protos import objects_pb2 as pb

_why = cgroups_unavailable()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(_why is not None, reason=_why or ""),
    pytest.mark.timeout(90),
]

NS = "default"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MizzenCluster]:
    with MizzenCluster(1, tmp_path_factory.mktemp("agent-store")) as c:
        yield c


@pytest.fixture(scope="module")
def agent(
    cluster: MizzenCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentProcess]:
    a = AgentProcess(tmp_path_factory.mktemp("agent"), cluster.endpoints)
    a.start()
    try:
        yield a
    finally:
        print(a.log_tail(80))
        a.destroy()


@pytest.fixture
async def client(cluster: MizzenCluster, agent: AgentProcess) -> AsyncIterator[ObjectsClient]:
    async with ObjectsClient(cluster.endpoints, timeout=10) as c:
        yield c


def driver(agent: AgentProcess) -> Any:
    from nodeagent.cgroups import detect

    return detect(parent=agent.parent)


def make_pod(agent: AgentProcess, name: str, policy: str = "Always", grace: int = 1) -> pb.Pod:
    p = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace=NS))
    p.spec.node_name = agent.name
    p.spec.restart_policy = policy
    p.spec.termination_grace_period_seconds = grace
    return p


def add(p: pb.Pod, name: str, script: str) -> pb.Process:
    return p.spec.processes.add(name=name, command=["/bin/sh", "-c", script])


async def get_pod(client: ObjectsClient, name: str) -> pb.Pod:
    pod: pb.Pod = await client.get("pods", name, NS)
    return pod


async def wait_pod(
    client: ObjectsClient, name: str, check: Any, what: str, timeout: float = 20
) -> pb.Pod:
    pod: pb.Pod = await eventually(lambda: get_pod(client, name), check, timeout=timeout, what=what)
    return pod


def proc_status(pod: pb.Pod, name: str) -> pb.ProcessStatus:
    for ps in pod.status.process_statuses:
        if ps.name == name:
            return ps
    return pb.ProcessStatus()


def condition(pod: pb.Pod, type_: str) -> str:
    return next((c.status for c in pod.status.conditions if c.type == type_), "")


async def event_reasons(client: ObjectsClient, pod: str) -> set[str]:
    selector = f"involvedObject.kind=Pod,involvedObject.name={pod}"
    events = (await client.list("events", NS, field_selector=selector)).items
    assert all(e.spec.source.component == "agent" for e in events)
    return {e.spec.reason for e in events}


async def delete_and_wait_gone(client: ObjectsClient, name: str, timeout: float = 20) -> None:
    await client.delete("pods", name, NS)

    async def gone() -> bool:
        try:
            await client.get("pods", name, NS)
            return False
        except NotFoundError:
            return True

    await eventually(gone, bool, timeout=timeout, what=f"pod {name} deleted")


async def restart_and_wait_synced(agent: AgentProcess) -> None:
    """Start the agent again; return once it has synced and its workers had time to write."""
    before = agent.count_log_events("agent_synced")
    agent.start()
    await eventually(
        lambda: asyncio.sleep(0, agent.count_log_events("agent_synced")),
        lambda n: n > before,
        what="agent synced after restart",
    )
    await asyncio.sleep(1.0)  # a replaced process would have shown up by now


# ---------------------------------------------------------------------------- tests


async def test_node_registered_ready_with_capacity_and_lease_renewing(
    client: ObjectsClient, agent: AgentProcess
) -> None:
    node = await eventually(
        lambda: client.get("nodes", agent.name),
        lambda n: any(c.type == "Ready" and c.status == "True" for c in n.status.conditions),
        what="node Ready",
    )
    ready = next(c for c in node.status.conditions if c.type == "Ready")
    assert ready.reason == "AgentReady"
    cap = node.status.capacity
    assert cap.cpu_millis == (os.cpu_count() or 0) * 1000
    assert cap.memory_bytes > 0 and cap.pids > 0
    assert node.status.allocatable.memory_bytes == cap.memory_bytes
    addresses = {a.type: a.address for a in node.status.addresses}
    assert addresses["AgentGRPC"] == f"127.0.0.1:{agent.port}"
    assert addresses["InternalIP"] == "127.0.0.1"
    assert node.metadata.labels["mizzen.io/hostname"] == agent.name
    assert {"mizzen.io/os", "mizzen.io/arch"} <= set(node.metadata.labels)
    assert node.status.node_info.cgroup_version in ("v1", "v2")

    lease = await eventually(
        lambda: client.get("leases", agent.name, "mizzen-node-lease"), bool, what="lease"
    )
    assert lease.spec.holder_identity == agent.name
    assert lease.spec.lease_duration_seconds == 5
    first = lease.spec.renew_time.ToNanoseconds()
    await eventually(
        lambda: client.get("leases", agent.name, "mizzen-node-lease"),
        lambda lease: lease.spec.renew_time.ToNanoseconds() > first,
        timeout=5,
        what="lease renewed",
    )


async def test_pod_runs_in_its_cgroup(client: ObjectsClient, agent: AgentProcess) -> None:
    p = make_pod(agent, "runs")
    add(p, "main", "echo started; exec sleep 300")
    created = await client.create(p)
    pod = await wait_pod(
        client,
        "runs",
        lambda x: x.status.phase == "Running" and proc_status(x, "main").pid > 0,
        "running",
    )
    assert condition(pod, "Ready") == "True"
    pid = proc_status(pod, "main").pid
    cg = driver(agent).open(f"pod-{created.metadata.uid}/main")
    assert cg is not None and pid in cg.pids()

    async with grpc.aio.insecure_channel(f"127.0.0.1:{agent.port}") as channel:
        stub = agent_pb2_grpc.NodeAgentStub(channel)
        chunks = stub.Logs(agent_pb2.LogsRequest(namespace=NS, pod="runs"), timeout=5)
        assert b"".join([c.data async for c in chunks]) == b"started\n"

        async def stats() -> agent_pb2.StatsResponse:
            reply: agent_pb2.StatsResponse = await stub.Stats(agent_pb2.StatsRequest(), timeout=5)
            return reply

        usage = await eventually(
            stats, lambda r: any(p.name == "runs" for p in r.pods), what="pod in Stats"
        )
        runs = next(p for p in usage.pods if p.name == "runs")
        assert runs.uid == created.metadata.uid and runs.memory_bytes > 0
    await delete_and_wait_gone(client, "runs")
    assert not pid_alive(pid)
    assert driver(agent).open(f"pod-{created.metadata.uid}") is None


async def test_memory_limit_ends_in_oomkilled(client: ObjectsClient, agent: AgentProcess) -> None:
    p = make_pod(agent, "oom", policy="Never")
    proc = p.spec.processes.add(
        name="hog",
        command=["python3", "-c", "b = bytearray(200 * 1024 * 1024); import time; time.sleep(30)"],
    )
    proc.resources.limits.memory_bytes = 32 * 1024 * 1024
    await client.create(p)
    pod = await wait_pod(
        client, "oom", lambda x: x.status.phase == "Failed", "OOM-killed pod failed"
    )
    term = proc_status(pod, "hog").state.terminated
    assert (term.reason, term.exit_code, term.signal) == ("OOMKilled", 137, 9)
    reasons = await eventually(
        lambda: event_reasons(client, "oom"),
        lambda r: {"Started", "OOMKilled"} <= r,
        what="Started and OOMKilled events",
    )
    assert "OOMKilled" in reasons
    await delete_and_wait_gone(client, "oom")


async def test_restart_policies(client: ObjectsClient, agent: AgentProcess) -> None:
    cases = {
        "always-fail": ("Always", "exit 1"),
        "always-ok": ("Always", "exit 0"),
        "onfailure-fail": ("OnFailure", "exit 1"),
        "onfailure-ok": ("OnFailure", "exit 0"),
        "never-fail": ("Never", "exit 1"),
        "never-ok": ("Never", "exit 0"),
    }
    for name, (policy, script) in cases.items():
        p = make_pod(agent, name, policy=policy)
        add(p, "main", script)
        await client.create(p)

    backing_off = await wait_pod(
        client,
        "always-fail",
        lambda x: proc_status(x, "main").state.waiting.reason == "CrashLoopBackOff",
        "CrashLoopBackOff",
    )
    message = proc_status(backing_off, "main").state.waiting.message
    assert message.startswith("back-off ") and message.endswith("restarting failed process main")
    for name in ("always-fail", "always-ok", "onfailure-fail"):
        pod = await wait_pod(
            client, name, lambda x: proc_status(x, "main").restart_count >= 2, f"{name} restarts"
        )
        assert pod.status.phase == "Running"
        assert proc_status(pod, "main").last_state.terminated.reason in ("Error", "Completed")
    for name, phase, code in (
        ("onfailure-ok", "Succeeded", 0),
        ("never-fail", "Failed", 1),
        ("never-ok", "Succeeded", 0),
    ):
        pod = await wait_pod(
            client, name, lambda x, ph=phase: x.status.phase == ph, f"{name} {phase}"
        )
        ps = proc_status(pod, "main")
        assert ps.restart_count == 0 and ps.state.terminated.exit_code == code
    await asyncio.gather(*(delete_and_wait_gone(client, n) for n in cases))


async def test_liveness_failure_restarts(client: ObjectsClient, agent: AgentProcess) -> None:
    closed_port = free_ports(1)[0]
    p = make_pod(agent, "liveness")
    exec_proc = add(p, "exec", "exec sleep 300")
    exec_proc.liveness_probe.exec.command.append("false")
    tcp_proc = add(p, "tcp", "exec sleep 300")
    tcp_proc.liveness_probe.tcp_socket.port = closed_port
    for proc in (exec_proc, tcp_proc):
        proc.liveness_probe.period_seconds = 1
        proc.liveness_probe.failure_threshold = 1
    await client.create(p)
    pod = await wait_pod(
        client,
        "liveness",
        lambda x: all(proc_status(x, n).restart_count >= 1 for n in ("exec", "tcp")),
        "liveness restarts",
    )
    for name in ("exec", "tcp"):
        last = proc_status(pod, name).last_state.terminated
        assert last.signal == signal.SIGTERM and last.reason == "Error"
    await eventually(
        lambda: event_reasons(client, "liveness"),
        lambda r: {"Unhealthy", "Killing", "Started"} <= r,
        what="Unhealthy and Killing events",
    )
    await delete_and_wait_gone(client, "liveness")


async def test_readiness_flips_ready(client: ObjectsClient, agent: AgentProcess) -> None:
    port = free_ports(1)[0]
    p = make_pod(agent, "readiness")
    server = (
        "import socket, time; time.sleep(3); s = socket.socket(); "
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
        f"s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(300)"
    )
    proc = p.spec.processes.add(name="web", command=["python3", "-c", server])
    proc.readiness_probe.tcp_socket.port = port
    proc.readiness_probe.period_seconds = 1
    await client.create(p)
    seen: list[tuple[str, str]] = []

    def ready(x: pb.Pod) -> bool:
        seen.append((x.status.phase, condition(x, "Ready")))
        return condition(x, "Ready") == "True"

    pod = await wait_pod(client, "readiness", ready, "ready")
    assert ("Running", "False") in seen  # it was running but not ready first
    assert proc_status(pod, "web").ready
    flip = next(c for c in pod.status.conditions if c.type == "Ready")
    assert flip.last_transition_time.ToSeconds() >= pod.status.start_time.ToSeconds() + 2
    await delete_and_wait_gone(client, "readiness")


async def test_graceful_deletion_then_kill_of_everything(
    client: ObjectsClient, agent: AgentProcess, tmp_path: Path
) -> None:
    marker = tmp_path / "got-sigterm"
    child_pid_file = tmp_path / "child.pid"
    p = make_pod(agent, "graceful", grace=2)
    add(p, "polite", f"trap 'echo bye > {marker}; exit 0' TERM; while :; do sleep 0.1; done")
    add(
        p,
        "stubborn",
        f"trap '' TERM; setsid sh -c 'echo $$ > {child_pid_file}; exec sleep 300' & "
        "while :; do sleep 0.1; done",
    )
    created = await client.create(p)
    pod = await wait_pod(
        client,
        "graceful",
        lambda x: all(proc_status(x, n).pid > 0 for n in ("polite", "stubborn")),
        "both running",
    )
    await eventually(
        lambda: asyncio.sleep(0, child_pid_file.exists()), bool, what="setsid child started"
    )
    child = int(child_pid_file.read_text())
    pids = [proc_status(pod, n).pid for n in ("polite", "stubborn")] + [child]
    assert all(pid_alive(x) for x in pids)
    started = time.monotonic()
    await delete_and_wait_gone(client, "graceful")
    assert time.monotonic() - started >= 1.5  # the stubborn process used its grace period
    assert marker.read_text().strip() == "bye"
    assert [x for x in pids if pid_alive(x)] == []
    assert driver(agent).open(f"pod-{created.metadata.uid}") is None


async def test_command_not_found_fails_the_pod_and_the_agent_stays_healthy(
    client: ObjectsClient, agent: AgentProcess
) -> None:
    p = make_pod(agent, "notfound", policy="Never")
    p.spec.processes.add(name="main", command=["no-such-command-xyz"])
    await client.create(p)
    pod = await wait_pod(client, "notfound", lambda x: x.status.phase == "Failed", "failed")
    assert 'executable "no-such-command-xyz" not found' in pod.status.message
    assert proc_status(pod, "main").state.terminated.reason == "StartError"
    assert agent.running
    async with grpc.aio.insecure_channel(f"127.0.0.1:{agent.port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    await delete_and_wait_gone(client, "notfound")


async def test_agent_stop_or_kill_9_then_restart_readopts(
    client: ObjectsClient, agent: AgentProcess
) -> None:
    p = make_pod(agent, "survivor")
    add(p, "main", "exec sleep 300")
    await client.create(p)
    orphan = make_pod(agent, "orphan")
    add(orphan, "main", "exec sleep 300")
    orphan_uid = (await client.create(orphan)).metadata.uid
    pod = await wait_pod(client, "survivor", lambda x: proc_status(x, "main").pid > 0, "running")
    opod = await wait_pod(client, "orphan", lambda x: proc_status(x, "main").pid > 0, "running")
    pid, restarts = proc_status(pod, "main").pid, proc_status(pod, "main").restart_count
    orphan_pid = proc_status(opod, "main").pid

    assert agent.kill(signal.SIGTERM) == 0  # a clean stop leaves pods running
    assert pid_alive(pid) and pid_alive(orphan_pid)
    await restart_and_wait_synced(agent)
    pod = await get_pod(client, "survivor")
    assert proc_status(pod, "main").pid == pid
    assert proc_status(pod, "main").restart_count == restarts

    agent.kill(signal.SIGKILL)
    assert pid_alive(pid) and pid_alive(orphan_pid)
    await client.delete("pods", "orphan", NS, grace_period_seconds=0)  # gone while away
    await restart_and_wait_synced(agent)

    await eventually(
        lambda: asyncio.sleep(0, pid_alive(orphan_pid)),
        lambda alive: not alive,
        what="orphan killed",
    )
    assert driver(agent).open(f"pod-{orphan_uid}") is None
    pod = await get_pod(client, "survivor")
    assert proc_status(pod, "main").pid == pid
    assert proc_status(pod, "main").restart_count == restarts
    assert pid_alive(pid)

    os.kill(pid, signal.SIGKILL)
    pod = await wait_pod(
        client,
        "survivor",
        lambda x: (
            proc_status(x, "main").restart_count == restarts + 1
            and proc_status(x, "main").pid not in (0, pid)
        ),
        "restart after external kill",
    )
    last = proc_status(pod, "main").last_state.terminated
    assert last.reason == "Unknown" and last.exit_code == -1  # not our child: status unknown
    await delete_and_wait_gone(client, "survivor")
