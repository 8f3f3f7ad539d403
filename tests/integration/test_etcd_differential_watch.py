"""The Watch API side by side with etcd 3.4 (tests/integration/etcd_differential.py).

Every scenario drives one bidirectional Watch stream (``WatchDriver``) and
records each response. Responses are read by count: an action whose answers
are known (a create, a put seen by three watchers) reads exactly that many,
each bounded by RESPONSE_WAIT, so a missing answer fails instead of hanging.
That nothing came is shown with a progress request as a sentinel: etcd sends
create, cancel and progress answers through one control queue in request
order, so the next response must be the progress answer.

Watch ids are not normalized: both stores number them alike (per stream, from
0, skipping ids in use). Responses of several watchers to one revision are
recorded sorted by watch id: etcd sends them in Go map order (random).

Where Mizzen's Watch differs from etcd's (docs/store.md, "etcd compatibility")
it does so in ways no scenario here can show in seconds (progress_notify's
interval, slow streams).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from etcd_differential import Pair, Trace

from protos import rpc_pb2, rpc_pb2_grpc

pytestmark = [pytest.mark.compat, pytest.mark.timeout(180)]

RESPONSE_WAIT = 10.0  # seconds for one expected response (a hang guard, not a measurement)
Create = rpc_pb2.WatchCreateRequest


def create(**fields: Any) -> rpc_pb2.WatchRequest:
    return rpc_pb2.WatchRequest(create_request=Create(**fields))


def cancel(watch_id: int) -> rpc_pb2.WatchRequest:
    return rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=watch_id))


PROGRESS = rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest())


class WatchDriver:
    """One Watch call: requests go in a queue; a task reads every response into another."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self._requests: asyncio.Queue[rpc_pb2.WatchRequest | None] = asyncio.Queue()
        self._responses: asyncio.Queue[rpc_pb2.WatchResponse | BaseException | None] = (
            asyncio.Queue()
        )
        self.call = rpc_pb2_grpc.WatchStub(trace.channel).Watch(self._outgoing())
        self._reader = asyncio.create_task(self._read())

    async def _outgoing(self) -> AsyncIterator[rpc_pb2.WatchRequest]:
        while (req := await self._requests.get()) is not None:
            yield req

    async def _read(self) -> None:
        try:
            async for resp in self.call:
                self._responses.put_nowait(resp)
            self._responses.put_nowait(None)
        except grpc.aio.AioRpcError as err:
            self._responses.put_nowait(err)

    def send(self, req: rpc_pb2.WatchRequest) -> None:
        self._requests.put_nowait(req)

    def close_send(self) -> None:
        """Half-close: the client sends nothing more."""
        self._requests.put_nowait(None)

    async def next(self) -> rpc_pb2.WatchResponse:
        got = await asyncio.wait_for(self._responses.get(), RESPONSE_WAIT)
        if got is None:
            raise AssertionError(f"{self.trace.side}: the watch stream ended")
        if isinstance(got, BaseException):
            raise AssertionError(f"{self.trace.side}: the watch stream failed: {got!r}")
        return got

    async def expect(self, what: str, n: int = 1, **record: Any) -> list[rpc_pb2.WatchResponse]:
        """Read n responses and record them, sorted by watch id."""
        got = [await self.next() for _ in range(n)]
        got.sort(key=lambda r: r.watch_id)
        for i, resp in enumerate(got):
            self.trace.record(f"{what} [{i + 1}/{n}]", resp, **record)
        return got

    async def expect_nothing(self, what: str) -> None:
        """Record what arrives before the answer to a progress request (etcd: nothing)."""
        self.send(PROGRESS)
        while True:
            resp = await self.next()
            if resp.watch_id == -1 and not resp.created and not resp.events:
                self.trace.record(f"{what}: progress answer", resp)
                return
            self.trace.record(f"{what}: UNEXPECTED", resp)

    async def close(self) -> None:
        self.call.cancel()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def watching(trace: Trace) -> AsyncIterator[WatchDriver]:
    driver = WatchDriver(trace)
    try:
        yield driver
    finally:
        await driver.close()


def kv_of(trace: Trace) -> rpc_pb2_grpc.KVStub:
    return rpc_pb2_grpc.KVStub(trace.channel)


async def start(trace: Trace, key: str = "a", value: bytes = b"1") -> rpc_pb2.PutResponse:
    """The scenario's first put: its revision is the trace's base."""
    put = await kv_of(trace).Put(rpc_pb2.PutRequest(key=trace.key(key), value=value))
    trace.base = put.header.revision
    trace.record("first put", put)
    return put


# ------------------------------------------------------------------ compaction


async def compacted_watch(trace: Trace) -> None:
    kv = kv_of(trace)
    await start(trace)
    second = await kv.Put(rpc_pb2.PutRequest(key=trace.key("a"), value=b"2"))
    await kv.Put(rpc_pb2.PutRequest(key=trace.key("a"), value=b"3"))
    await trace.call(
        "compact",
        kv.Compact(rpc_pb2.CompactionRequest(revision=second.header.revision, physical=True)),
    )
    async with watching(trace) as w:
        # created, then a separate cancel with compact_revision (one response
        # with both made clients hang): issue 19, item 1
        w.send(create(key=trace.key("a"), start_revision=trace.base))
        await w.expect("watch from a compacted revision: created")
        await w.expect("watch from a compacted revision: canceled")
        w.send(create(key=trace.key("a"), start_revision=trace.base, watch_id=0))
        await w.expect("again: id 1, as the compacted watch keeps id 0", 2)
        w.send(create(key=trace.key("b"), watch_id=1))
        await w.expect("a create with a compacted watch's id: duplicate")
        w.send(cancel(0))
        await w.expect("cancel the compacted watch")
        w.send(cancel(0))
        await w.expect_nothing("cancel it again")
        w.send(create(key=trace.key("b"), watch_id=0))
        await w.expect("its id is free again")


async def test_watch_from_a_compacted_revision_answers_as_etcd(pair: Pair) -> None:
    await pair.same(compacted_watch)


async def at_compaction_revision(trace: Trace) -> None:
    kv = kv_of(trace)
    await start(trace)
    second = await kv.Put(rpc_pb2.PutRequest(key=trace.key("a"), value=b"2"))
    await kv.Put(rpc_pb2.PutRequest(key=trace.key("b"), value=b"1"))
    await kv.Put(rpc_pb2.PutRequest(key=trace.key("a"), value=b"3"))
    await kv.Compact(rpc_pb2.CompactionRequest(revision=second.header.revision, physical=True))
    prefix = {"key": trace.key(""), "range_end": trace.key("\xff"), "prev_kv": True}
    async with watching(trace) as w:
        # what resuming from a compacted response's compact_revision does: etcd's
        # compaction keeps each key's newest version at that revision (its puts)
        w.send(create(**prefix, start_revision=second.header.revision))
        await w.expect("watch from exactly the compaction revision: its put, then later", 2)
        gone = await kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=trace.key("b")))
        await w.expect("the delete, live")
        await kv.Put(rpc_pb2.PutRequest(key=trace.key("c"), value=b"1"))
        await w.expect("a put after it, live")
        await kv.Compact(rpc_pb2.CompactionRequest(revision=gone.header.revision, physical=True))
        w.send(create(**prefix, start_revision=gone.header.revision))
        # after the physical compaction the delete at the compaction revision is gone
        await w.expect("from a compacted delete: only what follows", 2)


async def test_watch_from_the_compaction_revision_answers_as_etcd(pair: Pair) -> None:
    await pair.same(at_compaction_revision)


# ------------------------------------------------------------------------ ids


async def watch_ids(trace: Trace) -> None:
    kv = kv_of(trace)
    await start(trace)
    async with watching(trace) as w:
        w.send(create(key=trace.key("a")))
        await w.expect("first watch: id 0")
        w.send(create(key=trace.key("a"), watch_id=5))
        await w.expect("client-chosen id 5")
        w.send(create(key=trace.key("a"), watch_id=5))
        await w.expect("id 5 again: duplicate, refused with watch_id -1")
        w.send(create(key=trace.key("a"), watch_id=-7))
        await w.expect("a negative id of the client's")
        for _ in range(5):
            w.send(create(key=trace.key("a")))
        await w.expect("five auto ids: 1-4, then 6 (5 is taken)", 5)
        w.send(cancel(42))
        await w.expect_nothing("cancel of an unknown id")
        w.send(cancel(5))
        await w.expect("cancel of a known id")
        w.send(create(key=trace.key("a"), watch_id=5))
        await w.expect("id 5 reused after its cancel")
        w.send(PROGRESS)
        await w.expect("progress request: watch_id -1, the current revision")
        await trace.call("put", kv.Put(rpc_pb2.PutRequest(key=trace.key("a"), value=b"2")))
        await w.expect("one put, eight watchers", 8)
        w.send(rpc_pb2.WatchRequest())
        await w.expect_nothing("an empty request")


async def test_watch_ids_cancel_and_progress_answer_as_etcd(pair: Pair) -> None:
    await pair.same(watch_ids)


# --------------------------------------------------------------------- ranges


async def watch_ranges(trace: Trace) -> None:
    kv = kv_of(trace)
    await start(trace)
    async with watching(trace) as w:
        w.send(create(key=trace.key("m"), range_end=trace.key("c")))
        await w.expect("range_end < key: refused")
        w.send(create(key=trace.key("m"), range_end=trace.key("m")))
        await w.expect("range_end == key: refused")
        w.send(create(key=b""))
        await w.expect("an empty key is the key \\0")
        w.send(create(key=trace.key("b")))
        await w.expect("one key")
        w.send(create(key=trace.key("b"), range_end=trace.key("d")))
        await w.expect("a range [b, d)")
        w.send(create(key=trace.key(""), range_end=trace.key("\xff")))
        await w.expect("the prefix")
        w.send(create(key=trace.key("c"), range_end=b"\0"))
        await w.expect("every key >= c")
        w.send(create(key=b"\0", range_end=b"\0"))
        await w.expect("every key")
        put = kv.Put(rpc_pb2.PutRequest(key=trace.key("b"), value=b"b"))
        await trace.call("put b", put)
        await w.expect("b: one key, range, prefix, all", 4)
        await trace.call("put d", kv.Put(rpc_pb2.PutRequest(key=trace.key("d"), value=b"d")))
        await w.expect("d: prefix, >= c, all", 3)
        await trace.call(
            "delete the prefix",
            kv.DeleteRange(
                rpc_pb2.DeleteRangeRequest(key=trace.key(""), range_end=trace.key("\xff"))
            ),
        )
        await w.expect("one revision, one response per watcher", 5)


async def test_watch_ranges_answer_as_etcd(pair: Pair) -> None:
    await pair.same(watch_ranges)


# ------------------------------------------------------------ filters, prev_kv


async def filters_and_prev_kv(trace: Trace) -> None:
    kv = kv_of(trace)
    await start(trace)
    async with watching(trace) as w:
        w.send(create(key=trace.key("a"), filters=[Create.NOPUT], prev_kv=True))
        w.send(create(key=trace.key("a"), filters=[Create.NODELETE], prev_kv=True))
        w.send(create(key=trace.key("a"), filters=[Create.NOPUT, Create.NODELETE]))
        w.send(create(key=trace.key("a")))
        await w.expect("NOPUT+prev_kv, NODELETE+prev_kv, both, none", 4)
        await trace.call("overwrite", kv.Put(rpc_pb2.PutRequest(key=trace.key("a"), value=b"2")))
        await w.expect("overwrite: NODELETE (with prev_kv), none", 2)
        await trace.call("delete", kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=trace.key("a"))))
        await w.expect("delete: NOPUT (with prev_kv), none", 2)
        await trace.call("create", kv.Put(rpc_pb2.PutRequest(key=trace.key("a"), value=b"3")))
        await w.expect("create: no prev_kv to give", 2)
        await w.expect_nothing("the watcher with both filters got nothing")


async def test_filters_and_prev_kv_answer_as_etcd(pair: Pair) -> None:
    await pair.same(filters_and_prev_kv)


# ------------------------------------------- revisions: history, future, txn, lease


async def revisions(trace: Trace) -> None:
    kv = kv_of(trace)
    lease = rpc_pb2_grpc.LeaseStub(trace.channel)
    await start(trace)
    await kv.Put(rpc_pb2.PutRequest(key=trace.key("b"), value=b"1"))
    async with watching(trace) as w:
        w.send(create(key=trace.key(""), range_end=trace.key("\xff"), start_revision=trace.base))
        await w.expect("from the first put: created, then the history in one response", 2)
        w.send(
            create(key=trace.key(""), range_end=trace.key("\xff"), start_revision=trace.base + 3)
        )
        await w.expect("from a future revision (base+3)")
        txn = rpc_pb2.TxnRequest(
            success=[
                rpc_pb2.RequestOp(
                    request_put=rpc_pb2.PutRequest(key=trace.key(k), value=b"t", prev_kv=True)
                )
                for k in ("a", "c")
            ]
            + [
                rpc_pb2.RequestOp(
                    request_delete_range=rpc_pb2.DeleteRangeRequest(key=trace.key("b"))
                )
            ]
        )
        await trace.call("txn (base+2)", kv.Txn(txn))
        await w.expect("txn: all events of the revision in one response; not the future one")
        grant = await lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60))
        for k in ("l1", "l2"):
            await trace.call(
                f"put {k} with a lease",
                kv.Put(rpc_pb2.PutRequest(key=trace.key(k), value=b"x", lease=grant.ID)),
            )
        await w.expect("l1 (base+3): both", 2)
        await w.expect("l2 (base+4): both", 2)
        await trace.call("revoke", lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=grant.ID)))
        await w.expect("revoke: its deletes in one response per watcher", 2)


async def test_history_future_txn_and_lease_revoke_answer_as_etcd(pair: Pair) -> None:
    await pair.same(revisions)


# ------------------------------------------------------------------ fragment


VALUE = 600_000  # four such values with prev_kv exceed etcd's 2 MiB response limit


def fragment_summary(trace: Trace, resp: rpc_pb2.WatchResponse) -> dict[str, Any]:
    """What a (large) response says, without its values (recorded, so normalized)."""
    return {
        "watch_id": resp.watch_id,
        "fragment": resp.fragment,
        "revision": resp.header.revision,
        "events": [
            {
                "type": ev.type,
                "key": ev.kv.key.removeprefix(trace.prefix).decode(),
                "mod_revision": ev.kv.mod_revision,
                "prev_kv_value_bytes": len(ev.prev_kv.value),
            }
            for ev in resp.events
        ],
    }


async def fragments(trace: Trace) -> None:
    kv = kv_of(trace)
    await start(trace, "a", b"a" * VALUE)
    for k in ("b", "c", "d"):
        await kv.Put(rpc_pb2.PutRequest(key=trace.key(k), value=k.encode() * VALUE))
    prefix = {"key": trace.key(""), "range_end": trace.key("\xff"), "prev_kv": True}
    async with watching(trace) as w:
        w.send(create(**prefix, fragment=True))
        w.send(create(**prefix))
        w.send(create(key=trace.key("a"), prev_kv=True, fragment=True))
        await w.expect("fragment, whole, fragment on one key", 3)
        await trace.call(
            "delete all four in one revision",
            kv.DeleteRange(
                rpc_pb2.DeleteRangeRequest(key=trace.key(""), range_end=trace.key("\xff"))
            ),
        )
        got = [await w.next() for _ in range(4)]
        # etcd sends each watcher's responses in order; watchers in any order
        got.sort(key=lambda r: (r.watch_id, not r.fragment))
        for resp in got:
            trace.record("delete", fragment_summary(trace, resp))


async def test_fragment_answers_as_etcd(pair: Pair) -> None:
    entries = await pair.same(fragments)
    assert [e["fragment"] for what, e in entries if what == "delete"] == [True, False, False, False]


# ------------------------------------------------------------------ half-close


async def half_close(trace: Trace) -> None:
    kv = kv_of(trace)
    await start(trace)
    async with watching(trace) as w:
        w.send(create(key=trace.key("a")))
        w.close_send()
        await w.expect("created")
        await trace.call("put", kv.Put(rpc_pb2.PutRequest(key=trace.key("a"), value=b"2")))
        await w.expect("events go on after the client half-closed")


async def test_half_closed_stream_keeps_watching_as_etcd(pair: Pair) -> None:
    await pair.same(half_close)
