"""Static bearer-token file, stored hashed: ``mizzen pki token`` writes it, servers read it.

One token per line, ``sha256:<hex>,<name>,<role>``; ``#`` comments and blank
lines are ignored. Only the SHA-256 of a token is stored, so the file does not
hold usable secrets; the plain token is shown once when it is created. Roles
allowed here: admin, viewer, controller (nodes and stores use certificates).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from mizzen.security.pki import NAME_RE, PkiError, check_name

TOKEN_ROLES = ("admin", "viewer", "controller")
_HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def hash_token(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def _check_role(role: str) -> str:
    if role not in TOKEN_ROLES:
        raise PkiError(f"unknown role {role!r} for a token (one of: {', '.join(TOKEN_ROLES)})")
    return role


def load_tokens(path: str | os.PathLike[str]) -> dict[str, tuple[str, str]]:
    """Read the token file: hash → (name, role). Raises PkiError "path:line: ..." when malformed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise PkiError(f"{path}: cannot read token file: {reason}") from None
    tokens: dict[str, tuple[str, str]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 3:
            raise PkiError(f"{path}:{number}: expected sha256:<hex>,<name>,<role>")
        digest, name, role = fields
        if not _HASH_RE.match(digest):
            raise PkiError(f"{path}:{number}: bad hash (expected sha256: and 64 hex digits)")
        if not NAME_RE.match(name):
            raise PkiError(f"{path}:{number}: invalid name {name!r}")
        if role not in TOKEN_ROLES:
            raise PkiError(
                f"{path}:{number}: unknown role {role!r} (one of: {', '.join(TOKEN_ROLES)})"
            )
        if digest in tokens:
            raise PkiError(f"{path}:{number}: duplicate token")
        tokens[digest] = (name, role)
    return tokens


def add_token(path: str | os.PathLike[str], name: str, role: str) -> str:
    """Generate a token for ``name`` in ``role``, append its hash to ``path``; return the token.

    The file is created with mode 0600 (an existing file is set to 0600). An
    existing file is parsed first, so a malformed file is reported, not extended.
    """
    check_name(name)
    _check_role(role)
    p = Path(path)
    prefix = ""
    if p.exists():
        load_tokens(p)
        data = p.read_bytes()
        if data and not data.endswith(b"\n"):
            prefix = "\n"
    token = secrets.token_urlsafe(32)
    line = f"{prefix}{hash_token(token)},{name},{role}\n"
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    return token


def lookup(tokens: dict[str, tuple[str, str]], token: str) -> tuple[str, str] | None:
    """(name, role) for ``token``, or None. Compares every stored hash in constant time."""
    digest = hash_token(token).encode()
    found: tuple[str, str] | None = None
    for stored, identity in tokens.items():
        if hmac.compare_digest(stored.encode(), digest):
            found = identity
    return found
