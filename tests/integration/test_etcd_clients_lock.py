"""Locks and elections with the third-party async client ``aetcd`` (PyPI), on etcd 3.4
and on Mizzen: every test runs against both stores.

aetcd 1.0's ``client.lock()`` does not call the Lock service: it is a client-side
lock (one key, a Txn "create_revision == 0 → put with a lease", a watch for
its deletion). aetcd has no Lock or Election stubs, so the services are called
through Mizzen's generated stubs on aetcd's own gRPC channel, next to aetcd's
KV and lease calls on the same keys.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import grpc
import pytest
from aetcd_isolated import aetcd
from etcd_differential import Pair

from protos import v3election_pb2, v3election_pb2_grpc, v3lock_pb2, v3lock_pb2_grpc

pytestmark = [pytest.mark.compat, pytest.mark.timeout(120)]

WAIT = 10.0  # seconds: bound on every await
T = TypeVar("T")


async def bounded(pending: Awaitable[T]) -> T:
    return await asyncio.wait_for(pending, WAIT)


@pytest.fixture(params=["etcd", "mizzen"])
async def client(request: pytest.FixtureRequest, pair: Pair) -> AsyncIterator[aetcd.Client]:
    side = getattr(pair, request.param)
    host, _, port = side.cluster.endpoint(0).rpartition(":")
    c = aetcd.Client(host=host, port=int(port), timeout=int(WAIT))
    await bounded(c.connect())
    try:
        yield c
    finally:
        await bounded(c.close())


@pytest.fixture
def name(request: pytest.FixtureRequest) -> bytes:
    return f"/clients-lock/{request.node.name}/".encode()


async def test_aetcd_lock_lets_a_second_holder_in_only_after_release(
    client: aetcd.Client, name: bytes
) -> None:
    first, second = client.lock(name + b"l", ttl=10), client.lock(name + b"l", ttl=10)
    assert await bounded(first.acquire(timeout=None))
    waiting = asyncio.ensure_future(second.acquire(timeout=None))
    assert await bounded(first.is_acquired())
    assert not await bounded(second.is_acquired())
    assert not waiting.done()
    assert await bounded(first.release())
    assert await bounded(waiting)
    assert await bounded(second.is_acquired())
    assert not await bounded(first.is_acquired())
    async with client.lock(name + b"other", ttl=10) as held:
        assert await bounded(held.is_acquired())
    assert await bounded(second.release())


async def test_lock_service_on_aetcds_channel(client: aetcd.Client, name: bytes) -> None:
    locks = v3lock_pb2_grpc.LockStub(client.channel)
    la, lb = await bounded(client.lease(10)), await bounded(client.lease(10))
    held = await bounded(locks.Lock(v3lock_pb2.LockRequest(name=name + b"m", lease=la.id)))
    assert held.key == name + b"m/" + f"{la.id:x}".encode()
    stored = await bounded(client.get(held.key))
    assert stored is not None and stored.lease == la.id
    waiting = asyncio.ensure_future(
        locks.Lock(v3lock_pb2.LockRequest(name=name + b"m", lease=lb.id))
    )
    for _ in range(500):  # the contender waits once its key exists
        if len(await bounded(client.get_prefix(name + b"m/"))) == 2:
            break
        await asyncio.sleep(0.02)
    assert not waiting.done()
    await bounded(la.revoke())  # the holder's lease ends: the contender holds
    second = await bounded(waiting)
    assert second.key == name + b"m/" + f"{lb.id:x}".encode()
    assert await bounded(client.get(held.key)) is None
    await bounded(locks.Unlock(v3lock_pb2.UnlockRequest(key=second.key)))
    assert await bounded(client.get(second.key)) is None
    await bounded(lb.revoke())


async def test_election_service_on_aetcds_channel(client: aetcd.Client, name: bytes) -> None:
    election = v3election_pb2_grpc.ElectionStub(client.channel)
    lease = await bounded(client.lease(10))
    who = name + b"e"
    observe = election.Observe(v3election_pb2.LeaderRequest(name=who))
    try:
        won = await bounded(
            election.Campaign(v3election_pb2.CampaignRequest(name=who, lease=lease.id, value=b"a"))
        )
        first: Any = await bounded(observe.read())
        assert (first.kv.key, first.kv.value) == (won.leader.key, b"a")
        await bounded(
            election.Proclaim(v3election_pb2.ProclaimRequest(leader=won.leader, value=b"b"))
        )
        update: Any = await bounded(observe.read())
        assert update.kv.value == b"b"
        stored = await bounded(client.get(won.leader.key))
        assert stored is not None and stored.value == b"b"
        leader = await bounded(election.Leader(v3election_pb2.LeaderRequest(name=who)))
        assert leader.kv.create_revision == won.leader.rev
        await bounded(election.Resign(v3election_pb2.ResignRequest(leader=won.leader)))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await bounded(election.Leader(v3election_pb2.LeaderRequest(name=who)))
        assert (err.value.code(), err.value.details()) == (
            grpc.StatusCode.UNKNOWN,
            "election: no leader",
        )
    finally:
        observe.cancel()
        await bounded(lease.revoke())
