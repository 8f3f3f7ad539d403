"""The agent's side of host ports: variables, probes by name, the PortInUse check, the
node's published range and the --port-range flag."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from test_pod_worker import FakePods, deps_for, main_status, run_worker, until  # noqa: F401

from mizzen.cli.main import build_parser
from nodeagent.config import ConfigError, config_from_args
from nodeagent.host_ports import port_env, ports_in_use, with_port_numbers
from nodeagent.launch import process_env
from nodeagent.node_status import parse_port_range
from nodeagent.pod_worker import PodWorker, WorkerDeps
from nodeagent.probes import run_probe
from protos import objects_pb2 as pb


def spec(*ports: tuple[str, int, str]) -> pb.PodSpec:
    out = pb.PodSpec()
    out.processes.add(name="web", command=["/bin/true"])
    out.processes.add(name="side", command=["/bin/true"])
    for name, port, protocol in ports:
        out.processes[0].ports.add(name=name, port=port, protocol=protocol, assigned=True)
    return out


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- variables


def test_port_variables() -> None:
    assert port_env(spec(("http", 20001, "TCP"))) == {"MIZZEN_PORT_HTTP": "20001", "PORT": "20001"}
    two = spec(("http", 20001, "TCP"), ("admin-api", 20002, "TCP"))
    two.processes[1].ports.add(port=9100, protocol="TCP")  # unnamed: no MIZZEN_PORT_
    assert port_env(two) == {"MIZZEN_PORT_HTTP": "20001", "MIZZEN_PORT_ADMIN_API": "20002"}
    assert port_env(spec()) == {}


def test_user_variables_win_over_port_variables() -> None:
    env = process_env(
        [("PORT", "8080")],
        namespace="ns",
        pod="p",
        uid="u",
        ports={"PORT": "20001", "MIZZEN_PORT_HTTP": "20001"},
    )
    assert env["PORT"] == "8080" and env["MIZZEN_PORT_HTTP"] == "20001"


# ---------------------------------------------------------------- probes


def test_probe_port_names_become_numbers() -> None:
    probe = pb.Probe(tcp_socket=pb.TCPSocketAction(port_name="http"))
    resolved = with_port_numbers(probe, {"http": 20001})
    assert resolved.tcp_socket.port == 20001 and probe.tcp_socket.port == 0
    http = pb.Probe(http_get=pb.HTTPGetAction(port_name="admin", path="/"))
    assert with_port_numbers(http, {"admin": 9000}).http_get.port == 9000
    plain = pb.Probe(tcp_socket=pb.TCPSocketAction(port=80))
    assert with_port_numbers(plain, {}) is plain


async def test_a_probe_on_a_named_port_connects_to_it() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        probe = with_port_numbers(
            pb.Probe(tcp_socket=pb.TCPSocketAction(port_name="http")), {"http": port}
        )
        result = await run_probe(probe, env={}, cwd=None)
        assert result.ok, result.message
    missing = with_port_numbers(pb.Probe(tcp_socket=pb.TCPSocketAction(port_name="x")), {})
    result = await run_probe(missing, env={}, cwd=None)
    assert (result.ok, result.message) == (False, "tcp probe: the process has no port 'x'")


# ---------------------------------------------------------------- PortInUse


def test_ports_held_by_another_program_are_found() -> None:
    port = free_port()
    assert ports_in_use(spec(("http", port, "TCP"))) == []
    with socket.socket() as other:
        other.bind(("127.0.0.1", port))  # another program, on loopback only
        other.listen()
        assert ports_in_use(spec(("http", port, "TCP"))) == [
            f"port {port}/TCP (http, process web) is in use on the host by another program"
        ]
        # the same number over UDP is another port
        assert ports_in_use(spec(("dns", port, "UDP"))) == []
    udp = free_port(socket.SOCK_DGRAM)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.bind(("0.0.0.0", udp))
        assert len(ports_in_use(spec(("dns", udp, "UDP")))) == 1


def test_a_closed_connection_in_time_wait_is_no_obstacle() -> None:
    port = free_port()
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server side closes first: its end waits in TIME_WAIT
        client.close()
    assert ports_in_use(spec(("http", port, "TCP"))) == []


def _pod_with_port(port: int) -> pb.Pod:
    p = pb.Pod(metadata=pb.ObjectMeta(name="web", namespace="default", uid="uid-1"))
    p.spec.restart_policy = "Always"
    p.spec.node_name = "n1"
    proc = p.spec.processes.add(name="main", command=["/bin/sh", "-c", "exec sleep 30"])
    proc.ports.add(name="http", port=port, protocol="TCP", assigned=True)
    return p


async def test_a_pod_whose_port_is_taken_fails_without_starting(
    deps_for: Callable[[FakePods], WorkerDeps],  # noqa: F811
    tmp_path: Path,
) -> None:
    port = free_port()
    client = FakePods(_pod_with_port(port))
    deps = deps_for(client)
    worker = PodWorker(client.pod, deps)
    with socket.socket() as other:
        other.bind(("0.0.0.0", port))
        other.listen()

        async def body() -> None:
            await until(lambda: client.pod.status.phase == "Failed", "failed")
            status = client.pod.status
            assert status.reason == "PortInUse"
            assert status.message == (
                f"port {port}/TCP (http, process main) is in use on the host by another program"
            )
            state = main_status(client).state
            assert (state.waiting.reason, state.waiting.message) == ("PortInUse", status.message)
            assert main_status(client).pid == 0
            # nothing was started nor created for it, and it stays so
            await asyncio.sleep(0.2)
            assert client.status_writes == 1
            assert deps.state.load("uid-1") is None
            assert not (tmp_path / "cg" / "pod-uid-1").exists()
            # deleted: the agent finishes the deletion
            deleting = client._copy()
            deleting.metadata.deletion_timestamp.GetCurrentTime()
            client.pod.CopyFrom(deleting)
            client.bump()
            worker.update(client._copy())
            await until(lambda: bool(client.deletes), "delete call")

        await run_worker(worker, body)


async def test_a_free_port_is_given_to_the_process(
    deps_for: Callable[[FakePods], WorkerDeps],  # noqa: F811
    tmp_path: Path,
) -> None:
    port = free_port()
    out = tmp_path / "env"
    pod = _pod_with_port(port)
    pod.spec.processes[0].command[:] = ["/bin/sh", "-c", f"env > {out}; exec sleep 30"]
    client = FakePods(pod)
    worker = PodWorker(client.pod, deps_for(client))

    async def body() -> None:
        await until(lambda: main_status(client).pid > 0, "running")
        await until(lambda: out.exists() and "PORT=" in out.read_text(), "env written")
        env = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
        assert env["PORT"] == str(port) and env["MIZZEN_PORT_HTTP"] == str(port)
        assert client.pod.status.phase == "Running"

    await run_worker(worker, body)


# ---------------------------------------------------------------- node and flags


def test_port_range_flag() -> None:
    assert parse_port_range("20000-32000") == (20000, 32000)
    assert parse_port_range("8080-8080") == (8080, 8080)
    for bad in ("", "20000", "a-b", "0-10", "30000-20000", "60000-70000"):
        with pytest.raises(ValueError, match="expected FIRST-LAST"):
            parse_port_range(bad)
    parser = build_parser()
    args = parser.parse_args(["agent", "--port-range", "30000-30099"])
    assert config_from_args(args, ["127.0.0.1:2379"], env={}).port_range == (30000, 30099)
    args = parser.parse_args(["agent"])
    assert config_from_args(args, ["127.0.0.1:2379"], env={}).port_range == (20000, 32000)
    args = parser.parse_args(["agent", "--port-range", "9-1"])
    with pytest.raises(ConfigError, match=r"^--port-range: expected FIRST-LAST"):
        config_from_args(args, ["127.0.0.1:2379"], env={})


def test_no_leftover_sockets() -> None:
    # ports_in_use closes every test socket it opened
    before = len(os.listdir("/proc/self/fd"))
    ports_in_use(spec(("http", free_port(), "TCP"), ("dns", free_port(), "UDP")))
    assert len(os.listdir("/proc/self/fd")) == before


async def test_the_node_publishes_its_dynamic_range() -> None:
    from dataclasses import replace

    from test_node_status import Clock, FakeObjects, facts

    from nodeagent.node_status import NodeHeartbeat

    client = FakeObjects()
    node = await NodeHeartbeat(client, facts(), clock=Clock()).register()
    assert (node.status.dynamic_ports.first, node.status.dynamic_ports.last) == (20000, 32000)
    narrow = replace(facts(), dynamic_ports=(30000, 30099))
    node = await NodeHeartbeat(client, narrow, clock=Clock()).update_status(force=True)
    assert (node.status.dynamic_ports.first, node.status.dynamic_ports.last) == (30000, 30099)
