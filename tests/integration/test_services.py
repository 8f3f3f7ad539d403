"""Services end to end (root): a real store, `mizzen controllers` and a real `mizzen agent`.

HTTP servers (``python -m http.server`` serving a directory with a file ``ok``)
on fixed host ports, with a readiness probe ``GET /ok``: removing the file
makes the probe fail. The Service's Endpoints list exactly the ready servers,
and drop one within 2 s of its probe failing; a consumer pod gets the
variables at start and a live file that follows the Endpoints; a Deployment's
pods killed make the file change, and it recovers when they come back.
(Dynamic ports are another part of issue 17; these pods use fixed ports.)
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_fixtures import AgentProcess, agent_and_controllers, cgroups_unavailable, eventually

from controllers.endpoints import CONDITION
from mizzen.client import ObjectsClient
from mizzen.client.errors import NotFoundError
from mizzen.testing.local_cluster import REPO_ROOT, MizzenCluster, free_ports
from protos import objects_pb2 as pb

_why = cgroups_unavailable()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(_why is not None, reason=_why or ""),
    pytest.mark.timeout(180),
]

NS = "svc"
HOST = "127.0.0.1"  # the agent's --address: its node's InternalIP


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MizzenCluster]:
    with MizzenCluster(1, tmp_path_factory.mktemp("svc-store")) as c:
        yield c


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    """A directory other users can reach (pytest's tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="mizzen-svc-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def agent(cluster: MizzenCluster, base: Path) -> Iterator[AgentProcess]:
    with agent_and_controllers(base, cluster.endpoints, "svc") as a:
        yield a


@pytest.fixture
async def client(cluster: MizzenCluster, agent: AgentProcess) -> AsyncIterator[ObjectsClient]:
    async with ObjectsClient(cluster.endpoints, timeout=10) as c:
        yield c


# ------------------------------------------------------------------ objects


def server_template(docroot: Path, port: int, labels: dict[str, str]) -> pb.PodTemplateSpec:
    t = pb.PodTemplateSpec()
    t.metadata.labels.update(labels)
    t.spec.termination_grace_period_seconds = 1
    proc = t.spec.processes.add(
        name="server",
        command=[sys.executable, "-m", "http.server", str(port), "--bind", HOST],
        args=["--directory", str(docroot)],
    )
    proc.ports.add(name="http", port=port)
    probe = proc.readiness_probe
    probe.http_get.port = port
    probe.http_get.path = "/ok"
    probe.period_seconds = 1
    probe.failure_threshold = 1
    probe.timeout_seconds = 1
    return t


def server_pod(agent: AgentProcess, name: str, docroot: Path, port: int, app: str) -> pb.Pod:
    t = server_template(docroot, port, {"app": app})
    p = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace=NS, labels=t.metadata.labels))
    p.spec.CopyFrom(t.spec)
    p.spec.node_name = agent.name
    return p


def consumer_pod(agent: AgentProcess, name: str) -> pb.Pod:
    p = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace=NS))
    p.spec.node_name = agent.name
    p.spec.termination_grace_period_seconds = 1
    script = 'env | grep _SERVICE_ | sort > "$MIZZEN_POD_DIR/env.out"; exec sleep 3600'
    p.spec.processes.add(name="main", command=["/bin/sh", "-c", script])
    return p


def service(name: str, app: str, target: str = "http") -> pb.Service:
    svc = pb.Service(metadata=pb.ObjectMeta(name=name, namespace=NS))
    svc.spec.selector["app"] = app
    svc.spec.ports.add(name="http", target_port=target)
    return svc


def docroot(base: Path, name: str) -> Path:
    d = base / "www" / name
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o755)
    (d / "ok").write_text("ok\n")
    return d


def ready_of(ep: pb.Endpoints) -> set[tuple[str, int, str]]:
    return {(a.ip, s.ports[0].port, a.target_ref.name) for s in ep.subsets for a in s.addresses}


def not_ready_of(ep: pb.Endpoints) -> set[str]:
    return {a.target_ref.name for s in ep.subsets for a in s.not_ready_addresses}


async def get_endpoints(client: ObjectsClient, name: str) -> pb.Endpoints:
    ep: pb.Endpoints = await client.get("endpoints", name, NS)
    return ep


def pod_dir(agent: AgentProcess, pod: pb.Pod) -> Path:
    meta = pod.metadata
    return agent.data_dir / "poddirs" / f"{meta.namespace}_{meta.name}_{meta.uid}"


async def running(client: ObjectsClient, name: str) -> pb.Pod:
    pod: pb.Pod = await eventually(
        lambda: client.get("pods", name, NS),
        lambda p: p.status.phase == "Running",
        timeout=30,
        what=f"{name} running",
    )
    return pod


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def http_get(port: int) -> int:
    with urllib.request.urlopen(f"http://{HOST}:{port}/ok", timeout=5) as resp:
        return int(resp.status)


def ready_since(pod: pb.Pod) -> tuple[str, float]:
    for c in pod.status.conditions:
        if c.type == "Ready":
            return c.status, c.last_transition_time.ToNanoseconds() / 1e9
    return "", 0.0


# ------------------------------------------------------------------ tests


async def test_endpoints_are_the_ready_pods_and_follow_readiness(
    client: ObjectsClient, agent: AgentProcess, base: Path
) -> None:
    ports = sorted(free_ports(3))
    await client.create(service("web", "web"))
    roots = [docroot(base, f"web-{i}") for i in range(3)]
    for i, port in enumerate(ports):
        await client.create(server_pod(agent, f"web-{i}", roots[i], port, "web"))
    want = {(HOST, port, f"web-{i}") for i, port in enumerate(ports)}
    ep = await eventually(
        lambda: get_endpoints(client, "web"),
        lambda e: ready_of(e) == want and not not_ready_of(e),
        timeout=60,
        what="3 ready endpoints",
    )
    assert [await asyncio.to_thread(http_get, port) for _, port, _ in sorted(ready_of(ep))] == [
        200,
        200,
        200,
    ]
    svc = await client.get("services", "web", NS)
    assert [(c.type, c.status) for c in svc.status.conditions] == [(CONDITION, "True")]

    # a consumer started now gets the variables, and a live file
    consumer = await client.create(consumer_pod(agent, "client-1"))
    consumer = await running(client, "client-1")
    files = pod_dir(agent, consumer)
    env_out = files / "env.out"
    await eventually(
        lambda: asyncio.to_thread(env_out.exists), bool, timeout=20, what="consumer's env.out"
    )
    env = dict(line.split("=", 1) for line in env_out.read_text().splitlines())
    assert env["WEB_SERVICE_ENDPOINTS"] == ",".join(f"{HOST}:{p}" for p in ports)
    assert env["WEB_SERVICE_HOST"] == HOST
    assert int(env["WEB_SERVICE_PORT"]) in ports
    live = files / "services" / "web.json"
    doc = read_json(live)
    assert doc["ports"] == {"http": [f"{HOST}:{p}" for p in ports]}

    # web-1's probe fails: its address moves to notReady within 2 s of the pod
    # turning unready (the probe's verdict, as the agent reports it)
    watch_from = ep.metadata.resource_version
    seen: asyncio.Queue[tuple[float, pb.Endpoints]] = asyncio.Queue()

    async def follow() -> None:
        async for _, obj in client.watch(
            "endpoints", NS, field_selector="metadata.name=web", resource_version=watch_from
        ):
            seen.put_nowait((time.time(), obj))

    watcher = asyncio.create_task(follow())
    try:
        (roots[1] / "ok").unlink()
        unready = await eventually(
            lambda: client.get("pods", "web-1", NS),
            lambda p: ready_since(p)[0] == "False",
            timeout=20,
            what="web-1 unready",
        )
        turned = ready_since(unready)[1]
        while True:
            at, obj = await asyncio.wait_for(seen.get(), 20)
            if "web-1" in not_ready_of(obj):
                break
        assert ready_of(obj) == want - {(HOST, ports[1], "web-1")}
        print(f"pod unready -> Endpoints: {at - turned:.3f}s")
        assert at - turned <= 2.0, f"endpoints followed after {at - turned:.2f}s"
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    await eventually(
        lambda: asyncio.to_thread(read_json, live),
        lambda d: (
            d is not None
            and d["ports"]["http"] == [f"{HOST}:{ports[0]}", f"{HOST}:{ports[2]}"]
            and [e["pod"] for e in d["notReady"]] == ["web-1"]
        ),
        timeout=10,
        what="the consumer's file without web-1",
    )

    # ready again: back in the list
    (roots[1] / "ok").write_text("ok\n")
    await eventually(
        lambda: get_endpoints(client, "web"),
        lambda e: ready_of(e) == want,
        timeout=20,
        what="web-1 ready again",
    )


async def test_the_live_file_follows_pods_dying_and_coming_back(
    client: ObjectsClient, agent: AgentProcess, base: Path
) -> None:
    (port,) = free_ports(1)
    dep = pb.Deployment(metadata=pb.ObjectMeta(name="db", namespace=NS))
    dep.spec.replicas = 1
    dep.spec.selector.match_labels["app"] = "db"
    dep.spec.template.CopyFrom(server_template(docroot(base, "db"), port, {"app": "db"}))
    await client.create(service("db", "db"))
    await client.create(dep)
    consumer = await client.create(consumer_pod(agent, "api-1"))
    consumer = await running(client, "api-1")
    live = pod_dir(agent, consumer) / "services" / "db.json"
    doc = await eventually(
        lambda: asyncio.to_thread(read_json, live),
        lambda d: d is not None and d["ports"]["http"] == [f"{HOST}:{port}"],
        timeout=60,
        what="db's endpoint in the consumer's file",
    )
    first = doc["endpoints"][0]["pod"]
    # held open, so its inode cannot be reused by the file that replaces it
    old = live.open("rb")
    before = old.read()

    pods = (await client.list("pods", NS, label_selector="app=db")).items
    for p in pods:
        await client.delete("pods", p.metadata.name, NS)
    await eventually(
        lambda: asyncio.to_thread(read_json, live),
        lambda d: d is not None and d["ports"]["http"] == [],
        timeout=30,
        what="no ready db endpoint in the file",
    )
    try:
        assert live.stat().st_ino != os.fstat(old.fileno()).st_ino, "replaced by a rename"
        old.seek(0)
        assert old.read() == before, "the replaced file was not written in place"
    finally:
        old.close()
    doc = await eventually(
        lambda: asyncio.to_thread(read_json, live),
        lambda d: (
            d is not None
            and d["ports"]["http"] == [f"{HOST}:{port}"]
            and d["endpoints"][0]["pod"] != first
        ),
        timeout=90,
        what="the new db pod in the file",
    )
    assert await asyncio.to_thread(http_get, port) == 200


async def test_bad_services_give_conditions_not_errors(
    client: ObjectsClient, agent: AgentProcess, base: Path
) -> None:
    await client.create(service("nothing", "no-such-app"))
    ep = await eventually(
        lambda: get_endpoints(client, "nothing"), lambda e: True, what="empty Endpoints"
    )
    assert list(ep.subsets) == []
    (port,) = free_ports(1)
    await client.create(server_pod(agent, "misnamed-1", docroot(base, "m"), port, "misnamed"))
    await client.create(service("misnamed", "misnamed", target="grpc"))

    async def condition() -> pb.Condition:
        svc = await client.get("services", "misnamed", NS)
        return next(c for c in svc.status.conditions if c.type == CONDITION)

    cond = await eventually(condition, lambda c: c.status == "False", what="TargetPortsResolved")
    assert cond.reason == "TargetPortNotFound"
    assert 'targetPort "grpc" is not a port name declared by any process of pod misnamed-1' in (
        cond.message
    )
    assert list((await get_endpoints(client, "misnamed")).subsets) == []
    # deleting the Service deletes its Endpoints
    await client.delete("services", "nothing", NS)

    async def gone() -> bool:
        try:
            await client.get("endpoints", "nothing", NS)
        except NotFoundError:
            return True
        return False

    await eventually(gone, bool, what="Endpoints deleted with the Service")
    assert os.path.isdir(agent.data_dir / "services" / NS)


def cli(cluster: MizzenCluster, *args: str, stdin: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIZZEN_")}
    argv = [sys.executable, "-m", "mizzen", *args, "--endpoints", ",".join(cluster.endpoints)]
    out = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, env=env
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


SERVICE_MANIFEST = """\
apiVersion: mizzen/v1
kind: Service
metadata: {name: cli-web, namespace: svc}
spec:
  selector: {app: cli-web}
  ports: [{name: http, targetPort: http}]
"""


async def test_cli_apply_get_describe(
    cluster: MizzenCluster, client: ObjectsClient, agent: AgentProcess, base: Path
) -> None:
    (port,) = free_ports(1)
    await client.create(server_pod(agent, "cli-web-1", docroot(base, "cli"), port, "cli-web"))
    out = await asyncio.to_thread(cli, cluster, "apply", "-f", "-", stdin=SERVICE_MANIFEST)
    assert out == "service/cli-web created\n"
    await eventually(
        lambda: get_endpoints(client, "cli-web"),
        lambda e: ready_of(e) == {(HOST, port, "cli-web-1")},
        timeout=30,
        what="cli-web's endpoint",
    )
    again = await asyncio.to_thread(cli, cluster, "apply", "-f", "-", stdin=SERVICE_MANIFEST)
    assert again == "service/cli-web unchanged\n"
    table = await asyncio.to_thread(cli, cluster, "get", "svc", "cli-web", "-n", NS, "-o", "wide")
    assert table.splitlines()[1].split()[:2] == ["cli-web", "http:http/TCP"]
    assert table.splitlines()[1].split()[-1] == "app=cli-web"
    eps = await asyncio.to_thread(cli, cluster, "get", "endpoints", "cli-web", "-n", NS)
    assert eps.splitlines()[1].split()[:2] == ["cli-web", f"{HOST}:{port}"]
    text = await asyncio.to_thread(cli, cluster, "describe", "service", "cli-web", "-n", NS)
    words = [" ".join(line.split()) for line in text.splitlines()]
    assert f"Endpoints: {HOST}:{port} (cli-web-1)" in words
    assert "TargetPortsResolved True TargetPortsFound" in words
