"""A secure store: TLS with client certificates, bearer tokens, roles, NodeRestriction, limits.

One real store process serves TLS with the certificates of ``mizzen pki``; each
test talks to it as a different identity and checks what is allowed, what is
refused and with which status.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import http.client
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from agent_fixtures import AgentProcess, cgroups_unavailable, eventually

from mizzen.client import ObjectsClient, StoreClient
from mizzen.client.errors import (
    PermissionDeniedError,
    ResourceExhaustedError,
    StoreClientError,
    UnavailableError,
)
from mizzen.security.pki import init_pki, issue
from mizzen.security.tls import ClientCredentials
from mizzen.security.tokens import add_token
from mizzen.testing.local_cluster import MizzenCluster, free_ports
from protos import agent_pb2, agent_pb2_grpc, rpc_pb2, rpc_pb2_grpc
from protos import objects_pb2 as pb

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Pki:
    dir: Path
    other: Path  # a second, unrelated CA
    tokens: Path
    viewer_token: str
    admin_token: str

    def creds(self, name: str, *, other_ca: bool = False) -> ClientCredentials:
        d = self.other if other_ca else self.dir
        return ClientCredentials(
            str(self.dir / "ca.crt"), str(d / f"{name}.crt"), str(d / f"{name}.key")
        )

    def token(self, token: str | None) -> ClientCredentials:
        return ClientCredentials(str(self.dir / "ca.crt"), token=token)

    @property
    def ca_only(self) -> ClientCredentials:
        return ClientCredentials(str(self.dir / "ca.crt"))

    def store_flags(self) -> list[str]:
        d = self.dir
        return [
            "--cacert", str(d / "ca.crt"),
            "--cert", str(d / "store-127.0.0.1.crt"),
            "--key", str(d / "store-127.0.0.1.key"),
            "--peer-secret-file", str(d / "raft.secret"),
        ]  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    init_pki(base / "pki", hosts=["127.0.0.1"], nodes=["na", "nb", "nc"])
    issue(base / "pki", "vera", "viewer")
    now = dt.datetime.now(dt.UTC)
    issue(
        base / "pki",
        "old",
        "admin",
        not_before=now - dt.timedelta(days=2),
        not_after=now - dt.timedelta(hours=1),
    )
    init_pki(base / "other", hosts=["127.0.0.1"], nodes=[])
    tokens = base / "tokens"
    viewer = add_token(tokens, "tina", "viewer")
    admin = add_token(tokens, "adam", "admin")
    return Pki(base / "pki", base / "other", tokens, viewer, admin)


@dataclass
class Store:
    cluster: MizzenCluster
    endpoint: str
    token_endpoint: str

    def log(self) -> str:
        return self.cluster.log_path(0).read_text(errors="replace")


@pytest.fixture(scope="module")
def store(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    token_port = free_ports(1)[0]
    extra = [
        *pki.store_flags(),
        "--token-file", str(pki.tokens),
        "--token-listen", f"127.0.0.1:{token_port}",
    ]  # fmt: skip
    base = tmp_path_factory.mktemp("secure-store")
    with MizzenCluster(1, base, extra_args=extra, credentials=pki.creds("admin")) as cluster:
        yield Store(cluster, cluster.endpoints[0], f"127.0.0.1:{token_port}")


@pytest.fixture
async def admin(pki: Pki, store: Store) -> AsyncIterator[ObjectsClient]:
    async with ObjectsClient([store.endpoint], credentials=pki.creds("admin")) as client:
        yield client


def pod(name: str, node: str = "") -> pb.Pod:
    p = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace="default"))
    p.spec.processes.add(name="main", command=["sleep", "60"])
    p.spec.node_name = node
    return p


def node_obj(name: str) -> pb.Node:
    return pb.Node(metadata=pb.ObjectMeta(name=name))


# ----------------------------------------------------------------- authentication


def raw_status(
    creds: ClientCredentials | None, endpoint: str, timeout: float = 3.0
) -> grpc.StatusCode:
    """The status code of a raw Range over a channel with these credentials (plaintext if None)."""
    options = [("grpc.max_reconnect_backoff_ms", 500)]
    channel = (
        creds.channel(endpoint, options) if creds else grpc.insecure_channel(endpoint, options)
    )
    with channel:
        try:
            rpc_pb2_grpc.KVStub(channel).Range(rpc_pb2.RangeRequest(key=b"/x"), timeout=timeout)
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(
    "who",
    [
        "no client certificate",
        "certificate of another CA",
        "expired certificate",
        "plaintext client",
    ],
)
def test_unauthenticated_clients_are_refused_promptly(pki: Pki, store: Store, who: str) -> None:
    creds = {
        "no client certificate": pki.ca_only,
        "certificate of another CA": pki.creds("admin", other_ca=True),
        "expired certificate": pki.creds("old"),
        "plaintext client": None,
    }[who]
    started = time.monotonic()
    code = raw_status(creds, store.endpoint)
    # The handshake fails: UNAVAILABLE before the deadline, not a hang until it.
    assert code == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 2.5
    assert raw_status(pki.creds("admin"), store.endpoint) == grpc.StatusCode.OK


async def test_admin_may_use_everything(pki: Pki, store: Store, admin: ObjectsClient) -> None:
    created = await admin.create(pod("admin-pod"))
    assert created.metadata.uid
    async with StoreClient([store.endpoint], credentials=pki.creds("admin")) as kv:
        await kv.put("/anything", b"1")
        assert (await kv.get("/anything")) is not None


# ----------------------------------------------------------------- roles


async def test_viewer_reads_but_cannot_write(pki: Pki, store: Store, admin: ObjectsClient) -> None:
    await admin.create(pod("seen"))
    async with ObjectsClient([store.endpoint], credentials=pki.creds("vera")) as viewer:
        assert "seen" in [p.metadata.name for p in (await viewer.list("pods", "default")).items]
        with pytest.raises(PermissionDeniedError) as denied:
            await viewer.create(pod("written-by-viewer"))
        assert "vera (role viewer) may not create pods/default/written-by-viewer" in str(
            denied.value
        )
        with pytest.raises(PermissionDeniedError):
            await viewer.delete("pods", "seen", "default")
    with pytest.raises(StoreClientError):
        await admin.get("pods", "written-by-viewer", "default")
    assert "permission_denied" in store.log()


@pytest.mark.parametrize("who", ["vera", "controller", "node-na"])
async def test_raw_kv_api_is_admin_only(pki: Pki, store: Store, who: str) -> None:
    async with StoreClient([store.endpoint], credentials=pki.creds(who)) as kv:
        with pytest.raises(PermissionDeniedError) as denied:
            await kv.get_prefix("/registry/")
        assert "may not read /registry/" in str(denied.value)
        assert "admin-only" in str(denied.value)
        with pytest.raises(PermissionDeniedError):
            await kv.put("/registry/pods/default/sneaky", b"x")
        # Maintenance.Status is open to every identity (clients find the leader with it).
        assert (await kv.status()).leader


async def test_controller_may_elect_a_leader_under_its_prefix(pki: Pki, store: Store) -> None:
    async with StoreClient([store.endpoint], credentials=pki.creds("controller")) as kv:
        lease, _ = await kv.lease_grant(5)
        await kv.put("/mizzen/leader/test", b"me", lease=lease)
        assert (await kv.get("/mizzen/leader/test")) is not None
        async with kv.watch("/mizzen/leader/test") as watcher:
            await kv.delete("/mizzen/leader/test")
            batch = await asyncio.wait_for(anext(aiter(watcher)), 10)
            assert batch.events
        with pytest.raises(PermissionDeniedError):
            async with kv.watch("/registry/", prefix=True) as watcher:
                await asyncio.wait_for(anext(aiter(watcher)), 10)


# ----------------------------------------------------------------- NodeRestriction


async def test_node_restriction(pki: Pki, store: Store, admin: ObjectsClient) -> None:
    await admin.create(pod("on-a", node="na"))
    await admin.create(pod("on-b", node="nb"))
    async with (
        ObjectsClient([store.endpoint], credentials=pki.creds("node-na")) as na,
        ObjectsClient([store.endpoint], credentials=pki.creds("node-nb")) as nb,
    ):
        own = await na.create(node_obj("na"))
        other = await nb.create(node_obj("nb"))
        with pytest.raises(PermissionDeniedError, match="its own Node"):
            await na.create(node_obj("nc"))

        # node A cannot update node B's status, nor its own spec
        other.status.capacity.cpu_millis = 64_000
        with pytest.raises(
            PermissionDeniedError, match=r"node:na \(role node\) may not update status of nodes/nb"
        ):
            await na.update_status(other)
        own.spec.unschedulable = True
        with pytest.raises(PermissionDeniedError, match="spec"):
            await na.update(own)
        own.spec.unschedulable = False
        own.metadata.labels["zone"] = "a"
        await na.update(own)

        # pods: read and write status only of pods bound to it, never a spec
        mine = await na.get("pods", "on-a", "default")
        with pytest.raises(PermissionDeniedError, match="not bound to na"):
            await na.get("pods", "on-b", "default")
        listed = await na.list("pods", field_selector="spec.nodeName=na")
        assert [p.metadata.name for p in listed.items] == ["on-a"]
        with pytest.raises(PermissionDeniedError, match=r"spec\.nodeName=na"):
            await na.list("pods")
        mine.status.phase = "Running"
        mine = await na.update_status(mine)
        theirs = await admin.get("pods", "on-b", "default")
        theirs.status.phase = "Failed"
        with pytest.raises(PermissionDeniedError, match="not bound to na"):
            await na.update_status(theirs)
        mine.spec.processes[0].command[:] = ["sh", "-c", "evil"]
        with pytest.raises(PermissionDeniedError, match="spec"):
            await na.update(mine)
        with pytest.raises(PermissionDeniedError):
            await na.create(pod("made-by-node", node="na"))
        with pytest.raises(PermissionDeniedError, match="not bound to na"):
            await na.delete("pods", "on-b", "default")
        assert (await admin.get("pods", "on-b", "default")).status.phase != "Failed"
        assert list((await admin.get("pods", "on-a", "default")).spec.processes[0].command) == [
            "sleep",
            "60",
        ]

        # its own lease only; events only as their source
        lease = pb.Lease(metadata=pb.ObjectMeta(name="na", namespace="mizzen-node-lease"))
        lease.spec.holder_identity = "na"
        await na.create(lease)
        lease_b = pb.Lease(metadata=pb.ObjectMeta(name="nb", namespace="mizzen-node-lease"))
        with pytest.raises(PermissionDeniedError, match="own Lease"):
            await na.create(lease_b)
        event = pb.Event(metadata=pb.ObjectMeta(name="on-a.1", namespace="default"))
        event.spec.involved_object.kind, event.spec.involved_object.name = "Pod", "on-a"
        event.spec.reason, event.spec.type, event.spec.source.host = "Started", "Normal", "na"
        await na.create(event)
        event.metadata.name, event.spec.source.host = "on-b.1", "nb"
        with pytest.raises(PermissionDeniedError, match=r"source\.host is na"):
            await na.create(event)
        with pytest.raises(PermissionDeniedError):
            await na.list("deployments")
        await na.delete("pods", "on-a", "default", grace_period_seconds=0)


# ----------------------------------------------------------------- tokens


async def test_bearer_tokens_on_the_token_port(pki: Pki, store: Store) -> None:
    async with ObjectsClient(
        [store.token_endpoint], credentials=pki.token(pki.viewer_token)
    ) as tina:
        await tina.list("pods", "default")
        with pytest.raises(PermissionDeniedError, match="tina \\(role viewer\\)"):
            await tina.create(pod("by-token"))
    async with ObjectsClient(
        [store.token_endpoint], credentials=pki.token(pki.admin_token)
    ) as adam:
        assert (await adam.create(pod("by-admin-token"))).metadata.uid
    for bad in ("not-a-token", None):
        async with ObjectsClient(
            [store.token_endpoint], credentials=pki.token(bad), timeout=3
        ) as who:
            with pytest.raises(PermissionDeniedError) as denied:
                await who.list("pods", "default")
            assert denied.value.code == grpc.StatusCode.UNAUTHENTICATED
    # The certificate port does not take tokens in place of a certificate.
    async with ObjectsClient(
        [store.endpoint], credentials=pki.token(pki.admin_token), timeout=2
    ) as who:
        with pytest.raises(UnavailableError):
            await who.list("pods", "default")


# ----------------------------------------------------------------- limits


async def test_rate_and_watch_limits_per_identity(pki: Pki, tmp_path: Path) -> None:
    extra = [*pki.store_flags(), "--rate-limit", "5", "--rate-burst", "10", "--max-watches", "2"]
    with MizzenCluster(
        1, tmp_path / "limited", extra_args=extra, credentials=pki.creds("admin")
    ) as cluster:
        async with ObjectsClient(cluster.endpoints, credentials=pki.creds("vera")) as vera:
            exhausted = None
            for _ in range(40):
                try:
                    await vera.list("pods", "default")
                except ResourceExhaustedError as err:
                    exhausted = err
                    break
            assert exhausted is not None, "40 calls at once never hit a 5/s, burst 10 limit"
            assert "rate limit exceeded for vera" in str(exhausted)
            # another identity has its own bucket
            async with ObjectsClient(
                cluster.endpoints, credentials=pki.creds("controller")
            ) as other:
                await other.list("pods", "default")
            await asyncio.sleep(2.5)  # refill
            channel = pki.creds("vera").aio_channel(cluster.endpoints[0])
            async with channel:
                from protos import objects_api_pb2 as api
                from protos import objects_api_pb2_grpc as api_grpc

                stub = api_grpc.ObjectsStub(channel)
                calls = [stub.Watch(api.WatchRequest(kind="pods")) for _ in range(3)]
                codes = []
                for call in calls:
                    try:
                        await asyncio.wait_for(call.read(), 1.5)
                        codes.append(grpc.StatusCode.OK)
                    except TimeoutError:
                        codes.append(grpc.StatusCode.OK)  # open and idle
                    except grpc.aio.AioRpcError as err:
                        codes.append(err.code())
                        assert "too many watches for vera: limit 2" in (err.details() or "")
                assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 1
                for call in calls:
                    call.cancel()


# ----------------------------------------------------------------- insecure mode


def mizzen(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "mizzen", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_plaintext_on_a_non_loopback_address_needs_insecure(tmp_path: Path) -> None:
    client, raft = free_ports(2)
    out = mizzen(
        "store", "--data-dir", str(tmp_path / "d"),
        "--listen-client", f"0.0.0.0:{client}", "--listen-raft", f"127.0.0.1:{raft}",
    )  # fmt: skip
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to serve plaintext on --listen-client 0.0.0.0" in lines[0]
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())


def test_insecure_flag_serves_with_a_loud_warning(tmp_path: Path) -> None:
    client, raft = free_ports(2)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "mizzen", "store", "--insecure",
            "--data-dir", str(tmp_path / "d"),
            "--listen-client", f"0.0.0.0:{client}", "--listen-raft", f"127.0.0.1:{raft}",
        ],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert "WARNING: INSECURE" in first and f"0.0.0.0:{client}" in first
    finally:
        proc.kill()
        proc.wait(10)


def test_secure_store_needs_a_raft_secret_off_loopback(pki: Pki, tmp_path: Path) -> None:
    client, raft = free_ports(2)
    flags = pki.store_flags()[:6]  # no --peer-secret-file
    out = mizzen(
        "store", "--data-dir", str(tmp_path / "d"), *flags,
        "--listen-client", f"127.0.0.1:{client}", "--listen-raft", f"0.0.0.0:{raft}",
    )  # fmt: skip
    assert out.returncode == 1
    assert "Raft traffic would be plaintext" in out.stderr


# ----------------------------------------------------------------- a real agent


@pytest.mark.skipif(cgroups_unavailable() is not None, reason=str(cgroups_unavailable()))
async def test_agent_runs_pods_as_its_node_and_guards_its_api(
    pki: Pki, store: Store, admin: ObjectsClient, tmp_path: Path
) -> None:
    d = pki.dir
    tls = [
        "--cacert",
        str(d / "ca.crt"),
        "--cert",
        str(d / "node-nc.crt"),
        "--key",
        str(d / "node-nc.key"),
    ]
    agent = AgentProcess(tmp_path, [store.endpoint], name="nc", extra=tls)
    agent.start()
    try:
        await admin.create(pod("runs-on-c", node="nc"))

        async def running() -> pb.Pod:
            return await admin.get("pods", "runs-on-c", "default")

        got = await eventually(running, lambda p: p.status.phase == "Running", timeout=30)
        assert got.status.phase == "Running", agent.log_tail()
        address = f"127.0.0.1:{agent.port}"

        async def stats(creds: ClientCredentials) -> grpc.StatusCode:
            async with creds.aio_channel(address) as channel:
                try:
                    await agent_pb2_grpc.NodeAgentStub(channel).Stats(
                        agent_pb2.StatsRequest(), timeout=3
                    )
                except grpc.aio.AioRpcError as err:
                    return err.code()
            return grpc.StatusCode.OK

        assert await stats(pki.creds("vera")) == grpc.StatusCode.OK
        assert await stats(pki.creds("admin")) == grpc.StatusCode.OK
        assert await stats(pki.creds("node-na")) == grpc.StatusCode.PERMISSION_DENIED
        assert await stats(pki.creds("controller")) == grpc.StatusCode.PERMISSION_DENIED
        assert await stats(pki.ca_only) == grpc.StatusCode.UNAVAILABLE
        await admin.delete("pods", "runs-on-c", "default", grace_period_seconds=0)
    finally:
        agent.destroy()


@pytest.mark.skipif(shutil.which("etcdctl") is None, reason="etcdctl not installed")
def test_etcdctl_speaks_tls_with_client_certificates(pki: Pki, store: Store) -> None:
    def etcdctl(who: str, *args: str) -> subprocess.CompletedProcess[str]:
        d = pki.dir
        argv = ["etcdctl", "--endpoints", store.endpoint, "--cacert", str(d / "ca.crt")]
        argv += ["--cert", str(d / f"{who}.crt"), "--key", str(d / f"{who}.key"), *args]
        env = {**os.environ, "ETCDCTL_API": "3"}
        return subprocess.run(argv, capture_output=True, text=True, timeout=20, env=env)

    assert etcdctl("admin", "put", "/tls-check", "1").returncode == 0
    assert etcdctl("admin", "get", "/tls-check", "--print-value-only").stdout.strip() == "1"
    denied = etcdctl("vera", "get", "/tls-check")
    assert denied.returncode != 0 and "PermissionDenied" in denied.stderr
    assert "vera (role viewer) may not read /tls-check" in denied.stderr
    assert etcdctl("vera", "endpoint", "status").returncode == 0


async def test_a_member_with_another_raft_secret_cannot_join(pki: Pki, tmp_path: Path) -> None:
    """Raft messages are Fernet-encrypted and authenticated with the shared secret."""
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("a-different-secret-of-enough-length\n")
    cluster = MizzenCluster(
        3, tmp_path / "c", extra_args=pki.store_flags(), credentials=pki.creds("admin")
    )
    try:
        argv = cluster._members[2].argv  # the list it will be started with
        argv[argv.index("--peer-secret-file") + 1] = str(wrong)
        for i in range(3):
            cluster._spawn(cluster._members[i])
        leader = cluster._wait_leader(30, require={0, 1})
        async with StoreClient(cluster.endpoints[:2], credentials=pki.creds("admin")) as kv:
            for i in range(5):
                await kv.put(f"/secret-test/{i}", b"x")
        await asyncio.sleep(2)
        outsider = cluster.status(2)
        assert outsider is not None, "the member with the wrong secret should still answer"
        assert outsider.leader == 0, "it must not have found the leader"
        assert outsider.raftAppliedIndex < (cluster.status(leader) or outsider).raftAppliedIndex
    finally:
        cluster.stop()


def test_metrics_are_https_with_client_certificates_in_secure_mode(
    pki: Pki, tmp_path: Path
) -> None:
    port = free_ports(1)[0]
    extra = [*pki.store_flags(), "--metrics-listen", f"127.0.0.1:{port}"]
    with MizzenCluster(1, tmp_path / "m", extra_args=extra, credentials=pki.creds("admin")):
        url = f"https://127.0.0.1:{port}/metrics"
        with_cert = ssl.create_default_context(cafile=str(pki.dir / "ca.crt"))
        with_cert.load_cert_chain(str(pki.dir / "vera.crt"), str(pki.dir / "vera.key"))
        with urllib.request.urlopen(url, context=with_cert, timeout=10) as reply:
            assert reply.status == 200
            assert b"mizzen_store_raft_term" in reply.read()
        without = ssl.create_default_context(cafile=str(pki.dir / "ca.crt"))
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(url, context=without, timeout=10).read()
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
