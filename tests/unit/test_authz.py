"""The store's authorization policy and the per-identity limits, as pure functions.

Two tables: what the AuthInterceptor decides from the identity and the request
alone (``StorePolicy.authorize``), and what the Objects handlers decide on the
stored object the call acts on (``check_stored``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from mizzen.api.kinds import lookup
from mizzen.security.pki import init_pki, issue
from mizzen.security.server_auth import (
    AuthInterceptor,
    Denied,
    Exhausted,
    Identity,
    IdentityLimits,
    Limits,
    RolePolicy,
    TokenBucket,
    bearer_token,
    current_caller,
    identity_from_pem,
)
from mizzen.security.tls import is_loopback
from mizzen.security.tokens import hash_token
from protos import objects_api_pb2 as api
from protos import objects_pb2 as pb
from protos import rpc_pb2
from store.authz import (
    StorePolicy,
    check_config,
    check_fence,
    check_stored,
    check_undecodable,
    refusal,
    within,
)
from store.errors import Code

ADMIN = Identity("admin", "admin")
VIEWER = Identity("vera", "viewer")
CONTROLLER = Identity("controller", "controller")
NODE_A = Identity("node:na", "node")
STORE = Identity("store:10.0.0.1", "store")


def _pod(name: str, node: str) -> pb.Pod:
    p = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace="default"))
    p.spec.node_name = node
    return p


def _node(name: str, unschedulable: bool = False, **labels: str) -> pb.Node:
    n = pb.Node(metadata=pb.ObjectMeta(name=name, labels=labels))
    n.spec.unschedulable = unschedulable
    return n


POLICY = StorePolicy()


def obj(message: Message) -> api.Object:
    out = api.Object()
    field = {
        "Pod": "pod",
        "Node": "node",
        "Lease": "lease",
        "Event": "event",
        "Deployment": "deployment",
        "ConfigMap": "config_map",
        "Secret": "secret",
    }[type(message).__name__]
    getattr(out, field).CopyFrom(message)
    return out


def event(host: str) -> pb.Event:
    e = pb.Event(metadata=pb.ObjectMeta(name="x.1", namespace="default"))
    e.spec.source.host = host
    return e


def lease(name: str, ns: str = "mizzen-node-lease") -> pb.Lease:
    return pb.Lease(metadata=pb.ObjectMeta(name=name, namespace=ns))


OBJ = "/mizzen.v1.Objects/"
KV = "/etcdserverpb.KV/"
CASES: list[tuple[str, Identity, str, Any, str | None]] = [
    # (case, identity, method, request, None if allowed else a fragment of the reason)
    ("admin raw kv", ADMIN, KV + "Put", rpc_pb2.PutRequest(key=b"/registry/x"), None),
    (
        "admin snapshot",
        ADMIN,
        "/etcdserverpb.Maintenance/Snapshot",
        rpc_pb2.SnapshotRequest(),
        None,
    ),
    ("anyone status", STORE, "/etcdserverpb.Maintenance/Status", rpc_pb2.StatusRequest(), None),
    (
        "anyone members",
        NODE_A,
        "/etcdserverpb.Cluster/MemberList",
        rpc_pb2.MemberListRequest(),
        None,
    ),
    ("store no objects", STORE, OBJ + "List", api.ListRequest(kind="pods"), "role store"),
    ("viewer list", VIEWER, OBJ + "List", api.ListRequest(kind="pods"), None),
    ("viewer watch", VIEWER, OBJ + "Watch", api.WatchRequest(kind="nodes"), None),
    (
        "viewer create",
        VIEWER,
        OBJ + "Create",
        api.CreateRequest(object=obj(_pod("p", ""))),
        "viewers",
    ),
    ("viewer delete", VIEWER, OBJ + "Delete", api.DeleteRequest(kind="pods", name="p"), "viewers"),
    (
        "viewer leader key",
        VIEWER,
        KV + "Range",
        rpc_pb2.RangeRequest(key=b"/mizzen/leader/c"),
        None,
    ),
    (
        "viewer registry",
        VIEWER,
        KV + "Range",
        rpc_pb2.RangeRequest(key=b"/registry/"),
        "admin-only",
    ),
    (
        "viewer put leader",
        VIEWER,
        KV + "Put",
        rpc_pb2.PutRequest(key=b"/mizzen/leader/c"),
        "only read",
    ),
    (
        "viewer snapshot",
        VIEWER,
        "/etcdserverpb.Maintenance/Snapshot",
        rpc_pb2.SnapshotRequest(),
        "role viewer",
    ),
    (
        "controller objects",
        CONTROLLER,
        OBJ + "Delete",
        api.DeleteRequest(kind="pods", name="p"),
        None,
    ),
    (
        "controller leader put",
        CONTROLLER,
        KV + "Put",
        rpc_pb2.PutRequest(key=b"/mizzen/leader/c"),
        None,
    ),
    (
        "controller lease",
        CONTROLLER,
        "/etcdserverpb.Lease/LeaseGrant",
        rpc_pb2.LeaseGrantRequest(TTL=3),
        None,
    ),
    (
        "controller put outside",
        CONTROLLER,
        KV + "Put",
        rpc_pb2.PutRequest(key=b"/registry/x"),
        "admin-only",
    ),
    (
        "controller range escapes prefix",
        CONTROLLER,
        KV + "Range",
        rpc_pb2.RangeRequest(key=b"/mizzen/leader/", range_end=b"\0"),
        "admin-only",
    ),
    (
        "controller txn with an outside op",
        CONTROLLER,
        KV + "Txn",
        rpc_pb2.TxnRequest(
            compare=[rpc_pb2.Compare(key=b"/mizzen/leader/c")],
            success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"/registry/x"))],
        ),
        "admin-only",
    ),
    (
        "controller nested txn outside",
        CONTROLLER,
        KV + "Txn",
        rpc_pb2.TxnRequest(
            failure=[
                rpc_pb2.RequestOp(
                    request_txn=rpc_pb2.TxnRequest(
                        success=[
                            rpc_pb2.RequestOp(
                                request_delete_range=rpc_pb2.DeleteRangeRequest(key=b"/a")
                            )
                        ]
                    )
                )
            ]
        ),
        "admin-only",
    ),
    (
        "controller compact",
        CONTROLLER,
        KV + "Compact",
        rpc_pb2.CompactionRequest(revision=5),
        "role controller",
    ),
    (
        "controller defrag",
        CONTROLLER,
        "/etcdserverpb.Maintenance/Defragment",
        rpc_pb2.DefragmentRequest(),
        "role",
    ),
    # NodeRestriction
    ("node own node", NODE_A, OBJ + "Create", api.CreateRequest(object=obj(_node("na"))), None),
    (
        "node other node",
        NODE_A,
        OBJ + "Create",
        api.CreateRequest(object=obj(_node("nb"))),
        "its own Node",
    ),
    (
        "node own status",
        NODE_A,
        OBJ + "UpdateStatus",
        api.UpdateRequest(object=obj(_node("na"))),
        None,
    ),
    (
        "node other status",
        NODE_A,
        OBJ + "UpdateStatus",
        api.UpdateRequest(object=obj(_node("nb"))),
        "own Node",
    ),
    # an update of its own Node: whether the spec changes is decided on the stored Node
    (
        "node own node update",
        NODE_A,
        OBJ + "Update",
        api.UpdateRequest(object=obj(_node("na"))),
        None,
    ),
    (
        "node delete node",
        NODE_A,
        OBJ + "Delete",
        api.DeleteRequest(kind="nodes", name="na"),
        "may not delete",
    ),
    (
        "node get own pod",
        NODE_A,
        OBJ + "Get",
        api.GetRequest(kind="pods", namespace="default", name="on-a"),
        None,
    ),
    # get, update status of, delete a pod: decided on the stored pod (check_stored)
    (
        "node get any pod",
        NODE_A,
        OBJ + "Get",
        api.GetRequest(kind="pods", namespace="default", name="on-b"),
        None,
    ),
    (
        "node list own",
        NODE_A,
        OBJ + "List",
        api.ListRequest(kind="po", field_selector="spec.nodeName=na"),
        None,
    ),
    ("node list all", NODE_A, OBJ + "List", api.ListRequest(kind="pods"), "spec.nodeName=na"),
    (
        "node list negated",
        NODE_A,
        OBJ + "List",
        api.ListRequest(kind="pods", field_selector="spec.nodeName!=na"),
        "spec.nodeName=na",
    ),
    (
        "node watch own",
        NODE_A,
        OBJ + "Watch",
        api.WatchRequest(kind="pods", field_selector="spec.nodeName=na"),
        None,
    ),
    (
        "node watch other",
        NODE_A,
        OBJ + "Watch",
        api.WatchRequest(kind="pods", field_selector="spec.nodeName=nb"),
        "na",
    ),
    (
        "node pod status",
        NODE_A,
        OBJ + "UpdateStatus",
        api.UpdateRequest(object=obj(_pod("on-a", "na"))),
        None,
    ),
    (
        "node pod spec",
        NODE_A,
        OBJ + "Update",
        api.UpdateRequest(object=obj(_pod("on-a", "na"))),
        "spec",
    ),
    (
        "node create pod",
        NODE_A,
        OBJ + "Create",
        api.CreateRequest(object=obj(_pod("new", "na"))),
        "create pods",
    ),
    (
        "node delete own pod",
        NODE_A,
        OBJ + "Delete",
        api.DeleteRequest(kind="pods", namespace="default", name="on-a"),
        None,
    ),
    (
        "node delete any pod",
        NODE_A,
        OBJ + "Delete",
        api.DeleteRequest(kind="pods", namespace="default", name="on-b"),
        None,
    ),
    ("node own lease", NODE_A, OBJ + "Update", api.UpdateRequest(object=obj(lease("na"))), None),
    (
        "node other lease",
        NODE_A,
        OBJ + "Create",
        api.CreateRequest(object=obj(lease("nb"))),
        "own Lease",
    ),
    (
        "node lease elsewhere",
        NODE_A,
        OBJ + "Create",
        api.CreateRequest(object=obj(lease("na", "default"))),
        "own Lease",
    ),
    ("node event", NODE_A, OBJ + "Create", api.CreateRequest(object=obj(event("na"))), None),
    (
        "node event as other",
        NODE_A,
        OBJ + "Create",
        api.CreateRequest(object=obj(event("nb"))),
        "source.host",
    ),
    (
        "node event update as other",
        NODE_A,
        OBJ + "Update",
        api.UpdateRequest(object=obj(event("nb"))),
        "source.host",
    ),
    (
        "node deployments",
        NODE_A,
        OBJ + "List",
        api.ListRequest(kind="deployments"),
        "nodes may not list",
    ),
    (
        "node raw kv",
        NODE_A,
        KV + "Range",
        rpc_pb2.RangeRequest(key=b"/mizzen/leader/x"),
        "admin-only",
    ),
    # ConfigMaps and Secrets
    (
        "viewer get cm",
        VIEWER,
        OBJ + "Get",
        api.GetRequest(kind="cm", namespace="d", name="c"),
        None,
    ),
    ("viewer list cm", VIEWER, OBJ + "List", api.ListRequest(kind="configmaps"), None),
    ("viewer watch cm", VIEWER, OBJ + "Watch", api.WatchRequest(kind="configmaps"), None),
    (
        "viewer get secret",
        VIEWER,
        OBJ + "Get",
        api.GetRequest(kind="secret", namespace="d", name="s"),
        "may not read Secrets",
    ),
    (
        "viewer list secrets",
        VIEWER,
        OBJ + "List",
        api.ListRequest(kind="secrets"),
        "may not read Secrets",
    ),
    (
        "viewer watch secrets",
        VIEWER,
        OBJ + "Watch",
        api.WatchRequest(kind="Secret"),
        "may not read Secrets",
    ),
    (
        "viewer create cm",
        VIEWER,
        OBJ + "Create",
        api.CreateRequest(object=obj(pb.ConfigMap())),
        "viewers may only",
    ),
    ("controller secrets", CONTROLLER, OBJ + "List", api.ListRequest(kind="secrets"), None),
    (
        "admin secrets",
        ADMIN,
        OBJ + "Get",
        api.GetRequest(kind="secrets", namespace="d", name="s"),
        None,
    ),
    # a node's Get: decided on the pods bound to it, in the handler (check_config)
    (
        "node get secret",
        NODE_A,
        OBJ + "Get",
        api.GetRequest(kind="secrets", namespace="d", name="s"),
        None,
    ),
    ("node get cm", NODE_A, OBJ + "Get", api.GetRequest(kind="cm", namespace="d", name="c"), None),
    (
        "node watch one secret",
        NODE_A,
        OBJ + "Watch",
        api.WatchRequest(kind="secrets", namespace="d", field_selector="metadata.name=s"),
        None,
    ),
    (
        "node watch every secret",
        NODE_A,
        OBJ + "Watch",
        api.WatchRequest(kind="secrets", namespace="d"),
        "metadata.name=<name>",
    ),
    (
        "node watch across namespaces",
        NODE_A,
        OBJ + "Watch",
        api.WatchRequest(kind="cm", field_selector="metadata.name=c"),
        "namespace",
    ),
    (
        "node watch negated",
        NODE_A,
        OBJ + "Watch",
        api.WatchRequest(kind="secrets", namespace="d", field_selector="metadata.name!=s"),
        "metadata.name=<name>",
    ),
    (
        "node list secrets",
        NODE_A,
        OBJ + "List",
        api.ListRequest(kind="secrets", namespace="d", field_selector="metadata.name=s"),
        "only get and watch",
    ),
    (
        "node create secret",
        NODE_A,
        OBJ + "Create",
        api.CreateRequest(object=obj(pb.Secret(metadata=pb.ObjectMeta(name="s")))),
        "only get and watch",
    ),
    (
        "node update cm",
        NODE_A,
        OBJ + "Update",
        api.UpdateRequest(object=obj(pb.ConfigMap(metadata=pb.ObjectMeta(name="c")))),
        "only get and watch",
    ),
    (
        "node delete secret",
        NODE_A,
        OBJ + "Delete",
        api.DeleteRequest(kind="secrets", namespace="d", name="s"),
        "only get and watch",
    ),
]


@pytest.mark.parametrize(
    ("case", "who", "method", "request_", "denied"), CASES, ids=[c[0] for c in CASES]
)
async def test_policy(
    case: str, who: Identity, method: str, request_: Any, denied: str | None
) -> None:
    if denied is None:
        await POLICY.authorize(who, method, request_)
        return
    with pytest.raises(Denied) as err:
        await POLICY.authorize(who, method, request_)
    assert denied in str(err.value), case


ON_A, ON_B = _pod("on-a", "na"), _pod("on-b", "nb")
STORED_CASES: list[tuple[str, Identity, str, Message, Message | None, str | None]] = [
    # (case, identity, rpc, stored object, new object sent, None if allowed else a reason fragment)
    ("node get own pod", NODE_A, "Get", ON_A, None, None),
    ("node get other pod", NODE_A, "Get", ON_B, None, "pod default/on-b is not bound to na"),
    ("node pod status", NODE_A, "UpdateStatus", ON_A, _pod("on-a", "na"), None),
    ("node rebinds", NODE_A, "UpdateStatus", ON_A, _pod("on-a", "nb"), "rebind"),
    ("node other pod status", NODE_A, "UpdateStatus", ON_B, _pod("on-b", "na"), "not bound"),
    ("node delete own pod", NODE_A, "Delete", ON_A, None, None),
    ("node delete other pod", NODE_A, "Delete", ON_B, None, "not bound"),
    ("node pod spec", NODE_A, "Update", ON_A, ON_A, "change any pod's spec"),
    ("node own labels", NODE_A, "Update", _node("na"), _node("na", zone="a"), None),
    ("node own spec", NODE_A, "Update", _node("na"), _node("na", True), "spec"),
    # the lagging follower: the stored Node is cordoned, the request keeps it uncordoned
    ("node uncordons itself", NODE_A, "Update", _node("na", True), _node("na"), "spec"),
    ("node own status", NODE_A, "UpdateStatus", _node("na"), _node("na"), None),
    ("node other node", NODE_A, "Update", _node("nb"), _node("nb"), "own Node (na)"),
    ("node delete own node", NODE_A, "Delete", _node("na"), None, "may not delete Nodes"),
    ("node own event", NODE_A, "Update", event("na"), event("na"), None),
    ("node takes over an event", NODE_A, "Update", event("nb"), event("na"), "recorded by 'nb'"),
    ("node gives away an event", NODE_A, "Update", event("na"), event("nb"), "source.host is na"),
    ("node gets an event", NODE_A, "Get", event("na"), None, "nodes may not get events"),
    ("node own lease", NODE_A, "Update", lease("na"), lease("na"), None),
    ("node other lease", NODE_A, "Update", lease("nb"), lease("nb"), "own Lease"),
    (
        "node deployment",
        NODE_A,
        "Get",
        pb.Deployment(metadata=pb.ObjectMeta(name="d", namespace="default")),
        None,
        "nodes may not get deployments",
    ),
    ("admin other pod", ADMIN, "Get", ON_B, None, None),
    ("controller node spec", CONTROLLER, "Update", _node("na", True), _node("na"), None),
    ("viewer other pod", VIEWER, "Get", ON_B, None, None),
]


@pytest.mark.parametrize(
    ("case", "who", "rpc", "stored", "new", "denied"),
    STORED_CASES,
    ids=[c[0] for c in STORED_CASES],
)
def test_stored_state_rules(
    case: str, who: Identity, rpc: str, stored: Message, new: Message | None, denied: str | None
) -> None:
    if denied is None:
        check_stored(who, rpc, stored, new)
        return
    with pytest.raises(Denied) as err:
        check_stored(who, rpc, stored, new)
    assert denied in str(err.value), case


def test_a_stored_denial_names_the_caller_and_the_object() -> None:
    with pytest.raises(Denied) as err:
        check_stored(NODE_A, "Get", ON_B)
    error = refusal(NODE_A, "Get", err.value)
    assert error.code == Code.PERMISSION_DENIED
    assert error.message == (
        "mizzen: node:na (role node) may not get pods/default/on-b: "
        "pod default/on-b is not bound to na"
    )


@pytest.mark.parametrize(
    ("who", "allowed"),
    [(ADMIN, True), (CONTROLLER, True), (VIEWER, False), (NODE_A, False), (STORE, False)],
)
def test_only_controllers_and_admins_fence_writes(who: Identity, allowed: bool) -> None:
    if allowed:
        check_fence(who, "Create")
        return
    with pytest.raises(Denied, match=r"mizzen-fence-key.*only controllers fence their writes"):
        check_fence(who, "Create")


def test_a_node_cannot_act_on_an_undecodable_object() -> None:
    pods = lookup("pods")
    for who in (ADMIN, CONTROLLER):
        check_undecodable(who, "Delete", pods, "default", "broken")
    with pytest.raises(Denied, match="delete pods/default/broken: its stored value does not"):
        check_undecodable(NODE_A, "Delete", pods, "default", "broken")


def test_a_node_identity_needs_its_name() -> None:
    assert Identity("node:n1", "node").node == "n1"
    assert Identity("n1", "node").node is None
    assert Identity("node:n1", "admin").node is None


def test_within() -> None:
    p = b"/mizzen/leader/"
    assert within(b"/mizzen/leader/x", b"", p)
    assert within(b"/mizzen/leader/", b"/mizzen/leader0", p)
    assert not within(b"/mizzen/leader/", b"/mizzen/leader1", p)
    assert not within(b"/mizzen/leader/", b"\0", p)
    assert not within(b"/mizzen/leade", b"", p)


def test_watch_delta_counts_etcd_watch_ids() -> None:
    create = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=b"k"))
    cancel = rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=1))
    method = "/etcdserverpb.Watch/Watch"
    assert POLICY.watch_delta(method, create) == 1
    assert POLICY.watch_delta(method, cancel) == 0  # released by the answer instead
    assert POLICY.watch_delta(OBJ + "Watch", api.WatchRequest()) == 0
    answer = rpc_pb2.WatchResponse
    assert POLICY.watch_answer(method, answer(watch_id=3, created=True)) == ("opened", 3)
    refused = answer(watch_id=-1, created=True, canceled=True)
    assert POLICY.watch_answer(method, refused) == ("refused", -1)
    assert POLICY.watch_answer(method, answer(watch_id=3, canceled=True)) == ("closed", 3)
    assert POLICY.watch_answer(method, answer(watch_id=3)) is None  # events
    assert POLICY.watch_answer(OBJ + "Watch", answer(created=True)) is None
    # as the watch hub sends them: bytes, events and all
    event = rpc_pb2.WatchResponse(watch_id=7, canceled=True, cancel_reason="x")
    event.header.revision = 12
    event.events.add().kv.key = b"k"
    assert POLICY.watch_answer(method, event.SerializeToString()) == ("closed", 7)
    assert POLICY.watch_answer(method, refused.SerializeToString()) == ("refused", -1)
    assert POLICY.watch_answer(method, answer(watch_id=2).SerializeToString()) is None


def test_identity_from_certificates(tmp_path: Path) -> None:
    init_pki(tmp_path, hosts=["10.0.0.1"], nodes=["n1"])
    issue(tmp_path, "vera", "viewer")
    read = lambda name: identity_from_pem((tmp_path / f"{name}.crt").read_bytes())  # noqa: E731
    assert read("admin") == Identity("admin", "admin")
    assert read("vera") == Identity("vera", "viewer")
    assert read("controller") == Identity("controller", "controller")
    assert read("node-n1") == Identity("node:n1", "node")
    assert read("store-10.0.0.1") == Identity("store:10.0.0.1", "store")
    assert read("ca") is None  # no mizzen role
    assert identity_from_pem(b"garbage") is None


def test_token_bucket_and_watch_limits() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 1.0
    assert [bucket.take() for _ in range(3)] == [True, True, False]

    limits = IdentityLimits(Limits(rate=1, burst=1, max_watches=2), clock=lambda: now[0])
    limits.request(VIEWER)
    with pytest.raises(Exhausted, match="rate limit exceeded for vera"):
        limits.request(VIEWER)
    limits.request(ADMIN)  # its own bucket
    limits.open_watches(VIEWER, 2)
    with pytest.raises(Exhausted, match="too many watches for vera: limit 2"):
        limits.open_watches(VIEWER, 1)
    limits.open_watches(VIEWER, -2)
    assert limits.watches == {}
    unlimited = IdentityLimits(Limits(rate=0, max_watches=0))
    for _ in range(100):
        unlimited.request(VIEWER)
    unlimited.open_watches(VIEWER, 10_000)


def test_bearer_token_and_loopback() -> None:
    assert bearer_token((("authorization", "Bearer abc "),)) == "abc"
    assert bearer_token((("authorization", "Basic abc"),)) is None
    assert bearer_token(None) is None
    assert is_loopback("127.0.0.1:2379") and is_loopback("[::1]:1") and is_loopback("localhost:1")
    assert not is_loopback("0.0.0.0:2379") and not is_loopback("198.18.0.11:2379")
    assert not is_loopback(":2379") and not is_loopback("example.com:1")


def test_expired_certificate_still_names_its_identity(tmp_path: Path) -> None:
    """Expiry is the TLS handshake's job (tests/integration/test_security.py), not the parser's."""
    init_pki(tmp_path, hosts=["10.0.0.1"], nodes=[])
    now = dt.datetime.now(dt.UTC)
    issue(
        tmp_path,
        "old",
        "admin",
        not_before=now - dt.timedelta(days=2),
        not_after=now - dt.timedelta(days=1),
    )
    assert identity_from_pem((tmp_path / "old.crt").read_bytes()) == Identity("old", "admin")


async def test_the_interceptor_hands_each_call_its_own_caller() -> None:
    """Handlers read the caller from CALLER: each call sees its own, even interleaved, and
    nothing is left behind for a call the interceptor did not see."""
    seen: list[tuple[str, str | None]] = []
    entered: list[str] = []
    release = asyncio.Event()

    async def who(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        before = current_caller()
        entered.append(request.decode())
        await release.wait()  # until all three calls are here: interleaved
        after = current_caller()
        assert before == after
        seen.append((request.decode(), after.name if after else None))
        return b""

    handler = grpc.method_handlers_generic_handler(
        "t.T", {"Who": grpc.unary_unary_rpc_method_handler(who)}
    )
    tokens = {hash_token("tok-a"): ("alice", "viewer"), hash_token("tok-b"): ("bob", "admin")}
    interceptor = AuthInterceptor(RolePolicy(frozenset({"viewer"}), "call"), tokens=tokens)
    server = grpc.aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers([handler])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/t.T/Who", None, None)

            def send(token: str) -> Any:
                return call(token.encode(), metadata=(("authorization", f"Bearer {token}"),))

            calls = [asyncio.ensure_future(send(t)) for t in ("tok-a", "tok-b", "tok-a")]
            while len(entered) < len(calls):
                await asyncio.sleep(0.01)
            release.set()
            await asyncio.gather(*calls)
    finally:
        await server.stop(None)
    assert sorted(seen) == [("tok-a", "alice"), ("tok-a", "alice"), ("tok-b", "bob")]
    assert current_caller() is None


# ------------------------------------------------------------------ the node authorizer

SECRETS, CONFIGMAPS = lookup("secrets"), lookup("configmaps")
# what pods bound to each node refer to: (node, namespace, kind, name)
REFERRED = {
    ("na", "d", "Secret", "mine"),
    ("na", "d", "ConfigMap", "conf"),
    ("nb", "d", "Secret", "b"),
}


def _refers(node: str, ns: str, kind: str, name: str) -> bool:
    return (node, ns, kind, name) in REFERRED


CONFIG_CASES: list[tuple[str, Identity, str, Any, str, str | None]] = [
    # (case, identity, rpc, kind, name, None if allowed else a fragment of the reason)
    ("own pod's secret", NODE_A, "Get", SECRETS, "mine", None),
    ("own pod's secret watched", NODE_A, "Watch", SECRETS, "mine", None),
    ("own pod's config map", NODE_A, "Get", CONFIGMAPS, "conf", None),
    (
        "another node's pod's secret",
        NODE_A,
        "Get",
        SECRETS,
        "b",
        "no pod bound to na refers to Secret d/b",
    ),
    ("another node's secret watched", NODE_A, "Watch", SECRETS, "b", "no pod bound to na"),
    ("nobody's secret", NODE_A, "Get", SECRETS, "missing", "no pod bound to na"),
    (
        "same name, other kind",
        NODE_A,
        "Get",
        CONFIGMAPS,
        "mine",
        "no pod bound to na refers to ConfigMap",
    ),
    ("own but a write", NODE_A, "Update", SECRETS, "mine", "only get and watch"),
    ("admin any", ADMIN, "Get", SECRETS, "b", None),
    ("controller any", CONTROLLER, "Watch", SECRETS, "b", None),
]


@pytest.mark.parametrize(
    ("case", "who", "rpc", "info", "name", "denied"),
    CONFIG_CASES,
    ids=[c[0] for c in CONFIG_CASES],
)
def test_node_authorizer_for_config_objects(
    case: str, who: Identity, rpc: str, info: Any, name: str, denied: str | None
) -> None:
    if denied is None:
        check_config(who, rpc, info, "d", name, _refers)
        return
    with pytest.raises(Denied) as err:
        check_config(who, rpc, info, "d", name, _refers)
    assert denied in str(err.value), case
    message = refusal(who, rpc, err.value).message
    assert message.startswith(f"mizzen: node:na (role node) may not {rpc.lower()} ")
