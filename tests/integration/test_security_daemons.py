"""Security of the daemons: per-identity limits, insecure mode, the Raft secret,
a real agent with its node identity, and HTTPS metrics."""

from __future__ import annotations

import asyncio
import http.client
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from agent_fixtures import AgentProcess, cgroups_unavailable, eventually
from security_fixtures import (  # noqa: F401 (fixtures)
    REPO,
    Pki,
    Store,
    admin_fixture,
    node_obj,
    pki_fixture,
    pod,
    store_fixture,
)

from mizzen.client import ObjectsClient, StoreClient
from mizzen.client.errors import (
    ResourceExhaustedError,
)
from mizzen.security.tls import ClientCredentials
from mizzen.testing.local_cluster import MizzenCluster, free_ports
from protos import agent_pb2, agent_pb2_grpc
from protos import objects_pb2 as pb

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


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
            await asyncio.sleep(0.5)  # the cancelled streams are released
            await _cancels_of_unknown_ids_do_not_free_watches(pki, cluster)
            await _a_refused_watch_create_ends_the_stream(pki, cluster)


async def _a_refused_watch_create_ends_the_stream(pki: Pki, cluster: MizzenCluster) -> None:
    """A viewer's etcd watch outside the leader keys: PERMISSION_DENIED ends the stream
    (it once stayed open, silent, until the client gave up)."""
    from protos import rpc_pb2, rpc_pb2_grpc

    create = rpc_pb2.WatchCreateRequest(key=b"/registry/secret")
    async with pki.creds("vera").aio_channel(cluster.endpoints[0]) as channel:
        stream = rpc_pb2_grpc.WatchStub(channel).Watch()
        await stream.write(rpc_pb2.WatchRequest(create_request=create))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(stream.read(), 5)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def _cancels_of_unknown_ids_do_not_free_watches(pki: Pki, cluster: MizzenCluster) -> None:
    """An etcd Watch stream (counts 1) with one watch (2 = the limit): a cancel of an id
    that was never opened frees nothing, so a second create is refused."""
    from protos import rpc_pb2, rpc_pb2_grpc

    key = b"/mizzen/leader/x"  # a viewer may read (and watch) the leader keys
    creates = [rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=key))]
    async with pki.creds("vera").aio_channel(cluster.endpoints[0]) as channel:
        stream = rpc_pb2_grpc.WatchStub(channel).Watch()
        await stream.write(creates[0])
        first = await asyncio.wait_for(stream.read(), 5)
        assert first.created and not first.canceled
        cancel = rpc_pb2.WatchCancelRequest(watch_id=99)
        await stream.write(rpc_pb2.WatchRequest(cancel_request=cancel))
        await stream.write(creates[0])
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(stream.read(), 5)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "too many watches for vera: limit 2" in (err.value.details() or "")


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
    # a non-loopback client port needs a Raft secret even with --insecure
    env = {**os.environ, "PYTHONPATH": str(REPO), "MIZZEN_RAFT_PASSWORD": "x1y2z3-" * 4}
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
    assert "refusing to start without a Raft secret" in out.stderr
    assert f"--listen-raft 0.0.0.0:{raft} is not loopback" in out.stderr


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

        async def execute(creds: ClientCredentials) -> tuple[grpc.StatusCode, int | None]:
            """Exec `true` in the pod: the status, and the command's exit code."""
            start = agent_pb2.ExecStart(namespace="default", pod="runs-on-c", command=["true"])
            async with creds.aio_channel(address) as channel:
                call = agent_pb2_grpc.NodeAgentStub(channel).Exec(timeout=10)
                try:
                    await call.write(agent_pb2.ExecRequest(start=start))
                    async for answer in call:
                        if answer.HasField("exit"):
                            return grpc.StatusCode.OK, answer.exit.code
                except grpc.aio.AioRpcError as err:
                    return err.code(), None
            return grpc.StatusCode.OK, None

        async def attach(creds: ClientCredentials) -> grpc.StatusCode:
            start = agent_pb2.AttachStart(namespace="default", pod="runs-on-c")
            async with creds.aio_channel(address) as channel:
                call = agent_pb2_grpc.NodeAgentStub(channel).Attach(timeout=3)
                try:
                    await call.write(agent_pb2.AttachRequest(start=start))
                    await call.read()
                except grpc.aio.AioRpcError as err:
                    return err.code()
            return grpc.StatusCode.OK

        # exec and attach over TLS: admin only by default (--exec-roles)
        assert await execute(pki.creds("admin")) == (grpc.StatusCode.OK, 0)
        assert await execute(pki.creds("vera")) == (grpc.StatusCode.PERMISSION_DENIED, None)
        assert (await execute(pki.creds("controller")))[0] == grpc.StatusCode.PERMISSION_DENIED
        assert await attach(pki.creds("vera")) == grpc.StatusCode.PERMISSION_DENIED
        assert await attach(pki.creds("node-na")) == grpc.StatusCode.PERMISSION_DENIED
        await admin.delete("pods", "runs-on-c", "default", grace_period_seconds=0)
    finally:
        agent.destroy()


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
