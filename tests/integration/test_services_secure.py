"""Services and Endpoints on a real secure store: a node reads them only in namespaces
where a pod is bound to it, decided on the fresh state; it never writes them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from security_fixtures import Pki, pki_fixture  # noqa: F401 (fixtures)

from mizzen.client import ObjectsClient
from mizzen.client.errors import InvalidArgumentError
from mizzen.testing.local_cluster import MizzenCluster
from protos import objects_api_pb2 as api
from protos import objects_api_pb2_grpc as api_grpc
from protos import objects_pb2 as pb

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

OK, DENIED = grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture(scope="module", name="store")
def store_fixture(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MizzenCluster]:
    base = tmp_path_factory.mktemp("svc-store")
    with MizzenCluster(
        1, base, extra_args=pki.store_flags(), credentials=pki.creds("admin")
    ) as cluster:
        yield cluster


@pytest.fixture(name="admin")
async def admin_fixture(pki: Pki, store: MizzenCluster) -> AsyncIterator[ObjectsClient]:
    async with ObjectsClient(store.endpoints, credentials=pki.creds("admin")) as client:
        yield client


def _pod(name: str, ns: str, node: str) -> pb.Pod:
    p = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace=ns, labels={"app": "db"}))
    p.spec.processes.add(name="main", command=["/bin/sleep", "60"])
    p.spec.node_name = node
    return p


def _service(name: str, ns: str) -> pb.Service:
    svc = pb.Service(metadata=pb.ObjectMeta(name=name, namespace=ns))
    svc.spec.selector["app"] = "db"
    svc.spec.ports.add(name="http", target_port="http")
    return svc


async def _status(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code()
    return OK


async def test_a_node_reads_services_only_where_it_has_pods(
    pki: Pki, store: MizzenCluster, admin: ObjectsClient
) -> None:
    for ns in ("mine", "theirs"):
        await admin.create(_service("db", ns))
        ep = pb.Endpoints(metadata=pb.ObjectMeta(name="db", namespace=ns))
        ep.subsets.add().addresses.add(ip="192.0.2.1")
        await admin.create(ep)
    await admin.create(_pod("on-a", "mine", "na"))
    await admin.create(_pod("on-b", "theirs", "nb"))

    async with pki.creds("node-na").aio_channel(store.endpoints[0]) as channel:
        na = api_grpc.ObjectsStub(channel)

        def lst(kind: str, ns: str) -> Any:
            return na.List(api.ListRequest(kind=kind, namespace=ns), timeout=10)

        got = await lst("endpoints", "mine")
        assert [i.endpoints.subsets[0].addresses[0].ip for i in got.items] == ["192.0.2.1"]
        assert await _status(lst("services", "mine")) == OK
        get = na.Get(api.GetRequest(kind="svc", namespace="mine", name="db"), timeout=10)
        assert (await get).service.spec.selector["app"] == "db"
        assert await _status(lst("services", "theirs")) == DENIED
        assert await _status(lst("services", "")) == DENIED  # across namespaces
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await lst("endpoints", "theirs")
        assert refused.value.details() == (
            "mizzen: node:na (role node) may not list endpoints/theirs: "
            "no pod of namespace theirs is bound to na"
        )
        # never a write, even where it has pods
        create = na.Create(
            api.CreateRequest(
                object=api.Object(
                    endpoints=pb.Endpoints(metadata=pb.ObjectMeta(name="x", namespace="mine"))
                )
            ),
            timeout=10,
        )
        assert await _status(create) == DENIED

        # a watch of the namespace: events come while a pod is bound there ...
        watch = na.Watch(
            api.WatchRequest(
                kind="endpoints", namespace="mine", resource_version=got.resource_version
            )
        )
        ep = await admin.get("endpoints", "db", "mine")
        ep.subsets[0].addresses[0].ip = "192.0.2.2"
        await admin.update(ep)
        event = await asyncio.wait_for(watch.read(), 10)
        assert event.object.endpoints.subsets[0].addresses[0].ip == "192.0.2.2"
        # ... and the next event after its last pod there is gone ends it
        await admin.delete("pods", "on-a", "mine", grace_period_seconds=0)
        ep = await admin.get("endpoints", "db", "mine")
        ep.subsets[0].addresses[0].ip = "192.0.2.3"
        await admin.update(ep)
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while True:
                ev = await asyncio.wait_for(watch.read(), 10)
                assert ev.object.endpoints.subsets[0].addresses[0].ip != "192.0.2.3"
        assert ended.value.code() == DENIED
        assert await _status(lst("endpoints", "mine")) == DENIED

        # a pod bound just now: readable at once (decided on the fresh state)
        await admin.create(_pod("on-a-2", "theirs", "na"))
        assert await _status(lst("services", "theirs")) == OK


async def test_bad_services_are_refused_with_every_field(admin: ObjectsClient) -> None:
    svc = pb.Service(metadata=pb.ObjectMeta(name="bad", namespace="default"))
    svc.spec.ports.add(name="a", target_port="0")
    svc.spec.ports.add(target_port="not_a_name")
    with pytest.raises(InvalidArgumentError) as err:
        await admin.create(svc)
    text = str(err.value)
    assert 'Service "bad" is invalid' in text
    assert "spec.ports[0].targetPort: must be between 1 and 65535, inclusive" in text
    assert "spec.ports[1].name: required when the Service has more than one port" in text
    assert "spec.ports[1].targetPort: must be a port number (1-65535) or the name" in text
