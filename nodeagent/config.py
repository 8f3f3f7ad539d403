"""The node agent's one configuration object, parsed once from flags and environment.

The flags themselves are declared by ``mizzen.cli.agent_cmd`` (the CLI must not
import the agent to build its parser); ``config_from_args`` validates them.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from mizzen.metrics_http import parse_listen
from mizzen.security.settings import PLAINTEXT, ServerSecurity
from mizzen.security.tls import ClientCredentials
from nodeagent.node_status import (
    DEFAULT_PORT_RANGE,
    parse_labels,
    parse_port_range,
    parse_reserved,
)
from nodeagent.pod_ops import parse_roles


class ConfigError(ValueError):
    """A flag or environment value is invalid; the message names it."""


@dataclass(frozen=True)
class AgentConfig:
    name: str
    endpoints: tuple[str, ...]
    data_dir: str = "/var/lib/mizzen/agent"
    listen: str = "0.0.0.0:10250"
    address: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    reserved: str = ""
    # Host ports the scheduler assigns to this node's dynamic ports (first, last).
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE
    cgroup_root: str = "/sys/fs/cgroup"
    cgroup_parent: str = "mizzen"
    cgroup_version: str = "auto"
    heartbeat_interval: float = 1.0
    status_interval: float = 10.0
    stats_interval: float = 10.0
    # mizzen up: stop every pod's processes when the agent exits (else they keep running).
    stop_pods_on_exit: bool = False
    backoff_initial: float = 1.0
    backoff_cap: float = 60.0
    log_max_bytes: int = 10 * 1024 * 1024
    log_keep: int = 3
    logs_linger: float = 60.0
    request_timeout: float = 5.0
    # host:port for Prometheus /metrics and /healthz over HTTP; "" disables it.
    metrics_listen: str = ""
    # TLS to the store and on the agent's own gRPC port (the node certificate serves both).
    credentials: ClientCredentials | None = None
    security: ServerSecurity = PLAINTEXT
    # Roles allowed, besides admin, to run commands in pods (Exec) and signal them (Signal).
    exec_roles: frozenset[str] = frozenset({"admin"})
    signal_roles: frozenset[str] = frozenset({"admin"})
    # Exec commands running at once; more are refused with RESOURCE_EXHAUSTED.
    max_execs: int = 16

    @property
    def pods_dir(self) -> str:
        return os.path.join(self.data_dir, "pods")

    @property
    def logs_dir(self) -> str:
        return os.path.join(self.data_dir, "logs")

    def for_log(self) -> dict[str, Any]:
        out = asdict(self)
        out["labels"] = dict(self.labels)
        creds = self.credentials
        out["credentials"] = None if creds is None else {"cacert": creds.cacert, "cert": creds.cert}
        out["security"] = {"tls": self.security.secure}
        out["exec_roles"] = sorted(self.exec_roles)
        out["signal_roles"] = sorted(self.signal_roles)
        return out


def config_from_args(
    args: argparse.Namespace,
    endpoints: list[str],
    env: Mapping[str, str] | None = None,
    credentials: ClientCredentials | None = None,
    security: ServerSecurity = PLAINTEXT,
) -> AgentConfig:
    environ = os.environ if env is None else env
    name = args.name or environ.get("MIZZEN_NODE_NAME") or socket.gethostname()
    data_dir = args.data_dir or environ.get("MIZZEN_AGENT_DATA_DIR") or "/var/lib/mizzen/agent"
    try:
        labels = parse_labels(args.labels)
        parse_reserved(args.reserved)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    try:
        port_range = parse_port_range(getattr(args, "port_range", None) or "20000-32000")
    except ValueError as err:
        raise ConfigError(f"--port-range: {err}") from None
    if args.heartbeat_interval <= 0:
        raise ConfigError("--heartbeat-interval must be positive")
    if not 0 < args.backoff_initial <= args.backoff_cap:
        raise ConfigError("--backoff-initial must be positive and at most --backoff-cap")
    if ":" not in args.listen:
        raise ConfigError("--listen: expected host:port")
    metrics_listen = getattr(args, "metrics_listen", "") or ""
    if metrics_listen:
        try:
            parse_listen(metrics_listen)
        except ValueError as err:
            raise ConfigError(f"--metrics-listen: {err}") from None
    try:
        exec_roles = parse_roles("--exec-roles", getattr(args, "exec_roles", "admin"))
        signal_roles = parse_roles("--signal-roles", getattr(args, "signal_roles", "admin"))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    max_execs = getattr(args, "max_execs", 16)
    if max_execs < 1:
        raise ConfigError("--max-execs must be at least 1")
    return AgentConfig(
        exec_roles=exec_roles,
        signal_roles=signal_roles,
        max_execs=max_execs,
        name=name,
        endpoints=tuple(endpoints),
        credentials=credentials,
        security=security,
        data_dir=data_dir,
        listen=args.listen,
        address=args.address,
        labels=labels,
        reserved=args.reserved,
        port_range=port_range,
        cgroup_root=args.cgroup_root,
        cgroup_parent=args.cgroup_parent,
        cgroup_version=args.cgroup_version,
        heartbeat_interval=args.heartbeat_interval,
        status_interval=args.status_interval,
        stats_interval=args.stats_interval,
        stop_pods_on_exit=args.stop_pods_on_exit,
        backoff_initial=args.backoff_initial,
        backoff_cap=args.backoff_cap,
        log_max_bytes=args.log_max_bytes,
        logs_linger=args.logs_linger,
        metrics_listen=metrics_listen,
    )
