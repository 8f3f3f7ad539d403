"""Informer without a store: the relist diff, the cache and indexes, and the
list/watch loop driven by a scripted fake client (compaction, outages, backoff)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mizzen.client.errors import CompactedError, UnavailableError
from mizzen.client.informer import Backoff, Delta, Informer, relist_diff
from mizzen.client.objects import ListResult
from protos import objects_pb2 as pb


def pod(name: str, rv: int, node: str = "", ns: str = "default") -> pb.Pod:
    obj = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace=ns, resource_version=str(rv)))
    obj.spec.node_name = node
    return obj


def names(deltas: list[Delta]) -> list[tuple[str, str]]:
    return [(d.type, (d.new or d.old).metadata.name) for d in deltas]


# ---------------------------------------------------------------- relist_diff


@pytest.mark.parametrize(
    ("cache", "items", "expected"),
    [
        ([], [], []),
        ([], [pod("a", 1), pod("b", 2)], [("add", "a"), ("add", "b")]),
        ([pod("a", 1)], [pod("a", 1)], []),
        ([pod("a", 1)], [pod("a", 5)], [("update", "a")]),
        ([pod("a", 1), pod("b", 2)], [], [("delete", "a"), ("delete", "b")]),
        (
            [pod("a", 1), pod("b", 2), pod("c", 3)],
            [pod("b", 2), pod("c", 9), pod("d", 10)],
            [("update", "c"), ("add", "d"), ("delete", "a")],
        ),
    ],
)
def test_relist_diff(cache: list[pb.Pod], items: list[pb.Pod], expected: list[Any]) -> None:
    before = {(p.metadata.namespace, p.metadata.name): p for p in cache}
    snapshot = dict(before)
    assert names(relist_diff(before, items)) == expected
    assert before == snapshot  # pure


def test_relist_diff_keys_by_namespace() -> None:
    cache = {("a", "x"): pod("x", 1, ns="a")}
    deltas = relist_diff(cache, [pod("x", 1, ns="b")])
    assert [(d.type, (d.new or d.old).metadata.namespace) for d in deltas] == [
        ("add", "b"),
        ("delete", "a"),
    ]


def test_update_delta_carries_old_and_new() -> None:
    old, new = pod("a", 1), pod("a", 2)
    (delta,) = relist_diff({("default", "a"): old}, [new])
    assert delta == Delta("update", old, new)


# ---------------------------------------------------------------- cache, handlers, indexes


class Recorder:
    def __init__(self, informer: Informer) -> None:
        self.calls: list[tuple[str, str, str]] = []
        informer.on_add(lambda o: self.calls.append(("add", o.metadata.name, rv(o))))
        informer.on_update(lambda o, n: self.calls.append(("update", n.metadata.name, rv(n))))
        informer.on_delete(lambda o: self.calls.append(("delete", o.metadata.name, rv(o))))

    def take(self) -> list[tuple[str, str, str]]:
        out, self.calls = self.calls, []
        return out


def rv(obj: Any) -> str:
    return str(obj.metadata.resource_version)


def make(client: Any = None, **kw: Any) -> tuple[Informer, Recorder]:
    informer = Informer(client, "pods", **kw)
    informer.add_indexer("node", lambda p: [p.spec.node_name] if p.spec.node_name else [])
    return informer, Recorder(informer)


def node_of(informer: Informer, node: str) -> list[str]:
    return [p.metadata.name for p in informer.by_index("node", node)]


def test_replace_and_events_keep_cache_and_index() -> None:
    informer, rec = make()
    informer.replace([pod("a", 1, "n1"), pod("b", 2, "n2")], "2")
    assert informer.has_synced.is_set() and informer.relists == 0
    assert rec.take() == [("add", "a", "1"), ("add", "b", "2")]
    assert node_of(informer, "n1") == ["a"]

    informer.apply_event("MODIFIED", pod("a", 3, "n2"))
    informer.apply_event("MODIFIED", pod("a", 3, "n2"))  # a repeat is not an update
    informer.apply_event("ADDED", pod("c", 4))
    informer.apply_event("DELETED", pod("b", 5, "n2"))
    informer.apply_event("DELETED", pod("zz", 6))  # unknown: ignored
    informer.apply_event("BOOKMARK", pb.Pod(metadata=pb.ObjectMeta(resource_version="7")))
    assert rec.take() == [("update", "a", "3"), ("add", "c", "4"), ("delete", "b", "5")]
    assert informer.resource_version == "7"
    assert node_of(informer, "n1") == [] and node_of(informer, "n2") == ["a"]
    assert sorted(p.metadata.name for p in informer.list()) == ["a", "c"]
    assert informer.get("default", "a") is not None and informer.get("default", "b") is None

    informer.replace([pod("c", 4), pod("d", 8, "n1")], "8")  # a missed: delete; d: add
    assert rec.take() == [("add", "d", "8"), ("delete", "a", "3")]
    assert informer.relists == 1
    assert node_of(informer, "n1") == ["d"] and node_of(informer, "n2") == []


def test_handler_errors_do_not_stop_the_cache() -> None:
    informer = Informer(None, "pods")  # type: ignore[arg-type]
    seen: list[str] = []

    def bad(obj: Any) -> None:
        raise RuntimeError("boom")

    informer.on_add(bad)
    informer.on_add(lambda o: seen.append(o.metadata.name))
    informer.replace([pod("a", 1)], "1")
    assert seen == ["a"] and informer.get("default", "a") is not None


def test_backoff_doubles_to_cap_and_resets() -> None:
    b = Backoff(0.1, 0.5)
    assert [b.next() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    b.reset()
    assert b.next() == 0.1


# ---------------------------------------------------------------- the loop, scripted


class FakeClient:
    """lists: successive list answers (an Exception is raised); watches: event scripts
    (a list of (type, obj), optionally ending with an Exception to raise)."""

    def __init__(self, lists: list[Any], watches: list[list[Any]]) -> None:
        self.lists = lists
        self.watches = watches
        self.watch_rvs: list[str] = []
        self.idle = asyncio.Event()

    async def list(self, kind: str, namespace: str = "", **kw: Any) -> ListResult:
        answer = self.lists.pop(0)
        if isinstance(answer, Exception):
            raise answer
        items, version = answer
        return ListResult(items, version)

    async def watch(self, kind: str, namespace: str = "", **kw: Any) -> AsyncIterator[Any]:
        self.watch_rvs.append(kw["resource_version"])
        script = self.watches.pop(0) if self.watches else []
        for step in script:
            if isinstance(step, Exception):
                raise step
            yield step
        if not self.watches and not self.lists:
            self.idle.set()
            await asyncio.Event().wait()  # a healthy, quiet stream


async def run_until_idle(informer: Informer, client: FakeClient) -> None:
    task = asyncio.create_task(informer.run())
    try:
        async with asyncio.timeout(5):
            await client.idle.wait()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_compaction_relists_at_once_and_emits_the_difference() -> None:
    sleeps: list[float] = []

    async def sleep(d: float) -> None:
        sleeps.append(d)

    client = FakeClient(
        lists=[([pod("a", 1), pod("b", 2)], "2"), ([pod("b", 9), pod("c", 10)], "10")],
        watches=[
            [("MODIFIED", pod("a", 3)), CompactedError(5, "too old resource version")],
            [("ADDED", pod("d", 11))],
        ],
    )
    informer, rec = make(client, sleep=sleep)
    await run_until_idle(informer, client)
    assert rec.take() == [
        ("add", "a", "1"),
        ("add", "b", "2"),
        ("update", "a", "3"),
        ("update", "b", "9"),
        ("add", "c", "10"),
        ("delete", "a", "3"),
        ("add", "d", "11"),
    ]
    assert client.watch_rvs == ["2", "10"]  # each watch starts at its list's version
    assert sleeps == [] and informer.relists == 1


async def test_outage_backs_off_exponentially_then_converges() -> None:
    sleeps: list[float] = []

    async def sleep(d: float) -> None:
        sleeps.append(d)

    down = UnavailableError("no endpoint")
    client = FakeClient(
        lists=[([pod("a", 1)], "1"), down, down, down, ([pod("a", 4)], "4")],
        watches=[[down], [("ADDED", pod("e", 5))]],
    )
    informer, rec = make(client, sleep=sleep, backoff=Backoff(0.1, 0.3))
    await run_until_idle(informer, client)
    assert sleeps == [0.1, 0.2, 0.3, 0.3]
    assert rec.take() == [("add", "a", "1"), ("update", "a", "4"), ("add", "e", "5")]


async def test_registration_after_start_is_refused() -> None:
    client = FakeClient(lists=[([], "1")], watches=[])
    informer, _ = make(client)
    task = asyncio.create_task(informer.run())
    await asyncio.wait_for(informer.has_synced.wait(), 5)
    with pytest.raises(RuntimeError):
        informer.on_add(lambda o: None)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_resync_replays_updates() -> None:
    client = FakeClient(lists=[([pod("a", 1)], "1")], watches=[])
    informer, rec = make(client, resync_period=0.01)
    task = asyncio.create_task(informer.run())
    async with asyncio.timeout(5):
        while ("update", "a", "1") not in rec.calls:
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
