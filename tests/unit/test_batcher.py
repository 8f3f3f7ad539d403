"""Batching and safe re-proposal, against a fake Raft that applies into a real StateMachine.

The event loop runs on virtual time (``looptime``): a retry back-off or a
timeout fires when the loop has nothing else to do and its time is advanced
to that timer, so no test waits in real time or depends on this machine's speed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from protos import rpc_pb2
from store.batcher import SUCCESS, Batcher
from store.errors import Code, StoreError
from store.state_machine import StateMachine

pytestmark = pytest.mark.looptime

NOT_LEADER = 4  # any pysyncobj FAIL_REASON other than SUCCESS


def put(key: bytes) -> tuple[str, bytes]:
    return ("put", rpc_pb2.PutRequest(key=key, value=b"v").SerializeToString())


class FakeRaft:
    """Holds submitted batches until the test decides their fate."""

    def __init__(self) -> None:
        self.sm = StateMachine()
        self.submitted: list[tuple[tuple[Any, ...], Callable[[Any, Any], None]]] = []

    def submit(self, batch: tuple[Any, ...], callback: Callable[[Any, Any], None]) -> None:
        self.submitted.append((batch, callback))

    def apply(self, i: int) -> list[Any]:
        batch, callback = self.submitted[i]
        results = self.sm.apply_batch(*batch)
        callback(results, SUCCESS)
        return results

    def fail(self, i: int, reason: int = NOT_LEADER) -> None:
        self.submitted[i][1](None, reason)

    def apply_silently(self, i: int) -> None:
        """Applied in the log, but the answer never reaches the proposer."""
        self.sm.apply_batch(*self.submitted[i][0])


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_concurrent_commands_share_one_batch() -> None:
    raft = FakeRaft()
    b = Batcher(raft.submit, max_inflight=1)
    first = asyncio.create_task(b.propose(put(b"a"), 5))
    await settle()
    assert len(raft.submitted) == 1  # first goes alone
    rest = [asyncio.create_task(b.propose(put(b"k%d" % i), 5)) for i in range(10)]
    await settle()
    assert len(raft.submitted) == 1  # the others wait while one batch is in flight
    raft.apply(0)
    await settle()
    assert len(raft.submitted) == 2
    assert len(raft.submitted[1][0][3]) == 10  # ...and then go together
    raft.apply(1)
    results = await asyncio.gather(first, *rest)
    revisions = [r.header.revision for r in results]
    assert revisions == list(range(2, 13))  # each caller gets its own result
    assert (b.batches_proposed, b.commands_proposed) == (2, 11)


async def test_failed_batch_is_resent_and_applied_once() -> None:
    raft = FakeRaft()
    b = Batcher(raft.submit, retry_backoff=0.01)
    task = asyncio.create_task(b.propose(put(b"a"), 5))
    await settle()
    raft.apply_silently(0)  # applied, but the proposer hears "not leader"
    raft.fail(0)
    await asyncio.sleep(0.05)
    assert len(raft.submitted) == 2, "an ambiguous failure is re-proposed"
    assert raft.submitted[1][0][:2] == raft.submitted[0][0][:2]  # same proposer and seq
    results = raft.apply(1)
    resp = await task
    assert resp.header.revision == 2
    assert raft.sm.revision == 2, "the re-proposed batch must not apply twice"
    assert results[0] is not None


async def test_unanswered_batch_is_resent_by_check_stuck() -> None:
    now = [0.0]
    raft = FakeRaft()
    b = Batcher(raft.submit, resend_after=1.0, clock=lambda: now[0])
    task = asyncio.create_task(b.propose(put(b"a"), 5))
    await settle()
    b.check_stuck()
    assert len(raft.submitted) == 1
    now[0] = 1.5
    b.check_stuck()
    assert len(raft.submitted) == 2
    raft.apply(0)  # the first copy answers after all
    raft.apply(1)  # the second copy is a duplicate: recorded result, no new revision
    assert (await task).header.revision == 2
    assert raft.sm.revision == 2
    assert b.resends == 1


async def test_timeout_reports_unavailable_and_abandons_the_batch() -> None:
    raft = FakeRaft()
    b = Batcher(raft.submit, retry_backoff=0.01)
    with pytest.raises(StoreError) as err:
        await b.propose(put(b"a"), 0.05)
    assert err.value.code == Code.UNAVAILABLE
    assert err.value.message == "etcdserver: request timed out"
    raft.fail(0)
    await asyncio.sleep(0.03)
    assert len(raft.submitted) == 1, "nobody waits for it any more: not re-proposed"
    nxt = asyncio.create_task(b.propose(put(b"b"), 5))
    await settle()
    assert raft.submitted[1][0][2] == 2, "the floor moved past the abandoned batch"
    raft.apply(1)
    await nxt
    # a late copy of the abandoned batch is refused, so it can never apply after all
    late = raft.sm.apply_batch(*raft.submitted[0][0])
    assert isinstance(late[0], StoreError) and late[0].code == Code.UNAVAILABLE
    assert raft.sm.get(b"a") is None


async def test_results_are_per_command_including_errors() -> None:
    raft = FakeRaft()
    b = Batcher(raft.submit, max_inflight=1)
    blocker = asyncio.create_task(b.propose(("barrier",), 5))
    await settle()
    good = asyncio.create_task(b.propose(put(b"a"), 5))
    bad = asyncio.create_task(b.propose(put(b""), 5))
    await settle()
    raft.apply(0)
    await settle()
    raft.apply(1)
    await blocker
    assert (await good).header.revision == 2
    res = await bad
    assert isinstance(res, StoreError) and res.message == "etcdserver: key is not provided"


async def test_fail_all_fails_waiting_callers() -> None:
    raft = FakeRaft()
    b = Batcher(raft.submit, max_inflight=1)
    tasks = [asyncio.create_task(b.propose(put(b"k%d" % i), 5)) for i in range(3)]
    await settle()
    b.fail_all(StoreError(Code.UNAVAILABLE, "stopped"))
    for t in tasks:
        with pytest.raises(StoreError):
            await t
