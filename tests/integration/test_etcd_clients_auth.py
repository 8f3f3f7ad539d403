"""A third-party etcd client (aetcd, PyPI) authenticating with a user and password,
against etcd 3.4 and Mizzen alike (the same assertions on both).

aetcd sends Authenticate when it connects and then the token in ``token``
metadata on every call; it has no user or role administration, so users and
roles are set up with the raw Auth stubs. Every await is bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import grpc
import pytest
from aetcd_isolated import aetcd
from etcd_differential import Pair, Side

from protos import auth_pb2, rpc_pb2, rpc_pb2_grpc

pytestmark = [pytest.mark.compat, pytest.mark.timeout(120)]
T = TypeVar("T")
PREFIX = b"/aetcd-auth/"


async def bounded(aw: Awaitable[T]) -> T:
    return await asyncio.wait_for(aw, timeout=10)


def client(side: Side, **kwargs: Any) -> aetcd.Client:
    host, port = side.cluster.endpoint(0).rsplit(":", 1)
    return aetcd.Client(host=host, port=int(port), timeout=5, **kwargs)


async def setup(channel: grpc.aio.Channel) -> None:
    a = rpc_pb2_grpc.AuthStub(channel)
    await bounded(a.UserAdd(rpc_pb2.AuthUserAddRequest(name="root", password="rootpw")))
    await bounded(a.UserGrantRole(rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root")))
    await bounded(a.UserAdd(rpc_pb2.AuthUserAddRequest(name="u", password="upw")))
    await bounded(a.RoleAdd(rpc_pb2.AuthRoleAddRequest(name="r")))
    grant = auth_pb2.Permission(
        permType=auth_pb2.Permission.READWRITE, key=PREFIX, range_end=PREFIX[:-1] + b"0"
    )
    await bounded(
        a.RoleGrantPermission(rpc_pb2.AuthRoleGrantPermissionRequest(name="r", perm=grant))
    )
    await bounded(a.UserGrantRole(rpc_pb2.AuthUserGrantRoleRequest(user="u", role="r")))
    await bounded(a.AuthEnable(rpc_pb2.AuthEnableRequest()))


async def teardown(channel: grpc.aio.Channel) -> None:
    a = rpc_pb2_grpc.AuthStub(channel)
    md: tuple[tuple[str, str], ...] = ()
    try:
        root = await bounded(
            a.Authenticate(rpc_pb2.AuthenticateRequest(name="root", password="rootpw"))
        )
        md = (("token", root.token),)
    except grpc.aio.AioRpcError:
        pass
    await bounded(a.AuthDisable(rpc_pb2.AuthDisableRequest(), metadata=md))
    for user in (await bounded(a.UserList(rpc_pb2.AuthUserListRequest()))).users:
        await bounded(a.UserDelete(rpc_pb2.AuthUserDeleteRequest(name=user)))
    for role in (await bounded(a.RoleList(rpc_pb2.AuthRoleListRequest()))).roles:
        await bounded(a.RoleDelete(rpc_pb2.AuthRoleDeleteRequest(role=role)))


@pytest.fixture(params=["etcd", "mizzen"])
async def side(request: pytest.FixtureRequest, pair: Pair) -> AsyncIterator[Side]:
    chosen: Side = getattr(pair, request.param)
    async with chosen.channel() as channel:
        await setup(channel)
        try:
            yield chosen
        finally:
            await teardown(channel)


async def refused(aw: Awaitable[Any]) -> str:
    """The text of the error an awaitable fails with (it must fail)."""
    try:
        await bounded(aw)
    except Exception as exc:  # aetcd maps some codes to its own errors, others not
        return str(exc)
    raise AssertionError("the call was not refused")


async def test_user_and_password(side: Side) -> None:
    async with client(side, username="u", password="upw") as etcd:
        await bounded(etcd.put(PREFIX + b"k", b"v"))
        got = await bounded(etcd.get(PREFIX + b"k"))
        assert got is not None and got.value == b"v"
        assert [kv.key for kv in await bounded(etcd.get_prefix(PREFIX))] == [PREFIX + b"k"]
        lease = await bounded(etcd.lease(30))
        await bounded(etcd.put(PREFIX + b"leased", b"1", lease=lease))
        await bounded(lease.revoke())
        assert await bounded(etcd.get(PREFIX + b"leased")) is None
        assert "permission denied" in await refused(etcd.put(b"/elsewhere", b"x"))
        assert "permission denied" in await refused(etcd.get(b"/elsewhere"))
        await bounded(etcd.delete(PREFIX + b"k"))


async def test_wrong_password_and_no_credentials(side: Side) -> None:
    text = await refused(client(side, username="u", password="wrong").connect())
    assert "authentication failed" in text
    async with client(side) as anonymous:
        assert "user name is empty" in await refused(anonymous.put(PREFIX + b"k", b"v"))
