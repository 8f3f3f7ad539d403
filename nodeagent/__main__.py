"""``python -m nodeagent [agent flags]``: the agent without the rest of the CLI.

Same flags as ``mizzen agent``; useful until (and besides) the CLI wiring.
"""

from __future__ import annotations

import argparse
import sys

from mizzen.cli.agent_cmd import add_agent_arguments, run_agent_cmd
from mizzen.cli.errors import UsageError
from mizzen.log_config import configure_logging


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nodeagent", description="Mizzen node agent")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="auto", choices=["auto", "json", "console"])
    add_agent_arguments(p)
    args = p.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    try:
        return run_agent_cmd(args)
    except UsageError as err:
        print(f"mizzen agent: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
