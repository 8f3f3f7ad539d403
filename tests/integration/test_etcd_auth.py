"""etcd auth end to end with Debian's etcdctl 3.4, against a real etcd 3.4 and a Mizzen
store (one member each, plaintext): the same commands print the same.

Also: a user's password hash is nowhere in what the raw KV API can read, and a
plaintext Mizzen store with auth on still lets token-less callers use the
controllers' leader-election keys (a deliberate difference, docs/store.md "### Auth").
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from mizzen.testing.local_cluster import EtcdCluster, LocalCluster, MizzenCluster
from protos import rpc_pb2, rpc_pb2_grpc

pytestmark = [
    pytest.mark.compat,
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("etcdctl") is None, reason="needs Debian etcdctl"),
]

ROOT = "--user=root:rootpw"
U = "--user=u:upw"


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LocalCluster]]:
    base = tmp_path_factory.mktemp("auth")
    etcd = EtcdCluster(1, base / "etcd")
    mizzen = MizzenCluster(1, base / "mizzen")
    try:
        etcd.start()
        mizzen.start()
        yield {"etcd": etcd, "mizzen": mizzen}
    finally:
        mizzen.stop()
        etcd.stop()


def etcdctl(endpoint: str, *args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    done = subprocess.run(
        ["etcdctl", f"--endpoints={endpoint}", "--dial-timeout=5s", "--command-timeout=10s", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    return done.returncode, (done.stdout + comparable(done.stderr)).strip()


def comparable(stderr: str) -> str:
    """etcdctl's stderr without timestamps and connection names: a JSON log line is
    cut to its error, a plain error line loses its leading timestamp."""
    out = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line).get("error", ""))
        elif line[:4].isdigit():
            out.append(line.split(" ", 2)[-1])
        else:
            out.append(line)
    return "\n".join(out)


SESSION: list[tuple[str, ...]] = [
    ("user", "add", "root:rootpw"),
    ("user", "add", "u:upw"),
    ("role", "add", "app"),
    ("role", "grant-permission", "app", "--prefix=true", "readwrite", "/app/"),
    ("role", "grant-permission", "app", "read", "/config"),
    ("user", "grant-role", "u", "app"),
    ("auth", "enable"),  # root lacks the root role
    ("user", "grant-role", "root", "root"),
    ("auth", "enable"),
    ("put", "/app/a", "1"),  # no user
    (U, "put", "/app/a", "1"),
    (U, "get", "/app/a"),
    (U, "get", "--prefix", "/app/"),
    (U, "put", "/other", "x"),
    (U, "get", "/config"),
    (U, "put", "/config", "x"),
    (U, "del", "/app/a"),
    ("--user=u:wrong", "get", "/app/a"),
    ("--user=nobody:x", "get", "/app/a"),
    (U, "user", "list"),
    (ROOT, "user", "list"),
    (ROOT, "role", "get", "app"),
    (ROOT, "user", "get", "u"),
    (U, "user", "get", "u"),
    (ROOT, "user", "revoke-role", "root", "root"),
    (ROOT, "role", "revoke-permission", "app", "--prefix=true", "/app/"),
    (U, "put", "/app/b", "1"),
    (ROOT, "user", "passwd", "u", "--interactive=false"),
    (ROOT, "role", "delete", "app"),
    (ROOT, "user", "delete", "u"),
    (U, "get", "/config"),
    ("auth", "disable"),
    (ROOT, "auth", "disable"),
    ("get", "/config"),
    ("user", "delete", "root"),
    ("role", "list"),
    ("user", "list"),
]


def run_session(endpoint: str) -> list[str]:
    out = []
    for args in SESSION:
        stdin_args = args
        if "passwd" in args:
            done = subprocess.run(
                ["etcdctl", f"--endpoints={endpoint}", *stdin_args],
                input="newpw\n",
                capture_output=True,
                text=True,
                env={**os.environ, "ETCDCTL_API": "3"},
                timeout=30,
            )
            code, text = done.returncode, (done.stdout + comparable(done.stderr)).strip()
        else:
            code, text = etcdctl(endpoint, *args)
        out.append(f"$ etcdctl {' '.join(args)}\n[{code}] {text}")
    return out


def test_etcdctl_session_prints_what_etcd_prints(stores: dict[str, LocalCluster]) -> None:
    etcd = run_session(stores["etcd"].endpoint(0))
    mizzen = run_session(stores["mizzen"].endpoint(0))
    assert mizzen == etcd
    text = "\n".join(etcd)
    assert "Authentication Enabled" in text and "permission denied" in text  # the test tests


async def _range_all(endpoint: str) -> list[tuple[bytes, bytes]]:
    async with grpc.aio.insecure_channel(endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        resp = await asyncio.wait_for(
            kv.Range(rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0")), timeout=10
        )
        return [(x.key, x.value) for x in resp.kvs]


def test_password_hashes_are_not_in_the_key_space(stores: dict[str, LocalCluster]) -> None:
    endpoint = stores["mizzen"].endpoint(0)
    assert etcdctl(endpoint, "user", "add", "hashy:s3cret-pw")[0] == 0
    try:
        everything = asyncio.run(_range_all(endpoint))
        blob = b"".join(k + v for k, v in everything)
        assert b"hashy" not in blob and b"$2" not in blob and b"s3cret" not in blob
    finally:
        etcdctl(endpoint, "user", "delete", "hashy")


def test_plaintext_controllers_keep_their_leader_keys(stores: dict[str, LocalCluster]) -> None:
    endpoint = stores["mizzen"].endpoint(0)
    setup = [
        ("user", "add", "root:rootpw"),
        ("user", "grant-role", "root", "root"),
        ("auth", "enable"),
    ]
    for args in setup:
        assert etcdctl(endpoint, *args)[0] == 0
    try:
        assert etcdctl(endpoint, "put", "/mizzen/leader/test", "me") == (0, "OK")
        assert etcdctl(endpoint, "get", "/mizzen/leader/test", "--print-value-only") == (0, "me")
        code, text = etcdctl(endpoint, "put", "/mizzen/other", "x")
        assert code != 0 and "user name is empty" in text
        code, text = etcdctl(endpoint, "get", "--prefix", "/mizzen/")  # wider than the keys
        assert code != 0 and "user name is empty" in text
    finally:
        etcdctl(endpoint, ROOT, "auth", "disable")
        etcdctl(endpoint, "del", "/mizzen/leader/test")
        etcdctl(endpoint, "user", "delete", "root")


def test_snapshot_restore_keeps_users_roles_and_auth(
    stores: dict[str, LocalCluster], tmp_path: Path
) -> None:
    endpoint = stores["mizzen"].endpoint(0)
    setup = [
        ("user", "add", "root:rootpw"),
        ("user", "grant-role", "root", "root"),
        ("user", "add", "u:upw"),
        ("role", "add", "app"),
        ("role", "grant-permission", "app", "--prefix=true", "readwrite", "/app/"),
        ("user", "grant-role", "u", "app"),
        ("put", "/app/kept", "1"),
        ("auth", "enable"),
    ]
    for args in setup:
        assert etcdctl(endpoint, *args)[0] == 0, args
    snap = tmp_path / "auth.snap"
    try:
        code, text = etcdctl(endpoint, ROOT, "snapshot", "save", str(snap))
        assert code == 0, text
    finally:
        etcdctl(endpoint, ROOT, "auth", "disable")
        for args in (
            ("user", "delete", "u"),
            ("user", "delete", "root"),
            ("role", "delete", "app"),
        ):
            etcdctl(endpoint, *args)
        etcdctl(endpoint, "del", "/app/kept")
    new = MizzenCluster(3, tmp_path / "new")
    argv = new.argv(0)
    initial = argv[argv.index("--initial-cluster") + 1]
    for i, name in enumerate(new.names):
        restore = [sys.executable, "-m", "mizzen", "snapshot", "restore", str(snap)]
        restore += [
            "--data-dir",
            str(new.data_dir(i)),
            "--name",
            name,
            "--initial-cluster",
            initial,
        ]
        subprocess.run(restore, check=True, capture_output=True, timeout=60)
    with new:
        first, second = new.endpoint(1), new.endpoint(2)
        assert etcdctl(first, "get", "/app/kept")[0] != 0  # auth is on: no token, no read
        assert etcdctl(first, U, "get", "/app/kept", "--print-value-only") == (0, "1")
        assert etcdctl(second, U, "put", "/app/new", "2") == (0, "OK")
        code, text = etcdctl(second, U, "put", "/other", "2")
        assert code != 0 and "permission denied" in text
        assert asyncio.run(_token_on_another_member(first, second)) == b"2"


async def _token_on_another_member(first: str, second: str) -> bytes:
    async with grpc.aio.insecure_channel(first) as a, grpc.aio.insecure_channel(second) as b:
        login = rpc_pb2.AuthenticateRequest(name="u", password="upw")
        token = await asyncio.wait_for(rpc_pb2_grpc.AuthStub(a).Authenticate(login), 10)
        got = await asyncio.wait_for(
            rpc_pb2_grpc.KVStub(b).Range(
                rpc_pb2.RangeRequest(key=b"/app/new"), metadata=(("token", token.token),)
            ),
            10,
        )
        return got.kvs[0].value


def test_tokens_expire_after_auth_token_ttl(tmp_path: Path) -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "mizzen", "store", "--auth-token-ttl", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "--auth-token-ttl: must be at least 1" in bad.stderr
    assert "Traceback" not in bad.stderr
    with MizzenCluster(1, tmp_path / "ttl", extra_args=["--auth-token-ttl", "1"]) as store:
        assert asyncio.run(_expiry(store.endpoint(0))) == "etcdserver: invalid auth token"


async def _expiry(endpoint: str) -> str | None:
    async with grpc.aio.insecure_channel(endpoint) as channel:
        auth, kv = rpc_pb2_grpc.AuthStub(channel), rpc_pb2_grpc.KVStub(channel)
        await auth.UserAdd(rpc_pb2.AuthUserAddRequest(name="root", password="rootpw"))
        await auth.UserGrantRole(rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"))
        await auth.AuthEnable(rpc_pb2.AuthEnableRequest())
        login = rpc_pb2.AuthenticateRequest(name="root", password="rootpw")
        token = (await auth.Authenticate(login, timeout=10)).token
        put = rpc_pb2.PutRequest(key=b"/ttl", value=b"1")
        await kv.Put(put, metadata=(("token", token),), timeout=10)  # valid at first
        for _ in range(100):  # bounded: the token's second ends within 2 s
            try:
                await kv.Put(put, metadata=(("token", token),), timeout=10)
            except grpc.aio.AioRpcError as err:
                fresh = (await auth.Authenticate(login, timeout=10)).token
                await kv.Put(put, metadata=(("token", fresh),), timeout=10)  # a new one works
                return err.details()
            await asyncio.sleep(0.1)
        return None
