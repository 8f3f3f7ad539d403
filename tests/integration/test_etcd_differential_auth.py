"""etcd's Auth service and its enforcement, side by side with etcd 3.4
(tests/integration/etcd_differential.py).

Users and roles are cluster-wide, not under the test's key prefix, so each
scenario removes what it created and turns auth off again (also on failure).
Tokens differ by design (etcd's are random, Mizzen's signed) and are not
compared; what they allow is. AuthStatus is absent from etcd 3.4 (Mizzen
answers it as etcd 3.5 does): it is not called here.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import grpc
import pytest
from etcd_differential import Pair, Trace, assert_same

from protos import auth_pb2, rpc_pb2, rpc_pb2_grpc

pytestmark = [pytest.mark.compat, pytest.mark.timeout(180)]

TwoMembers = Callable[[Trace, grpc.aio.Channel], Awaitable[None]]
NO_TOKEN = frozenset({"token"})


async def same_on_two_members(pair: Pair, scenario: TwoMembers) -> None:
    """Like Pair.same, with a channel to a second member of each store."""
    prefix = f"/diff/{uuid.uuid4().hex[:8]}/".encode()
    traces = []
    for side in (pair.etcd, pair.mizzen):
        async with side.channel(0) as first, side.channel(1) as second:
            trace = Trace(channel=first, prefix=prefix, side=side.name)
            try:
                await scenario(trace, second)
            finally:
                await cleanup(first)
            traces.append(trace.entries)
    assert_same(*traces)


async def cleanup(channel: grpc.aio.Channel) -> None:
    """Auth off, users and roles gone (as root when auth is still on)."""
    auth = rpc_pb2_grpc.AuthStub(channel)
    md: tuple[tuple[str, str], ...] = ()
    try:
        root = await auth.Authenticate(rpc_pb2.AuthenticateRequest(name="root", password="rootpw"))
        md = (("token", root.token),)
    except grpc.aio.AioRpcError:
        pass
    await auth.AuthDisable(rpc_pb2.AuthDisableRequest(), metadata=md)
    for user in (await auth.UserList(rpc_pb2.AuthUserListRequest())).users:
        await auth.UserDelete(rpc_pb2.AuthUserDeleteRequest(name=user))
    for role in (await auth.RoleList(rpc_pb2.AuthRoleListRequest())).roles:
        await auth.RoleDelete(rpc_pb2.AuthRoleDeleteRequest(role=role))


def perm(kind: auth_pb2.Permission.Type, key: bytes, end: bytes = b"") -> auth_pb2.Permission:
    return auth_pb2.Permission(permType=kind, key=key, range_end=end)


async def users_and_roles(trace: Trace, second: grpc.aio.Channel) -> None:
    """Every admin method, with success and each refusal, while auth is off."""
    kv = rpc_pb2_grpc.KVStub(trace.channel)
    trace.base = (await kv.Put(rpc_pb2.PutRequest(key=trace.key("base")))).header.revision
    a = rpc_pb2_grpc.AuthStub(trace.channel)
    c = trace.call
    await c("enable without root", a.AuthEnable(rpc_pb2.AuthEnableRequest()))
    await c("user add empty", a.UserAdd(rpc_pb2.AuthUserAddRequest(name="", password="x")))
    await c("user add root", a.UserAdd(rpc_pb2.AuthUserAddRequest(name="root", password="rootpw")))
    await c("user add root again", a.UserAdd(rpc_pb2.AuthUserAddRequest(name="root", password="x")))
    opts = auth_pb2.UserAddOptions(no_password=True)
    await c("user add no password", a.UserAdd(rpc_pb2.AuthUserAddRequest(name="np", options=opts)))
    await c("enable, root lacks role", a.AuthEnable(rpc_pb2.AuthEnableRequest()))
    grant = rpc_pb2.AuthUserGrantRoleRequest
    await c("grant to nobody", a.UserGrantRole(grant(user="nobody", role="root")))
    await c("grant unknown role", a.UserGrantRole(grant(user="root", role="nosuch")))
    await c("grant root role", a.UserGrantRole(grant(user="root", role="root")))
    await c("grant root role again", a.UserGrantRole(grant(user="root", role="root")))
    await c("role add empty", a.RoleAdd(rpc_pb2.AuthRoleAddRequest(name="")))
    await c("role add r", a.RoleAdd(rpc_pb2.AuthRoleAddRequest(name="r")))
    await c("role add r again", a.RoleAdd(rpc_pb2.AuthRoleAddRequest(name="r")))
    await c("role get unknown", a.RoleGet(rpc_pb2.AuthRoleGetRequest(role="nosuch")))
    gp = rpc_pb2.AuthRoleGrantPermissionRequest
    rw, read, write = (
        auth_pb2.Permission.READWRITE,
        auth_pb2.Permission.READ,
        auth_pb2.Permission.WRITE,
    )
    await c(
        "grant rw prefix",
        a.RoleGrantPermission(gp(name="r", perm=perm(read, trace.key("a/"), trace.key("a0")))),
    )
    await c(
        "grant same again as rw",
        a.RoleGrantPermission(gp(name="r", perm=perm(rw, trace.key("a/"), trace.key("a0")))),
    )
    await c(
        "grant write key", a.RoleGrantPermission(gp(name="r", perm=perm(write, trace.key("b"))))
    )
    await c(
        "grant read earlier key",
        a.RoleGrantPermission(gp(name="r", perm=perm(read, trace.key("0")))),
    )
    await c(
        "grant to unknown role",
        a.RoleGrantPermission(gp(name="nosuch", perm=perm(read, trace.key("b")))),
    )
    await c("role get r", a.RoleGet(rpc_pb2.AuthRoleGetRequest(role="r")))
    rp = rpc_pb2.AuthRoleRevokePermissionRequest
    await c("revoke ungranted", a.RoleRevokePermission(rp(role="r", key=trace.key("zz"))))
    await c(
        "revoke from unknown role", a.RoleRevokePermission(rp(role="nosuch", key=trace.key("b")))
    )
    await c("revoke read key", a.RoleRevokePermission(rp(role="r", key=trace.key("0"))))
    await c("user add u", a.UserAdd(rpc_pb2.AuthUserAddRequest(name="u", password="upw")))
    await c("grant r to u", a.UserGrantRole(grant(user="u", role="r")))
    await c("user get u", a.UserGet(rpc_pb2.AuthUserGetRequest(name="u")))
    await c("user get unknown", a.UserGet(rpc_pb2.AuthUserGetRequest(name="nobody")))
    await c("user list", a.UserList(rpc_pb2.AuthUserListRequest()))
    await c("role list", a.RoleList(rpc_pb2.AuthRoleListRequest()))
    rr = rpc_pb2.AuthUserRevokeRoleRequest
    await c("revoke ungranted role", a.UserRevokeRole(rr(name="u", role="nosuch")))
    await c("revoke role of nobody", a.UserRevokeRole(rr(name="nobody", role="r")))
    cp = rpc_pb2.AuthUserChangePasswordRequest
    await c("password of nobody", a.UserChangePassword(cp(name="nobody", password="x")))
    await c("password of u", a.UserChangePassword(cp(name="u", password="upw2")))
    auth_u = rpc_pb2.AuthenticateRequest(name="u", password="upw2")
    await c("authenticate while off", a.Authenticate(auth_u))
    await c("role delete r", a.RoleDelete(rpc_pb2.AuthRoleDeleteRequest(role="r")))
    await c("user get u without r", a.UserGet(rpc_pb2.AuthUserGetRequest(name="u")))
    await c("role delete unknown", a.RoleDelete(rpc_pb2.AuthRoleDeleteRequest(role="r")))
    await c("user delete u", a.UserDelete(rpc_pb2.AuthUserDeleteRequest(name="u")))
    await c("user delete unknown", a.UserDelete(rpc_pb2.AuthUserDeleteRequest(name="u")))
    await c("revoke root role while off", a.UserRevokeRole(rr(name="root", role="root")))
    # a token while auth is off is unknown: refused as invalid
    bogus = (("token", "bogus"),)
    await c(
        "put with a token while off", kv.Put(rpc_pb2.PutRequest(key=trace.key("x")), metadata=bogus)
    )


async def enforcement(trace: Trace, second: grpc.aio.Channel) -> None:
    """Auth on: who may do what, on two members; revocations count at once."""
    kv = rpc_pb2_grpc.KVStub(trace.channel)
    trace.base = (await kv.Put(rpc_pb2.PutRequest(key=trace.key("base")))).header.revision
    a = rpc_pb2_grpc.AuthStub(trace.channel)
    c = trace.call
    rw, write = auth_pb2.Permission.READWRITE, auth_pb2.Permission.WRITE
    await a.UserAdd(rpc_pb2.AuthUserAddRequest(name="root", password="rootpw"))
    await a.UserGrantRole(rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"))
    await a.UserAdd(rpc_pb2.AuthUserAddRequest(name="u", password="upw"))
    await a.UserAdd(
        rpc_pb2.AuthUserAddRequest(name="np", options=auth_pb2.UserAddOptions(no_password=True))
    )
    await a.RoleAdd(rpc_pb2.AuthRoleAddRequest(name="r"))
    gp = rpc_pb2.AuthRoleGrantPermissionRequest
    await a.RoleGrantPermission(gp(name="r", perm=perm(rw, trace.key("a/"), trace.key("a0"))))
    await a.RoleGrantPermission(gp(name="r", perm=perm(write, trace.key("b"))))
    await a.UserGrantRole(rpc_pb2.AuthUserGrantRoleRequest(user="u", role="r"))
    await c("enable", a.AuthEnable(rpc_pb2.AuthEnableRequest()))
    await c("enable again without token", a.AuthEnable(rpc_pb2.AuthEnableRequest()))

    auth = a.Authenticate
    await c("authenticate bad password", auth(rpc_pb2.AuthenticateRequest(name="u", password="no")))
    await c("authenticate nobody", auth(rpc_pb2.AuthenticateRequest(name="nobody", password="no")))
    await c("authenticate empty", auth(rpc_pb2.AuthenticateRequest()))
    await c(
        "authenticate no-password user", auth(rpc_pb2.AuthenticateRequest(name="np", password=""))
    )
    u_token = await c(
        "authenticate u", auth(rpc_pb2.AuthenticateRequest(name="u", password="upw")), NO_TOKEN
    )
    root_token = await c(
        "authenticate root",
        auth(rpc_pb2.AuthenticateRequest(name="root", password="rootpw")),
        NO_TOKEN,
    )
    assert isinstance(u_token, rpc_pb2.AuthenticateResponse)
    assert isinstance(root_token, rpc_pb2.AuthenticateResponse)
    u = (("token", u_token.token),)
    root = (("token", root_token.token),)
    bogus = (("token", "bogus"),)
    await c(
        "authenticate with a bogus token",
        auth(rpc_pb2.AuthenticateRequest(name="u", password="upw"), metadata=bogus),
    )
    await c("enable again as root", a.AuthEnable(rpc_pb2.AuthEnableRequest(), metadata=root))

    put = rpc_pb2.PutRequest
    rng = rpc_pb2.RangeRequest
    await c("put without token", kv.Put(put(key=trace.key("a/x"), value=b"1")))
    await c("range without token", kv.Range(rng(key=trace.key("a/x"))))
    await c("put bogus token", kv.Put(put(key=trace.key("a/x"), value=b"1"), metadata=bogus))
    await c("put allowed", kv.Put(put(key=trace.key("a/x"), value=b"1"), metadata=u))
    await c(
        "range allowed", kv.Range(rng(key=trace.key("a/"), range_end=trace.key("a0")), metadata=u)
    )
    await c(
        "range wider than grant",
        kv.Range(rng(key=trace.key("a"), range_end=trace.key("a0")), metadata=u),
    )
    await c("range at grant end", kv.Range(rng(key=trace.key("a0")), metadata=u))
    await c("put outside", kv.Put(put(key=trace.key("c"), value=b"1"), metadata=u))
    await c("put write-only key", kv.Put(put(key=trace.key("b"), value=b"1"), metadata=u))
    await c("range write-only key", kv.Range(rng(key=trace.key("b")), metadata=u))
    await c(
        "serializable range allowed",
        kv.Range(rng(key=trace.key("a/x"), serializable=True), metadata=u),
    )
    txn = rpc_pb2.TxnRequest
    op = rpc_pb2.RequestOp
    cmp_b = rpc_pb2.Compare(key=trace.key("b"), target=rpc_pb2.Compare.VERSION, version=0)
    cmp_a = rpc_pb2.Compare(key=trace.key("a/x"), target=rpc_pb2.Compare.VERSION, version=1)
    await c(
        "txn compare on write-only key",
        kv.Txn(
            txn(compare=[cmp_b], success=[op(request_put=put(key=trace.key("a/y")))]), metadata=u
        ),
    )
    await c(
        "txn failure branch outside",
        kv.Txn(
            txn(
                compare=[cmp_a],
                success=[op(request_put=put(key=trace.key("a/y")))],
                failure=[op(request_put=put(key=trace.key("c")))],
            ),
            metadata=u,
        ),
    )
    await c(
        "txn allowed",
        kv.Txn(
            txn(
                compare=[cmp_a],
                success=[
                    op(request_put=put(key=trace.key("a/y"))),
                    op(request_range=rng(key=trace.key("a/x"))),
                ],
            ),
            metadata=u,
        ),
    )
    await c(
        "delete allowed",
        kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=trace.key("a/y")), metadata=u),
    )
    await c(
        "delete outside", kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=trace.key("c")), metadata=u)
    )

    # the token works on another member
    kv2 = rpc_pb2_grpc.KVStub(second)
    a2 = rpc_pb2_grpc.AuthStub(second)
    await c("put on member 2", kv2.Put(put(key=trace.key("a/z"), value=b"2"), metadata=u))
    await c("put outside on member 2", kv2.Put(put(key=trace.key("c"), value=b"2"), metadata=u))

    await c(
        "user get self on member 2", a2.UserGet(rpc_pb2.AuthUserGetRequest(name="u"), metadata=u)
    )
    await c("user list on member 2", a2.UserList(rpc_pb2.AuthUserListRequest(), metadata=u))

    # leases: grant needs nothing, revoke needs write on every key of the lease
    lease = rpc_pb2_grpc.LeaseStub(trace.channel)
    grant = await c(
        "lease grant without token", lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60))
    )
    assert isinstance(grant, rpc_pb2.LeaseGrantResponse)
    await c("put with lease", kv.Put(put(key=trace.key("a/l"), lease=grant.ID), metadata=u))
    await c(
        "root puts c with lease", kv.Put(put(key=trace.key("c"), lease=grant.ID), metadata=root)
    )
    revoke = rpc_pb2.LeaseRevokeRequest(ID=grant.ID)
    await c("revoke lease with c: denied", lease.LeaseRevoke(revoke, metadata=u))
    await c("revoke lease without token", lease.LeaseRevoke(revoke))
    await c("revoke lease as root", lease.LeaseRevoke(revoke, metadata=root))

    # admin methods: root only; own user and role readable
    await c("user list as u", a.UserList(rpc_pb2.AuthUserListRequest(), metadata=u))
    await c("user list without token", a.UserList(rpc_pb2.AuthUserListRequest()))
    await c("user list as root", a.UserList(rpc_pb2.AuthUserListRequest(), metadata=root))
    await c("user get self", a.UserGet(rpc_pb2.AuthUserGetRequest(name="u"), metadata=u))
    await c("user get root as u", a.UserGet(rpc_pb2.AuthUserGetRequest(name="root"), metadata=u))
    await c("role get own", a.RoleGet(rpc_pb2.AuthRoleGetRequest(role="r"), metadata=u))
    await c("role add as u", a.RoleAdd(rpc_pb2.AuthRoleAddRequest(name="q"), metadata=u))
    await c(
        "member add as u",
        rpc_pb2_grpc.ClusterStub(trace.channel).MemberAdd(
            rpc_pb2.MemberAddRequest(peerURLs=["http://127.0.0.1:1"]), metadata=u
        ),
    )
    mt = rpc_pb2_grpc.MaintenanceStub(trace.channel)
    await c("hashkv as u", mt.HashKV(rpc_pb2.HashKVRequest(), metadata=u))
    await c("defragment as u", mt.Defragment(rpc_pb2.DefragmentRequest(), metadata=u))
    rr = rpc_pb2.AuthUserRevokeRoleRequest
    await c(
        "revoke root's root role", a.UserRevokeRole(rr(name="root", role="root"), metadata=root)
    )
    await c("delete root", a.UserDelete(rpc_pb2.AuthUserDeleteRequest(name="root"), metadata=root))
    await c(
        "delete root role", a.RoleDelete(rpc_pb2.AuthRoleDeleteRequest(role="root"), metadata=root)
    )

    # a revoked permission counts from the next request, on any member
    rp = rpc_pb2.AuthRoleRevokePermissionRequest
    await c(
        "revoke a/ from r",
        a.RoleRevokePermission(
            rp(role="r", key=trace.key("a/"), range_end=trace.key("a0")), metadata=root
        ),
    )
    # (a linearizable read first: etcd answers "revision of auth store is old" to a
    # request that reached a member before it applied the revocation)
    await c("root reads on member 2", kv2.Range(rng(key=trace.key("b")), metadata=root))
    await c(
        "put after revoke, member 2", kv2.Put(put(key=trace.key("a/x"), value=b"3"), metadata=u)
    )
    await c("put b still allowed", kv2.Put(put(key=trace.key("b"), value=b"3"), metadata=u))
    # a password change ends the user's tokens
    cp = rpc_pb2.AuthUserChangePasswordRequest
    await c(
        "change u's password", a.UserChangePassword(cp(name="u", password="new"), metadata=root)
    )
    await c(
        "old token after password change", kv.Put(put(key=trace.key("b"), value=b"4"), metadata=u)
    )
    new = await c(
        "authenticate with new password",
        auth(rpc_pb2.AuthenticateRequest(name="u", password="new")),
        NO_TOKEN,
    )
    assert isinstance(new, rpc_pb2.AuthenticateResponse)
    u = (("token", new.token),)
    await c("put b with new token", kv.Put(put(key=trace.key("b"), value=b"5"), metadata=u))
    # a deleted user's token stops working
    await c("delete u", a.UserDelete(rpc_pb2.AuthUserDeleteRequest(name="u"), metadata=root))
    await c("root reads on member 2 again", kv2.Range(rng(key=trace.key("b")), metadata=root))
    await c("token of a deleted user", kv2.Put(put(key=trace.key("b"), value=b"6"), metadata=u))
    await c("disable without token", a.AuthDisable(rpc_pb2.AuthDisableRequest()))
    await c("disable as root", a.AuthDisable(rpc_pb2.AuthDisableRequest(), metadata=root))
    await c(
        "root's token after disable", kv.Put(put(key=trace.key("b"), value=b"7"), metadata=root)
    )
    await c("put without token after disable", kv.Put(put(key=trace.key("b"), value=b"8")))


async def watch_create(trace: Trace, metadata: tuple[tuple[str, str], ...], key: bytes) -> None:
    """Record the first response to one watch create."""
    watch = rpc_pb2_grpc.WatchStub(trace.channel)
    create = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=key))
    call = watch.Watch(iter([create]), metadata=metadata)
    try:
        async for resp in call:
            trace.record(f"watch {key[len(trace.prefix) :].decode()}", resp)
            break
    finally:
        call.cancel()


async def watches(trace: Trace, second: grpc.aio.Channel) -> None:
    kv = rpc_pb2_grpc.KVStub(trace.channel)
    trace.base = (await kv.Put(rpc_pb2.PutRequest(key=trace.key("base")))).header.revision
    a = rpc_pb2_grpc.AuthStub(trace.channel)
    await a.UserAdd(rpc_pb2.AuthUserAddRequest(name="root", password="rootpw"))
    await a.UserGrantRole(rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"))
    await a.UserAdd(rpc_pb2.AuthUserAddRequest(name="u", password="upw"))
    await a.RoleAdd(rpc_pb2.AuthRoleAddRequest(name="r"))
    grant = rpc_pb2.AuthRoleGrantPermissionRequest(
        name="r", perm=perm(auth_pb2.Permission.READ, trace.key("a"))
    )
    await a.RoleGrantPermission(grant)
    await a.UserGrantRole(rpc_pb2.AuthUserGrantRoleRequest(user="u", role="r"))
    await a.AuthEnable(rpc_pb2.AuthEnableRequest())
    token = await a.Authenticate(rpc_pb2.AuthenticateRequest(name="u", password="upw"))
    u = (("token", token.token),)
    await watch_create(trace, u, trace.key("a"))
    await watch_create(trace, u, trace.key("b"))
    await watch_create(trace, (), trace.key("a"))
    await watch_create(trace, (("token", "bogus"),), trace.key("a"))


async def test_users_and_roles(pair: Pair) -> None:
    await same_on_two_members(pair, users_and_roles)


async def test_enforcement(pair: Pair) -> None:
    await same_on_two_members(pair, enforcement)


async def test_watch_permissions(pair: Pair) -> None:
    await same_on_two_members(pair, watches)
