"""etcd auth on a secure store: certificates keep their roles, an etcd user's token is
one more way to be allowed a raw KV request (docs/security.md "etcd users").

Driven with Debian's etcdctl 3.4 (client certificate plus ``--user``).
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import subprocess
from collections.abc import Iterator

import grpc
import pytest
from security_fixtures import Pki, Store, pki_fixture, store_fixture  # noqa: F401 (fixtures)

from protos import rpc_pb2, rpc_pb2_grpc

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("etcdctl") is None, reason="needs Debian etcdctl"),
]


def etcdctl(pki: Pki, store: Store, who: str, *args: str) -> subprocess.CompletedProcess[str]:
    d = pki.dir
    argv = ["etcdctl", "--endpoints", store.endpoint, "--cacert", str(d / "ca.crt")]
    argv += ["--cert", str(d / f"{who}.crt"), "--key", str(d / f"{who}.key"), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)


@pytest.fixture(scope="module")
def auth_on(pki: Pki, store: Store) -> Iterator[None]:
    setup = [
        ("user", "add", "root:rootpw"),
        ("user", "grant-role", "root", "root"),
        ("user", "add", "u:upw"),
        ("role", "add", "app"),
        ("role", "grant-permission", "app", "--prefix=true", "readwrite", "/app/"),
        ("user", "grant-role", "u", "app"),
        ("auth", "enable"),
    ]
    for args in setup:
        done = etcdctl(pki, store, "admin", *args)
        assert done.returncode == 0, done.stderr
    yield
    etcdctl(pki, store, "admin", "--user=root:rootpw", "auth", "disable")


def test_an_etcd_user_widens_a_viewer(pki: Pki, store: Store, auth_on: None) -> None:
    allowed = etcdctl(pki, store, "vera", "--user=u:upw", "put", "/app/x", "1")
    assert allowed.returncode == 0, allowed.stderr
    read = etcdctl(pki, store, "vera", "--user=u:upw", "get", "/app/x", "--print-value-only")
    assert read.stdout.strip() == "1"
    alone = etcdctl(pki, store, "vera", "put", "/app/x", "2")
    assert alone.returncode != 0 and "vera (role viewer) may not write /app/x" in alone.stderr
    outside = etcdctl(pki, store, "vera", "--user=u:upw", "put", "/other", "x")
    assert outside.returncode != 0 and "vera (role viewer) may not write /other" in outside.stderr
    wrong = etcdctl(pki, store, "vera", "--user=u:nope", "get", "/app/x")
    assert wrong.returncode != 0 and "authentication failed" in wrong.stderr


def test_certificates_keep_their_roles_with_auth_on(pki: Pki, store: Store, auth_on: None) -> None:
    assert etcdctl(pki, store, "admin", "put", "/elsewhere", "1").returncode == 0
    assert etcdctl(pki, store, "admin", "user", "list").returncode == 0
    leader = etcdctl(pki, store, "controller", "put", "/mizzen/leader/etcd-auth-test", "me")
    assert leader.returncode == 0, leader.stderr
    denied = etcdctl(pki, store, "controller", "put", "/app/y", "1")
    assert denied.returncode != 0 and "controller (role controller)" in denied.stderr
    # a viewer may log in but not administer: UserList needs root or the admin role
    listed = etcdctl(pki, store, "vera", "--user=u:upw", "user", "list")
    assert listed.returncode != 0 and "vera (role viewer)" in listed.stderr


async def _first_watch_answer(
    pki: Pki, store: Store, metadata: tuple[tuple[str, str], ...], key: bytes
) -> str:
    """created / canceled: <reason> / the status code the stream ended with."""
    create = rpc_pb2.WatchRequest(
        create_request=rpc_pb2.WatchCreateRequest(key=key, range_end=key[:-1] + b"0")
    )
    async with pki.creds("vera").aio_channel(store.endpoint) as channel:
        call = rpc_pb2_grpc.WatchStub(channel).Watch(iter([create]), metadata=metadata)
        try:
            async for resp in call:
                return f"canceled: {resp.cancel_reason}" if resp.canceled else "created"
        except grpc.aio.AioRpcError as err:
            return str(err.code().name)
        finally:
            call.cancel()
    return "ended"


async def test_an_etcd_user_widens_a_viewers_watch(pki: Pki, store: Store, auth_on: None) -> None:
    async with pki.creds("vera").aio_channel(store.endpoint) as channel:
        login = rpc_pb2.AuthenticateRequest(name="u", password="upw")
        token = await asyncio.wait_for(rpc_pb2_grpc.AuthStub(channel).Authenticate(login), 10)
    u = (("token", token.token),)
    watch = functools.partial(_first_watch_answer, pki, store)
    assert await asyncio.wait_for(watch(u, b"/app/"), 10) == "created"
    assert await asyncio.wait_for(watch((), b"/app/"), 10) == "PERMISSION_DENIED"
    assert await asyncio.wait_for(watch(u, b"/other/"), 10) == "PERMISSION_DENIED"
