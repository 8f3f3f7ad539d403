"""etcd auth on a lagging follower: a revoked permission counts from the next request.

A plaintext 3-member store with etcd auth on. One follower is paused (SIGSTOP)
while root, through the leader, revokes user u's write permission; u's Put,
sent to that follower only, waits until it resumes — when its local copy
still grants the permission for a moment. The Put must be refused: decided
after a barrier, on state at least as new as the revocation.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator

import grpc
import pytest

from mizzen.testing.local_cluster import MizzenCluster
from protos import auth_pb2, rpc_pb2, rpc_pb2_grpc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TRIES = 4
PAUSE = 0.5  # seconds the follower stays stopped after the revocation
APP = auth_pb2.Permission(permType=auth_pb2.Permission.READWRITE, key=b"/app/", range_end=b"/app0")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MizzenCluster]:
    with MizzenCluster(3, tmp_path_factory.mktemp("auth-lag")) as c:
        yield c


async def _setup(auth: rpc_pb2_grpc.AuthStub) -> tuple[str, str]:
    await auth.UserAdd(rpc_pb2.AuthUserAddRequest(name="root", password="rootpw"))
    await auth.UserGrantRole(rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"))
    await auth.UserAdd(rpc_pb2.AuthUserAddRequest(name="u", password="upw"))
    await auth.RoleAdd(rpc_pb2.AuthRoleAddRequest(name="r"))
    await auth.RoleGrantPermission(rpc_pb2.AuthRoleGrantPermissionRequest(name="r", perm=APP))
    await auth.UserGrantRole(rpc_pb2.AuthUserGrantRoleRequest(user="u", role="r"))
    await auth.AuthEnable(rpc_pb2.AuthEnableRequest())
    root = await auth.Authenticate(rpc_pb2.AuthenticateRequest(name="root", password="rootpw"))
    u = await auth.Authenticate(rpc_pb2.AuthenticateRequest(name="u", password="upw"))
    return root.token, u.token


async def _status_of(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def test_a_revocation_counts_on_a_lagging_follower(cluster: MizzenCluster) -> None:
    leader = cluster.leader_index()
    follower = next(i for i in range(3) if i != leader)
    async with (
        grpc.aio.insecure_channel(cluster.endpoint(leader)) as lead,
        grpc.aio.insecure_channel(cluster.endpoint(follower)) as lag,
    ):
        auth = rpc_pb2_grpc.AuthStub(lead)
        root_token, u_token = await asyncio.wait_for(_setup(auth), 30)
        root, u = (("token", root_token),), (("token", u_token),)
        kv = rpc_pb2_grpc.KVStub(lag)
        revoke = rpc_pb2.AuthRoleRevokePermissionRequest(
            role="r", key=APP.key, range_end=APP.range_end
        )
        grant = rpc_pb2.AuthRoleGrantPermissionRequest(name="r", perm=APP)
        outcomes = []
        for attempt in range(TRIES):
            put = rpc_pb2.PutRequest(key=b"/app/%d" % attempt, value=b"x")
            # allowed now, on the follower: its connection is up and its state current
            await kv.Put(put, metadata=u, timeout=10)
            cluster.kill(follower, signal.SIGSTOP, wait=False)
            try:
                await auth.RoleRevokePermission(revoke, metadata=root, timeout=10)
                pending = asyncio.ensure_future(_status_of(kv.Put(put, metadata=u, timeout=20)))
                await asyncio.sleep(PAUSE)
            finally:
                cluster.kill(follower, signal.SIGCONT, wait=False)
            outcomes.append(await pending)
            await auth.RoleGrantPermission(grant, metadata=root, timeout=10)
    assert outcomes == [grpc.StatusCode.PERMISSION_DENIED] * TRIES
