"""etcd's auth store, as pure functions: users, roles, key-range permissions and tokens.

The replicated part lives in ``StateMachine`` as plain builtins (so Raft
snapshots never pickle a class of this module): ``auth_enabled``,
``auth_revision`` (bumped by every change, like etcd's authRevision),
``auth_secret`` (the token signing key, drawn by the proposer of AuthEnable,
dropped by AuthDisable), ``auth_users`` (name -> serialized ``authpb.User``
whose ``password`` is a bcrypt hash) and ``auth_roles`` (name ->
serialized ``authpb.Role``, permissions sorted by key as etcd keeps them).
Commands are ``("auth", op, ...)`` tuples of builtins; ``apply_auth`` applies
one and never raises. Passwords are hashed by the member that receives the
request, before proposing: a clear password is never in the Raft log.

Tokens (``mint_token``/``token_user``) are etcd's "simple" tokens made
stateless: ``<user>.<expiry>.<nonce>.<mac>`` where mac is HMAC-SHA256 under
the replicated secret over the user, the expiry, the nonce and the user's
stored password hash. Every member verifies one without a Raft round; a
password change, the user's deletion or AuthDisable (a new secret at the next
enable) invalidates it, as etcd invalidates its simple tokens; it expires
``TOKEN_TTL`` seconds after Authenticate (wall clock). Neither hashes nor the
secret are in the key space, so nothing read through Range helps forge one.

``permitted`` is etcd's range permission check: a request range must lie
wholly in the union of the ranges the user's roles grant for that verb; the
``root`` role may do everything.

One file because this is etcd's auth store, one idea: the records, the
commands that change them, the permission check that reads them and the
tokens bound to them (a token is valid only while its user's record is).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable
from typing import Any

from protos import auth_pb2, rpc_pb2

from .errors import Code, StoreError

ROOT = "root"
TOKEN_TTL = 300  # seconds: etcd's default --auth-token-ttl
SECRET_BYTES = 32
BCRYPT_COST = 10  # etcd's bcrypt.DefaultCost

# etcd 3.4's errors, code and text as a real etcd answers them
USER_EMPTY = StoreError(Code.INVALID_ARGUMENT, "etcdserver: user name is empty")
ROLE_EMPTY = StoreError(Code.INVALID_ARGUMENT, "etcdserver: role name is empty")
USER_EXISTS = StoreError(Code.FAILED_PRECONDITION, "etcdserver: user name already exists")
USER_NOT_FOUND = StoreError(Code.FAILED_PRECONDITION, "etcdserver: user name not found")
ROLE_EXISTS = StoreError(Code.FAILED_PRECONDITION, "etcdserver: role name already exists")
ROLE_NOT_FOUND = StoreError(Code.FAILED_PRECONDITION, "etcdserver: role name not found")
ROLE_NOT_GRANTED = StoreError(
    Code.FAILED_PRECONDITION, "etcdserver: role is not granted to the user"
)
PERM_NOT_GRANTED = StoreError(
    Code.FAILED_PRECONDITION, "etcdserver: permission is not granted to the role"
)
ROOT_NOT_EXIST = StoreError(Code.FAILED_PRECONDITION, "etcdserver: root user does not exist")
ROOT_NO_ROLE = StoreError(Code.FAILED_PRECONDITION, "etcdserver: root user does not have root role")
INVALID_MGMT = StoreError(Code.INVALID_ARGUMENT, "etcdserver: invalid auth management")
NOT_ENABLED = StoreError(Code.FAILED_PRECONDITION, "etcdserver: authentication is not enabled")
AUTH_FAILED = StoreError(
    Code.INVALID_ARGUMENT, "etcdserver: authentication failed, invalid user ID or password"
)
NO_PASSWORD_USER = StoreError(
    Code.UNKNOWN, "auth: authentication failed, password was given for no password user"
)
INVALID_TOKEN = StoreError(Code.UNAUTHENTICATED, "etcdserver: invalid auth token")
DENIED = StoreError(Code.PERMISSION_DENIED, "etcdserver: permission denied")
# Maintenance's root-only methods answer with the auth package's own errors (UNKNOWN)
MAINTENANCE_DENIED = StoreError(Code.UNKNOWN, "auth: permission denied")
MAINTENANCE_USER_EMPTY = StoreError(Code.UNKNOWN, "auth: user name is empty")

FIELDS: dict[str, Any] = {
    "auth_enabled": False,
    "auth_revision": 1,
    "auth_secret": b"",
    "auth_users": {},
    "auth_roles": {},
}
"""The state machine's auth fields and their defaults (a state from before auth lacks them)."""


def init_fields(sm: Any) -> None:
    for name, default in FIELDS.items():
        setattr(sm, name, type(default)(default) if isinstance(default, dict) else default)


# ------------------------------------------------------------------ records


def user(sm: Any, name: str) -> auth_pb2.User | None:
    raw = sm.auth_users.get(name)
    return None if raw is None else auth_pb2.User.FromString(raw)


def role(sm: Any, name: str) -> auth_pb2.Role | None:
    raw = sm.auth_roles.get(name)
    return None if raw is None else auth_pb2.Role.FromString(raw)


def is_root(u: auth_pb2.User | None) -> bool:
    return u is not None and ROOT in u.roles


def hash_password(password: str) -> str:
    """A bcrypt hash (run by the proposer, off the event loop: it takes ~50 ms)."""
    import bcrypt

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_COST)).decode()


def check_password(stored: bytes, password: str) -> bool:
    import bcrypt

    try:
        return bool(bcrypt.checkpw(password.encode(), stored))
    except ValueError:  # not a bcrypt hash (a user added with an unusable hash)
        return False


def new_secret() -> bytes:
    return secrets.token_bytes(SECRET_BYTES)


# ------------------------------------------------------------------- apply


def apply_auth(sm: Any, cmd: tuple[Any, ...]) -> Any:
    """Apply one ``("auth", op, ...)`` command; a StoreError value on refusal."""
    op, args = str(cmd[1]), cmd[2:]
    handler = _APPLY.get(op)
    if handler is None:
        return StoreError(Code.INVALID_ARGUMENT, f"mizzen: unknown auth command {op!r}")
    result = handler(sm, *args)
    if not isinstance(result, StoreError):
        sm.auth_revision += 1
    return result


def _enable(sm: Any, secret: bytes) -> Any:
    if sm.auth_enabled:
        if not sm.auth_secret:  # restored from a snapshot file, which holds no secret
            sm.auth_secret = bytes(secret)
        return rpc_pb2.AuthEnableResponse()
    root = user(sm, ROOT)
    if root is None:
        return ROOT_NOT_EXIST
    if not is_root(root):
        return ROOT_NO_ROLE
    sm.auth_enabled, sm.auth_secret = True, bytes(secret)
    return rpc_pb2.AuthEnableResponse()


def _disable(sm: Any) -> Any:
    sm.auth_enabled, sm.auth_secret = False, b""
    return rpc_pb2.AuthDisableResponse()


def _user_add(sm: Any, name: str, hashed: str, no_password: bool) -> Any:
    if not name:
        return USER_EMPTY
    if name in sm.auth_users:
        return USER_EXISTS
    u = auth_pb2.User(name=name.encode(), password=hashed.encode())
    if no_password:
        u.options.no_password = True
        u.password = b""
    sm.auth_users[name] = u.SerializeToString()
    return rpc_pb2.AuthUserAddResponse()


def _user_delete(sm: Any, name: str) -> Any:
    if sm.auth_enabled and name == ROOT:
        return INVALID_MGMT
    if name not in sm.auth_users:
        return USER_NOT_FOUND
    del sm.auth_users[name]
    return rpc_pb2.AuthUserDeleteResponse()


def _user_password(sm: Any, name: str, hashed: str) -> Any:
    u = user(sm, name)
    if u is None:
        return USER_NOT_FOUND
    u.password = hashed.encode()
    u.options.no_password = False
    sm.auth_users[name] = u.SerializeToString()
    return rpc_pb2.AuthUserChangePasswordResponse()


def _user_grant(sm: Any, name: str, role_name: str) -> Any:
    u = user(sm, name)
    if u is None:
        return USER_NOT_FOUND
    if role_name != ROOT and role_name not in sm.auth_roles:
        return ROLE_NOT_FOUND
    if role_name not in u.roles:
        roles = sorted([*u.roles, role_name])
        del u.roles[:]
        u.roles.extend(roles)
        sm.auth_users[name] = u.SerializeToString()
    return rpc_pb2.AuthUserGrantRoleResponse()


def _user_revoke(sm: Any, name: str, role_name: str) -> Any:
    if sm.auth_enabled and name == ROOT and role_name == ROOT:
        return INVALID_MGMT
    u = user(sm, name)
    if u is None:
        return USER_NOT_FOUND
    if role_name not in u.roles:
        return ROLE_NOT_GRANTED
    roles = [r for r in u.roles if r != role_name]
    del u.roles[:]
    u.roles.extend(roles)
    sm.auth_users[name] = u.SerializeToString()
    return rpc_pb2.AuthUserRevokeRoleResponse()


def _role_add(sm: Any, name: str) -> Any:
    if not name:
        return ROLE_EMPTY
    if name in sm.auth_roles:
        return ROLE_EXISTS
    sm.auth_roles[name] = auth_pb2.Role(name=name.encode()).SerializeToString()
    return rpc_pb2.AuthRoleAddResponse()


def _role_delete(sm: Any, name: str) -> Any:
    if sm.auth_enabled and name == ROOT:
        return INVALID_MGMT
    if name not in sm.auth_roles:
        return ROLE_NOT_FOUND
    del sm.auth_roles[name]
    for uname in list(sm.auth_users):
        u = user(sm, uname)
        if u is not None and name in u.roles:
            roles = [r for r in u.roles if r != name]
            del u.roles[:]
            u.roles.extend(roles)
            sm.auth_users[uname] = u.SerializeToString()
    return rpc_pb2.AuthRoleDeleteResponse()


def _role_grant(sm: Any, name: str, perm_bytes: bytes) -> Any:
    r = role(sm, name)
    if r is None:
        return ROLE_NOT_FOUND
    perm = auth_pb2.Permission.FromString(perm_bytes)
    for have in r.keyPermission:
        if have.key == perm.key and have.range_end == perm.range_end:
            have.permType = perm.permType  # etcd updates the existing permission's type
            break
    else:
        perms = sorted([*r.keyPermission, perm], key=lambda p: p.key)
        del r.keyPermission[:]
        r.keyPermission.extend(perms)
    sm.auth_roles[name] = r.SerializeToString()
    return rpc_pb2.AuthRoleGrantPermissionResponse()


def _role_revoke(sm: Any, name: str, key: bytes, range_end: bytes) -> Any:
    r = role(sm, name)
    if r is None:
        return ROLE_NOT_FOUND
    kept = [p for p in r.keyPermission if not (p.key == key and p.range_end == range_end)]
    if len(kept) == len(r.keyPermission):
        return PERM_NOT_GRANTED
    del r.keyPermission[:]
    r.keyPermission.extend(kept)
    sm.auth_roles[name] = r.SerializeToString()
    return rpc_pb2.AuthRoleRevokePermissionResponse()


_APPLY: dict[str, Any] = {
    "enable": _enable,
    "disable": _disable,
    "user_add": _user_add,
    "user_delete": _user_delete,
    "user_password": _user_password,
    "user_grant": _user_grant,
    "user_revoke": _user_revoke,
    "role_add": _role_add,
    "role_delete": _role_delete,
    "role_grant": _role_grant,
    "role_revoke": _role_revoke,
}


# ------------------------------------------------------------- permissions

READ = "read"
WRITE = "write"
_GRANTS = {
    auth_pb2.Permission.READ: (READ,),
    auth_pb2.Permission.WRITE: (WRITE,),
    auth_pb2.Permission.READWRITE: (READ, WRITE),
}


def _interval(key: bytes, range_end: bytes) -> tuple[bytes, bytes | None]:
    """[lo, hi) of a key or range; hi None: unbounded (range_end "\\0")."""
    if not range_end:
        return key, key + b"\0"
    if range_end == b"\0":
        return key, None
    return key, range_end


def _covered(want: tuple[bytes, bytes | None], have: list[tuple[bytes, bytes | None]]) -> bool:
    """Whether the interval want lies wholly in the union of the intervals have."""
    lo, hi = want
    if hi is not None and hi <= lo:
        return True  # an empty range touches nothing (etcd lets it pass too)
    for start, end in sorted(have, key=lambda iv: iv[0]):
        if start > lo:
            return False
        if end is None:
            return True
        if end > lo:
            lo = end
            if hi is not None and lo >= hi:
                return True
    return False


def granted_ranges(sm: Any, u: auth_pb2.User, verb: str) -> list[tuple[bytes, bytes | None]]:
    out: list[tuple[bytes, bytes | None]] = []
    for role_name in u.roles:
        r = role(sm, role_name)
        if r is None:
            continue
        for p in r.keyPermission:
            if verb in _GRANTS.get(p.permType, ()):
                out.append(_interval(p.key, p.range_end))
    return out


def permitted(sm: Any, name: str, ranges: Iterable[tuple[str, bytes, bytes]]) -> bool:
    """Whether user name may do every (verb, key, range_end) in ranges (verb read/write)."""
    u = user(sm, name)
    if u is None:
        return False
    if is_root(u):
        return True
    cache: dict[str, list[tuple[bytes, bytes | None]]] = {}
    for verb, key, range_end in ranges:
        have = cache.get(verb)
        if have is None:
            have = cache[verb] = granted_ranges(sm, u, verb)
        if not _covered(_interval(key, range_end), have):
            return False
    return True


# ------------------------------------------------------------------ tokens


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, name: str, expiry: int, nonce: str, password: bytes) -> str:
    msg = b"\0".join(
        (name.encode(), str(expiry).encode(), nonce.encode(), hashlib.sha256(password).digest())
    )
    return _b64(hmac.new(secret, msg, hashlib.sha256).digest())


def mint_token(sm: Any, name: str, now: float, ttl: int = TOKEN_TTL) -> str:
    """A token for user name valid until now + ttl (caller checked the password)."""
    u = user(sm, name)
    assert u is not None and sm.auth_secret
    expiry = int(now) + ttl
    nonce = _b64(secrets.token_bytes(12))
    mac = _mac(sm.auth_secret, name, expiry, nonce, u.password)
    return f"{_b64(name.encode())}.{expiry}.{nonce}.{mac}"


def token_user(sm: Any, token: str, now: float) -> str | None:
    """The user a token names, if it is valid now on this state; else None."""
    if not sm.auth_secret:
        return None
    parts = token.split(".")
    if len(parts) != 4 or not parts[1].isdigit():
        return None
    try:
        name = _unb64(parts[0]).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    expiry = int(parts[1])
    if expiry < now:
        return None
    u = user(sm, name)
    if u is None:
        return None
    want = _mac(sm.auth_secret, name, expiry, parts[2], u.password)
    return name if hmac.compare_digest(want, parts[3]) else None
