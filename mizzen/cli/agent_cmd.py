"""`mizzen agent`: run the node agent in the foreground (as root).

The agent itself is imported only when the command runs, so building the CLI
parser never imports ``nodeagent``.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from mizzen.cli.config import add_credential_flags, resolve_client
from mizzen.cli.errors import UsageError
from mizzen.cli.security_flags import add_server_security_flags, server_security


def add_agent_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--name", default=None, help="node name (default: $MIZZEN_NODE_NAME or hostname)"
    )
    p.add_argument("--endpoints", default=None, help="store endpoints host:port,...")
    add_credential_flags(p)
    add_server_security_flags(p, tokens=False)
    p.add_argument(
        "--data-dir",
        default=None,
        help="local state and logs (default: $MIZZEN_AGENT_DATA_DIR or /var/lib/mizzen/agent)",
    )
    p.add_argument("--listen", default="0.0.0.0:10250", help="agent gRPC address host:port")
    p.add_argument("--address", default="", help="InternalIP to report (default: detected)")
    p.add_argument("--labels", default="", help="node labels k=v,...")
    p.add_argument("--reserved", default="", help="kept from pods: cpu=500m,memory=512Mi,pids=1000")
    p.add_argument(
        "--port-range",
        default="20000-32000",
        metavar="FIRST-LAST",
        help="host ports the scheduler gives this node's pods for their dynamic ports "
        "(published in the Node's status; default 20000-32000)",
    )
    p.add_argument("--cgroup-root", default="/sys/fs/cgroup")
    p.add_argument("--cgroup-parent", default="mizzen", help="cgroup under which pods live")
    p.add_argument("--cgroup-version", default="auto", choices=["auto", "v1", "v2"])
    p.add_argument("--heartbeat-interval", type=float, default=1.0, help="lease renewal seconds")
    p.add_argument("--status-interval", type=float, default=10.0, help="node status seconds")
    p.add_argument(
        "--stats-interval", type=float, default=10.0, help="seconds between usage samples"
    )
    p.add_argument(
        "--stop-pods-on-exit",
        action="store_true",
        help="stop every pod's processes when the agent exits (mizzen up); by default they "
        "keep running and are re-adopted at the next start",
    )
    p.add_argument("--backoff-initial", type=float, default=1.0, help="first restart delay")
    p.add_argument("--backoff-cap", type=float, default=60.0, help="longest restart delay")
    p.add_argument("--log-max-bytes", type=int, default=10 * 1024 * 1024)
    p.add_argument("--logs-linger", type=float, default=60.0, help="keep a removed pod's logs")
    p.add_argument(
        "--exec-roles",
        default="admin",
        metavar="ROLES",
        help="roles that may run commands in pods (mizzen exec); admin always may "
        "(some of admin,viewer,controller; default admin)",
    )
    p.add_argument(
        "--signal-roles",
        default="admin",
        metavar="ROLES",
        help="roles that may signal pod processes (mizzen kill); admin always may (default admin)",
    )
    p.add_argument(
        "--max-execs",
        type=int,
        default=16,
        metavar="N",
        help="commands (mizzen exec) running at once on this node; more are refused (default 16)",
    )
    p.add_argument(
        "--metrics-listen",
        default="",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics and /healthz over HTTP here (default off)",
    )


def add_agent_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("agent", help="run the node agent (pods' processes in cgroups)")
    add_agent_arguments(p)
    p.set_defaults(func=run_agent_cmd)


def run_agent_cmd(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    from nodeagent.agent import AgentStartError, run_agent
    from nodeagent.config import ConfigError, config_from_args

    try:
        client = resolve_client(args)
        security = server_security(
            args,
            {"--listen": args.listen, "--metrics-listen": getattr(args, "metrics_listen", None)},
        )
        config = config_from_args(
            args, client.endpoints, credentials=client.credentials, security=security
        )
    except ConfigError as err:
        raise UsageError(str(err)) from None
    try:
        asyncio.run(run_agent(config))
    except AgentStartError as err:
        raise UsageError(str(err)) from None
    return 0
