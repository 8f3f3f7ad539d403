"""A secure store: TLS with client certificates, bearer tokens, roles, NodeRestriction.

One real store process serves TLS with the certificates of ``mizzen pki``; each
test talks to it as a different identity and checks what is allowed, what is
refused and with which status. Daemon-level security (limits, insecure mode,
Raft secret, agents, metrics) is in test_security_daemons.py.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time

import grpc
import pytest
from security_fixtures import Pki, Store, admin_fixture, node_obj, pki_fixture, pod, store_fixture  # noqa: F401 (fixtures)

from mizzen.client import ObjectsClient, StoreClient
from mizzen.client.errors import (
    FencedError,
    NotFoundError,
    PermissionDeniedError,
    StoreClientError,
    UnavailableError,
)
from mizzen.security.tls import ClientCredentials
from protos import objects_api_pb2 as api
from protos import objects_api_pb2_grpc as api_grpc
from protos import objects_pb2 as pb
from protos import rpc_pb2, rpc_pb2_grpc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


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


@pytest.mark.parametrize(
    ("who", "reason"),
    [
        ("no client certificate", "Socket closed"),
        ("certificate of another CA", "Socket closed"),
        ("plaintext client", "Socket closed"),
        ("a store certificate this client's CA did not sign", "CERTIFICATE_VERIFY_FAILED"),
    ],
)
async def test_a_refused_client_fails_with_the_reason_before_its_deadline(
    pki: Pki, store: Store, who: str, reason: str
) -> None:
    creds = {
        "no client certificate": pki.ca_only,
        "certificate of another CA": pki.creds("admin", other_ca=True),
        "plaintext client": None,
        "a store certificate this client's CA did not sign": ClientCredentials(
            str(pki.other / "ca.crt"), str(pki.other / "admin.crt"), str(pki.other / "admin.key")
        ),
    }[who]
    # a deadline far away: the client must give up because it is refused, not time out
    async with ObjectsClient([store.endpoint], credentials=creds, timeout=60) as client:
        with pytest.raises(UnavailableError) as refused:
            await client.list("pods", "default")
    assert "refused in the TLS handshake" in str(refused.value)
    assert reason in str(refused.value)


@pytest.mark.parametrize("command", [["get", "pods"], ["logs", "some-pod"]])
def test_the_cli_says_why_in_one_line(pki: Pki, store: Store, command: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIZZEN_", "GRPC_VERBOSITY"))}
    other = pki.other
    out = subprocess.run(
        [
            sys.executable, "-m", "mizzen", *command, "--endpoints", store.endpoint,
            "--cacert", str(other / "ca.crt"),
            "--cert", str(other / "admin.crt"), "--key", str(other / "admin.key"),
        ],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert out.returncode == 1
    # gRPC's C core would add a "Handshake failed" log line per reconnect attempt
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith("mizzen: cannot reach the store")
    assert "does not verify against --cacert" in out.stderr


# ----------------------------------------------------------------- state-dependent rules


def _event(name: str, host: str) -> pb.Event:
    event = pb.Event(metadata=pb.ObjectMeta(name=name, namespace="default"))
    event.spec.involved_object.kind, event.spec.involved_object.name = "Pod", "p"
    event.spec.reason, event.spec.type, event.spec.source.host = "Started", "Normal", host
    return event


async def test_a_node_may_not_take_over_an_event_another_node_recorded(
    pki: Pki, store: Store, admin: ObjectsClient
) -> None:
    async with (
        ObjectsClient([store.endpoint], credentials=pki.creds("node-na")) as na,
        ObjectsClient([store.endpoint], credentials=pki.creds("node-nb")) as nb,
    ):
        theirs = await nb.create(_event("by-nb.1", "nb"))
        mine = await na.create(_event("by-na.1", "na"))
        # The new Event names na as its source; the stored one is nb's.
        theirs.spec.source.host = "na"
        theirs.spec.message = "overwritten by na"
        with pytest.raises(PermissionDeniedError, match=r"events/default/by-nb\.1.*source\.host"):
            await na.update(theirs)
        assert (await admin.get("events", "by-nb.1", "default")).spec.message == ""
        mine.spec.count = 2
        assert (await na.update(mine)).spec.count == 2


async def test_fence_metadata_is_only_for_controllers(
    pki: Pki, store: Store, admin: ObjectsClient
) -> None:
    """A fenced write answers whether the fence key exists at that create revision: a probe
    of any key. Only controllers fence their writes (admins may do anything anyway)."""
    target = await admin.create(pod("fence-probe-target", node="nb"))
    key = b"/registry/pods/default/fence-probe-target"
    async with (
        ObjectsClient([store.endpoint], credentials=pki.creds("node-na")) as na,
        ObjectsClient([store.endpoint], credentials=pki.creds("controller")) as controller,
        StoreClient([store.endpoint], credentials=pki.creds("controller")) as kv,
    ):
        revision = int(target.metadata.resource_version)
        for guess in (revision, revision + 1):
            with pytest.raises(PermissionDeniedError, match="mizzen-fence-key") as denied:
                await na.fenced(key, guess).create(_event(f"probe-{guess}.1", "na"))
            assert "node:na (role node) may not" in str(denied.value)
        with pytest.raises(NotFoundError):
            await admin.get("events", f"probe-{revision}.1", "default")

        await kv.put("/mizzen/leader/fence-test", b"me")
        record = await kv.get("/mizzen/leader/fence-test")
        assert record is not None
        fenced = controller.fenced(b"/mizzen/leader/fence-test", record.create_revision)
        assert (await fenced.create(_event("fenced.1", "controller"))).metadata.uid
        stale = controller.fenced(b"/mizzen/leader/fence-test", record.create_revision + 1)
        with pytest.raises(FencedError):
            await stale.create(_event("stale.1", "controller"))
        adam = admin.fenced(b"/mizzen/leader/fence-test", record.create_revision)
        assert (await adam.create(_event("fenced-by-admin.1", "admin"))).metadata.uid


# ----------------------------------------------------------------- undecodable values


def _cli(pki: Pki, store: Store, *args: str) -> subprocess.CompletedProcess[str]:
    d = pki.dir
    return subprocess.run(
        [sys.executable, "-m", "mizzen", *args, "--endpoints", store.endpoint,
         "--cacert", str(d / "ca.crt"),
         "--cert", str(d / "admin.crt"), "--key", str(d / "admin.key")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_an_undecodable_value_is_skipped_reported_and_deletable(
    pki: Pki, store: Store, admin: ObjectsClient
) -> None:
    """An admin wrote garbage under /registry/pods/ through the raw KV API."""
    ns = "corrupt"
    key = f"/registry/pods/{ns}/broken"
    before, after = pod("before"), pod("after")
    before.metadata.namespace = after.metadata.namespace = ns
    await admin.create(before)
    async with (
        StoreClient([store.endpoint], credentials=pki.creds("admin")) as kv,
        pki.creds("admin").aio_channel(store.endpoint) as channel,
    ):
        listed = await admin.list("pods", ns)
        stream = api_grpc.ObjectsStub(channel).Watch(
            api.WatchRequest(kind="pods", namespace=ns, resource_version=listed.resource_version)
        )
        await kv.put(key, b"written raw: not a pod")
        await admin.create(after)

        # The watch skips the undecodable value and goes on.
        event = await asyncio.wait_for(stream.read(), 10)
        assert (event.type, event.object.pod.metadata.name) == (api.WatchEvent.ADDED, "after")
        stream.cancel()

        # List skips it and says so; Get names the key.
        listed = await admin.list("pods", ns)
        assert sorted(p.metadata.name for p in listed.items) == ["after", "before"]
        assert listed.undecodable_keys == [key]
        with pytest.raises(StoreClientError) as err:
            await admin.get("pods", "broken", ns)
        assert err.value.code == grpc.StatusCode.DATA_LOSS
        assert key in str(err.value)
        assert "undecodable_object" in store.log()
        got = _cli(pki, store, "get", "pods", "-n", ns, "-o", "name")
        assert got.returncode == 0, got.stderr
        assert got.stdout.split() == ["pod/after", "pod/before"]
        assert key in got.stderr

        # A node cannot delete what it cannot tell is bound to it; an admin can.
        async with ObjectsClient([store.endpoint], credentials=pki.creds("node-na")) as na:
            with pytest.raises(PermissionDeniedError, match="does not decode"):
                await na.delete("pods", "broken", ns)
        deleted = _cli(pki, store, "delete", "pod", "broken", "-n", ns)
        assert deleted.returncode == 0, deleted.stderr
        assert deleted.stdout.strip() == "pod/broken deleted"
        assert await kv.get(key) is None
        assert (await admin.list("pods", ns)).undecodable_keys == []
