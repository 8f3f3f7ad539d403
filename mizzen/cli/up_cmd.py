"""`mizzen up`: a whole local cluster from one command — store, controllers, node agent.

Each component runs as its own OS process (as in a real install), started in
dependency order and supervised: a component that exits on its own is started
again after a capped backoff. Logs go to ``<data-dir>/logs/<component>.log``.
Ctrl-C (or SIGTERM) stops the components in reverse order; the agent runs
with ``--stop-pods-on-exit``, so the pods' processes and cgroups go too (the
pod objects stay in the store and run again at the next `mizzen up`). The node
agent needs root (cgroups); without root `mizzen up` runs the store and the
controllers only and says that nothing will run the pods.

Secure by default: a CA and every certificate live in ``<data-dir>/pki``
(created once by ``init_pki``, reused after), the store serves TLS and requires
client certificates, Raft traffic is encrypted with ``raft.secret``, and the
admin's client config is written to ``<data-dir>/config`` (mode 0600, paths
relative to it) so that ``mizzen`` commands run next to ``./.mizzen`` find it.
``--insecure`` keeps the old plaintext mode, on loopback addresses only.
Either way Secrets are encrypted at rest with the keys in
``<data-dir>/pki/encryption.yaml`` (``<data-dir>/encryption.yaml`` with
``--insecure``), created once and kept.

One file because it is one command: preparing its certificates and client
configuration, starting the components in order, supervising them and stopping
them in reverse all work on the same ``Component`` list and data directory.
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
from pathlib import Path
from types import FrameType

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mizzen.cli.config import FILE_SETTINGS, LOCAL_CONFIG
from mizzen.cli.errors import UsageError
from mizzen.parent_death import PARENT_ENV
from mizzen.security.encryption import KEY_FILE_NAME, ensure_key_file
from mizzen.security.pki import PkiError, init_pki
from mizzen.security.renewal import RENEW_WITHIN
from mizzen.security.tls import INSECURE, ClientCredentials, host_of, is_loopback

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
    up.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext without certificates (loopback addresses only); "
        "by default everything speaks TLS with certificates from <data-dir>/pki",
    )
    up.set_defaults(func=run_up)


@dataclass(frozen=True)
class UpTLS:
    """The files in ``<data-dir>/pki`` each component is started with."""

    pki: str
    store_host: str
    node_name: str

    def _pair(self, stem: str) -> list[str]:
        return [
            "--cacert", self.path("ca.crt"),
            "--cert", self.path(f"{stem}.crt"),
            "--key", self.path(f"{stem}.key"),
        ]  # fmt: skip

    def path(self, name: str) -> str:
        return os.path.join(self.pki, name)

    def store_flags(self) -> list[str]:
        secret = ["--peer-secret-file", self.path("raft.secret")]
        return [*self._pair(f"store-{self.store_host}"), *secret]

    @property
    def key_file(self) -> str:
        return self.path(KEY_FILE_NAME)

    def controller_flags(self) -> list[str]:
        return self._pair("controller")

    def agent_flags(self) -> list[str]:
        return self._pair(f"node-{self.node_name}")

    def admin(self) -> ClientCredentials:
        return ClientCredentials(
            self.path("ca.crt"), self.path("admin.crt"), self.path("admin.key")
        )


def prepare_security(args: argparse.Namespace) -> UpTLS | None:
    """The cluster's certificates (made on the first secure run), or None with --insecure."""
    listeners = {"--listen-client": args.listen_client, "--listen-raft": args.listen_raft}
    if not args.no_agent:
        listeners["--agent-listen"] = args.agent_listen
    if args.insecure:
        exposed = [f"{flag} {addr}" for flag, addr in listeners.items() if not is_loopback(addr)]
        if exposed:
            raise UsageError(
                f"up: --insecure serves plaintext, so only on loopback; got {', '.join(exposed)}"
            )
        return None
    store_host = _cert_host(args.listen_client, "--listen-client")
    agent_host = _cert_host(args.agent_listen, "--agent-listen")
    pki = os.path.join(os.path.abspath(args.data_dir), "pki")

    def renewed(path: Path, why: str) -> None:
        print(f"mizzen up: renewed {path.name} ({why})", file=sys.stderr)

    try:
        # like k3s: certificates that expire within 90 days (or no longer fit
        # these addresses) are issued again at start, before any daemon reads them
        init_pki(
            pki,
            hosts=[store_host],
            nodes=[f"{args.node_name}={agent_host}"],
            renew_within=RENEW_WITHIN,
            renewed=renewed,
        )
    except (PkiError, OSError) as err:
        raise UsageError(f"up: {pki}: {err}") from None
    return UpTLS(pki, store_host, args.node_name)


def prepare_encryption(args: argparse.Namespace, tls: UpTLS | None) -> str:
    """The key file that encrypts Secrets at rest: the PKI's (init_pki made it), or with
    --insecure one in the data directory, created on the first run and kept after."""
    if tls is not None:
        return tls.key_file
    path = os.path.join(os.path.abspath(args.data_dir), KEY_FILE_NAME)
    try:
        ensure_key_file(path)
    except OSError as err:
        raise UsageError(f"up: {path}: {err.strerror or err}") from None
    return path


def _cert_host(address: str, flag: str) -> str:
    """The host a certificate must name for clients dialing ``address``."""
    host = host_of(address)
    if host in ("", "0.0.0.0", "::"):
        raise UsageError(f"up: {flag} {address}: give the address clients dial, not a wildcard")
    return "127.0.0.1" if host == "localhost" else host


def write_client_config(data_dir: str, endpoints: list[str], tls: UpTLS | None) -> str:
    """Write ``<data-dir>/config`` (0600) for the admin; return its absolute path."""
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(os.path.abspath(data_dir), "config")
    settings: dict[str, object] = {"endpoints": endpoints}
    if tls is not None:
        rel = os.path.relpath(tls.pki, os.path.dirname(path))
        for name, file in (("cacert", "ca.crt"), ("cert", "admin.crt"), ("key", "admin.key")):
            settings[name] = os.path.join(rel, file)
    text = "# written by mizzen up: the local cluster's admin client config\n"
    text += yaml.safe_dump(settings, default_flow_style=False, sort_keys=False)
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


@dataclass
class Component:
    name: str
    argv: list[str]
    log_path: str
    ready_endpoint: str | None = None  # gRPC health to wait for before the next one starts
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = 0.0
    backoff: float = field(default=1.0)

    def start(self) -> None:
        env = dict(os.environ if self.env is None else self.env)
        env[PARENT_ENV] = str(os.getpid())  # the child stops if `up` is killed
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                env=env,
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


def child_env(config: str) -> dict[str, str]:
    """Our environment, but the daemons' store client reads only the config `up` wrote
    (not the caller's MIZZEN_ENDPOINTS/CACERT/... nor a ./.mizzen/config of another cluster)."""
    client = {f"MIZZEN_{name.upper()}" for name in ("config", "endpoints", *FILE_SETTINGS)}
    env = {k: v for k, v in os.environ.items() if k not in client}
    env["MIZZEN_CONFIG"] = config
    return env


def components(
    args: argparse.Namespace,
    tls: UpTLS | None = None,
    env: dict[str, str] | None = None,
    key_file: str | None = None,
) -> list[Component]:
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
                    *(tls.store_flags() if tls else []),
                    *(["--encryption-key-file", key_file] if key_file else []),
                    *_metrics(args, 9379 + 2 * i),
                ],
                os.path.join(logs, "store.log" if single else f"store-{name}.log"),
                # a member serves once a majority runs: wait after starting the last one
                ready_endpoint=client if i == len(members) - 1 else None,
                env=env,
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
                *(tls.controller_flags() if tls else []),
                *_metrics(args, 9380),
            ],
            os.path.join(logs, "controllers.log"),
            env=env,
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
                    *(tls.agent_flags() if tls else []),
                    *_metrics(args, 10251),
                ],
                os.path.join(logs, "agent.log"),
                ready_endpoint=args.agent_listen,
                env=env,
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


def wait_serving(endpoint: str, timeout: float, credentials: ClientCredentials = INSECURE) -> bool:
    deadline = time.monotonic() + timeout
    with credentials.channel(endpoint) as channel:
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
    tls = prepare_security(args)
    key_file = prepare_encryption(args, tls)
    credentials = tls.admin() if tls else INSECURE
    stores = [c for _, c, _ in store_members(args.listen_client, args.listen_raft, args.nodes)]
    config = write_client_config(args.data_dir, stores, tls)
    parts = components(args, tls, child_env(config), key_file)
    # SIGINT explicitly too: a shell may have started us with it ignored
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    started: list[Component] = []
    try:
        for part in parts:
            part.start()
            started.append(part)
            if part.ready_endpoint and not wait_serving(part.ready_endpoint, 30.0, credentials):
                raise UsageError(
                    f"up: {part.name} did not become ready at {part.ready_endpoint} within 30 s; "
                    f"see {part.log_path}"
                )
        print(banner(args, stores, config, secure=tls is not None), file=sys.stderr)
        supervise(parts)
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        _shutting_down()
        for part in reversed(started):
            part.stop()
        # everything is stopped: a late Ctrl-C must not kill the interpreter's exit
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return 0


def _shutting_down() -> None:
    """From here on a second Ctrl-C (or SIGTERM) must not interrupt the stop: the agent
    is stopping the pods, each within its grace period. Say so once, then wait."""
    said = False

    def again(signum: int, frame: FrameType | None) -> None:
        nonlocal said
        if not said:
            said = True
            print(
                "mizzen up: stopping (the agent stops the pods, each within its grace "
                "period); wait a moment",
                file=sys.stderr,
            )

    signal.signal(signal.SIGTERM, again)
    signal.signal(signal.SIGINT, again)


def banner(args: argparse.Namespace, stores: list[str], config: str, *, secure: bool) -> str:
    """What runs where, and how to point the CLI at it from here and from elsewhere."""
    mode = (
        "TLS with client certificates"
        if secure
        else "PLAINTEXT (--insecure; no Raft secret: any local user can run code as you "
        "through the Raft port)"
    )
    here = os.path.abspath(config) == os.path.abspath(LOCAL_CONFIG)
    agent = "" if args.no_agent else f", agent for node {args.node_name} at {args.agent_listen}"
    return (
        f"mizzen up: store at {','.join(stores)}, controllers{agent}; {mode}; "
        f"data and logs in {os.path.abspath(args.data_dir)}. Ctrl-C stops it.\n"
        f"  admin config {config}"
        + (": mizzen commands run from this directory use it; elsewhere:" if here else ":")
        + f"\n    export MIZZEN_CONFIG={config}\n"
        "  try: mizzen apply -f examples/web.yaml"
    )


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
