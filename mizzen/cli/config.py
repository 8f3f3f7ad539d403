"""Where a client finds the store and how it proves who it is, like a kubeconfig.

Each setting comes from, in order: its flag (``--endpoints``, ``--cacert``,
``--cert``, ``--key``, ``--token``), its environment variable
(``MIZZEN_ENDPOINTS``, ``MIZZEN_CACERT``, ``MIZZEN_CERT``, ``MIZZEN_KEY``,
``MIZZEN_TOKEN``), the YAML config file, and the default (``127.0.0.1:2379``,
plaintext). The config file is ``$MIZZEN_CONFIG``, else ``./.mizzen/config``
(what ``mizzen up`` writes for the local cluster) if it exists, else
``~/.mizzen/config``::

    endpoints: [10.0.0.1:2379, 10.0.0.2:2379]
    cacert: pki/ca.crt        # relative paths are relative to the file
    cert: pki/admin.crt
    key: pki/admin.key
    # token: ...              # instead of cert/key, against a --token-listen port
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mizzen.cli.errors import UsageError
from mizzen.security.tls import ClientCredentials, CredentialsError

DEFAULT_ENDPOINT = "127.0.0.1:2379"
DEFAULT_CONFIG = "~/.mizzen/config"
LOCAL_CONFIG = ".mizzen/config"
FILE_SETTINGS = ("cacert", "cert", "key", "token")


@dataclass(frozen=True)
class ClientConfig:
    endpoints: list[str]
    credentials: ClientCredentials


def add_credential_flags(parser: argparse.ArgumentParser) -> None:
    """--cacert/--cert/--key/--token, shared by every command that talks to the store."""
    parser.add_argument("--cacert", default=None, help="CA certificate to verify servers (TLS)")
    parser.add_argument("--cert", default=None, help="client certificate (identity)")
    parser.add_argument("--key", default=None, help="client certificate's key")
    parser.add_argument("--token", default=None, help="bearer token (instead of --cert/--key)")


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def config_path(env: Mapping[str, str]) -> Path | None:
    if env.get("MIZZEN_CONFIG"):
        return Path(os.path.expanduser(env["MIZZEN_CONFIG"]))
    for candidate in (Path(LOCAL_CONFIG), Path(os.path.expanduser(DEFAULT_CONFIG))):
        if candidate.is_file():
            return candidate
    return None


def _load(path: Path | None) -> dict[str, Any]:
    if path is None or not path.is_file():
        return {}
    import yaml  # only when there is a file: most commands run without one

    from mizzen.api.nesting import LimitedSafeLoader, yaml_message

    try:
        data = yaml.load(path.read_text(), Loader=LimitedSafeLoader)
    except OSError as err:
        raise UsageError(f"{path}: cannot read config: {err}".splitlines()[0]) from None
    except yaml.YAMLError as err:
        raise UsageError(f"{path}: cannot read config: {yaml_message(err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of settings")
    return data


def _file_endpoints(path: Path, data: Mapping[str, Any]) -> list[str] | None:
    raw = data.get("endpoints")
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = _split(raw)
    if not isinstance(raw, list) or not raw or not all(isinstance(e, str) and e for e in raw):
        raise UsageError(f"{path}: endpoints: expected a list of host:port strings")
    return [e.strip() for e in raw]


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
    path = config_path(environ)
    if path is not None:
        return _file_endpoints(path, _load(path)) or [DEFAULT_ENDPOINT]
    return [DEFAULT_ENDPOINT]


def resolve_credentials(
    args: argparse.Namespace, env: Mapping[str, str] | None = None
) -> ClientCredentials:
    """TLS and identity settings, each from flag, env or config file; checked (files read)."""
    environ = os.environ if env is None else env
    path = config_path(environ)
    data = _load(path)
    values: dict[str, str | None] = {}
    for name in FILE_SETTINGS:
        flag = getattr(args, name, None)
        if flag is not None:
            values[name] = flag
        elif environ.get(f"MIZZEN_{name.upper()}"):
            values[name] = environ[f"MIZZEN_{name.upper()}"]
        elif data.get(name) is not None:
            value = data[name]
            if not isinstance(value, str) or not value:
                raise UsageError(f"{path}: {name}: expected a string")
            if name != "token" and path is not None:
                value = str((path.parent / os.path.expanduser(value)).resolve())
            values[name] = value
        else:
            values[name] = None
    creds = ClientCredentials(**values)
    try:
        return creds.check()
    except CredentialsError as err:
        raise UsageError(str(err)) from None


def resolve_client(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> ClientConfig:
    """Endpoints and credentials for a client command (or a daemon's store client)."""
    return ClientConfig(
        resolve_endpoints(getattr(args, "endpoints", None), env),
        resolve_credentials(args, env),
    )
