"""Where the CLI finds the store: flag, environment, config file, default — in that order.

``--endpoints a:1,b:2`` wins; else ``MIZZEN_ENDPOINTS`` (same syntax); else
the ``endpoints:`` list of the YAML config file (``MIZZEN_CONFIG``, default
``~/.mizzen/config``); else ``127.0.0.1:2379``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import yaml

from mizzen.cli.errors import UsageError

DEFAULT_ENDPOINT = "127.0.0.1:2379"
DEFAULT_CONFIG = "~/.mizzen/config"


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def resolve_endpoints(flag: str | None, env: Mapping[str, str] | None = None) -> list[str]:
    """The store endpoints to use; UsageError when the chosen source is malformed."""
    environ = os.environ if env is None else env
    if flag is not None:
        endpoints = _split(flag)
        if not endpoints:
            raise UsageError("--endpoints: expected host:port[,host:port...]")
        return endpoints
    if environ.get("MIZZEN_ENDPOINTS", "").strip():
        return _split(environ["MIZZEN_ENDPOINTS"])
    path = Path(os.path.expanduser(environ.get("MIZZEN_CONFIG") or DEFAULT_CONFIG))
    if path.is_file():
        return _from_file(path)
    return [DEFAULT_ENDPOINT]


def _from_file(path: Path) -> list[str]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise UsageError(f"{path}: cannot read config: {err}".splitlines()[0]) from None
    if data is None:
        return [DEFAULT_ENDPOINT]
    raw = data.get("endpoints") if isinstance(data, dict) else None
    if raw is None:
        return [DEFAULT_ENDPOINT]
    if isinstance(raw, str):
        raw = _split(raw)
    if not isinstance(raw, list) or not raw or not all(isinstance(e, str) and e for e in raw):
        raise UsageError(f"{path}: endpoints: expected a list of host:port strings")
    return [e.strip() for e in raw]
