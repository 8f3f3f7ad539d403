"""The agent's service discovery: variables, the live files' shape, one namespace followed
through a fake store (files rewritten atomically on change, removed with their Service),
and a pod worker whose process sees the variables and the files."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_pod_worker import FakePods, FileDriver, main_status, until

from mizzen.client.objects import ListResult
from mizzen.client.services import endpoints_of, host_port
from nodeagent.logs import PodLogs
from nodeagent.pod_config import PodPaths
from nodeagent.pod_worker import PodWorker, WorkerDeps
from nodeagent.services import (
    NamespaceServices,
    ServiceDirectory,
    env_prefix,
    service_document,
    service_env,
)
from nodeagent.state import StateDir, read_boot_id
from protos import objects_pb2 as pb

NS = "default"


def service(name: str, *ports: tuple[str, str]) -> pb.Service:
    svc = pb.Service(metadata=pb.ObjectMeta(name=name, namespace=NS))
    svc.spec.selector["app"] = name
    for port_name, target in ports or (("http", "http"),):
        svc.spec.ports.add(name=port_name, target_port=target, protocol="TCP")
    return svc


def endpoints(name: str, *pods: tuple[str, str, dict[str, int], bool]) -> pb.Endpoints:
    """pods: (pod, host, {port name: port}, ready); one subset per pod."""
    ep = pb.Endpoints(metadata=pb.ObjectMeta(name=name, namespace=NS))
    for pod, host, ports, ready in pods:
        subset = ep.subsets.add()
        address = subset.addresses.add() if ready else subset.not_ready_addresses.add()
        address.ip, address.node_name = host, "n1"
        address.target_ref.CopyFrom(pb.ObjectReference(kind="Pod", name=pod))
        for port_name, port in ports.items():
            subset.ports.add(name=port_name, port=port, protocol="TCP")
    return ep


DB = endpoints(
    "db",
    ("db-b", "10.0.0.2", {"http": 20002}, True),
    ("db-a", "10.0.0.1", {"http": 20001}, True),
    ("db-c", "10.0.0.3", {"http": 20003}, False),
)


# ------------------------------------------------------------------ pure


def test_names_and_addresses() -> None:
    assert env_prefix("my-db") == "MY_DB"
    assert host_port("10.0.0.1", 80) == "10.0.0.1:80"
    assert host_port("fd00::1", 80) == "[fd00::1]:80"
    assert [e.pod for e in endpoints_of(DB)] == ["db-a", "db-b"]
    assert [e.pod for e in endpoints_of(DB, ready=False)] == ["db-c"]
    assert endpoints_of(None) == []


def test_env_one_port() -> None:
    env = dict(service_env([service("db")], {"db": DB}, "uid-1"))
    assert env["DB_SERVICE_ENDPOINTS"] == "10.0.0.1:20001,10.0.0.2:20002"
    assert (env["DB_SERVICE_HOST"], env["DB_SERVICE_PORT"]) in {
        ("10.0.0.1", "20001"),
        ("10.0.0.2", "20002"),
    }
    assert "DB_SERVICE_PORT_HTTP" not in env  # only with several ports
    # the same pod always gets the same endpoint; pods are spread over both
    chosen = {
        dict(service_env([service("db")], {"db": DB}, f"uid-{i}"))["DB_SERVICE_HOST"]
        for i in range(40)
    }
    assert chosen == {"10.0.0.1", "10.0.0.2"}
    assert service_env([service("db")], {"db": DB}, "uid-1") == service_env(
        [service("db")], {"db": DB}, "uid-1"
    )


def test_env_without_ready_endpoints_or_endpoints_object() -> None:
    nothing_ready = endpoints("db", ("db-c", "10.0.0.3", {"http": 20003}, False))
    assert service_env([service("db")], {"db": nothing_ready}, "u") == [
        ("DB_SERVICE_ENDPOINTS", "")
    ]
    assert service_env([service("my-cache")], {}, "u") == [("MY_CACHE_SERVICE_ENDPOINTS", "")]


def test_env_several_ports_and_services_sorted() -> None:
    api = endpoints("api", ("api-1", "10.0.0.1", {"web": 20010, "admin-port": 20011}, True))
    svc = service("api", ("web", "web"), ("admin-port", "admin"))
    env = service_env([svc, service("db")], {"api": api, "db": DB}, "u")
    assert [k for k, _ in env][:4] == [
        "API_SERVICE_ENDPOINTS",
        "API_SERVICE_HOST",
        "API_SERVICE_PORT",
        "API_SERVICE_PORT_WEB",
    ]
    assert dict(env)["API_SERVICE_PORT"] == "20010"
    assert dict(env)["API_SERVICE_PORT_ADMIN_PORT"] == "20011"
    assert env[5][0] == "DB_SERVICE_ENDPOINTS"


def test_document_shape() -> None:
    doc = service_document(service("db"), DB)
    assert doc == {
        "service": "db",
        "namespace": NS,
        "ports": {"http": ["10.0.0.1:20001", "10.0.0.2:20002"]},
        "endpoints": [
            {"host": "10.0.0.1", "node": "n1", "pod": "db-a", "ports": {"http": 20001}},
            {"host": "10.0.0.2", "node": "n1", "pod": "db-b", "ports": {"http": 20002}},
        ],
        "notReady": [{"host": "10.0.0.3", "node": "n1", "pod": "db-c", "ports": {"http": 20003}}],
    }
    assert service_document(service("db"), None)["ports"] == {"http": []}


# ------------------------------------------------------------------ a namespace, followed


class FakeDiscovery:
    """Services and Endpoints with list and a watch per kind, like the Objects API."""

    def __init__(self) -> None:
        self.rv = 10
        self.objects: dict[str, dict[str, Any]] = {"Service": {}, "Endpoints": {}}
        self.watchers: list[tuple[str, asyncio.Queue[tuple[str, Any]]]] = []
        self.lists = 0
        self.hold_lists = asyncio.Event()
        self.hold_lists.set()

    @staticmethod
    def _kind(kind: Any) -> str:
        return {"services": "Service", "endpoints": "Endpoints"}[str(kind)]

    def put(self, obj: Any) -> None:
        self.rv += 1
        obj.metadata.resource_version = str(self.rv)
        kind = type(obj).DESCRIPTOR.name
        event = "MODIFIED" if obj.metadata.name in self.objects[kind] else "ADDED"
        self.objects[kind][obj.metadata.name] = obj
        self._send(kind, event, obj)

    def remove(self, kind: str, name: str) -> None:
        self.rv += 1
        obj = self.objects[kind].pop(name)
        gone = type(obj)()
        gone.CopyFrom(obj)
        gone.metadata.resource_version = str(self.rv)
        self._send(kind, "DELETED", gone)

    def _send(self, kind: str, event: str, obj: Any) -> None:
        for k, q in self.watchers:
            if k == kind:
                q.put_nowait((event, obj))

    async def list(self, kind: Any, namespace: str = "", **kwargs: Any) -> ListResult:
        await self.hold_lists.wait()
        self.lists += 1
        return ListResult(list(self.objects[self._kind(kind)].values()), str(self.rv))

    async def watch(self, kind: Any, namespace: str = "", **kwargs: Any) -> AsyncIterator[Any]:
        q: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        entry = (self._kind(kind), q)
        self.watchers.append(entry)
        try:
            while True:
                yield await q.get()
        finally:
            self.watchers.remove(entry)


def read(path: Path) -> Any:
    return json.loads(path.read_text())


async def test_files_follow_changes_atomically_and_go_with_their_service(tmp_path: Path) -> None:
    store = FakeDiscovery()
    store.put(service("db"))
    store.put(DB)
    stale = tmp_path / "services" / NS
    stale.mkdir(parents=True)
    (stale / "deleted-while-away.json").write_text("{}")
    directory = ServiceDirectory(store, str(tmp_path / "services"))
    entry = directory.follow(NS)
    assert await entry.wait_synced()
    files = tmp_path / "services" / NS
    await until(lambda: (files / "db.json").exists(), "db.json written")
    assert read(files / "db.json")["ports"] == {"http": ["10.0.0.1:20001", "10.0.0.2:20002"]}
    assert not (stale / "deleted-while-away.json").exists()
    assert oct((files / "db.json").stat().st_mode & 0o777) == "0o644"

    inode = (files / "db.json").stat().st_ino
    store.put(endpoints("db", ("db-a", "10.0.0.1", {"http": 20001}, True)))
    await until(lambda: read(files / "db.json")["ports"]["http"] == ["10.0.0.1:20001"], "rewrite")
    assert (files / "db.json").stat().st_ino != inode, "replaced by a rename, not rewritten"
    assert sorted(os.listdir(files)) == ["db.json"], "no temporary file left"

    store.put(service("api"))  # a Service without Endpoints yet
    await until(lambda: (files / "api.json").exists(), "api.json written")
    assert read(files / "api.json")["endpoints"] == []
    store.remove("Service", "db")
    await until(lambda: not (files / "db.json").exists(), "db.json removed")

    directory.release(entry)
    await until(lambda: not files.exists(), "the namespace's directory removed")
    await directory.close()


async def test_unchanged_content_is_not_rewritten(tmp_path: Path) -> None:
    store = FakeDiscovery()
    store.put(service("db"))
    store.put(DB)
    entry = NamespaceServices(store, NS, str(tmp_path))
    entry.start()
    assert await entry.wait_synced()
    await until(lambda: (tmp_path / NS / "db.json").exists(), "written")
    again = pb.Endpoints()
    again.CopyFrom(DB)
    store.put(again)  # a new resource version, the same addresses
    await asyncio.sleep(0.05)
    assert entry.write_files() == []
    await entry.stop()


async def test_sync_wait_is_bounded_once(tmp_path: Path) -> None:
    store = FakeDiscovery()
    store.hold_lists.clear()  # the store does not answer
    entry = NamespaceServices(store, NS, str(tmp_path))
    entry.start()
    assert not await entry.wait_synced(timeout=0.05)
    assert not await entry.wait_synced(timeout=3600), "does not wait a second time"
    store.hold_lists.set()
    await until(lambda: entry.synced, "synced later")
    assert await entry.wait_synced()
    await entry.stop()


async def test_wait_ready_returns_once_a_dependency_has_an_endpoint(tmp_path: Path) -> None:
    store = FakeDiscovery()
    store.put(service("db"))
    entry = NamespaceServices(store, NS, "")
    entry.start()
    assert await entry.wait_synced()
    waiting = asyncio.create_task(entry.wait_ready(["db"], timeout=30))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    store.put(DB)
    await asyncio.wait_for(waiting, 5)
    assert dict(entry.env("u"))["DB_SERVICE_ENDPOINTS"] == "10.0.0.1:20001,10.0.0.2:20002"
    await entry.stop()


# ------------------------------------------------------------------ a pod worker


@pytest.fixture
def open_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mizzen-podsvc-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Store(FakePods, FakeDiscovery):
    def __init__(self, pod: pb.Pod) -> None:
        FakePods.__init__(self, pod)
        FakeDiscovery.__init__(self)


async def test_a_process_sees_the_variables_and_the_live_file(
    tmp_path: Path, open_dir: Path
) -> None:
    pod = pb.Pod(metadata=pb.ObjectMeta(name="api-1", namespace=NS, uid="uid-api-1"))
    pod.spec.restart_policy = "Always"
    pod.spec.termination_grace_period_seconds = 1
    pod.spec.depends_on.add(service="db")
    # the dependencies controller has seen db ready; the agent's own copy of db's
    # Endpoints has not yet (they come on another watch)
    pod.status.conditions.add(type="DependenciesReady", status="True")
    out = open_dir / "env.out"
    script = (
        f'echo "$DB_SERVICE_ENDPOINTS|$DB_SERVICE_PORT|$MINE" > {out}; '
        f'cat "$MIZZEN_POD_DIR/services/db.json" > {open_dir}/file.out; exec sleep 30'
    )
    main = pod.spec.processes.add(name="main", command=["/bin/sh", "-c", script])
    main.env.add(name="MINE", value="pod's own")
    main.env.add(name="DB_SERVICE_PORT", value="overridden")  # the pod's own wins
    store = Store(pod)
    store.put(service("db"))
    data = open_dir / "agent"
    data.mkdir(mode=0o711)
    directory = ServiceDirectory(store, str(data / "services"))
    deps = WorkerDeps(
        client=store,
        driver=FileDriver(tmp_path / "cg"),
        logs=PodLogs(str(tmp_path / "logs")),
        state=StateDir(data / "pods"),
        boot_id=read_boot_id(),
        logs_linger=0.0,
        pod_paths=PodPaths.under(str(data)),
        services=directory,
    )
    worker = PodWorker(pod, deps)
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(0.1)
        assert not out.exists(), "waits (boundedly) for its dependency's endpoint"
        store.put(DB)
        await until(lambda: out.exists() and out.read_text().strip() != "", "process started")
        assert out.read_text().strip() == "10.0.0.1:20001,10.0.0.2:20002|overridden|pod's own"
        await until(lambda: (open_dir / "file.out").stat().st_size > 0, "file read")
        assert json.loads((open_dir / "file.out").read_text())["service"] == "db"
        pod_dir = data / "poddirs" / f"{NS}_api-1_uid-api-1"
        link = pod_dir / "services"
        assert link.is_symlink() and os.readlink(link) == str(data / "services" / NS)
        await until(lambda: main_status(store).pid > 0, "running")
    finally:
        worker.gone()
        await asyncio.wait_for(task, 10)
    await until(lambda: not (data / "services" / NS).exists(), "unfollowed when the pod is gone")
    await directory.close()


async def test_a_namespace_followed_again_at_once_keeps_its_files(tmp_path: Path) -> None:
    store = FakeDiscovery()
    store.put(service("db"))
    directory = ServiceDirectory(store, str(tmp_path / "services"))
    files = tmp_path / "services" / NS
    entry = directory.follow(NS)
    await until(lambda: (files / "db.json").exists(), "written")
    directory.release(entry)  # the last pod of the namespace went ...
    again = directory.follow(NS)  # ... and another one starts right away
    await asyncio.sleep(0.1)
    await until(lambda: (files / "db.json").exists(), "still there")
    assert again.synced
    await directory.close()
