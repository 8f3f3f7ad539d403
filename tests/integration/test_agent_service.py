"""`mizzen logs` and `mizzen top` (real subprocesses) against a real NodeAgent gRPC server.

The agent side is NodeAgentService over a temporary logs tree and a
UsageSampler fed by fake cgroups, served by a real grpc.aio server on its own
thread; the store is a real one-node MizzenCluster holding Nodes whose
AgentGRPC address points at that server, and pods bound to them.
"""

from __future__ import annotations

import asyncio
import os
import select
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from mizzen.client.objects import ObjectsClient
from mizzen.testing.local_cluster import REPO_ROOT, MizzenCluster, free_ports
from nodeagent.agent_service import NodeAgentService
from nodeagent.cgroups.base import Limits, Usage
from nodeagent.logs import DiskLogSource, PodLogs
from nodeagent.stats import PodRef, UsageSampler
from protos import agent_pb2_grpc
from protos import objects_pb2 as pb

pytestmark = pytest.mark.integration

NS = "agentsvc"


class FakeCgroup:
    def __init__(self, path: str, cpu_ns: int, memory: int) -> None:
        self.path = path
        self.cpu_ns = cpu_ns
        self.memory = memory

    def procs_files(self) -> list[str]:
        return []

    def set_limits(self, limits: Limits) -> None:
        pass

    def pids(self) -> set[int]:
        return set()

    def usage(self) -> Usage:
        return Usage(self.cpu_ns, self.memory, 1, 0)

    def cpu_and_memory(self) -> tuple[int, int]:
        return self.cpu_ns, self.memory

    def kill_all(self) -> None:
        pass

    def remove(self) -> None:
        pass


class AgentServer:
    """A grpc.aio server with NodeAgentService, on a thread with its own event loop."""

    def __init__(self, service: NodeAgentService) -> None:
        self.port = free_ports(1)[0]
        self._service = service
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = grpc.aio.server()
        agent_pb2_grpc.add_NodeAgentServicer_to_server(self._service, server)
        server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self._ready.set()
        await self._stop.wait()
        await server.stop(grace=0)

    def __enter__(self) -> AgentServer:
        self._thread.start()
        assert self._ready.wait(10), "agent server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MizzenCluster]:
    with MizzenCluster(1, tmp_path_factory.mktemp("agentsvc")) as c:
        yield c


async def _setup_store(cluster: MizzenCluster, agent_port: int, dead_port: int) -> dict[str, str]:
    """Nodes n1 (agent up), n2 (agent down), n3 (no address); pods; returns pod uids."""
    uids: dict[str, str] = {}
    async with ObjectsClient(cluster.endpoints) as client:
        for name, port in (("n1", agent_port), ("n2", dead_port), ("n3", None)):
            node = await client.create(pb.Node(metadata=pb.ObjectMeta(name=name)))
            node.status.capacity.cpu_millis = 4000
            node.status.capacity.memory_bytes = 8 * 1024**3
            node.status.addresses.add(type="InternalIP", address="127.0.0.1")
            if port is not None:
                node.status.addresses.add(type="AgentGRPC", address=f"127.0.0.1:{port}")
            await client.update_status(node)
        for name, node_name, processes in (
            ("web", "n1", ["main"]),
            ("multi", "n1", ["api", "worker"]),
            ("tailed", "n1", ["main"]),
            ("chatty", "n1", ["main"]),
            ("lost", "n2", ["main"]),
            ("orphan", "n3", ["main"]),
            ("pending", "", ["main"]),
        ):
            pod = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace=NS))
            for proc in processes:
                pod.spec.processes.add(name=proc, command=["/bin/sleep", "100"])
            pod.spec.node_name = node_name
            created = await client.create(pod)
            uids[name] = created.metadata.uid
    return uids


@pytest.fixture(scope="module")
def agent(
    cluster: MizzenCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[PodLogs, dict[str, str]]]:
    root = tmp_path_factory.mktemp("agent-logs")
    pods: dict[PodRef, tuple[FakeCgroup, dict[str, FakeCgroup]]] = {}
    now = [0.0]
    sampler = UsageSampler(lambda: pods, clock=lambda: now[0])
    service = NodeAgentService(DiskLogSource(str(root)), sampler, poll=0.02)
    with AgentServer(service) as server:
        dead_port = free_ports(1)[0]
        uids = asyncio.run(_setup_store(cluster, server.port, dead_port))
        api, worker = FakeCgroup("a", 0, 0), FakeCgroup("w", 0, 0)
        pods[PodRef(NS, "web", uids["web"])] = (
            FakeCgroup("p1", 0, 0),
            {"main": FakeCgroup("m", 0, 0)},
        )
        pods[PodRef(NS, "multi", uids["multi"])] = (
            FakeCgroup("p2", 0, 0),
            {"api": api, "worker": worker},
        )
        sampler.sample()
        now[0] += 2.0
        web_cg, web_procs = pods[PodRef(NS, "web", uids["web"])]
        web_cg.cpu_ns, web_cg.memory = 500_000_000, 64 * 1024 * 1024  # 250m over 2 s
        web_procs["main"].cpu_ns, web_procs["main"].memory = 500_000_000, 64 * 1024 * 1024
        api.cpu_ns, api.memory = 200_000_000, 10 * 1024 * 1024
        pods[PodRef(NS, "multi", uids["multi"])][0].cpu_ns = 200_000_000
        pods[PodRef(NS, "multi", uids["multi"])][0].memory = 30 * 1024 * 1024
        sampler.sample()
        logs = PodLogs(str(root))
        current = _write_instance(logs, "web", uids["web"], "main", 0, b"c\nd\n")
        Path(current + ".1").write_bytes(b"a\nb\n")
        _write_instance(logs, "multi", uids["multi"], "api", 0, b"first run crashed\n")
        _write_instance(logs, "multi", uids["multi"], "api", 1, b"second run\n")
        _write_instance(logs, "multi", uids["multi"], "worker", 0, b"working\n")
        _write_instance(logs, "tailed", uids["tailed"], "main", 0, b"old\nnewest\n")
        _write_instance(logs, "chatty", uids["chatty"], "main", 0, b"x" * 4 * 1024 * 1024)
        yield logs, uids


def run_cli(cluster: MizzenCluster, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _argv(cluster, *args),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env=_env(home),
    )


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIZZEN_")}
    env["HOME"] = str(home)
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def _argv(cluster: MizzenCluster, *args: str) -> list[str]:
    endpoints = ",".join(cluster.endpoints)
    return [
        sys.executable,
        "-m",
        "mizzen",
        *args,
        "--endpoints",
        endpoints,
        "--request-timeout",
        "3",
    ]


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def failed(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("mizzen: ") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr.removeprefix("mizzen: ").strip()


def _write_instance(logs: PodLogs, pod: str, uid: str, proc: str, n: int, data: bytes) -> str:
    fd = logs.open_instance(NS, pod, uid, proc, n)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return os.path.join(logs.process_dir(NS, pod, uid, proc), f"{n}.log")


def test_logs_all_tail_and_previous(
    cluster: MizzenCluster, agent: tuple[PodLogs, dict[str, str]], tmp_path: Path
) -> None:
    assert ok(run_cli(cluster, "logs", "web", "-n", NS, home=tmp_path)) == "a\nb\nc\nd\n"
    assert (
        ok(run_cli(cluster, "logs", "web", "-n", NS, "--tail", "3", home=tmp_path)) == "b\nc\nd\n"
    )
    multi = ["logs", "multi", "-n", NS, "-p", "api"]
    assert ok(run_cli(cluster, *multi, home=tmp_path)) == "second run\n"
    assert ok(run_cli(cluster, *multi, "--previous", home=tmp_path)) == "first run crashed\n"


def test_logs_errors_are_one_line(
    cluster: MizzenCluster, agent: tuple[PodLogs, dict[str, str]], tmp_path: Path
) -> None:
    def err(*args: str) -> str:
        return failed(run_cli(cluster, "logs", *args, "-n", NS, home=tmp_path))

    assert err("ghost") == f'pods "ghost" not found in namespace "{NS}"'
    assert err("pending") == f'pod "{NS}/pending" is not scheduled to a node yet'
    assert err("orphan") == 'node "n3" has no AgentGRPC address (is its agent running?)'
    assert err("lost").startswith('cannot reach the agent of node "n2" at 127.0.0.1:')
    assert err("multi") == f'pod "{NS}/multi" has 2 processes, name one with -p: api, worker'
    assert err("multi", "-p", "db") == (
        f'process "db" not found in pod "{NS}/multi" (processes: api, worker)'
    )
    assert err("multi", "-p", "worker", "--previous").startswith(
        'previous instance of process "worker"'
    )


def _read_until(proc: subprocess.Popen[bytes], expected: bytes, timeout: float = 10) -> bytes:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    got = b""
    deadline = time.monotonic() + timeout
    while expected not in got:
        left = deadline - time.monotonic()
        assert left > 0, f"waited for {expected!r}, got {got!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            data = os.read(fd, 65536)
            assert data, f"stream ended; got {got!r}"
            got += data
    return got


def test_logs_follow_streams_new_output_across_rotation(
    cluster: MizzenCluster, agent: tuple[PodLogs, dict[str, str]], tmp_path: Path
) -> None:
    from nodeagent.logs import rotate_if_needed

    logs, uids = agent
    path = os.path.join(logs.process_dir(NS, "tailed", uids["tailed"], "main"), "0.log")
    proc = subprocess.Popen(
        _argv(cluster, "logs", "tailed", "-n", NS, "-f", "--tail", "1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
        env=_env(tmp_path),
    )
    try:
        assert _read_until(proc, b"newest\n") == b"newest\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, b"more\n")
            assert _read_until(proc, b"more\n") == b"more\n"
            os.write(fd, b"rotated away\n")
            assert rotate_if_needed(path, max_bytes=1, keep=2)
            os.write(fd, b"after rotation\n")
            got = _read_until(proc, b"after rotation\n")
            assert got == b"rotated away\nafter rotation\n"
        finally:
            os.close(fd)
        assert proc.poll() is None  # still following
        # a restart of the process (a new instance file) ends the stream once drained
        os.close(logs.open_instance(NS, "tailed", uids["tailed"], "main", 1))
        assert proc.wait(10) == 0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.stderr is not None
        stderr = proc.stderr.read()
        proc.stderr.close()
        assert proc.stdout is not None
        proc.stdout.close()
    assert proc.returncode == 0
    assert stderr == b""


def test_logs_follow_until_interrupted(
    cluster: MizzenCluster, agent: tuple[PodLogs, dict[str, str]], tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        _argv(cluster, "logs", "web", "-n", NS, "-f", "--tail", "1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
        env=_env(tmp_path),
    )
    try:
        assert _read_until(proc, b"d\n") == b"d\n"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130
    assert b"Traceback" not in stderr


def test_logs_into_a_closed_pipe_is_quiet(
    cluster: MizzenCluster, agent: tuple[PodLogs, dict[str, str]], tmp_path: Path
) -> None:
    script = f"{shlex.join(_argv(cluster, 'logs', 'chatty', '-n', NS))} | head -c 1"
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", script],
        capture_output=True,
        timeout=60,
        cwd=REPO_ROOT,
        env=_env(tmp_path),
    )
    assert result.stdout == b"x"
    assert result.stderr == b""
    assert result.returncode == 0


def test_top_nodes_and_pods(
    cluster: MizzenCluster, agent: tuple[PodLogs, dict[str, str]], tmp_path: Path
) -> None:
    nodes = ok(run_cli(cluster, "top", "nodes", home=tmp_path)).splitlines()
    assert nodes[0].split() == ["NAME", "CPU(cores)", "CPU%", "MEMORY(bytes)", "MEMORY%"]
    rows = {line.split()[0]: line.split()[1:] for line in nodes[1:]}
    assert rows["n2"] == ["<unknown>"] * 4
    assert rows["n3"] == ["<unknown>"] * 4
    cpu, cpu_pct, mem, mem_pct = rows["n1"]
    assert cpu.endswith("m") and cpu_pct.endswith("%")  # the real /proc of this host
    assert mem.endswith("Mi") and mem_pct.endswith("%")

    pods = ok(run_cli(cluster, "top", "pods", "-n", NS, home=tmp_path)).splitlines()
    assert [line.split() for line in pods] == [
        ["NAME", "CPU(cores)", "MEMORY(bytes)"],
        ["chatty", "<unknown>", "<unknown>"],
        ["lost", "<unknown>", "<unknown>"],
        ["multi", "100m", "30Mi"],
        ["orphan", "<unknown>", "<unknown>"],
        ["tailed", "<unknown>", "<unknown>"],
        ["web", "250m", "64Mi"],
    ]
    per_process = ok(run_cli(cluster, "top", "pods", "-A", "--processes", home=tmp_path))
    lines = [line.split() for line in per_process.splitlines()]
    assert lines[0] == ["NAMESPACE", "POD", "NAME", "CPU(cores)", "MEMORY(bytes)"]
    assert [NS, "multi", "api", "100m", "10Mi"] in lines
    assert [NS, "multi", "worker", "0m", "0Mi"] in lines
    assert [NS, "web", "main", "250m", "64Mi"] in lines
