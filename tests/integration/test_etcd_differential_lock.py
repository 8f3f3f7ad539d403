"""Lock and Election services, side by side with etcd 3.4 (tests/integration/etcd_differential.py).

A lock or campaign key is ``<name>/<lease id in hex>``: the lease part is
shown by the trace's lease name (``lease#1``), so keys compare across stores.
Every wait is bounded; a contender is known to be waiting once its key exists.
The last test kills the member a lock holder talks to, on both stores.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import pytest
from etcd_differential import Pair, Side, Trace
from google.protobuf.message import Message

from mizzen.keyrange import prefix_end
from protos import (
    rpc_pb2,
    rpc_pb2_grpc,
    v3election_pb2,
    v3election_pb2_grpc,
    v3lock_pb2,
    v3lock_pb2_grpc,
)
from store.lock_service import session_key

pytestmark = [pytest.mark.compat, pytest.mark.timeout(150)]

WAIT = 10.0  # seconds: bound on every single await
T = TypeVar("T")
LEASE_SUFFIX = re.compile(r"^(<prefix>.*/)([0-9a-f]+)$")


class Calls:
    """Stubs on one trace's channel, recording answers with lease ids in keys named."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        ch = trace.channel
        self.kv = rpc_pb2_grpc.KVStub(ch)
        self.lease = rpc_pb2_grpc.LeaseStub(ch)
        self.lock = v3lock_pb2_grpc.LockStub(ch)
        self.election = v3election_pb2_grpc.ElectionStub(ch)

    def _named(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self._named(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._named(v) for v in value]
        if isinstance(value, str):
            m = LEASE_SUFFIX.match(value)
            if m:
                return m.group(1) + self.trace.lease_name(int(m.group(2), 16))
        return value

    def record(self, what: str, msg: Message) -> None:
        self.trace.entries.append((what, self._named(self.trace.normalize(msg))))

    async def call(self, what: str, pending: Awaitable[Any]) -> Any:
        try:
            answer = await asyncio.wait_for(pending, WAIT)
        except grpc.aio.AioRpcError as err:
            self.trace.error(what, err)
            return None
        self.record(what, answer)
        return answer

    async def grant(self, ttl: int = 30) -> int:
        resp = await self.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=ttl))
        self.trace.lease_name(resp.ID)  # named in grant order on both stores
        return int(resp.ID)

    async def keys(self, prefix: bytes) -> list[bytes]:
        end = prefix_end(prefix)
        resp = await self.kv.Range(rpc_pb2.RangeRequest(key=prefix, range_end=end))
        return [kv.key for kv in resp.kvs]

    async def until_keys(self, prefix: bytes, n: int) -> None:
        """Wait (bounded) until prefix holds n keys: the last contender is waiting."""
        for _ in range(int(WAIT / 0.02)):
            if len(await self.keys(prefix)) == n:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{prefix!r} never held {n} keys")

    def lock_req(self, name: str, lease: int) -> v3lock_pb2.LockRequest:
        return v3lock_pb2.LockRequest(name=self.trace.key(name), lease=lease)


async def lock_sequences(trace: Trace) -> None:
    c = Calls(trace)
    l1, l2 = await c.grant(), await c.grant()
    first = await c.lock.Lock(c.lock_req("m", l1))
    trace.base = first.header.revision
    c.record("lock l1", first)
    await c.call("lock l1 again (same key)", c.lock.Lock(c.lock_req("m", l1)))
    second = asyncio.ensure_future(c.lock.Lock(c.lock_req("m", l2)))
    await c.until_keys(trace.key("m/"), 2)
    assert not second.done()
    await c.call("unlock l1", c.lock.Unlock(v3lock_pb2.UnlockRequest(key=first.key)))
    await c.call("l2 holds after the unlock", second)
    await c.call(
        "keys", c.kv.Range(rpc_pb2.RangeRequest(key=trace.key("m/"), range_end=trace.key("m0")))
    )
    await c.call("unlock a missing key", c.lock.Unlock(v3lock_pb2.UnlockRequest(key=b"nokey")))
    await c.call("unlock no key", c.lock.Unlock(v3lock_pb2.UnlockRequest()))
    await c.call("lock with an unknown lease", c.lock.Lock(c.lock_req("u", 12345)))
    got = await c.call("lock with lease 0", c.lock.Lock(c.lock_req("z", 0)))
    assert got is not None
    ttl = await c.lease.LeaseTimeToLive(
        rpc_pb2.LeaseTimeToLiveRequest(ID=int(got.key.rsplit(b"/", 1)[1], 16))
    )
    c.record(
        "lease 0 grants a 60 s lease", rpc_pb2.LeaseTimeToLiveResponse(grantedTTL=ttl.grantedTTL)
    )


async def revoke_and_cancel(trace: Trace) -> None:
    c = Calls(trace)
    l1, l2, l3 = await c.grant(), await c.grant(), await c.grant()
    held = await c.lock.Lock(c.lock_req("r", l1))
    trace.base = held.header.revision
    waiter = asyncio.ensure_future(c.lock.Lock(c.lock_req("r", l2)))
    await c.until_keys(trace.key("r/"), 2)
    await c.call(
        "revoke the holder's lease", c.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=l1))
    )
    await c.call("the waiter holds", waiter)
    # a waiter that gives up has its key deleted, as etcd's server does
    gives_up = c.lock.Lock(c.lock_req("r", l3))
    await c.until_keys(trace.key("r/"), 2)
    gives_up.cancel()
    await c.until_keys(trace.key("r/"), 1)
    await c.call(
        "only the holder's key is left",
        c.kv.Range(rpc_pb2.RangeRequest(key=trace.key("r/"), range_end=trace.key("r0"))),
    )


async def election_sequences(trace: Trace) -> None:
    c = Calls(trace)
    el = c.election
    la, lb = await c.grant(), await c.grant()
    name = trace.key("e")
    await c.call("leader of an empty election", el.Leader(v3election_pb2.LeaderRequest(name=name)))
    a = await el.Campaign(v3election_pb2.CampaignRequest(name=name, lease=la, value=b"a1"))
    trace.base = a.header.revision
    c.record("campaign a", a)
    await c.call(
        "campaign a again, new value",
        el.Campaign(v3election_pb2.CampaignRequest(name=name, lease=la, value=b"a2")),
    )
    await c.call("leader", el.Leader(v3election_pb2.LeaderRequest(name=name)))
    await c.call(
        "proclaim", el.Proclaim(v3election_pb2.ProclaimRequest(leader=a.leader, value=b"a3"))
    )
    stale = v3election_pb2.LeaderKey()
    stale.CopyFrom(a.leader)
    stale.rev = a.leader.rev - 1
    await c.call(
        "proclaim with a stale rev",
        el.Proclaim(v3election_pb2.ProclaimRequest(leader=stale, value=b"x")),
    )
    await c.call("proclaim without leader", el.Proclaim(v3election_pb2.ProclaimRequest()))
    await c.call("resign without leader", el.Resign(v3election_pb2.ResignRequest()))
    b = asyncio.ensure_future(
        el.Campaign(v3election_pb2.CampaignRequest(name=name, lease=lb, value=b"b1"))
    )
    await c.until_keys(name + b"/", 2)
    assert not b.done()
    await c.call("resign with a stale rev", el.Resign(v3election_pb2.ResignRequest(leader=stale)))
    await c.call("resign a", el.Resign(v3election_pb2.ResignRequest(leader=a.leader)))
    won = await c.call("b leads", b)
    await c.call("leader is b", el.Leader(v3election_pb2.LeaderRequest(name=name)))
    await c.call(
        "a proclaims after resigning",
        el.Proclaim(v3election_pb2.ProclaimRequest(leader=a.leader, value=b"a4")),
    )
    await c.call("resign b", el.Resign(v3election_pb2.ResignRequest(leader=won.leader)))
    await c.call("resign b again", el.Resign(v3election_pb2.ResignRequest(leader=won.leader)))
    await c.call("no leader", el.Leader(v3election_pb2.LeaderRequest(name=name)))
    await c.call(
        "campaign with an unknown lease",
        el.Campaign(v3election_pb2.CampaignRequest(name=name, lease=999, value=b"v")),
    )


async def observe_sequence(trace: Trace) -> None:
    c = Calls(trace)
    el = c.election
    name = trace.key("o")
    la, lb = await c.grant(), await c.grant()
    first = await c.kv.Put(rpc_pb2.PutRequest(key=trace.key("base"), value=b""))
    trace.base = first.header.revision
    stream = el.Observe(v3election_pb2.LeaderRequest(name=name))
    seen: asyncio.Queue[v3election_pb2.LeaderResponse] = asyncio.Queue()

    async def read() -> None:
        async for resp in stream:
            seen.put_nowait(resp)

    reader = asyncio.ensure_future(read())

    async def observed(what: str) -> None:
        c.record(what, await asyncio.wait_for(seen.get(), WAIT))

    try:
        # the observer is watching once Observe has read the empty election; a put
        # before that is seen by its first read instead, with the same kv
        a = await el.Campaign(v3election_pb2.CampaignRequest(name=name, lease=la, value=b"a1"))
        await observed("a leads")
        await el.Proclaim(v3election_pb2.ProclaimRequest(leader=a.leader, value=b"a2"))
        await observed("a proclaims")
        b = asyncio.ensure_future(
            el.Campaign(v3election_pb2.CampaignRequest(name=name, lease=lb, value=b"b1"))
        )
        await c.until_keys(name + b"/", 2)
        await el.Resign(v3election_pb2.ResignRequest(leader=a.leader))
        won = await asyncio.wait_for(b, WAIT)
        await observed("b leads")
        await el.Proclaim(v3election_pb2.ProclaimRequest(leader=won.leader, value=b"b2"))
        await observed("b proclaims")
        assert seen.empty()
    finally:
        stream.cancel()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def test_lock_unlock_and_a_second_contender_answer_as_etcd(pair: Pair) -> None:
    seen = dict(await pair.same(lock_sequences))
    assert seen["l2 holds after the unlock"]["key"] == "<prefix>m/lease#2"
    assert seen["lock with an unknown lease"]["code"] == "UNKNOWN"


async def test_revoked_holder_and_a_waiter_giving_up_answer_as_etcd(pair: Pair) -> None:
    await pair.same(revoke_and_cancel)


async def test_campaign_proclaim_leader_resign_answer_as_etcd(pair: Pair) -> None:
    seen = dict(await pair.same(election_sequences))
    assert seen["proclaim with a stale rev"]["details"] == "election: not leader"
    assert seen["no leader"]["details"] == "election: no leader"


async def test_observe_streams_leaders_as_etcd(pair: Pair) -> None:
    seen = await pair.same(observe_sequence)
    assert [v["kv"]["value"] for _, v in seen] == ["YTE=", "YTI=", "YjE=", "YjI="]


async def _waiter_disconnects(side: Side) -> list[bytes]:
    """A waiter's connection closes: its key goes (etcd's server unlocks), the holder's stays."""
    prefix = f"/diff/disconnect-{side.name}/".encode()
    async with side.channel() as ch:
        c = Calls(Trace(channel=ch, prefix=prefix, side=side.name))
        l1, l2 = await c.grant(), await c.grant()
        held = await asyncio.wait_for(c.lock.Lock(c.lock_req("d", l1)), WAIT)
        async with side.channel() as other:
            leaves = asyncio.ensure_future(
                v3lock_pb2_grpc.LockStub(other).Lock(c.lock_req("d", l2))
            )
            await c.until_keys(prefix + b"d/", 2)
        await asyncio.gather(leaves, return_exceptions=True)
        await c.until_keys(prefix + b"d/", 1)
        assert await c.keys(prefix + b"d/") == [held.key]
        return [held.key]


@pytest.mark.parametrize("which", ["etcd", "mizzen"])
async def test_a_waiter_that_disconnects_leaves_no_key(pair: Pair, which: str) -> None:
    await _waiter_disconnects(getattr(pair, which))


# ---------------------------------------------------- the deliberate difference


async def _waiter_loses_its_lease(side: Side, prefix: bytes) -> list[Any]:
    """A waiter's lease is revoked, then the holder unlocks: what does the waiter get?"""
    async with side.channel() as ch:
        trace = Trace(channel=ch, prefix=prefix, side=side.name)
        c = Calls(trace)
        l1, l2 = await c.grant(), await c.grant()
        held = await c.lock.Lock(c.lock_req("w", l1))
        waiter = asyncio.ensure_future(c.lock.Lock(c.lock_req("w", l2)))
        await c.until_keys(trace.key("w/"), 2)
        await c.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=l2))
        await c.lock.Unlock(v3lock_pb2.UnlockRequest(key=held.key))
        await c.call("the waiter", waiter)
        await c.call(
            "its key",
            c.kv.Range(rpc_pb2.RangeRequest(key=trace.key("w/"), range_end=trace.key("w0"))),
        )
        # the same with Campaign
        el, name = c.election, trace.key("c")
        l3, l4 = await c.grant(), await c.grant()
        lead = await el.Campaign(v3election_pb2.CampaignRequest(name=name, lease=l3, value=b"a"))
        candidate = asyncio.ensure_future(
            el.Campaign(v3election_pb2.CampaignRequest(name=name, lease=l4, value=b"b"))
        )
        await c.until_keys(name + b"/", 2)
        await c.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=l4))
        await el.Resign(v3election_pb2.ResignRequest(leader=lead.leader))
        await c.call("the candidate", candidate)
        return [value for _, value in trace.entries]


async def test_a_waiter_whose_lease_ends_is_refused_where_etcd_34_grants(pair: Pair) -> None:
    """etcd 3.4 answers success for a key that no longer exists (a lock held by
    nobody); Mizzen answers etcd 3.5's error. Documented in docs/store.md."""
    etcd = await _waiter_loses_its_lease(pair.etcd, b"/diff/w1/")
    mizzen = await _waiter_loses_its_lease(pair.mizzen, b"/diff/w2/")
    assert etcd[0]["key"] == "<prefix>w/lease#2"  # "held", by a lease that is gone
    assert etcd[1]["kvs"] == []
    assert mizzen[0] == {"code": "UNKNOWN", "details": "mutex: session is expired"}
    assert mizzen[1]["kvs"] == []
    assert etcd[2]["leader"]["key"] == "<prefix>c/lease#4"  # "leads", by a lease that is gone
    assert mizzen[2] == {"code": "UNKNOWN", "details": "election: not leader"}


# ------------------------------------------------ a holder's member is killed


TRANSIENT = ("leader changed", "no leader", "timed out")


async def _again(make: Callable[[], Awaitable[T]]) -> T:
    """Call until it answers, through the failures a leader change causes (as a
    client would: the Lock service answers them UNKNOWN on etcd)."""
    for _ in range(100):
        try:
            return await make()
        except grpc.aio.AioRpcError as err:
            codes = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            if err.code() not in codes and not any(t in str(err.details()) for t in TRANSIENT):
                raise
            await asyncio.sleep(0.2)
    raise AssertionError("no answer after a leader change")


async def _holder_member_killed(side: Side) -> None:
    """A holds through member 0 and B waits there; member 0 dies. B, asking member 1
    again with its lease, must wait until A unlocks: never two holders."""
    cluster = side.cluster
    ch0 = grpc.aio.insecure_channel(cluster.endpoint(0))
    ch1 = grpc.aio.insecure_channel(cluster.endpoint(1))
    try:
        prefix = f"/diff/kill-{side.name}/".encode()
        near = Calls(Trace(channel=ch0, prefix=prefix, side=side.name))
        far = Calls(Trace(channel=ch1, prefix=prefix, side=side.name))
        la, lb = await far.grant(), await far.grant()
        a = await asyncio.wait_for(near.lock.Lock(near.lock_req("k", la)), WAIT)
        first_try = asyncio.ensure_future(near.lock.Lock(near.lock_req("k", lb)))
        await far.until_keys(prefix + b"k/", 2)
        cluster.kill(0)
        with pytest.raises(grpc.aio.AioRpcError):
            await asyncio.wait_for(first_try, WAIT)
        keys = await _again(lambda: asyncio.wait_for(far.keys(prefix + b"k/"), WAIT))
        assert a.key in keys  # A still holds (its lease is alive)
        retry = asyncio.ensure_future(_again(lambda: far.lock.Lock(far.lock_req("k", lb))))
        await asyncio.sleep(0.5)
        assert not retry.done(), "B holds while A's key exists"
        released = await _again(
            lambda: asyncio.wait_for(far.lock.Unlock(v3lock_pb2.UnlockRequest(key=a.key)), WAIT)
        )
        b = await asyncio.wait_for(retry, WAIT * 2)
        assert b.header.revision >= released.header.revision
        assert b.key == session_key(prefix + b"k/", lb)
        assert await far.keys(prefix + b"k/") == [b.key]
    finally:
        await ch0.close(None)
        await ch1.close(None)
        cluster.restart(0)


@pytest.mark.parametrize("which", ["etcd", "mizzen"])
async def test_killing_the_holders_member_never_makes_two_holders(pair: Pair, which: str) -> None:
    await _holder_member_killed(getattr(pair, which))


# ------------------------------------------------ contenders on every member


async def _one_holder_at_a_time(side: Side) -> None:
    """A contender on each member (leader and followers): each gets the lock only
    after the one before it unlocked, in the order they queued."""
    cluster = side.cluster
    channels = [grpc.aio.insecure_channel(cluster.endpoint(i)) for i in range(3)]
    try:
        prefix = f"/diff/members-{side.name}/".encode()
        calls = [Calls(Trace(channel=ch, prefix=prefix, side=side.name)) for ch in channels]
        leases = [await c.grant() for c in calls]
        pending = []
        for i, c in enumerate(calls):
            pending.append(asyncio.ensure_future(c.lock.Lock(c.lock_req("q", leases[i]))))
            await calls[0].until_keys(prefix + b"q/", i + 1)
        unlocked = 0
        for i, c in enumerate(calls):
            held = await asyncio.wait_for(pending[i], WAIT)
            assert held.header.revision >= unlocked
            assert not any(p.done() for p in pending[i + 1 :]), "two holders"
            assert held.key in await c.keys(prefix + b"q/")
            gone = await asyncio.wait_for(
                c.lock.Unlock(v3lock_pb2.UnlockRequest(key=held.key)), WAIT
            )
            unlocked = gone.header.revision
    finally:
        for ch in channels:
            await ch.close(None)


@pytest.mark.parametrize("which", ["etcd", "mizzen"])
async def test_contenders_on_every_member_hold_one_at_a_time(pair: Pair, which: str) -> None:
    await _one_holder_at_a_time(getattr(pair, which))


# ------------------------------------------------------- many waiters, no threads


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


async def test_many_waiters_hold_no_thread_and_are_served_in_order(pair: Pair) -> None:
    """50 callers wait on one Mizzen member: its thread count stays put, and each
    holds in turn, in the order they queued, after the one before unlocked."""
    side = pair.mizzen
    pid = side.cluster.pids[0]
    assert pid is not None
    prefix = b"/diff/many/"
    async with side.channel() as ch:
        c = Calls(Trace(channel=ch, prefix=prefix, side=side.name))
        holder = await c.grant()
        held = await asyncio.wait_for(c.lock.Lock(c.lock_req("m", holder)), WAIT)
        before = _threads(pid)
        leases = [await c.grant() for _ in range(50)]
        waiting = []
        for n, lease in enumerate(leases):
            waiting.append(asyncio.ensure_future(c.lock.Lock(c.lock_req("m", lease))))
            await c.until_keys(prefix + b"m/", n + 2)
        assert _threads(pid) <= before + 2  # grpc may add a poller; never one per waiter
        key = held.key
        for n, pending in enumerate(waiting):
            await asyncio.wait_for(c.lock.Unlock(v3lock_pb2.UnlockRequest(key=key)), WAIT)
            got = await asyncio.wait_for(pending, WAIT)
            assert got.key == session_key(prefix + b"m/", leases[n])
            assert not any(p.done() for p in waiting[n + 1 :])
            key = got.key
        await c.lock.Unlock(v3lock_pb2.UnlockRequest(key=key))
