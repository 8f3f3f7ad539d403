"""The batcher's byte bounds: batch size, queued writes, admission and refusal.

Against a fake Raft that holds batches until the test applies them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from protos import rpc_pb2
from store.batcher import SUCCESS, Batcher, command_bytes
from store.errors import Code, StoreError
from store.state_machine import StateMachine

KIB = 1024


def put(key: bytes, size: int) -> tuple[str, bytes]:
    return ("put", rpc_pb2.PutRequest(key=key, value=b"v" * size).SerializeToString())


BARRIER = ("barrier",)


class FakeRaft:
    def __init__(self) -> None:
        self.sm = StateMachine()
        self.submitted: list[tuple[tuple[Any, ...], Callable[[Any, Any], None]]] = []

    def submit(self, batch: tuple[Any, ...], callback: Callable[[Any, Any], None]) -> None:
        self.submitted.append((batch, callback))

    def ops(self, i: int) -> list[str]:
        """What batch i carries: the key of each put, "barrier" for barriers."""
        out = []
        for cmd in self.submitted[i][0][3]:
            if cmd[0] == "put":
                out.append(rpc_pb2.PutRequest.FromString(cmd[1]).key.decode())
            else:
                out.append(cmd[0])
        return out

    def apply(self, i: int) -> None:
        batch, callback = self.submitted[i]
        callback(self.sm.apply_batch(*batch), SUCCESS)


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def batcher(raft: FakeRaft, **kw: Any) -> Batcher:
    kw.setdefault("max_batch_bytes", 1024 * KIB)
    kw.setdefault("max_queued_bytes", 8 * 1024 * KIB)
    return Batcher(raft.submit, max_inflight=1, **kw)


async def test_a_batch_holds_at_most_max_batch_bytes_and_small_commands_ride_along() -> None:
    raft = FakeRaft()
    b = batcher(raft)
    first = asyncio.create_task(b.propose(put(b"first", 10), 5))
    await settle()
    tasks = [asyncio.create_task(b.propose(put(b"big%d" % i, 600 * KIB), 5)) for i in range(3)]
    await settle()
    reads = [asyncio.create_task(b.propose(BARRIER, 5)) for _ in range(4)]
    await settle()
    assert b.queued_bytes == sum(command_bytes(put(b"big0", 600 * KIB)) for _ in range(3))
    raft.apply(0)
    await settle()
    # the oldest write, then what still fits: the barriers, not a second 600 KiB
    assert raft.ops(1) == ["big0", "barrier", "barrier", "barrier", "barrier"]
    raft.apply(1)
    await settle()
    assert all(r.done() for r in reads)
    assert raft.ops(2) == ["big1"]
    raft.apply(2)
    await settle()
    assert raft.ops(3) == ["big2"]
    raft.apply(3)
    await asyncio.gather(first, *tasks)
    assert b.queued_bytes == 0


async def test_a_command_larger_than_a_batch_goes_alone() -> None:
    raft = FakeRaft()
    b = batcher(raft, max_batch_bytes=64 * KIB)
    task = asyncio.create_task(b.propose(put(b"huge", 1024 * KIB), 5))
    await settle()
    assert raft.ops(0) == ["huge"]
    raft.apply(0)
    await task


async def test_reads_do_not_wait_behind_a_large_write_but_it_goes_next() -> None:
    raft = FakeRaft()
    b = batcher(raft, max_batch_bytes=64 * KIB)
    inflight = asyncio.create_task(b.propose(put(b"a", 10), 5))
    await settle()
    big = asyncio.create_task(b.propose(put(b"big", 200 * KIB), 5))
    small = asyncio.create_task(b.propose(put(b"small", 10), 5))
    await settle()
    reads = [asyncio.create_task(b.propose(BARRIER, 5))]
    await settle()
    raft.apply(0)
    await settle()
    assert raft.ops(1) == ["small", "barrier"]  # the large write lets the read go first
    reads.append(asyncio.create_task(b.propose(BARRIER, 5)))  # more reads keep coming
    await settle()
    raft.apply(1)
    await settle()
    assert raft.ops(2) == ["big", "barrier"]  # ...but it waited once only
    raft.apply(2)
    await asyncio.gather(inflight, big, small, *reads)


async def test_writes_beyond_the_queue_bound_wait_their_turn() -> None:
    raft = FakeRaft()
    b = batcher(raft, max_queued_bytes=1024 * KIB)
    inflight = asyncio.create_task(b.propose(put(b"a", 10), 5))
    await settle()
    first = asyncio.create_task(b.propose(put(b"q1", 600 * KIB), 5))
    second = asyncio.create_task(b.propose(put(b"q2", 600 * KIB), 5))
    await settle()
    assert b.pending == 3 and b.queued_bytes == command_bytes(put(b"q1", 600 * KIB))
    read = asyncio.create_task(b.propose(BARRIER, 5))  # never held back
    await settle()
    raft.apply(0)
    await settle()
    assert raft.ops(1) == ["q1", "barrier"]
    assert b.queued_bytes == command_bytes(put(b"q2", 600 * KIB))  # admitted meanwhile
    raft.apply(1)
    await settle()
    assert raft.ops(2) == ["q2"]
    raft.apply(2)
    await asyncio.gather(inflight, first, second, read)
    assert b.refused == 0


async def test_a_write_that_cannot_get_in_is_refused_unproposed_with_retry_after() -> None:
    raft = FakeRaft()
    b = batcher(raft, max_queued_bytes=1024 * KIB, admission_wait=0.02)
    inflight = asyncio.create_task(b.propose(put(b"a", 10), 5))
    await settle()
    queued = asyncio.create_task(b.propose(put(b"q1", 900 * KIB), 5))
    await settle()
    with pytest.raises(StoreError) as refused:
        await b.propose(put(b"q2", 900 * KIB), 5)
    err = refused.value
    assert err.code == Code.RESOURCE_EXHAUSTED
    assert err.message.startswith("etcdserver: too many requests: 0.9 MiB of writes queued")
    assert err.retry_after is not None and err.retry_after > 0
    assert f"retry after {err.retry_after:.2f} s" in err.message
    assert b.refused == 1 and len(raft.submitted) == 1
    raft.apply(0)
    await settle()
    assert raft.ops(1) == ["q1"]  # q2 was never proposed
    raft.apply(1)
    await asyncio.gather(inflight, queued)


async def test_a_queued_write_that_times_out_frees_its_bytes_for_the_next() -> None:
    raft = FakeRaft()
    b = batcher(raft, max_queued_bytes=1024 * KIB)
    inflight = asyncio.create_task(b.propose(put(b"a", 10), 5))
    await settle()
    doomed = asyncio.create_task(b.propose(put(b"q1", 900 * KIB), 0.02))
    waiting = asyncio.create_task(b.propose(put(b"q2", 900 * KIB), 5))
    await settle()
    with pytest.raises(StoreError, match="request timed out"):
        await doomed
    await settle()
    assert b.queued_bytes == command_bytes(put(b"q2", 900 * KIB))  # q2 got q1's room
    raft.apply(0)
    await settle()
    assert raft.ops(1) == ["q2"]
    raft.apply(1)
    await asyncio.gather(inflight, waiting)


async def test_fail_all_fails_waiting_writes_too() -> None:
    raft = FakeRaft()
    b = batcher(raft, max_queued_bytes=1024 * KIB)
    tasks = [asyncio.create_task(b.propose(put(b"a", 10), 5))]
    await settle()
    tasks += [asyncio.create_task(b.propose(put(b"q%d" % i, 900 * KIB), 5)) for i in range(3)]
    await settle()
    stopped = StoreError(Code.UNAVAILABLE, "etcdserver: server stopped")
    b.fail_all(stopped)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results == [stopped] * 4
    assert b.pending == 0 and b.queued_bytes == 0


async def test_copies_of_an_unanswered_batch_back_off() -> None:
    now = [0.0]
    raft = FakeRaft()
    b = Batcher(raft.submit, resend_after=1.0, clock=lambda: now[0])
    task = asyncio.create_task(b.propose(put(b"a", 10), 30))
    await settle()
    sent: list[float] = []
    for tick in range(1, 80):  # 7.9 s of housekeeping, every 0.1 s
        now[0] = tick / 10
        b.check_stuck()
        if len(raft.submitted) > len(sent) + 1:
            sent.append(now[0])
    assert sent == [1.1, 3.2, 7.3]  # waits of 1, 2 and 4 s: each copy is a whole entry more
    raft.apply(0)
    await task


async def test_copies_wait_longer_when_raft_is_slow() -> None:
    now = [0.0]
    raft = FakeRaft()
    b = Batcher(raft.submit, resend_after=1.0, clock=lambda: now[0])
    for i in range(5):  # batches that took 1.5 s each from proposal to apply
        task = asyncio.create_task(b.propose(put(b"k%d" % i, 10), 30))
        await settle()
        now[0] += 1.5
        raft.apply(i)
        await task
    assert b.batch_seconds > 1.0
    start = now[0]
    task = asyncio.create_task(b.propose(put(b"late", 10), 30))
    await settle()
    now[0] = start + 3.9
    b.check_stuck()
    assert len(raft.submitted) == 6  # not resent after 1 s: 4 x the recent batch time
    now[0] = start + 4 * b.batch_seconds + 0.01
    b.check_stuck()
    assert len(raft.submitted) == 7
    raft.apply(5)
    await task
