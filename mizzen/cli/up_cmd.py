"""`mizzen up`: a whole local cluster from one command — store, controllers, node agent.

Each component runs as its own OS process (as in a real install), started in
dependency order and supervised: a component that exits on its own is started
again after a capped backoff. Logs go to ``<data-dir>/logs/<component>.log``.
Ctrl-C (or SIGTERM) stops the components in reverse order; the agent runs
with ``--stop-pods-on-exit``, so the pods' processes and cgroups go too (the
pod objects stay in the store and run again at the next `mizzen up`). The node
agent needs root (cgroups); without root `mizzen up` runs the store and the
controllers only and says that nothing will run the pods.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import FrameType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mizzen.cli.errors import UsageError

RESTART_BACKOFF_CAP = 30.0
STOP_GRACE = 40.0  # the agent stops pods first, each with its grace period


def add_up_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = sub.add_parser(
        "up", help="start a local cluster: one store node, the controllers and a node agent"
    )
    up.add_argument("--data-dir", default="./.mizzen")
    up.add_argument("--listen-client", default="127.0.0.1:2379")
    up.add_argument("--listen-raft", default="127.0.0.1:2380")
    up.add_argument(
        "--nodes",
        type=int,
        default=1,
        choices=[1, 3, 5],
        help="store members (each its own process; ports step by 2 from --listen-client/raft)",
    )
    up.add_argument("--agent-listen", default="127.0.0.1:10250")
    up.add_argument("--node-name", default=socket.gethostname().split(".")[0].lower())
    up.add_argument("--cgroup-parent", default="mizzen", help="cgroup under which pods live")
    up.add_argument(
        "--no-agent", action="store_true", help="run only the store and the controllers"
    )
    up.add_argument(
        "--metrics",
        action="store_true",
        help="serve Prometheus /metrics: store 127.0.0.1:9379 (+2 per extra member), "
        "controllers :9380, agent :10251",
    )
    up.set_defaults(func=run_up)


@dataclass
class Component:
    name: str
    argv: list[str]
    log_path: str
    ready_endpoint: str | None = None  # gRPC health to wait for before the next one starts
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = 0.0
    backoff: float = field(default=1.0)

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        finally:
            log.close()
        self.started_at = time.monotonic()

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def components(args: argparse.Namespace) -> list[Component]:
    py = [sys.executable, "-m", "mizzen", "--log-format", "json"]
    data = os.path.abspath(args.data_dir)
    logs = os.path.join(data, "logs")
    os.makedirs(logs, exist_ok=True)
    members = store_members(args.listen_client, args.listen_raft, args.nodes)
    endpoints = ",".join(client for _, client, _ in members)
    initial = ",".join(f"{name}={raft}" for name, _, raft in members)
    out = []
    for i, (name, client, raft) in enumerate(members):
        single = len(members) == 1
        out.append(
            Component(
                "store" if single else f"store-{name}",
                [
                    *py, "store",
                    "--name", name,
                    "--data-dir", os.path.join(data, "store" if single else f"store-{name}"),
                    "--listen-client", client,
                    "--listen-raft", raft,
                    "--initial-cluster", initial,
                    *_metrics(args, 9379 + 2 * i),
                ],
                os.path.join(logs, "store.log" if single else f"store-{name}.log"),
                # a member serves once a majority runs: wait after starting the last one
                ready_endpoint=client if i == len(members) - 1 else None,
            )
        )  # fmt: skip
    out.append(
        Component(
            "controllers",
            [
                *py,
                "controllers",
                "--endpoints",
                endpoints,
                "--id",
                f"{args.node_name}-cm",
                *_metrics(args, 9380),
            ],
            os.path.join(logs, "controllers.log"),
        )
    )
    if not args.no_agent:
        out.append(
            Component(
                "agent",
                [
                    *py, "agent",
                    "--name", args.node_name,
                    "--endpoints", endpoints,
                    "--data-dir", os.path.join(data, "agent"),
                    "--listen", args.agent_listen,
                    "--cgroup-parent", args.cgroup_parent,
                    "--stop-pods-on-exit",
                    *_metrics(args, 10251),
                ],
                os.path.join(logs, "agent.log"),
                ready_endpoint=args.agent_listen,
            )
        )  # fmt: skip
    return out


def _metrics(args: argparse.Namespace, port: int) -> list[str]:
    """--metrics-listen for a component with --metrics (deploy/prometheus.yml's ports)."""
    return ["--metrics-listen", f"127.0.0.1:{port}"] if args.metrics else []


def store_members(client: str, raft: str, n: int) -> list[tuple[str, str, str]]:
    """(name, client address, raft address) of n local members: ports step by 2 from the given
    ones (2379/2380, 2381/2382, 2383/2384 by default)."""

    def shifted(address: str, by: int) -> str:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"up: expected host:port, got {address!r}")
        return f"{host}:{int(port) + by}"

    return [(f"n{i + 1}", shifted(client, 2 * i), shifted(raft, 2 * i)) for i in range(n)]


def wait_serving(endpoint: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(endpoint) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    return False


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def run_up(args: argparse.Namespace) -> int:
    if not args.no_agent and os.geteuid() != 0:
        print(
            "mizzen up: not root, so no node agent (it needs cgroups); pods will stay Pending. "
            "Run as root for a full cluster, or pass --no-agent to silence this.",
            file=sys.stderr,
        )
        args.no_agent = True
    parts = components(args)
    # SIGINT explicitly too: a shell may have started us with it ignored
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    started: list[Component] = []
    try:
        for part in parts:
            part.start()
            started.append(part)
            if part.ready_endpoint and not wait_serving(part.ready_endpoint, 30.0):
                raise UsageError(
                    f"up: {part.name} did not become ready at {part.ready_endpoint} within 30 s; "
                    f"see {part.log_path}"
                )
        stores = ",".join(
            c for _, c, _ in store_members(args.listen_client, args.listen_raft, args.nodes)
        )
        print(
            f"mizzen up: store at {stores}, controllers"
            + ("" if args.no_agent else f", agent for node {args.node_name} at {args.agent_listen}")
            + f"; data and logs in {os.path.abspath(args.data_dir)}. Ctrl-C stops it.\n"
            f"  try: mizzen --endpoints {stores} apply -f examples/web.yaml",
            file=sys.stderr,
        )
        supervise(parts)
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        for part in reversed(started):
            part.stop()
    return 0


def supervise(parts: list[Component]) -> None:
    """Restart components that exit, with a backoff reset after a minute of running."""
    while True:
        now = time.monotonic()
        for part in parts:
            proc = part.proc
            if proc is not None and proc.poll() is None:
                if now - part.started_at > 60:
                    part.backoff = 1.0
                continue
            if proc is not None:
                print(
                    f"mizzen up: {part.name} exited with {proc.returncode}; restarting in "
                    f"{part.backoff:.0f}s (log: {part.log_path})",
                    file=sys.stderr,
                )
                part.proc = None
                part.next_start = now + part.backoff
                part.backoff = min(part.backoff * 2, RESTART_BACKOFF_CAP)
                part.restarts += 1
            elif now >= part.next_start:
                part.start()
        time.sleep(0.5)
