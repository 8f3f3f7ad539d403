"""Lock and Election, pure parts: who may call them (the raw KV rules on the name's prefix),
the session key, and the status each error is sent with."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from mizzen.security.server_auth import Denied, Identity
from protos import v3election_pb2 as el
from protos import v3lock_pb2 as lk
from store.authz import WATCH_METHODS, StorePolicy, key_ranges
from store.lock_service import session_key

ADMIN = Identity("admin", "admin")
VIEWER = Identity("vera", "viewer")
CONTROLLER = Identity("controller", "controller")
NODE = Identity("node:na", "node")
LOCK = "/v3lockpb.Lock/"
ELECTION = "/v3electionpb.Election/"
MINE = b"/mizzen/leader/x"
OTHER = b"/registry/x"


def _leader(key: bytes) -> el.LeaderKey:
    return el.LeaderKey(name=b"n", key=key, rev=3, lease=7)


CASES: list[tuple[str, Identity, str, Any, str | None]] = [
    # (case, identity, method, request, None if allowed else a fragment of the refusal)
    ("admin lock anywhere", ADMIN, LOCK + "Lock", lk.LockRequest(name=OTHER), None),
    ("admin observe anywhere", ADMIN, ELECTION + "Observe", el.LeaderRequest(name=OTHER), None),
    ("controller lock", CONTROLLER, LOCK + "Lock", lk.LockRequest(name=MINE, lease=1), None),
    ("controller unlock", CONTROLLER, LOCK + "Unlock", lk.UnlockRequest(key=MINE + b"/1"), None),
    (
        "controller lock elsewhere",
        CONTROLLER,
        LOCK + "Lock",
        lk.LockRequest(name=OTHER),
        "admin-only outside /mizzen/leader/",
    ),
    (
        "controller unlock elsewhere",
        CONTROLLER,
        LOCK + "Unlock",
        lk.UnlockRequest(key=OTHER),
        "admin-only outside",
    ),
    (
        "controller campaign",
        CONTROLLER,
        ELECTION + "Campaign",
        el.CampaignRequest(name=MINE, value=b"v"),
        None,
    ),
    (
        "controller proclaim",
        CONTROLLER,
        ELECTION + "Proclaim",
        el.ProclaimRequest(leader=_leader(MINE + b"/7")),
        None,
    ),
    (
        "controller proclaims another key",
        CONTROLLER,
        ELECTION + "Proclaim",
        el.ProclaimRequest(leader=_leader(OTHER)),
        "admin-only outside",
    ),
    (
        "controller resign without leader",
        CONTROLLER,
        ELECTION + "Resign",
        el.ResignRequest(),
        "admin-only outside",
    ),
    ("viewer leader", VIEWER, ELECTION + "Leader", el.LeaderRequest(name=MINE), None),
    ("viewer observe", VIEWER, ELECTION + "Observe", el.LeaderRequest(name=MINE), None),
    (
        "viewer campaign",
        VIEWER,
        ELECTION + "Campaign",
        el.CampaignRequest(name=MINE),
        "viewers may only read",
    ),
    ("viewer lock", VIEWER, LOCK + "Lock", lk.LockRequest(name=MINE), "viewers may only read"),
    (
        "viewer leader elsewhere",
        VIEWER,
        ELECTION + "Leader",
        el.LeaderRequest(name=OTHER),
        "admin-only outside",
    ),
    ("node lock", NODE, LOCK + "Lock", lk.LockRequest(name=MINE), "the raw KV API is admin-only"),
    (
        "node observe",
        NODE,
        ELECTION + "Observe",
        el.LeaderRequest(name=MINE),
        "the raw KV API is admin-only",
    ),
]


@pytest.mark.parametrize(
    ("case", "who", "method", "request_", "denied"), CASES, ids=[c[0] for c in CASES]
)
async def test_lock_and_election_follow_the_raw_kv_rules(
    case: str, who: Identity, method: str, request_: Any, denied: str | None
) -> None:
    if denied is None:
        await StorePolicy().authorize(who, method, request_)
        return
    with pytest.raises(Denied) as err:
        await StorePolicy().authorize(who, method, request_)
    assert denied in str(err.value), case


def test_the_ranges_are_the_name_prefix_or_the_given_key() -> None:
    assert list(key_ranges(LOCK + "Lock", lk.LockRequest(name=b"a"))) == [
        ("read", b"a/", b"a0"),  # it ranges and watches the prefix
        ("write", b"a/", b"a0"),
    ]
    assert list(key_ranges(ELECTION + "Leader", el.LeaderRequest(name=b"a"))) == [
        ("read", b"a/", b"a0")
    ]
    assert list(key_ranges(LOCK + "Unlock", lk.UnlockRequest(key=b"a/1"))) == [
        ("write", b"a/1", b"")
    ]
    resign = el.ResignRequest(leader=_leader(b"a/7"))
    assert list(key_ranges(ELECTION + "Resign", resign)) == [
        ("read", b"a/7", b""),  # it compares the key's revision
        ("write", b"a/7", b""),
    ]


def test_observe_is_a_counted_watch_stream() -> None:
    assert ELECTION + "Observe" in WATCH_METHODS


def test_session_key_is_the_lease_in_hex_as_go_prints_it() -> None:
    assert session_key(b"n/", 0x6A0A253836DE205) == b"n/6a0a253836de205"
    assert session_key(b"n/", -1) == b"n/-1"


def test_errors_are_unknown_as_etcd_sends_them_except_transient_ones() -> None:
    from mizzen import retry_after
    from store.errors import Code, StoreError
    from store.lock_service import _status_for

    lost = StoreError(Code.NOT_FOUND, "etcdserver: requested lease not found")
    assert _status_for(lost) == (grpc.StatusCode.UNKNOWN, "etcdserver: requested lease not found")
    gone = StoreError(Code.UNAVAILABLE, "etcdserver: no leader")
    assert _status_for(gone) == (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")
    busy = StoreError(Code.RESOURCE_EXHAUSTED, "etcdserver: too many requests", retry_after=2.0)
    assert _status_for(busy) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "etcdserver: too many requests",
        retry_after.trailer(2.0),
    )
    assert _status_for(ValueError("a bug")) is None
