"""Fenced writes and delete propagation policies against a real 1-node store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from mizzen.client import (
    FencedError,
    InvalidArgumentError,
    NotFoundError,
    ObjectsClient,
    StoreClient,
)
from mizzen.testing.local_cluster import MizzenCluster
from protos import objects_api_pb2 as api
from protos import objects_api_pb2_grpc as api_grpc
from protos import objects_pb2 as pb

pytestmark = pytest.mark.integration

FENCE = b"/mizzen/test/leader"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MizzenCluster]:
    base: Path = tmp_path_factory.mktemp("fencing")
    with MizzenCluster(1, base) as c:
        yield c


@pytest.fixture
async def clients(cluster: MizzenCluster) -> AsyncIterator[tuple[ObjectsClient, StoreClient]]:
    objects = ObjectsClient(cluster.endpoints)
    store = StoreClient(cluster.endpoints)
    try:
        yield objects, store
    finally:
        await objects.close()
        await store.close()


def deployment(name: str, ns: str, replicas: int = 1) -> pb.Deployment:
    obj = pb.Deployment(metadata=pb.ObjectMeta(name=name, namespace=ns))
    obj.spec.replicas = replicas
    obj.spec.selector.match_labels["app"] = name
    obj.spec.template.metadata.labels["app"] = name
    obj.spec.template.spec.processes.add(name="main", command=["/bin/server"])
    return obj


async def test_fenced_writes_hold_only_while_the_fence_key_is_unchanged(
    clients: tuple[ObjectsClient, StoreClient],
) -> None:
    objects, store = clients
    await store.put(FENCE, b"leader-a")
    record = await store.get(FENCE)
    assert record is not None
    leader_a = objects.fenced(FENCE, record.create_revision)

    created = await leader_a.create(deployment("fenced", "fence-a"))
    created.spec.replicas = 2
    updated = await leader_a.update(created)
    assert updated.spec.replicas == 2

    # leadership moves: the key is deleted and re-created by someone else
    await store.delete(FENCE)
    await store.put(FENCE, b"leader-b")

    updated.spec.replicas = 3
    with pytest.raises(FencedError, match="fenced:"):
        await leader_a.update(updated)
    with pytest.raises(FencedError):
        await leader_a.create(deployment("other", "fence-a"))
    updated.status.replicas = 7
    with pytest.raises(FencedError):
        await leader_a.update_status(updated)
    with pytest.raises(FencedError):
        await leader_a.delete("deployments", "fenced", "fence-a")

    stored = await objects.get("deployments", "fenced", "fence-a")
    assert stored.spec.replicas == 2 and stored.status.replicas == 0
    with pytest.raises(NotFoundError):
        await objects.get("deployments", "other", "fence-a")
    # unfenced writes and reads through the same connections still work
    assert (await leader_a.get("deployments", "fenced", "fence-a")).spec.replicas == 2
    await leader_a.close()  # leaves the shared pool open
    stored.spec.replicas = 4
    assert (await objects.update(stored)).spec.replicas == 4


def test_malformed_fence_metadata_is_invalid_argument(cluster: MizzenCluster) -> None:
    with grpc.insecure_channel(cluster.endpoints[0]) as channel:
        stub = api_grpc.ObjectsStub(channel)
        request = api.CreateRequest(object=api.Object(deployment=deployment("bad", "fence-b")))
        for metadata in (
            (("mizzen-fence-key", "/x"),),
            (("mizzen-fence-key", "/x"), ("mizzen-fence-revision", "zero")),
        ):
            with pytest.raises(grpc.RpcError) as err:
                stub.Create(request, metadata=metadata, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "mizzen-fence" in (err.value.details() or "")


async def test_foreground_and_orphan_deletes_wait_on_their_finalizers(
    clients: tuple[ObjectsClient, StoreClient],
) -> None:
    objects, _ = clients
    for policy, finalizer in (("Foreground", "foregroundDeletion"), ("Orphan", "orphan")):
        name = policy.lower()
        await objects.create(deployment(name, "fence-c"))
        obj, gone = await objects.delete("deployments", name, "fence-c", propagation_policy=policy)
        assert not gone
        assert list(obj.metadata.finalizers) == [finalizer]
        assert obj.metadata.HasField("deletion_timestamp")
        # deleting again with the same policy changes nothing
        again, gone = await objects.delete(
            "deployments", name, "fence-c", propagation_policy=policy
        )
        assert not gone and list(again.metadata.finalizers) == [finalizer]
        # the garbage collector's last step: removing the finalizer deletes the object
        stored = await objects.get("deployments", name, "fence-c")
        del stored.metadata.finalizers[:]
        await objects.update(stored)
        with pytest.raises(NotFoundError):
            await objects.get("deployments", name, "fence-c")


async def test_background_delete_is_immediate_and_bad_policy_is_rejected(
    clients: tuple[ObjectsClient, StoreClient],
) -> None:
    objects, _ = clients
    await objects.create(deployment("bg", "fence-d"))
    with pytest.raises(InvalidArgumentError, match="propagation_policy"):
        await objects.delete("deployments", "bg", "fence-d", propagation_policy="Sideways")
    assert (await objects.get("deployments", "bg", "fence-d")).metadata.name == "bg"
    _, gone = await objects.delete("deployments", "bg", "fence-d", propagation_policy="Background")
    assert gone


async def test_binding_a_pod_records_pod_scheduled_in_the_same_write(
    clients: tuple[ObjectsClient, StoreClient],
) -> None:
    objects, _ = clients
    pod = pb.Pod(metadata=pb.ObjectMeta(name="bind-me", namespace="fence-e"))
    pod.spec.processes.add(name="main", command=["/bin/sleep", "1"])
    created = await objects.create(pod)
    assert not created.status.conditions
    created.spec.node_name = "n1"
    bound = await objects.update(created)
    (cond,) = bound.status.conditions
    assert (cond.type, cond.status) == ("PodScheduled", "True")
    assert cond.HasField("last_transition_time")
    stored = await objects.get("pods", "bind-me", "fence-e")
    assert stored.status.conditions == bound.status.conditions
    assert int(stored.metadata.resource_version) == int(bound.metadata.resource_version)
    # other updates of a bound pod leave its status alone
    stored.metadata.labels["x"] = "y"
    again = await objects.update(stored)
    assert again.status == stored.status
