"""Where a Service's ready endpoints are, for the example app's processes (stdlib only).

The node agent tells a process in two ways (docs/agent.md, "Services"):

* at start, ``<SERVICE>_SERVICE_ENDPOINTS=host:port,...`` (the ready endpoints
  then; SERVICE is the name upper-cased, ``-`` as ``_``);
* a live file, ``$MIZZEN_POD_DIR/services/<service>.json``, rewritten
  atomically whenever the endpoints change.

``endpoints(service)`` reads the file when there is one (so a long-running
process follows db replicas coming and going) and falls back to the
variable. The file is read leniently: every object in it with a host
(``ip``, ``host`` or ``address``) and a ``port``, and every ``"host:port"``
string, is an endpoint.
"""

from __future__ import annotations

import json
import os
from typing import Any


def _env_name(service: str) -> str:
    return service.upper().replace("-", "_") + "_SERVICE_ENDPOINTS"


def _split(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        host, sep, port = item.strip().rpartition(":")
        if sep and host and port.isdigit():
            out.append((host.strip("[]"), int(port)))
    return out


def _walk(value: Any, out: list[tuple[str, int]]) -> None:
    if isinstance(value, dict):
        host = value.get("ip") or value.get("host") or value.get("address")
        port = value.get("port")
        if isinstance(host, str) and isinstance(port, int) and not isinstance(port, bool):
            out.append((host, port))
            return
        for item in value.values():
            _walk(item, out)
    elif isinstance(value, list):
        for item in value:
            _walk(item, out)
    elif isinstance(value, str) and ":" in value:
        out.extend(_split(value))


def endpoints(service: str) -> list[tuple[str, int]]:
    """The ready (host, port) pairs of service, as this process can know them now."""
    pod_dir = os.environ.get("MIZZEN_POD_DIR", "")
    path = os.path.join(pod_dir, "services", f"{service}.json") if pod_dir else ""
    if path and os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                found: list[tuple[str, int]] = []
                _walk(json.load(f), found)
            return list(dict.fromkeys(found))
        except (OSError, ValueError):
            pass  # being replaced, or unreadable: the variable still says something
    return _split(os.environ.get(_env_name(service), ""))


def listen_port() -> int:
    """The port this process was given (its port named http, else its only port)."""
    value = os.environ.get("MIZZEN_PORT_HTTP") or os.environ.get("PORT")
    if not value:
        raise SystemExit("no port: MIZZEN_PORT_HTTP and PORT are unset")
    return int(value)
