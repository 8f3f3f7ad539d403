"""Lock and Election on a secure store: authorized as the raw KV requests they make."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from security_fixtures import Pki, Store, pki_fixture, store_fixture  # noqa: F401 (fixtures)

from protos import (
    rpc_pb2,
    rpc_pb2_grpc,
    v3election_pb2,
    v3election_pb2_grpc,
    v3lock_pb2,
    v3lock_pb2_grpc,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

WAIT = 10.0


async def _denied(pending: Awaitable[Any]) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(pending, WAIT)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    return str(err.value.details())


async def test_a_controller_locks_and_campaigns_under_its_prefix_only(
    pki: Pki, store: Store
) -> None:
    async with pki.creds("controller").aio_channel(store.endpoint) as ch:
        lease = await asyncio.wait_for(
            rpc_pb2_grpc.LeaseStub(ch).LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=10)), WAIT
        )
        locks = v3lock_pb2_grpc.LockStub(ch)
        held = await asyncio.wait_for(
            locks.Lock(v3lock_pb2.LockRequest(name=b"/mizzen/leader/job", lease=lease.ID)), WAIT
        )
        await asyncio.wait_for(locks.Unlock(v3lock_pb2.UnlockRequest(key=held.key)), WAIT)
        why = await _denied(locks.Lock(v3lock_pb2.LockRequest(name=b"/registry/x", lease=lease.ID)))
        assert "admin-only outside /mizzen/leader/" in why
        election = v3election_pb2_grpc.ElectionStub(ch)
        won = await asyncio.wait_for(
            election.Campaign(
                v3election_pb2.CampaignRequest(name=b"/mizzen/leader/e", lease=lease.ID, value=b"c")
            ),
            WAIT,
        )
        stolen = v3election_pb2.LeaderKey()
        stolen.CopyFrom(won.leader)
        stolen.key = b"/registry/pods/default/x"
        await _denied(election.Resign(v3election_pb2.ResignRequest(leader=stolen)))
        await asyncio.wait_for(
            election.Resign(v3election_pb2.ResignRequest(leader=won.leader)), WAIT
        )


async def test_viewers_read_elections_and_nodes_may_not_lock(pki: Pki, store: Store) -> None:
    async with pki.creds("vera").aio_channel(store.endpoint) as ch:
        election = v3election_pb2_grpc.ElectionStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(
                election.Leader(v3election_pb2.LeaderRequest(name=b"/mizzen/leader/none")), WAIT
            )
        assert err.value.details() == "election: no leader"  # allowed, and empty
        why = await _denied(
            election.Campaign(v3election_pb2.CampaignRequest(name=b"/mizzen/leader/e", value=b"v"))
        )
        assert "viewers may only read" in why
    async with pki.creds("node-na").aio_channel(store.endpoint) as ch:
        why = await _denied(
            v3lock_pb2_grpc.LockStub(ch).Lock(v3lock_pb2.LockRequest(name=b"/mizzen/leader/n"))
        )
        assert "admin-only" in why
