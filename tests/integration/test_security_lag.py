"""Authorization on a lagging follower: decided on the state the request acts on.

A secure 3-member store. One follower is paused (SIGSTOP) while an admin, through
the leader, binds a pod with a secret to node nb and cordons node na. Node na's
requests go to the paused follower only; when it resumes, its local copy is
still the old one for a moment. A Get of the pod (bound to nb) and an uncordon
of na's own Node must both be refused, decided on the fresh state the handler
reads after its barrier (the Get) and on the record whose revision guards the
write's Txn (the Update), never on the follower's stale local copy.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from security_fixtures import Pki, node_obj, pki_fixture, pod  # noqa: F401 (fixtures)

from mizzen.client import ObjectsClient
from mizzen.testing.local_cluster import MizzenCluster
from protos import objects_api_pb2 as api
from protos import objects_api_pb2_grpc as api_grpc
from protos import objects_pb2 as pb

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TRIES = 4
PAUSE = 0.5  # seconds the follower stays stopped while the admin writes


@dataclass
class Secure3:
    cluster: MizzenCluster
    leader: int
    follower: int


@pytest.fixture(scope="module", name="secure3")
def secure3_fixture(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure3]:
    base = tmp_path_factory.mktemp("secure-3")
    with MizzenCluster(
        3, base, extra_args=pki.store_flags(), credentials=pki.creds("admin")
    ) as cluster:
        leader = cluster.leader_index()
        follower = next(i for i in range(3) if i != leader)
        yield Secure3(cluster, leader, follower)


def _wrap(obj: Any) -> api.Object:
    out = api.Object()
    field = {"Pod": "pod", "Node": "node"}[type(obj).__name__]
    getattr(out, field).CopyFrom(obj)
    return out


async def _status_of(call: Any) -> grpc.StatusCode | str:
    """The call's status code, or what it wrongly returned."""
    try:
        got = await call
    except grpc.aio.AioRpcError as err:
        return err.code()
    return f"OK ({type(got).__name__})"


async def test_node_authorization_is_decided_on_fresh_state(pki: Pki, secure3: Secure3) -> None:
    cluster = secure3.cluster
    leader_ep = cluster.endpoints[secure3.leader]
    follower_ep = cluster.endpoints[secure3.follower]
    async with (
        ObjectsClient([leader_ep], credentials=pki.creds("admin")) as admin,
        pki.creds("node-na").aio_channel(follower_ep) as channel,
    ):
        na = api_grpc.ObjectsStub(channel)
        await admin.create(node_obj("na"))
        outcomes = []
        for attempt in range(TRIES):
            # The follower has na uncordoned and no pod yet; na's connection is up.
            own = await admin.get("nodes", "na")
            assert not own.spec.unschedulable
            await na.Get(api.GetRequest(kind="nodes", name="na"), timeout=10)

            name = f"secret-{attempt}"
            secret = pod(name, node="nb")
            secret.spec.processes[0].env.add(name="DB_PASSWORD", value="hunter2")
            cluster.kill(secure3.follower, signal.SIGSTOP, wait=False)
            try:
                await admin.create(secret)
                own.spec.unschedulable = True
                cordoned = await admin.update(own)
                uncordon = pb.Node()
                uncordon.CopyFrom(cordoned)
                uncordon.spec.unschedulable = False
                get = asyncio.ensure_future(
                    _status_of(
                        na.Get(
                            api.GetRequest(kind="pods", namespace="default", name=name),
                            timeout=20,
                        )
                    )
                )
                update = asyncio.ensure_future(
                    _status_of(na.Update(api.UpdateRequest(object=_wrap(uncordon)), timeout=20))
                )
                await asyncio.sleep(PAUSE)
            finally:
                cluster.kill(secure3.follower, signal.SIGCONT, wait=False)
            answers = (await get, await update)
            still = await admin.get("nodes", "na")
            outcomes.append((*answers, still.spec.unschedulable))
            still.spec.unschedulable = False
            await admin.update(still)

    # (the Get of nb's pod, na's uncordon, whether na is still cordoned) per try
    denied = grpc.StatusCode.PERMISSION_DENIED
    assert outcomes == [(denied, denied, True)] * TRIES


async def test_a_nodes_secret_get_is_decided_on_fresh_pods(pki: Pki, secure3: Secure3) -> None:
    """The node authorizer on a lagging follower: while it is paused, an admin deletes the
    pod bound to na that referred to a Secret and binds another pod referring to a second
    Secret. na's Gets, sent to that follower, must see the pods as they are now."""
    cluster = secure3.cluster
    leader_ep = cluster.endpoints[secure3.leader]
    follower_ep = cluster.endpoints[secure3.follower]
    ns = "lag-secrets"
    async with (
        ObjectsClient([leader_ep], credentials=pki.creds("admin")) as admin,
        pki.creds("node-na").aio_channel(follower_ep) as channel,
    ):
        na = api_grpc.ObjectsStub(channel)

        def get(name: str) -> Any:
            return na.Get(api.GetRequest(kind="secrets", namespace=ns, name=name), timeout=20)

        outcomes = []
        for attempt in range(TRIES):
            old, new = f"old-{attempt}", f"new-{attempt}"
            for name in (old, new):
                s = pb.Secret(metadata=pb.ObjectMeta(name=name, namespace=ns))
                s.data["password"] = b"pw"
                await admin.create(s)
            holder = pod(f"holder-{attempt}", node="na")
            holder.metadata.namespace = ns
            holder.spec.processes[0].env_from.add(secret_ref=pb.SecretEnvSource(name=old))
            await admin.create(holder)
            assert await _status_of(get(old)) == "OK (Object)"  # the follower has it all
            assert await _status_of(get(new)) == grpc.StatusCode.PERMISSION_DENIED

            cluster.kill(secure3.follower, signal.SIGSTOP, wait=False)
            try:
                await admin.delete("pods", holder.metadata.name, ns, grace_period_seconds=0)
                taker = pod(f"taker-{attempt}", node="na")
                taker.metadata.namespace = ns
                taker.spec.processes[0].env_from.add(secret_ref=pb.SecretEnvSource(name=new))
                await admin.create(taker)
                gets = [asyncio.ensure_future(_status_of(get(n))) for n in (old, new)]
                await asyncio.sleep(PAUSE)
            finally:
                cluster.kill(secure3.follower, signal.SIGCONT, wait=False)
            outcomes.append((await gets[0], await gets[1]))

    assert outcomes == [(grpc.StatusCode.PERMISSION_DENIED, "OK (Object)")] * TRIES
