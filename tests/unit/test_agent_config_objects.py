"""ConfigObjects: one Get + Watch per referenced object, shared by every pod of the node."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from mizzen.client.errors import CompactedError, NotFoundError, PermissionDeniedError
from nodeagent.config_objects import ConfigObjects, Followed
from protos import objects_pb2 as pb


class FakeStore:
    """Objects by (kind, namespace, name) with a revision, and watch streams fed by hand."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], pb.ConfigMap] = {}
        self.rev = 10
        self.gets: list[tuple[str, str, str]] = []
        self.watches: list[dict[str, Any]] = []
        self.streams: list[asyncio.Queue[tuple[str, Any] | Exception]] = []
        self.get_errors: list[Exception] = []
        self.watch_errors: list[Exception] = []

    def put(self, name: str, data: dict[str, str], *, notify: bool = True) -> pb.ConfigMap:
        self.rev += 1
        obj = pb.ConfigMap(
            metadata=pb.ObjectMeta(name=name, namespace="ns", resource_version=str(self.rev)),
            data=data,
        )
        key = ("ConfigMap", "ns", name)
        kind = "MODIFIED" if key in self.objects else "ADDED"
        self.objects[key] = obj
        if notify:
            self.send(kind, obj)
        return obj

    def delete(self, name: str) -> None:
        self.rev += 1
        obj = self.objects.pop(("ConfigMap", "ns", name))
        gone = pb.ConfigMap()
        gone.CopyFrom(obj)
        gone.metadata.resource_version = str(self.rev)
        self.send("DELETED", gone)

    def send(self, kind: str, obj: Any) -> None:
        for q in self.streams:
            q.put_nowait((kind, obj))

    def bookmark(self) -> None:
        mark = pb.ConfigMap(metadata=pb.ObjectMeta(resource_version=str(self.rev)))
        self.send("BOOKMARK", mark)

    async def get(self, kind: str, name: str, namespace: str = "") -> Any:
        self.gets.append((kind, namespace, name))
        if self.get_errors:
            raise self.get_errors.pop(0)
        obj = self.objects.get((kind, namespace, name))
        if obj is None:
            raise NotFoundError(f'configmaps "{name}" not found')
        return obj

    async def watch(self, kind: str, namespace: str = "", **kwargs: Any) -> AsyncIterator[Any]:
        self.watches.append({"kind": kind, "namespace": namespace, **kwargs})
        if self.watch_errors:
            raise self.watch_errors.pop(0)
        q: asyncio.Queue[tuple[str, Any] | Exception] = asyncio.Queue()
        self.streams.append(q)
        try:
            while True:
                item = await q.get()
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self.streams.remove(q)


def data_of(entry: Followed) -> dict[str, str]:
    return dict(entry.obj.data)


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.005)


@pytest.fixture
async def store() -> AsyncIterator[FakeStore]:
    yield FakeStore()


async def test_one_get_and_one_watch_per_object_whatever_the_users(store: FakeStore) -> None:
    store.put("app", {"k": "v"})
    objects = ConfigObjects(store)
    a = objects.follow("ConfigMap", "ns", "app")
    b = objects.follow("ConfigMap", "ns", "app")
    assert a is b and a.users == 2
    await a.known.wait()
    await until(lambda: len(store.streams) == 1)
    assert a.obj.data["k"] == "v"
    assert store.gets == [("ConfigMap", "ns", "app")]
    assert store.watches == [
        {
            "kind": "ConfigMap",
            "namespace": "ns",
            "field_selector": "metadata.name=app",
            "resource_version": a.obj.metadata.resource_version,
            "allow_bookmarks": True,
        }
    ]
    objects.release(a)
    await asyncio.sleep(0.01)
    assert len(store.streams) == 1  # one user left
    objects.release(b)
    await until(lambda: not store.streams)
    assert objects.entries == {}


async def test_changes_and_deletion_reach_subscribers(store: FakeStore) -> None:
    store.put("app", {"k": "1"})
    objects = ConfigObjects(store)
    entry = objects.follow("ConfigMap", "ns", "app")
    calls: list[Any] = []
    entry.subscribe(lambda: calls.append(entry.obj))
    await entry.known.wait()
    await until(lambda: bool(store.streams))
    calls.clear()
    store.put("app", {"k": "2"})
    await until(lambda: len(calls) == 1)
    assert calls[0].data["k"] == "2"
    store.send("MODIFIED", store.objects[("ConfigMap", "ns", "app")])  # same content again
    store.bookmark()
    await asyncio.sleep(0.02)
    assert len(calls) == 1
    store.delete("app")
    await until(lambda: len(calls) == 2)
    assert calls[1] is None and entry.obj is None
    await objects.close()


async def test_a_missing_object_is_seen_when_created(store: FakeStore) -> None:
    objects = ConfigObjects(store)
    entry = objects.follow("ConfigMap", "ns", "later")
    await entry.known.wait()
    assert entry.obj is None and entry.error == ""
    await until(lambda: bool(store.streams))
    assert store.watches[0]["resource_version"] == ""  # from now
    store.put("later", {"k": "v"})
    await until(lambda: entry.obj is not None)
    assert data_of(entry) == {"k": "v"}
    await objects.close()


async def test_a_creation_before_the_watch_started_is_found_at_its_first_bookmark(
    store: FakeStore,
) -> None:
    objects = ConfigObjects(store)
    entry = objects.follow("ConfigMap", "ns", "racy")
    await entry.known.wait()
    await until(lambda: bool(store.streams))
    store.put("racy", {"k": "v"}, notify=False)  # the watch missed it
    store.bookmark()
    await until(lambda: entry.obj is not None)
    assert len(store.gets) == 2
    store.bookmark()  # only the first bookmark re-reads
    await asyncio.sleep(0.02)
    assert len(store.gets) == 2
    await objects.close()


async def test_a_compacted_version_rereads_and_watches_from_now(store: FakeStore) -> None:
    store.put("app", {"k": "1"})
    store.watch_errors.append(CompactedError(5))
    objects = ConfigObjects(store, retry_initial=0.01)
    entry = objects.follow("ConfigMap", "ns", "app")
    await until(lambda: bool(store.streams))
    assert [w["resource_version"] for w in store.watches] == ["11", ""]
    assert len(store.gets) == 2
    store.put("app", {"k": "2"})
    await until(lambda: entry.obj.data["k"] == "2")
    await objects.close()


async def test_an_unreadable_object_reports_why_and_recovers(store: FakeStore) -> None:
    store.put("app", {"k": "1"})
    store.get_errors.append(PermissionDeniedError("nodes may not get configmaps"))
    objects = ConfigObjects(store, retry_initial=0.01)
    entry = objects.follow("ConfigMap", "ns", "app")
    changes: list[str] = []
    entry.subscribe(lambda: changes.append(entry.error))
    await entry.known.wait()
    await until(lambda: entry.obj is not None)
    assert changes[0].startswith("cannot read ConfigMap ns/app: nodes may not get configmaps")
    assert entry.error == "" and changes[-1] == ""
    await objects.close()


async def test_a_broken_watch_keeps_the_last_content(store: FakeStore) -> None:
    store.put("app", {"k": "1"})
    objects = ConfigObjects(store, retry_initial=0.01)
    entry = objects.follow("ConfigMap", "ns", "app")
    await until(lambda: bool(store.streams))
    store.get_errors.append(PermissionDeniedError("flaky"))
    for q in store.streams:
        q.put_nowait(PermissionDeniedError("stream broke"))
    await until(lambda: len(store.gets) >= 3 and bool(store.streams))
    assert entry.obj.data["k"] == "1" and entry.error == ""
    await objects.close()


async def test_an_unexpected_failure_is_reported_and_retried(store: FakeStore) -> None:
    store.put("app", {"k": "1"})
    store.get_errors.append(RuntimeError("a bug"))
    objects = ConfigObjects(store, retry_initial=0.01)
    entry = objects.follow("ConfigMap", "ns", "app")
    errors: list[str] = []
    entry.subscribe(lambda: errors.append(entry.error))
    await until(lambda: entry.obj is not None)
    assert errors[0] == "cannot read ConfigMap ns/app: internal error in the agent"
    assert entry.error == ""
    await objects.close()
