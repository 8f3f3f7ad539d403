"""mizzen.client.resolve / watch_endpoints: from a pod's live file, and from the store
(through FakeObjects)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from controllers.testing import FakeObjects
from mizzen.client import DiscoveryError, NotFoundError, resolve, watch_endpoints
from mizzen.client.services import host_port, parse_host_port
from protos import objects_pb2 as pb


def document(ports: dict[str, list[str]]) -> dict[str, object]:
    return {"service": "db", "namespace": "default", "ports": ports, "endpoints": []}


@pytest.fixture
def pod_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "services").mkdir()
    monkeypatch.setenv("MIZZEN_POD_DIR", str(tmp_path))
    monkeypatch.setenv("MIZZEN_POD_NAMESPACE", "default")
    return tmp_path


def put(pod_dir: Path, ports: dict[str, list[str]]) -> None:
    """As the agent does: a new file renamed over the old one."""
    tmp = pod_dir / "services" / ".db.json.tmp"
    tmp.write_text(json.dumps(document(ports)))
    os.replace(tmp, pod_dir / "services" / "db.json")


def test_host_port_round_trip() -> None:
    for host in ("10.0.0.1", "fd00::1", "node-1.example.com"):
        assert parse_host_port(host_port(host, 8080)) == (host, 8080)


async def test_resolve_from_the_pods_file(pod_dir: Path) -> None:
    put(pod_dir, {"http": ["10.0.0.2:20002", "10.0.0.1:20001"], "admin": ["10.0.0.1:9000"]})
    assert await resolve("db") == [("10.0.0.1", 20001), ("10.0.0.2", 20002)]
    assert await resolve("db", "default", port="admin") == [("10.0.0.1", 9000)]
    with pytest.raises(DiscoveryError, match='no port named "nope"'):
        await resolve("db", port="nope")
    with pytest.raises(NotFoundError, match='services "cache" not found'):
        await resolve("cache")
    with pytest.raises(DiscoveryError, match="cover its own namespace only"):
        await resolve("db", "other")
    (pod_dir / "services" / "db.json").write_text("{not json")
    with pytest.raises(DiscoveryError, match="not JSON"):
        await resolve("db")


async def test_resolve_outside_a_pod_without_a_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIZZEN_POD_DIR", raising=False)
    with pytest.raises(DiscoveryError, match=r"not in a pod \(\$MIZZEN_POD_DIR is not set\)"):
        await resolve("db")


async def test_watch_the_pods_file(pod_dir: Path) -> None:
    put(pod_dir, {"http": ["10.0.0.1:20001"]})
    seen: asyncio.Queue[list[tuple[str, int]]] = asyncio.Queue()

    async def consume() -> None:
        async for hosts in watch_endpoints("db", poll_interval=0.01):
            seen.put_nowait(hosts)

    task = asyncio.create_task(consume())
    try:
        assert await asyncio.wait_for(seen.get(), 5) == [("10.0.0.1", 20001)]
        put(pod_dir, {"http": ["10.0.0.1:20001"]})  # rewritten, same endpoints: nothing
        put(pod_dir, {"http": []})
        assert await asyncio.wait_for(seen.get(), 5) == []
        put(pod_dir, {"http": ["10.0.0.3:20003"]})
        assert await asyncio.wait_for(seen.get(), 5) == [("10.0.0.3", 20003)]
        (pod_dir / "services" / "db.json").unlink()  # the Service was deleted
        assert await asyncio.wait_for(seen.get(), 5) == []
        assert seen.empty()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_resolve_through_a_client() -> None:
    objects = FakeObjects()
    svc = pb.Service(metadata=pb.ObjectMeta(name="db", namespace="prod"))
    svc.spec.selector["app"] = "db"
    svc.spec.ports.add(name="http", target_port="http")
    svc.spec.ports.add(name="admin", target_port="9000")
    objects.add(svc)
    assert await resolve("db", "prod", client=objects) == []  # no Endpoints yet
    ep = pb.Endpoints(metadata=pb.ObjectMeta(name="db", namespace="prod"))
    for host, port, ready in (("10.0.0.2", 2, True), ("10.0.0.1", 1, True), ("10.0.0.3", 3, False)):
        subset = ep.subsets.add()
        (subset.addresses if ready else subset.not_ready_addresses).add(ip=host)
        subset.ports.add(name="http", port=port)
        subset.ports.add(name="admin", port=9000)
    objects.add(ep)
    assert await resolve("db", "prod", client=objects) == [("10.0.0.1", 1), ("10.0.0.2", 2)]
    assert await resolve("db", "prod", client=objects, port="admin") == [
        ("10.0.0.1", 9000),
        ("10.0.0.2", 9000),
    ]
    with pytest.raises(NotFoundError):
        await resolve("cache", "prod", client=objects)
