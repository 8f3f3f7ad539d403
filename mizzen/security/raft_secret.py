"""The store's Raft secret: where it comes from, what it must look like, when it is required.

pysyncobj unpickles every message that reaches the Raft port unless it was
given a password; with one, each message is a Fernet token (encrypted and
authenticated) checked before anything is unpickled. So a store without a
secret lets anyone who can connect to its Raft port run code as the store's
user. The secret is therefore required unless the store is a developer's
throwaway: plaintext on the client port and every listen address loopback.
Even then any local user can reach a loopback port, which the store logs as a
warning at start.

The secret comes from ``--peer-secret-file`` (``mizzen pki init`` writes
``raft.secret``: 43 random characters), else ``$MIZZEN_RAFT_PASSWORD``; every
source goes through the same ``check_secret``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from mizzen.security.tls import is_loopback

ENV = "MIZZEN_RAFT_PASSWORD"
MIN_LENGTH = 16
MIN_DISTINCT = 5

NO_SECRET_WARNING = (
    "no Raft secret (--peer-secret-file or $" + ENV + "): pysyncobj unpickles whatever "
    "reaches the Raft port {raft}, so any local user can run code as this user through it; "
    "allowed only because everything here is plaintext on loopback"
)


class RaftSecretError(ValueError):
    """No usable secret where one is needed; the text names the source and the fix."""


def check_secret(secret: str, source: str) -> str:
    """The secret (surrounding whitespace stripped) if it is long and varied enough."""
    value = secret.strip()
    if len(value) < MIN_LENGTH:
        raise RaftSecretError(
            f"{source}: Raft secret too short ({len(value)} characters; want {MIN_LENGTH}+, "
            "e.g. the raft.secret that `mizzen pki init` writes)"
        )
    distinct = len(set(value))
    if distinct < MIN_DISTINCT:
        raise RaftSecretError(
            f"{source}: Raft secret too predictable (only {distinct} distinct characters; "
            f"want {MIN_DISTINCT}+, e.g. the raft.secret that `mizzen pki init` writes)"
        )
    return value


def load_secret(path: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """The checked secret from ``path``, else from $MIZZEN_RAFT_PASSWORD, else None."""
    environ = os.environ if env is None else env
    if path is not None:
        try:
            with open(path) as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else err
            raise RaftSecretError(f"--peer-secret-file {path}: {reason}") from None
        return check_secret(text, f"--peer-secret-file {path}")
    value = environ.get(ENV)
    if value is None or value == "":
        return None
    return check_secret(value, f"${ENV}")


def why_required(tls: bool, listeners: Mapping[str, str | None]) -> list[str]:
    """Why this store needs a Raft secret; empty only for plaintext on loopback everywhere.

    ``listeners`` maps each flag (``--listen-client``, ``--listen-raft``,
    ``--metrics-listen``) to the address it binds (None: not used).
    """
    reasons = ["the client port serves TLS"] if tls else []
    reasons += [
        f"{flag} {addr} is not loopback"
        for flag, addr in listeners.items()
        if addr and not is_loopback(addr)
    ]
    return reasons


def resolve(
    path: str | None,
    tls: bool,
    listeners: Mapping[str, str | None],
    env: Mapping[str, str] | None = None,
) -> str | None:
    """The secret to start with; RaftSecretError when it is missing where required or bad.

    None means: none given and none required (the caller warns with NO_SECRET_WARNING).
    """
    secret = load_secret(path, env)
    reasons = why_required(tls, listeners)
    if secret is None and reasons:
        raft = listeners.get("--listen-raft") or "the Raft port"
        raise RaftSecretError(
            f"refusing to start without a Raft secret ({'; '.join(reasons)}): pysyncobj "
            f"unpickles whatever reaches {raft}, so anyone who can connect to it could run "
            f"code as this user; give --peer-secret-file (mizzen pki init writes raft.secret) "
            f"or ${ENV}"
        )
    return secret
