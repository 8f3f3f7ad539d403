"""The `mizzen` command."""

from __future__ import annotations

import argparse
import sys

from mizzen import __version__
from mizzen.cli.agent_cmd import add_agent_parser
from mizzen.cli.cluster_cmd import add_cluster_parsers
from mizzen.cli.controllers_cmd import add_controllers_parser
from mizzen.cli.describe_cmd import add_describe_parsers
from mizzen.cli.errors import CommandError, UsageError
from mizzen.cli.logs_cmd import add_logs_parsers
from mizzen.cli.node_cmd import add_node_parsers
from mizzen.cli.objects_cmd import add_objects_parsers
from mizzen.cli.pki_cmd import add_pki_parsers
from mizzen.cli.rollout_cmd import add_rollout_parsers
from mizzen.cli.snapshot_cmd import add_snapshot_parsers
from mizzen.cli.store_cmd import add_store_parser
from mizzen.cli.up_cmd import add_up_parser
from mizzen.log_config import configure_logging


def build_parser() -> argparse.ArgumentParser:
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
    add_store_parser(sub)
    add_up_parser(sub)
    add_objects_parsers(sub)
    add_describe_parsers(sub)
    add_cluster_parsers(sub)
    add_snapshot_parsers(sub)
    add_logs_parsers(sub)
    add_agent_parser(sub)
    add_controllers_parser(sub)
    add_rollout_parsers(sub)
    add_node_parsers(sub)
    add_pki_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
