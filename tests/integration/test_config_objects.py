"""ConfigMaps and Secrets on a real secure store: who may read them, encryption at rest,
key rotation, and the CLI (create, get -o yaml, describe).

One secure store (TLS, Raft secret, encryption key file, small snapshots) serves
the module; tests that need another configuration (no key file, rotated keys)
start their own.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from security_fixtures import Pki, pki_fixture  # noqa: F401 (fixtures)

from mizzen.client import ObjectsClient, StoreClient
from mizzen.client.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    StoreClientError,
)
from mizzen.security.encryption import ENVELOPE, key_name_of, load_keyring, retire_keys, rotate_key
from mizzen.testing.local_cluster import MizzenCluster
from protos import objects_api_pb2 as api
from protos import objects_api_pb2_grpc as api_grpc
from protos import objects_pb2 as pb

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SNAPSHOT_ARGS = ["--snapshot-entries", "30", "--snapshot-interval", "0.1"]


@pytest.fixture(scope="module", name="store")
def store_fixture(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MizzenCluster]:
    base = tmp_path_factory.mktemp("config-store")
    with MizzenCluster(
        1, base, extra_args=[*pki.store_flags(), *SNAPSHOT_ARGS], credentials=pki.creds("admin")
    ) as cluster:
        yield cluster


@pytest.fixture(name="admin")
async def admin_fixture(pki: Pki, store: MizzenCluster) -> AsyncIterator[ObjectsClient]:
    async with ObjectsClient(store.endpoints, credentials=pki.creds("admin")) as client:
        yield client


def _secret(name: str, ns: str, **values: bytes) -> pb.Secret:
    s = pb.Secret(metadata=pb.ObjectMeta(name=name, namespace=ns))
    s.data.update(values)
    return s


def _config_map(name: str, ns: str, **values: str) -> pb.ConfigMap:
    cm = pb.ConfigMap(metadata=pb.ObjectMeta(name=name, namespace=ns))
    cm.data.update(values)
    return cm


def _pod(name: str, ns: str, node: str, secret: str = "", config_map: str = "") -> pb.Pod:
    p = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace=ns))
    proc = p.spec.processes.add(name="main", command=["/bin/sleep", "60"])
    if secret:
        proc.env.add(
            name="PASSWORD",
            value_from=pb.EnvVarSource(
                secret_key_ref=pb.SecretKeySelector(name=secret, key="password")
            ),
        )
    if config_map:
        p.spec.volumes.add(name="conf", config_map=pb.ConfigMapVolumeSource(name=config_map))
        proc.volume_mounts.add(name="conf", mount_path="conf")
    p.spec.node_name = node
    return p


def _cli(pki: Pki, store: MizzenCluster, *args: str, who: str = "admin") -> Any:
    d = pki.dir
    return subprocess.run(
        [sys.executable, "-m", "mizzen", *args, "--endpoints", store.endpoints[0],
         "--cacert", str(d / "ca.crt"),
         "--cert", str(d / f"{who}.crt"), "--key", str(d / f"{who}.key")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


# ------------------------------------------------------------------ the API


async def test_string_data_is_merged_validation_names_keys_and_immutability_holds(
    admin: ObjectsClient,
) -> None:
    ns = "api"
    s = _secret("db", ns, user=b"old")
    s.string_data["user"] = "admin"
    s.string_data["password"] = "pw-one"
    created = await admin.create(s)
    assert dict(created.data) == {"user": b"admin", "password": b"pw-one"}
    assert not created.string_data and created.type == "Opaque"
    got = await admin.get("secrets", "db", ns)
    assert dict(got.data) == dict(created.data) and not got.string_data

    bad = _secret("bad", ns, **{"pass word": b"hunter2-value"})
    with pytest.raises(InvalidArgumentError) as err:
        await admin.create(bad)
    assert "data[pass word]" in str(err.value) and "hunter2-value" not in str(err.value)

    cm = _config_map("frozen", ns, a="1")
    cm.immutable = True
    cm = await admin.create(cm)
    cm.data["a"] = "2"
    with pytest.raises(InvalidArgumentError, match="data: field is immutable when `immutable`"):
        await admin.update(cm)
    big = _config_map("big", ns, blob="x" * (1024 * 1024))
    with pytest.raises(InvalidArgumentError, match="at most 1048576 bytes of keys and values"):
        await admin.create(big)


async def test_viewers_read_config_maps_but_never_secrets(
    pki: Pki, store: MizzenCluster, admin: ObjectsClient
) -> None:
    ns = "viewer"
    await admin.create(_secret("s", ns, password=b"pw"))
    await admin.create(_config_map("c", ns, a="1"))
    async with ObjectsClient(store.endpoints, credentials=pki.creds("vera")) as vera:
        assert (await vera.get("configmaps", "c", ns)).data["a"] == "1"
        assert [c.metadata.name for c in (await vera.list("configmaps", ns)).items] == ["c"]
        for call in (
            vera.get("secrets", "s", ns),
            vera.list("secrets", ns),
            vera.list("secrets", ""),
        ):
            with pytest.raises(PermissionDeniedError, match="viewers may not read Secrets"):
                await call
        with pytest.raises(PermissionDeniedError):
            async for _ in vera.watch("secrets", ns):
                break
    got = _cli(pki, store, "get", "secret", "s", "-n", ns, who="vera")
    assert got.returncode == 1
    assert got.stderr.startswith("mizzen: vera (role viewer) may not get secrets/viewer/s")


async def _status(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def test_a_node_reads_only_what_pods_bound_to_it_refer_to(
    pki: Pki, store: MizzenCluster, admin: ObjectsClient
) -> None:
    ns = "nodes"
    await admin.create(_secret("sa", ns, password=b"for-a"))
    await admin.create(_secret("sb", ns, password=b"for-b"))
    await admin.create(_secret("unused", ns, password=b"nobody"))
    await admin.create(_config_map("ca", ns, a="1"))
    await admin.create(_pod("on-a", ns, "na", secret="sa", config_map="ca"))
    await admin.create(_pod("on-b", ns, "nb", secret="sb"))
    await admin.create(_pod("on-a-later", ns, "na", secret="not-yet"))
    await admin.create(_pod("pending", ns, "", secret="unused"))

    ok, denied, missing = (
        grpc.StatusCode.OK,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
    )
    async with pki.creds("node-na").aio_channel(store.endpoints[0]) as channel:
        na = api_grpc.ObjectsStub(channel)

        def get(kind: str, name: str) -> Any:
            return na.Get(api.GetRequest(kind=kind, namespace=ns, name=name), timeout=10)

        got = await get("secrets", "sa")
        assert got.secret.data["password"] == b"for-a"
        assert await _status(get("configmaps", "ca")) == ok
        assert await _status(get("secrets", "sb")) == denied  # referred to by nb's pod
        assert await _status(get("secrets", "unused")) == denied  # by a pod bound nowhere
        assert await _status(get("configmaps", "sa")) == denied  # same name, other kind
        assert await _status(get("secrets", "not-yet")) == missing  # referred to, not there
        assert await _status(get("secrets", "nothing")) == denied  # existence is not told
        lst = na.List(api.ListRequest(kind="secrets", namespace=ns), timeout=10)
        assert await _status(lst) == denied
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await get("secrets", "sb")
        assert refused.value.details() == (
            "mizzen: node:na (role node) may not get secrets/nodes/sb: "
            "no pod bound to na refers to Secret nodes/sb"
        )

        # watch one object its pod refers to: the events come decrypted
        start = got.secret.metadata.resource_version
        watch = na.Watch(
            api.WatchRequest(
                kind="secrets",
                namespace=ns,
                field_selector="metadata.name=sa",
                resource_version=start,
            )
        )
        update = await admin.get("secrets", "sa", ns)
        update.data["password"] = b"for-a-2"
        await admin.update(update)
        event = await asyncio.wait_for(watch.read(), 10)
        assert event.type == api.WatchEvent.MODIFIED
        assert event.object.secret.data["password"] == b"for-a-2"

        other = na.Watch(
            api.WatchRequest(kind="secrets", namespace=ns, field_selector="metadata.name=sb")
        )
        with pytest.raises(grpc.aio.AioRpcError) as other_end:
            await asyncio.wait_for(other.read(), 10)
        assert other_end.value.code() == denied

        # once no pod bound to na refers to sa, its next event ends the watch
        await admin.delete("pods", "on-a", ns, grace_period_seconds=0)
        update = await admin.get("secrets", "sa", ns)
        update.data["password"] = b"for-a-3"
        await admin.update(update)
        with pytest.raises(grpc.aio.AioRpcError) as watch_end:
            while True:
                ev = await asyncio.wait_for(watch.read(), 10)
                assert ev.object.secret.data["password"] != b"for-a-3", "delivered after unbinding"
        assert watch_end.value.code() == denied
        assert await _status(get("secrets", "sa")) == denied

        # a pod bound to na just now: readable at once (decided on the fresh state)
        await admin.create(_pod("on-a-2", ns, "na", secret="sb"))
        assert await _status(get("secrets", "sb")) == ok


# ------------------------------------------------------------------ at rest


def _files(directory: Path) -> dict[str, bytes]:
    """Every file's bytes; raft.snapshot's gzip body decompressed (store/raft_dump.py), or
    a grep of it would find nothing, plaintext included."""
    out = {}
    for p in sorted(directory.rglob("*")):
        if not p.is_file():
            continue
        raw = p.read_bytes()
        body = raw.find(b"\x1f\x8b\x08")
        if p.name == "raft.snapshot" and body > 0:
            raw = raw[:body] + gzip.decompress(raw[body:])
        out[str(p)] = raw
    return out


async def test_secret_values_are_not_in_the_data_dir_nor_a_snapshot_file(
    pki: Pki, store: MizzenCluster, admin: ObjectsClient, tmp_path: Path
) -> None:
    ns = "rest"
    secret_value = f"s3cr3t-{secrets.token_hex(8)}".encode()
    plain_value = f"pl41n-{secrets.token_hex(8)}"  # a ConfigMap's: found, so the grep works
    s = _secret("db", ns, password=secret_value)
    s.string_data["token"] = f"tok-{secret_value.decode()}"
    await admin.create(s)
    await admin.create(_config_map("plain", ns, value=plain_value))
    data = store.data_dir(0)
    snapshot = data / "raft.snapshot"
    before = snapshot.stat().st_mtime_ns if snapshot.exists() else 0
    for i in range(40):  # past --snapshot-entries: the state is written to raft.snapshot
        await admin.create(_config_map(f"filler-{i}", ns, i=str(i)))
    deadline = time.monotonic() + 30
    while not snapshot.exists() or snapshot.stat().st_mtime_ns == before:
        assert time.monotonic() < deadline, "no Raft snapshot was written"
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # the snapshot writer renames into place when done

    saved = tmp_path / "backup.db"
    got = _cli(pki, store, "snapshot", "save", str(saved))
    assert got.returncode == 0, got.stderr
    files = {**_files(data), str(saved): saved.read_bytes()}
    assert {str(snapshot), str(data / "raft.journal"), str(saved)} <= set(files)
    encoded = base64.b64encode(secret_value)
    for path, content in files.items():
        assert secret_value not in content, path
        assert encoded not in content, path
    assert plain_value.encode() in files[str(snapshot)]
    assert plain_value.encode() in files[str(saved)]
    assert secret_value.decode() not in store.log_path(0).read_text(errors="replace")

    async with StoreClient(store.endpoints, credentials=pki.creds("admin")) as kv:
        raw = await kv.get(f"/registry/secrets/{ns}/db")
    assert raw is not None and raw.value.startswith(ENVELOPE)
    keys = load_keyring(pki.dir / "encryption.yaml")
    assert key_name_of(raw.value) == keys.primary
    assert (await admin.get("secrets", "db", ns)).data["password"] == secret_value


async def test_a_tls_store_without_a_key_file_refuses_to_store_secrets(
    pki: Pki, tmp_path: Path
) -> None:
    flags = pki.store_flags()
    assert flags[8] == "--encryption-key-file"
    with MizzenCluster(
        1, tmp_path / "c", extra_args=flags[:8], credentials=pki.creds("admin")
    ) as c:
        async with ObjectsClient(c.endpoints, credentials=pki.creds("admin")) as admin:
            with pytest.raises(FailedPreconditionError, match="no --encryption-key-file"):
                await admin.create(_secret("s", "default", password=b"pw"))
            await admin.create(_config_map("c", "default", a="1"))
        assert "secret_encryption_off" in c.log_path(0).read_text()


async def test_key_rotation_old_keys_read_new_writes_use_the_new_key(
    pki: Pki, tmp_path: Path
) -> None:
    key_file = tmp_path / "encryption.yaml"
    shutil.copy(pki.dir / "encryption.yaml", key_file)
    flags = [*pki.store_flags()[:8], "--encryption-key-file", str(key_file)]
    path = "/registry/secrets/default/{}"

    async def raw_key(name: str) -> str | None:
        async with StoreClient(c.endpoints, credentials=pki.creds("admin")) as kv:
            record = await kv.get(path.format(name))
        assert record is not None
        return key_name_of(record.value)

    with MizzenCluster(1, tmp_path / "c", extra_args=flags, credentials=pki.creds("admin")) as c:
        old = load_keyring(key_file).primary
        async with ObjectsClient(c.endpoints, credentials=pki.creds("admin")) as admin:
            await admin.create(_secret("before", "default", password=b"one"))
        assert await raw_key("before") == old
        old_only = key_file.read_text()

        new = rotate_key(key_file)
        c.restart(0)
        async with ObjectsClient(c.endpoints, credentials=pki.creds("admin")) as admin:
            assert (await admin.get("secrets", "before", "default")).data["password"] == b"one"
            await admin.create(_secret("after", "default", password=b"two"))
        assert await raw_key("after") == new
        assert await raw_key("before") == old

        got = _cli_at(pki, c, "secrets", "reencrypt", "-A")
        assert got.returncode == 0, got.stderr
        assert got.stdout.strip().startswith("1 Secret(s) rewritten")
        assert await raw_key("before") == new
        again = _cli_at(pki, c, "secrets", "reencrypt", "-A")
        assert again.stdout.strip().startswith("0 Secret(s) rewritten"), again.stdout

        # a member holding only the old key cannot read what the new one sealed
        rotated = key_file.read_text()
        key_file.write_text(old_only)
        c.restart(0)
        async with ObjectsClient(c.endpoints, credentials=pki.creds("admin")) as admin:
            with pytest.raises(StoreClientError) as err:
                await admin.get("secrets", "after", "default")
            assert err.value.code == grpc.StatusCode.DATA_LOSS
            assert f"key {new!r}, which is not in this store's key file" in str(err.value)
            assert "two" not in str(err.value)

        key_file.write_text(rotated)
        assert retire_keys(key_file) == [old]
        c.restart(0)
        async with ObjectsClient(c.endpoints, credentials=pki.creds("admin")) as admin:
            assert (await admin.get("secrets", "before", "default")).data["password"] == b"one"
            assert (await admin.get("secrets", "after", "default")).data["password"] == b"two"


def _cli_at(pki: Pki, cluster: MizzenCluster, *args: str) -> Any:
    return _cli(pki, cluster, *args)


# ------------------------------------------------------------------ the CLI


def test_cli_create_get_describe_delete(pki: Pki, store: MizzenCluster, tmp_path: Path) -> None:
    ns = "cli"
    conf = tmp_path / "app.conf"
    conf.write_text("listen 8080\nworkers 4\n")
    env = tmp_path / "db.env"
    env.write_text("# the database\nDB_USER=app\n\nDB_PASSWORD=hunter2-cli\n")

    def cli(*args: str, who: str = "admin") -> Any:
        return _cli(pki, store, *args, who=who)

    made = cli("create", "configmap", "web", "-n", ns, "--from-file", str(conf),
               "--from-literal", "LOG_LEVEL=debug")  # fmt: skip
    assert (made.returncode, made.stdout) == (0, "configmap/web created\n"), made.stderr
    made = cli("create", "secret", "generic", "db", "-n", ns, "--from-env-file", str(env))
    assert (made.returncode, made.stdout) == (0, "secret/db created\n"), made.stderr
    again = cli("create", "secret", "generic", "db", "-n", ns, "--from-literal", "a=b")
    assert again.returncode == 1
    assert again.stderr == 'mizzen: secrets "db" already exists\n'

    table = cli("get", "secrets", "-n", ns)
    assert table.stdout.splitlines()[0].split() == ["NAME", "TYPE", "DATA", "AGE"]
    assert table.stdout.splitlines()[1].split()[:3] == ["db", "Opaque", "2"]
    table = cli("get", "cm", "-n", ns)
    assert table.stdout.splitlines()[1].split()[:2] == ["web", "2"]

    as_yaml = cli("get", "secret", "db", "-n", ns, "-o", "yaml")
    doc = yaml.safe_load(as_yaml.stdout)
    assert doc["data"] == {
        "DB_PASSWORD": base64.b64encode(b"hunter2-cli").decode(),
        "DB_USER": base64.b64encode(b"app").decode(),
    }
    assert doc["type"] == "Opaque" and "stringData" not in doc
    cm_yaml = yaml.safe_load(cli("get", "cm", "web", "-n", ns, "-o", "yaml").stdout)
    assert cm_yaml["data"] == {"app.conf": "listen 8080\nworkers 4\n", "LOG_LEVEL": "debug"}

    described = cli("describe", "secret", "db", "-n", ns)
    assert described.returncode == 0, described.stderr
    assert "hunter2-cli" not in described.stdout
    assert any(
        line.split() == ["DB_PASSWORD:", "11", "bytes"] for line in described.stdout.splitlines()
    )
    described = cli("describe", "cm", "web", "-n", ns)
    assert "    listen 8080" in described.stdout.splitlines()

    pod_doc = {
        "apiVersion": "mizzen/v1", "kind": "Pod",
        "metadata": {"name": "app", "namespace": ns},
        "spec": {
            "processes": [{
                "name": "main", "command": ["/bin/sleep", "60"],
                "env": [
                    {"name": "PW",
                     "valueFrom": {"secretKeyRef": {"name": "db", "key": "DB_PASSWORD"}}},
                    {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "web", "key": "nope"}}},
                ],
                "envFrom": [{"configMapRef": {"name": "missing", "optional": True}}],
                "volumeMounts": [{"name": "conf", "mountPath": "conf", "readOnly": True}],
            }],
            "volumes": [{"name": "conf", "configMap": {"name": "web"}}],
        },
    }  # fmt: skip
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(yaml.safe_dump(pod_doc))
    assert cli("apply", "-f", str(manifest)).returncode == 0
    lines = cli("describe", "pod", "app", "-n", ns).stdout.splitlines()
    refs = lines[lines.index("Config References:") + 1 :]
    assert [r.split() for r in refs[:5]] == [
        ["KIND", "NAME", "USE", "RESOLVED"],
        ["Secret", "db", "env", "key", "DB_PASSWORD", "ok"],
        ["ConfigMap", "web", "env", "key", "nope", "no", "key", "nope"],
        ["ConfigMap", "missing", "envFrom", "missing,", "optional"],
        ["ConfigMap", "web", "volume", "conf", "ok"],
    ]
    assert any("<set to the key 'DB_PASSWORD' in Secret 'db'>" in line for line in lines)
    viewer = cli("describe", "pod", "app", "-n", ns, who="vera").stdout.splitlines()
    assert any(r.split()[:2] == ["Secret", "db"] and "permission denied" in r for r in viewer)

    # apply of a changed ConfigMap, then delete both
    cm_yaml["data"]["LOG_LEVEL"] = "info"
    changed = tmp_path / "cm.yaml"
    changed.write_text(yaml.safe_dump(cm_yaml))
    assert cli("apply", "-f", str(changed)).stdout == "configmap/web configured\n"
    assert cli("apply", "-f", str(changed)).stdout == "configmap/web unchanged\n"
    assert cli("delete", "secret", "db", "-n", ns).stdout == "secret/db deleted\n"
    assert cli("delete", "cm", "web", "-n", ns).stdout == "configmap/web deleted\n"


def test_cli_create_errors_never_show_a_value(pki: Pki, store: MizzenCluster) -> None:
    got = _cli(pki, store, "create", "secret", "generic", "x", "--from-literal", "hunter2-lit")
    assert (got.returncode, got.stderr) == (1, "mizzen: --from-literal #1: expected KEY=VALUE\n")
    got = _cli(pki, store, "create", "secret", "generic", "x", "--from-literal", "a b=hunter2-lit")
    assert got.returncode == 1 and "'a b'" in got.stderr and "hunter2" not in got.stderr


async def test_notfound_for_missing(admin: ObjectsClient) -> None:
    with pytest.raises(NotFoundError, match='secrets "ghost" not found'):
        await admin.get("secrets", "ghost", "default")
