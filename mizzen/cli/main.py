"""The `mizzen` command.

Each subcommand lives in its own module, and most of them import the gRPC
client, protobufs or cryptography. Importing all of them costs ~0.4 s, so
``main`` imports only the module of the command being run (all of them for
``--help`` or an unknown command, whose error lists every choice).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from mizzen import __version__
from mizzen.cli.errors import CommandError, UsageError
from mizzen.parent_death import die_with_parent_from_env

# (module, its add_*_parser function, the commands it adds), in help order.
REGISTRY: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("store_cmd", "add_store_parser", ("store",)),
    ("up_cmd", "add_up_parser", ("up",)),
    ("objects_cmd", "add_objects_parsers", ("apply", "get", "delete", "api-resources", "version")),
    ("describe_cmd", "add_describe_parsers", ("describe", "events")),
    ("create_cmd", "add_create_parsers", ("create", "secrets")),
    ("cluster_cmd", "add_cluster_parsers", ("cluster",)),
    ("snapshot_cmd", "add_snapshot_parsers", ("snapshot",)),
    ("logs_cmd", "add_logs_parsers", ("logs", "top")),
    ("exec_cmd", "add_exec_parsers", ("exec", "kill")),
    ("agent_cmd", "add_agent_parser", ("agent",)),
    ("controllers_cmd", "add_controllers_parser", ("controllers",)),
    ("rollout_cmd", "add_rollout_parsers", ("rollout", "scale")),
    ("wait_cmd", "add_wait_parser", ("wait",)),
    ("node_cmd", "add_node_parsers", ("cordon", "uncordon", "drain")),
    ("pki_cmd", "add_pki_parsers", ("pki",)),
    ("run_cmd", "add_run_parser", ("run",)),
    ("label_cmd", "add_label_parsers", ("label", "annotate", "edit")),
)


DAEMONS = frozenset({"store", "up", "agent", "controllers"})
GRPC_FORK_SUPPORT = "GRPC_ENABLE_FORK_SUPPORT"


def _quiet_grpc_core(command: str | None) -> None:
    """Client commands end with one readable line: keep gRPC's C core from adding
    its own log lines (e.g. one "Handshake failed" per reconnect on a TLS mismatch).
    Must run before grpc is imported; GRPC_VERBOSITY set by the user wins.

    gRPC's fork support is turned off in every process: the store forks its
    snapshot writer from a process full of gRPC threads, and with fork support
    gRPC restarts poller threads in the child that share the parent's epoll
    instance (they can take the parent's events; with the child's inherited
    descriptors closed they abort it). Nothing Mizzen runs uses gRPC after a
    fork: the snapshot writer only writes a file, the agent's children exec."""
    os.environ.setdefault(GRPC_FORK_SUPPORT, "false")
    if command not in DAEMONS:
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def _import_structlog_without_rich() -> None:
    """Import structlog as if rich were not installed, for a client command.

    structlog's console renderer imports rich (~25 ms of a ~150 ms start) only to
    draw tracebacks, which a client command never logs (its errors are one line).
    rich itself stays importable for the commands that draw with it (apply --wait).
    Daemons import structlog normally."""
    if "structlog" in sys.modules:
        return
    hidden = {name: sys.modules.pop(name) for name in list(sys.modules) if name == "rich"}
    sys.modules["rich"] = None  # type: ignore[assignment]
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]
        sys.modules.update(hidden)


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand argv names (after the global options), if any."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--log-level")
    pre.add_argument("--log-format")
    _, rest = pre.parse_known_args(list(argv))
    return rest[0] if rest and not rest[0].startswith("-") else None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command``, only that command's module is imported."""
    p = argparse.ArgumentParser(prog="mizzen", description="Mizzen orchestrator")
    p.add_argument("--version", action="version", version=f"mizzen {__version__}")
    p.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="default: info for daemons, warning for client commands",
    )
    p.add_argument("--log-format", default="auto", choices=["auto", "json", "console"])
    sub = p.add_subparsers(dest="command", required=True)
    known = any(command in names for _, _, names in REGISTRY)
    for module, function, names in REGISTRY:
        if known and command not in names:
            continue
        add = getattr(importlib.import_module(f"mizzen.cli.{module}"), function)
        add(sub)
    return p


DAEMON_UMASK = 0o077
"""What daemons create is private to their user: data dirs 0700, journal,
snapshots and keys 0600 (pods get 022 again: nodeagent/launch.py)."""


def main(argv: list[str] | None = None) -> int:
    die_with_parent_from_env()
    args_in = sys.argv[1:] if argv is None else argv
    command = _command_of(args_in)
    if command in DAEMONS:
        os.umask(DAEMON_UMASK)
    _quiet_grpc_core(command)
    if command not in DAEMONS:
        _import_structlog_without_rich()
    from mizzen.log_config import configure_logging

    parser = build_parser(command)
    args = parser.parse_args(args_in)
    default_level = "warning" if getattr(args, "client_command", False) else "info"
    configure_logging(args.log_level or default_level, args.log_format)
    try:
        return int(args.func(args))
    except (UsageError, CommandError) as err:
        print(f"mizzen: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
