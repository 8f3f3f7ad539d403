"""`mizzen controllers`: run the controller manager (leader-elected) in the foreground.

Several can run against one store; one leads (runs the controllers), the
others keep warm caches and take over when the leader's lease ends. SIGTERM
or Ctrl-C stops cleanly and hands leadership over at once (lease revoked).
The ``controllers`` package is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import structlog

from mizzen.cli.config import add_credential_flags, resolve_client
from mizzen.cli.errors import UsageError
from mizzen.security.tls import is_loopback

log = structlog.get_logger(__name__)


def add_controllers_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("controllers", help="run the controller manager (one leader at a time)")
    p.add_argument("--endpoints", default=None, help="store endpoints host:port,...")
    add_credential_flags(p)
    p.add_argument(
        "--insecure",
        action="store_true",
        help="serve --metrics-listen in plaintext even on a non-loopback address",
    )
    p.add_argument("--id", default=None, help="identity in the election (default host-pid)")
    p.add_argument("--election-key", default=None, help="store key of the election")
    p.add_argument(
        "--lease-ttl",
        type=float,
        default=2.0,
        help="leader lease TTL, whole seconds (kept alive every TTL/3; default 2)",
    )
    p.add_argument(
        "--renew-interval",
        type=float,
        default=1.0,
        help="seconds between the leader's checks that it still holds the election key",
    )
    p.add_argument("--resync", type=float, default=30.0, help="full resync period, seconds")
    p.add_argument("--node-grace", type=float, default=5.0)
    p.add_argument("--eviction-timeout", type=float, default=10.0)
    p.add_argument("--request-timeout", type=float, default=5.0)
    p.add_argument(
        "--port-in-use-block",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long the scheduler keeps a node's ports that another program holds "
        "(a pod failed with PortInUse) away from new pods (default 30)",
    )
    p.add_argument(
        "--controllers",
        default=None,
        help="comma-separated controller names to run (default: all)",
    )
    p.add_argument(
        "--workers",
        action="append",
        default=[],
        metavar="NAME=N",
        help="workers for one controller (repeatable)",
    )
    p.add_argument(
        "--metrics-listen",
        default="",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics and /healthz over HTTP here (default off)",
    )
    p.set_defaults(func=run_controllers)


def _workers(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        name, sep, count = item.partition("=")
        if not sep or not count.isdigit() or int(count) < 1:
            raise UsageError(f"--workers: expected NAME=N with N >= 1, got {item!r}")
        out[name] = int(count)
    return out


def run_controllers(args: argparse.Namespace) -> int:
    from controllers.manager import ManagerConfig, run_manager
    from controllers.metrics import MetricsListenError

    client = resolve_client(args)
    config = ManagerConfig(
        endpoints=client.endpoints,
        credentials=client.credentials,
        lease_ttl=args.lease_ttl,
        renew_interval=args.renew_interval,
        resync=args.resync,
        node_grace=args.node_grace,
        eviction_timeout=args.eviction_timeout,
        request_timeout=args.request_timeout,
        workers=_workers(args.workers),
        enabled=tuple(n.strip() for n in args.controllers.split(",")) if args.controllers else None,
        metrics_listen=args.metrics_listen,
        options={"scheduler.port_in_use_block": args.port_in_use_block},
    )
    if args.port_in_use_block < 0:
        raise UsageError("--port-in-use-block must not be negative")
    if args.id:
        config.id = args.id
    if args.election_key:
        config.election_key = args.election_key
    if args.lease_ttl < 1:
        raise UsageError("--lease-ttl must be at least 1 second")
    if (
        args.metrics_listen
        and config.metrics_tls() is None
        and not is_loopback(args.metrics_listen)
        and not args.insecure
    ):
        raise UsageError(
            f"refusing to serve metrics in plaintext on --metrics-listen {args.metrics_listen}: "
            "give --cacert/--cert/--key (HTTPS with client certificates) or --insecure"
        )
    shown = {k: str(v) for k, v in vars(config).items() if k != "credentials"}
    creds = config.credentials
    shown["tls"] = str(bool(creds and creds.secure))
    log.info("controllers_config", **shown)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_manager(config, stop)

    try:
        asyncio.run(main())
    except MetricsListenError as err:
        raise UsageError(str(err)) from None
    return 0
