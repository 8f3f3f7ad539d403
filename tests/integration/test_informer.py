"""Informer against real 1- and 3-node Mizzen stores.

The cache must converge to the store (compared by key and resource_version)
after creates, updates and deletes; after the member serving its watch is
SIGKILLed (writes made during the outage must appear); and after its watch
version was compacted away. Each test works in its own namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from mizzen.client import Informer, ObjectsClient, StoreClient
from mizzen.client.objects import ListResult
from mizzen.testing.local_cluster import MizzenCluster
from protos import objects_pb2 as pb

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CONVERGE_TIMEOUT = 30.0


@pytest.fixture(scope="module", params=[1, 3], ids=["1node", "3node"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MizzenCluster]:
    base: Path = tmp_path_factory.mktemp(f"informer{request.param}")
    with MizzenCluster(request.param, base) as c:
        yield c


def pod(name: str, ns: str, node: str = "", **labels: str) -> pb.Pod:
    obj = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace=ns, labels=labels))
    obj.spec.processes.add(name="main", command=["/bin/sleep", "100"])
    obj.spec.node_name = node
    return obj


def versions(objs: list[Any]) -> dict[tuple[str, str], str]:
    return {(o.metadata.namespace, o.metadata.name): o.metadata.resource_version for o in objs}


async def store_versions(client: ObjectsClient, ns: str) -> dict[tuple[str, str], str]:
    return versions((await client.list("pods", ns)).items)


async def converged(informer: Informer, client: ObjectsClient, ns: str) -> dict[Any, str]:
    """The store's versions once the informer's cache equals them (fails after a timeout)."""
    want: dict[Any, str] = {}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(CONVERGE_TIMEOUT):
            while True:
                want = await store_versions(client, ns)
                if versions(informer.list()) == want:
                    return want
                await asyncio.sleep(0.1)
    assert versions(informer.list()) == want
    return want


@contextlib.asynccontextmanager
async def running(informer: Informer) -> AsyncIterator[Informer]:
    task = asyncio.create_task(informer.run())
    try:
        async with asyncio.timeout(CONVERGE_TIMEOUT):
            await informer.has_synced.wait()
        yield informer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Mirror:
    """What a handler-only consumer knows: it must converge too (level-triggered)."""

    def __init__(self, informer: Informer) -> None:
        self.state: dict[tuple[str, str], str] = {}
        informer.on_add(self._set)
        informer.on_update(lambda old, new: self._set(new))
        informer.on_delete(self._drop)

    def _drop(self, o: Any) -> None:
        self.state.pop((o.metadata.namespace, o.metadata.name))

    def _set(self, o: Any) -> None:
        self.state[(o.metadata.namespace, o.metadata.name)] = o.metadata.resource_version


async def test_cache_converges_after_crud_and_indexes(cluster: MizzenCluster) -> None:
    ns = "crud"
    async with ObjectsClient(cluster.endpoints, timeout=10) as client:
        for i in range(5):
            await client.create(pod(f"pre-{i}", ns, node=f"node-{i % 2}"))
        informer = Informer(client, "pods", namespace=ns)
        informer.add_indexer("node", lambda p: [p.spec.node_name] if p.spec.node_name else [])
        mirror = Mirror(informer)
        async with running(informer):
            assert len(informer.list()) == 5
            for i in range(10):
                await client.create(pod(f"web-{i}", ns, node=f"node-{i % 3}", app="web"))
            for i in range(0, 10, 2):
                obj = await client.get("pods", f"web-{i}", ns)
                obj.metadata.labels["tier"] = "front"
                await client.update(obj)
            for i in range(3):
                await client.delete("pods", f"pre-{i}", ns, grace_period_seconds=0)
            want = await converged(informer, client, ns)
            assert len(want) == 12 and mirror.state == want
            web0 = informer.get(ns, "web-0")
            assert web0 is not None and web0.metadata.labels["tier"] == "front"
            assert informer.get(ns, "pre-0") is None
            on_node2 = sorted(p.metadata.name for p in informer.by_index("node", "node-2"))
            assert on_node2 == ["web-2", "web-5", "web-8"]
            assert informer.by_index("node", "nowhere") == []


async def test_selectors_are_applied(cluster: MizzenCluster) -> None:
    ns = "select"
    async with ObjectsClient(cluster.endpoints, timeout=10) as client:
        informer = Informer(client, "pods", namespace=ns, label_selector="app=web")
        async with running(informer):
            await client.create(pod("a", ns, app="web"))
            await client.create(pod("b", ns, app="db"))
            async with asyncio.timeout(CONVERGE_TIMEOUT):
                while informer.get(ns, "a") is None:
                    await asyncio.sleep(0.05)
            obj = await client.get("pods", "a", ns)
            obj.metadata.labels["app"] = "other"  # moves out of the selection: deleted
            await client.update(obj)
            async with asyncio.timeout(CONVERGE_TIMEOUT):
                while informer.get(ns, "a") is not None:
                    await asyncio.sleep(0.05)
            assert informer.list() == []


class StaleFirstList(ObjectsClient):
    """Answers the first list with an old resource_version, as if the informer had
    been away while history was compacted."""

    stale_version = ""

    async def list(self, *args: Any, **kwargs: Any) -> ListResult:
        result = await super().list(*args, **kwargs)
        if self.stale_version:
            result = ListResult(result.items, self.stale_version)
            self.stale_version = ""
        return result


async def test_compacted_version_relists(cluster: MizzenCluster) -> None:
    ns = "compact"
    async with (
        ObjectsClient(cluster.endpoints, timeout=10) as writer,
        StoreClient(cluster.endpoints) as kv,
        StaleFirstList(cluster.endpoints, timeout=10) as stale_client,
    ):
        stale = cast(StaleFirstList, stale_client)
        first = await writer.create(pod("c-0", ns))
        for i in range(1, 4):
            await writer.create(pod(f"c-{i}", ns))
        await kv.compact(int((await writer.get("pods", "c-3", ns)).metadata.resource_version))
        stale.stale_version = first.metadata.resource_version
        informer = Informer(stale, "pods", namespace=ns)
        async with running(informer):
            await writer.create(pod("after", ns))
            await converged(informer, writer, ns)
            assert informer.relists >= 1


async def test_recovers_after_serving_member_is_killed(
    cluster: MizzenCluster, tmp_path: Path
) -> None:
    ns = "outage"
    n = len(cluster)
    victim = cluster.leader_index()
    order = [cluster.endpoint(victim)] + [cluster.endpoint(i) for i in range(n) if i != victim]
    async with (
        # one member: a short timeout makes the watch give up during the outage,
        # so the informer itself must back off and relist
        ObjectsClient(order, timeout=10 if n > 1 else 1.5) as watched,
        ObjectsClient(cluster.endpoints, timeout=15) as writer,
    ):
        for i in range(4):
            await writer.create(pod(f"p-{i}", ns))
        informer = Informer(watched, "pods", namespace=ns)
        mirror = Mirror(informer)
        async with running(informer):
            await converged(informer, writer, ns)
            await asyncio.to_thread(cluster.kill, victim)
            try:
                if n > 1:  # writes during the outage, served by the survivors
                    await writer.create(pod("during-0", ns))
                    await writer.delete("pods", "p-0", ns, grace_period_seconds=0)
                    obj = await writer.get("pods", "p-1", ns)
                    obj.metadata.labels["seen"] = "outage"
                    await writer.update(obj)
                else:
                    await asyncio.sleep(3.0)  # the watch gives up; lists fail
            finally:
                await asyncio.to_thread(cluster.restart, victim)
            await asyncio.to_thread(cluster.leader_index, 30.0)
            await writer.create(pod("after-0", ns))
            await writer.delete("pods", "p-2", ns, grace_period_seconds=0)
            want = await converged(informer, writer, ns)
            assert mirror.state == want
            assert ("outage", "p-2") not in want and ("outage", "after-0") in want
            if n == 1:
                assert informer.relists >= 1
            else:
                assert ("outage", "during-0") in want and ("outage", "p-0") not in want
                p1 = informer.get(ns, "p-1")
                assert p1 is not None and p1.metadata.labels["seen"] == "outage"
