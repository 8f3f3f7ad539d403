"""etcd's auth store as replicated commands, its permission check and its tokens (pure).

Expected errors are what a real etcd 3.4 answers (tests/integration/
test_etcd_differential_auth.py runs the same against both stores).
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from protos import auth_pb2, rpc_pb2
from store import etcd_auth
from store.errors import StoreError
from store.etcd_auth_interceptor import anonymous_allowed, decide, method_class, token_of
from store.state_machine import StateMachine

HASH = etcd_auth.hash_password("pw")
RW = auth_pb2.Permission.READWRITE
READ = auth_pb2.Permission.READ
WRITE = auth_pb2.Permission.WRITE


def auth(sm: StateMachine, *cmd: Any) -> Any:
    return sm.apply(("auth", *cmd))


def perm(kind: auth_pb2.Permission.Type, key: bytes, end: bytes = b"") -> bytes:
    return auth_pb2.Permission(permType=kind, key=key, range_end=end).SerializeToString()


@pytest.fixture
def sm() -> StateMachine:
    """root (with the root role) and u (role r: readwrite /a/ prefix, read /b)."""
    s = StateMachine()
    auth(s, "user_add", "root", HASH, False)
    auth(s, "user_grant", "root", "root")
    auth(s, "user_add", "u", HASH, False)
    auth(s, "role_add", "r")
    auth(s, "role_grant", "r", perm(RW, b"/a/", b"/a0"))
    auth(s, "role_grant", "r", perm(READ, b"/b"))
    auth(s, "user_grant", "u", "r")
    return s


def test_enable_needs_root_with_the_root_role() -> None:
    s = StateMachine()
    assert auth(s, "enable", b"k" * 32) == etcd_auth.ROOT_NOT_EXIST
    auth(s, "user_add", "root", HASH, False)
    assert auth(s, "enable", b"k" * 32) == etcd_auth.ROOT_NO_ROLE
    auth(s, "user_grant", "root", "root")  # the root role needs no RoleAdd
    assert isinstance(auth(s, "enable", b"k" * 32), rpc_pb2.AuthEnableResponse)
    assert s.auth_enabled and s.auth_secret == b"k" * 32
    assert isinstance(auth(s, "enable", b"x" * 32), rpc_pb2.AuthEnableResponse)
    assert s.auth_secret == b"k" * 32  # enabling again keeps the tokens
    auth(s, "disable")
    assert not s.auth_enabled and s.auth_secret == b""


@pytest.mark.parametrize(
    ("cmd", "error"),
    [
        (("user_add", "", HASH, False), etcd_auth.USER_EMPTY),
        (("user_add", "u", HASH, False), etcd_auth.USER_EXISTS),
        (("user_grant", "nobody", "r"), etcd_auth.USER_NOT_FOUND),
        (("user_grant", "u", "nosuch"), etcd_auth.ROLE_NOT_FOUND),
        (("user_revoke", "u", "nosuch"), etcd_auth.ROLE_NOT_GRANTED),
        (("user_revoke", "nobody", "r"), etcd_auth.USER_NOT_FOUND),
        (("user_password", "nobody", HASH), etcd_auth.USER_NOT_FOUND),
        (("user_delete", "nobody"), etcd_auth.USER_NOT_FOUND),
        (("role_add", ""), etcd_auth.ROLE_EMPTY),
        (("role_add", "r"), etcd_auth.ROLE_EXISTS),
        (("role_delete", "nosuch"), etcd_auth.ROLE_NOT_FOUND),
        (("role_grant", "nosuch", perm(READ, b"/x")), etcd_auth.ROLE_NOT_FOUND),
        (("role_revoke", "r", b"/zz", b""), etcd_auth.PERM_NOT_GRANTED),
        (("role_revoke", "nosuch", b"/zz", b""), etcd_auth.ROLE_NOT_FOUND),
    ],
)
def test_refusals_change_nothing(sm: StateMachine, cmd: tuple[Any, ...], error: StoreError) -> None:
    before = (dict(sm.auth_users), dict(sm.auth_roles), sm.auth_revision)
    assert auth(sm, *cmd) == error
    assert (sm.auth_users, sm.auth_roles, sm.auth_revision) == before


def test_root_is_protected_only_while_auth_is_enabled(sm: StateMachine) -> None:
    auth(sm, "role_add", "root")
    auth(sm, "enable", b"k" * 32)
    for cmd in (("user_revoke", "root", "root"), ("user_delete", "root"), ("role_delete", "root")):
        assert auth(sm, *cmd) == etcd_auth.INVALID_MGMT
    auth(sm, "disable")
    assert isinstance(auth(sm, "user_revoke", "root", "root"), rpc_pb2.AuthUserRevokeRoleResponse)
    assert isinstance(auth(sm, "role_delete", "root"), rpc_pb2.AuthRoleDeleteResponse)


def test_permissions_sorted_by_key_and_updated_in_place(sm: StateMachine) -> None:
    auth(sm, "role_grant", "r", perm(WRITE, b"/b"))  # same key and end: the type changes
    auth(sm, "role_grant", "r", perm(READ, b""))
    role = etcd_auth.role(sm, "r")
    assert role is not None
    assert [(p.key, p.range_end, p.permType) for p in role.keyPermission] == [
        (b"", b"", READ),
        (b"/a/", b"/a0", RW),
        (b"/b", b"", WRITE),
    ]


def test_role_delete_removes_it_from_users(sm: StateMachine) -> None:
    auth(sm, "role_delete", "r")
    u = etcd_auth.user(sm, "u")
    assert u is not None and list(u.roles) == []


def test_every_change_bumps_the_auth_revision_and_the_store_revision_stays(
    sm: StateMachine,
) -> None:
    rev, kv_rev = sm.auth_revision, sm.revision
    resp = auth(sm, "role_add", "q")
    assert sm.auth_revision == rev + 1 and sm.revision == kv_rev
    assert resp.header.revision == kv_rev


def test_permitted_is_etcds_range_check(sm: StateMachine) -> None:
    ok = etcd_auth.permitted
    assert ok(sm, "u", [("read", b"/a/x", b"")])
    assert ok(sm, "u", [("write", b"/a/", b"/a0")])
    assert ok(sm, "u", [("read", b"/a/b", b"/a/c")])
    assert not ok(sm, "u", [("read", b"/a", b"/a0")])  # starts before the grant
    assert not ok(sm, "u", [("read", b"/a0", b"")])  # range_end is exclusive
    assert not ok(sm, "u", [("read", b"/a/", b"\0")])  # to the end of the key space
    assert ok(sm, "u", [("read", b"/b", b"")])
    assert not ok(sm, "u", [("write", b"/b", b"")])
    assert not ok(sm, "u", [("read", b"/b", b"/c")])  # a single-key grant covers one key
    assert not ok(sm, "u", [("read", b"/a/x", b""), ("write", b"/c", b"")])
    assert ok(sm, "root", [("write", b"\0", b"\0")])
    assert not ok(sm, "nobody", [("read", b"/a/x", b"")])


def test_permitted_joins_adjacent_grants(sm: StateMachine) -> None:
    auth(sm, "role_grant", "r", perm(READ, b"/a0", b"/c"))
    auth(sm, "role_grant", "r", perm(READ, b"/z", b"\0"))
    assert etcd_auth.permitted(sm, "u", [("read", b"/a/", b"/c")])
    assert etcd_auth.permitted(sm, "u", [("read", b"/zz", b"\0")])
    assert not etcd_auth.permitted(sm, "u", [("read", b"/a/", b"/d")])


def test_tokens_are_bound_to_secret_user_password_and_time(sm: StateMachine) -> None:
    auth(sm, "enable", b"k" * 32)
    token = etcd_auth.mint_token(sm, "u", now=1000.0, ttl=300)
    assert etcd_auth.token_user(sm, token, 1000.0) == "u"
    assert etcd_auth.token_user(sm, token, 1300.0) == "u"
    assert etcd_auth.token_user(sm, token, 1301.0) is None  # expired
    name, expiry, nonce, mac = token.split(".")
    forged = ".".join((etcd_auth._b64(b"root"), expiry, nonce, mac))
    assert etcd_auth.token_user(sm, forged, 1000.0) is None
    longer = ".".join((name, str(int(expiry) + 1000), nonce, mac))
    assert etcd_auth.token_user(sm, longer, 1000.0) is None
    assert etcd_auth.token_user(sm, "garbage", 1000.0) is None
    auth(sm, "user_password", "u", etcd_auth.hash_password("new"))
    assert etcd_auth.token_user(sm, token, 1000.0) is None  # a password change ends it
    token = etcd_auth.mint_token(sm, "u", now=1000.0)
    auth(sm, "disable")
    auth(sm, "enable", b"j" * 32)
    assert etcd_auth.token_user(sm, token, 1000.0) is None  # a new secret at each enable
    token = etcd_auth.mint_token(sm, "u", now=1000.0)
    auth(sm, "user_delete", "u")
    assert etcd_auth.token_user(sm, token, 1000.0) is None


def test_passwords_are_only_bcrypt_hashes(sm: StateMachine) -> None:
    u = etcd_auth.user(sm, "u")
    assert u is not None and u.password.startswith(b"$2")
    assert etcd_auth.check_password(u.password, "pw")
    assert not etcd_auth.check_password(u.password, "PW")
    assert not etcd_auth.check_password(b"not a hash", "pw")
    auth(sm, "user_add", "np", "", True)
    np = etcd_auth.user(sm, "np")
    assert np is not None and np.options.no_password and np.password == b""


def test_auth_state_survives_a_raft_snapshot_and_old_snapshots_load(sm: StateMachine) -> None:
    auth(sm, "enable", b"k" * 32)
    copy = pickle.loads(pickle.dumps(sm))
    assert copy.auth_users == sm.auth_users and copy.auth_roles == sm.auth_roles
    assert copy.auth_enabled and copy.auth_secret == b"k" * 32
    old = sm.__getstate__()
    for name in etcd_auth.FIELDS:
        del old[name]
    fresh = StateMachine.__new__(StateMachine)
    fresh.__setstate__(old)
    assert fresh.auth_users == {} and not fresh.auth_enabled
    fresh.auth_users["x"] = b""
    assert StateMachine().auth_users == {}  # defaults are not shared


# ------------------------------------------------------------ the decision


def test_method_classes() -> None:
    assert method_class("/etcdserverpb.KV/Range") == "keys"
    assert method_class("/etcdserverpb.Maintenance/Status") == "free"
    assert method_class("/etcdserverpb.KV/Compact") == "token"
    assert method_class("/etcdserverpb.Cluster/MemberAdd") == "root"
    assert method_class("/etcdserverpb.Auth/UserAdd") == "root"
    assert method_class("/v3lockpb.Lock/Lock") == "keys"
    assert method_class("/mizzen.v1.Objects/Get") == "none"


def test_decide(sm: StateMachine) -> None:
    put = rpc_pb2.PutRequest(key=b"/a/x")
    assert decide(sm, "/etcdserverpb.KV/Put", put, None, []) == etcd_auth.USER_EMPTY
    assert decide(sm, "/etcdserverpb.KV/Put", put, "u", []) is None
    other = rpc_pb2.PutRequest(key=b"/c")
    assert decide(sm, "/etcdserverpb.KV/Put", other, "u", []) == etcd_auth.DENIED
    txn = rpc_pb2.TxnRequest(
        compare=[rpc_pb2.Compare(key=b"/c")],
        success=[rpc_pb2.RequestOp(request_put=put)],
    )
    assert decide(sm, "/etcdserverpb.KV/Txn", txn, "u", []) == etcd_auth.DENIED
    revoke = rpc_pb2.LeaseRevokeRequest(ID=1)
    lease = "/etcdserverpb.Lease/LeaseRevoke"
    assert decide(sm, lease, revoke, "u", [b"/a/1"]) is None
    assert decide(sm, lease, revoke, "u", [b"/a/1", b"/b"]) == etcd_auth.DENIED
    hashkv = "/etcdserverpb.Maintenance/HashKV"
    assert decide(sm, hashkv, rpc_pb2.HashKVRequest(), "u", []) == etcd_auth.MAINTENANCE_DENIED
    assert decide(sm, hashkv, rpc_pb2.HashKVRequest(), "root", []) is None
    user_get = "/etcdserverpb.Auth/UserGet"
    assert decide(sm, user_get, rpc_pb2.AuthUserGetRequest(name="u"), "u", []) is None
    assert decide(sm, user_get, rpc_pb2.AuthUserGetRequest(name="root"), "u", []) == (
        etcd_auth.DENIED
    )
    role_get = "/etcdserverpb.Auth/RoleGet"
    assert decide(sm, role_get, rpc_pb2.AuthRoleGetRequest(role="r"), "u", []) is None
    assert decide(sm, "/etcdserverpb.KV/Compact", rpc_pb2.CompactionRequest(), None, []) is None


def test_lock_and_election_need_the_name_prefix(sm: StateMachine) -> None:
    from protos import v3election_pb2, v3lock_pb2

    lock = v3lock_pb2.LockRequest(name=b"/a/lock")
    assert decide(sm, "/v3lockpb.Lock/Lock", lock, "u", []) is None
    outside = v3lock_pb2.LockRequest(name=b"/b")
    assert decide(sm, "/v3lockpb.Lock/Lock", outside, "u", []) == etcd_auth.DENIED
    leader = v3election_pb2.LeaderRequest(name=b"/b")  # read on "/b/..." only: not granted
    assert decide(sm, "/v3electionpb.Election/Leader", leader, "u", []) == etcd_auth.DENIED
    key = v3election_pb2.LeaderKey(name=b"/a/e", key=b"/a/e/1")
    resign = v3election_pb2.ResignRequest(leader=key)
    assert decide(sm, "/v3electionpb.Election/Resign", resign, "u", []) is None


def test_anonymous_keeps_the_controller_role_on_a_plaintext_store() -> None:
    leader = rpc_pb2.PutRequest(key=b"/mizzen/leader/controllers")
    assert anonymous_allowed("/etcdserverpb.KV/Put", leader, [])
    assert not anonymous_allowed("/etcdserverpb.KV/Put", rpc_pb2.PutRequest(key=b"/a"), [])
    revoke, request = "/etcdserverpb.Lease/LeaseRevoke", rpc_pb2.LeaseRevokeRequest(ID=1)
    assert anonymous_allowed(revoke, request, [b"/mizzen/leader/controllers"])
    assert anonymous_allowed(revoke, request, [])  # etcd checks only the lease's keys
    assert not anonymous_allowed(revoke, request, [b"/mizzen/leader/x", b"/a"])
    assert not anonymous_allowed("/etcdserverpb.Auth/UserAdd", rpc_pb2.AuthUserAddRequest(), [])


def test_token_metadata() -> None:
    assert token_of([("token", "t1")]) == "t1"
    assert token_of([("authorization", "t2")]) == "t2"
    assert token_of([("authorization", "Bearer mizzen")]) is None  # Mizzen's own tokens
    assert token_of([("authorization", "t2"), ("token", "t1")]) == "t1"
    assert token_of(None) is None


# -------------------------------------------------- snapshot files (store/snapshot.py)


def test_snapshot_files_keep_users_roles_and_the_switch_not_the_secret(sm: StateMachine) -> None:
    from store import snapshot

    auth(sm, "enable", b"k" * 32)
    restored = snapshot.for_new_cluster(snapshot.decode(snapshot.encode(sm)))
    assert restored.auth_users == sm.auth_users and restored.auth_roles == sm.auth_roles
    assert restored.auth_enabled and restored.auth_secret == b""
    # the first Authenticate proposes an enable: it only draws the secret
    assert isinstance(auth(restored, "enable", b"n" * 32), rpc_pb2.AuthEnableResponse)
    assert restored.auth_secret == b"n" * 32
    auth(restored, "enable", b"x" * 32)
    assert restored.auth_secret == b"n" * 32
    token = etcd_auth.mint_token(restored, "u", now=1.0)
    assert etcd_auth.token_user(restored, token, 1.0) == "u"
    plain = snapshot.decode(snapshot.encode(StateMachine()))
    assert plain.auth_users == {} and not plain.auth_enabled


def _records_file(sm: StateMachine, edit: Any) -> bytes:
    """A snapshot file of sm whose header and user/role records edit(header, users, roles)
    changed."""
    from store import snapshot

    c = snapshot.capture(sm)
    users = [auth_pb2.User.FromString(u) for u in c.users]
    roles = [auth_pb2.Role.FromString(r) for r in c.roles]
    enabled = bool(edit(users, roles))
    return snapshot.encode_captured(
        snapshot.Captured(
            revision=c.revision,
            compacted=c.compacted,
            history_limit=c.history_limit,
            records=c.records,
            leases=c.leases,
            history=c.history,
            users=[u.SerializeToString() for u in users],
            roles=[r.SerializeToString() for r in roles],
            auth_enabled=enabled,
        )
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda users, roles: users.reverse(), "users must be unique and ascending"),
        (lambda users, roles: users.append(users[-1]), "users must be unique and ascending"),
        (lambda users, roles: users[0].ClearField("name"), "user with an empty name"),
        (
            lambda users, roles: [roles[0].keyPermission.add(permType=7, key=b"/x"), 0][1],
            "unknown permission type 7",
        ),
        (lambda users, roles: [users.pop(0), True][1], "no user root with the root role"),
    ],
)
def test_snapshot_files_with_bad_auth_records_are_refused(
    sm: StateMachine, edit: Any, message: str
) -> None:
    from store import snapshot

    data = _records_file(sm, edit)
    with pytest.raises(snapshot.SnapshotError, match=message):
        snapshot.decode(data)
