"""Group commit: concurrent requests become one Raft log entry.

pysyncobj pays a high fixed cost per log entry (pickle, journal, a Python loop
on every replica), so the store proposes *batches*: while some batches are in
flight, new commands queue up, and the next batch takes all of them. Each
caller gets its own result when the batch has been applied on this node.

Every batch carries this proposer's id, a sequence number and a floor (the
lowest sequence still awaited). The state machine remembers results per
(proposer, seq), so a batch whose outcome was ambiguous (leader changed, no
answer in time) is simply proposed again: if the first copy was applied, the
second returns the recorded results instead of applying twice. A batch that
every caller has given up on is abandoned; the floor moves past it, and once a
later batch of this member has been applied the state machine refuses any late
copy of it. A copy already handed to Raft before that can still be applied
later (e.g. forwarded when a partition heals): its callers were told the
outcome is unknown, exactly as with an etcd request that timed out. Members
without a leader refuse requests up front (``require_leader``), which keeps
such copies rare.

Bounded by bytes, so that overload slows writers instead of starving Raft: a
batch carries at most ``max_batch_bytes`` of commands (a larger single
command goes alone), taking the oldest command first and then every queued
one that still fits, so small commands (a read's barrier) ride the next batch
instead of waiting behind megabytes. Writes (put, delete, txn) queued but not
yet proposed may hold at most ``max_queued_bytes``; a write that does not fit
waits its turn, and if none comes within ``admission_wait`` seconds it is
refused, unproposed, with RESOURCE_EXHAUSTED "etcdserver: too many requests"
and a ``retry_after`` estimate. Other commands (barriers, lease and member
commands) are small and never held back. Big entries are what make
pysyncobj's tick thread late with heartbeats: it pickles, compresses,
encrypts and journals each entry in one go, for every follower.

One file because group commit is one idea: queueing, the batch's
proposer/sequence/floor, retrying an ambiguous batch and handing each caller
its result depend on each other's invariants.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from .errors import TIMEOUT, Code, StoreError

log = structlog.get_logger("store.batcher")

# pysyncobj's FAIL_REASON.SUCCESS; other values mean "not applied as far as we know".
SUCCESS = 0
MIB = 1024 * 1024
HELD_BACK = frozenset({"put", "delete", "txn"})  # commands that carry client payloads
TOO_MANY_REQUESTS = "etcdserver: too many requests"
MAX_RESEND_DELAY = 8.0

Submit = Callable[[tuple[Any, ...], Callable[[Any, Any], None]], None]


@dataclass
class _Inflight:
    seq: int
    batch: tuple[Any, ...]
    futures: list[asyncio.Future[Any]]
    sent_at: float
    proposed_at: float
    attempts: int = 1
    retry_handle: asyncio.TimerHandle | None = field(default=None, repr=False)


def _time_out(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(StoreError(Code.UNAVAILABLE, TIMEOUT))


def command_bytes(cmd: tuple[Any, ...]) -> int:
    """Roughly what a command weighs in a Raft entry: its byte and string fields."""
    return 16 + sum(len(x) for x in cmd if isinstance(x, bytes | bytearray | str))


@dataclass
class _Queued:
    cmd: tuple[Any, ...]
    fut: asyncio.Future[Any]
    size: int
    held: bool  # counted in the queued bytes
    out: bool = False  # left the queue: proposed, or dropped because its caller gave up
    deferred: bool = False  # a large write that let waiting reads go first (once)


@dataclass
class _Waiter:
    size: int
    admitted: asyncio.Future[None]


class Batcher:
    """Owned by the asyncio loop thread; ``submit`` hands a batch to Raft."""

    def __init__(
        self,
        submit: Submit,
        *,
        max_batch: int = 4096,
        max_batch_bytes: int = 1 * MIB,
        max_queued_bytes: int = 8 * MIB,
        admission_wait: float = 1.0,
        max_inflight: int = 1,
        resend_after: float = 1.0,
        retry_backoff: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        proposer: str | None = None,
    ) -> None:
        self._submit = submit
        self._max_batch = max_batch
        self._max_batch_bytes = max_batch_bytes
        self._max_queued_bytes = max_queued_bytes
        self._admission_wait = admission_wait
        self._max_inflight = max_inflight
        self._resend_after = resend_after
        self._retry_backoff = retry_backoff
        self._clock = clock
        self.proposer = proposer or uuid.uuid4().hex
        self._queue: list[_Queued] = []
        self.queued_bytes = 0  # of the held-back commands in _queue
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._inflight: dict[int, _Inflight] = {}
        self._seq = 0
        self._kick_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # counters for metrics and the benchmark's batching factor
        self.batches_proposed = 0
        self.commands_proposed = 0
        self.resends = 0
        self.proposed_by_op: dict[str, int] = {}
        self.refused = 0  # writes refused because the queue stayed full
        self.batch_seconds = 0.05  # moving average of proposed -> applied, for retry_after
        self.on_applied: Callable[[float], None] | None = None  # seconds since proposed

    async def propose(self, cmd: tuple[Any, ...], timeout: float) -> Any:
        """Propose one command; return its result once applied on this node.

        Raises StoreError(UNAVAILABLE, "etcdserver: request timed out") if it was
        not applied within ``timeout`` seconds; its outcome is then unknown.
        Raises StoreError(RESOURCE_EXHAUSTED, "etcdserver: too many requests")
        with ``retry_after`` if a write found the queue full for ``admission_wait``
        seconds; it was not proposed.
        """
        loop = asyncio.get_running_loop()
        self._loop = loop
        started = loop.time()
        size = command_bytes(cmd)
        held = cmd[0] in HELD_BACK
        if held and not self._fits(size):
            await self._admission(size, min(timeout, self._admission_wait))
        elif held:
            self.queued_bytes += size
        fut: asyncio.Future[Any] = loop.create_future()
        queued = _Queued(cmd, fut, size, held)
        self._queue.append(queued)
        if not self._kick_scheduled:
            self._kick_scheduled = True
            loop.call_soon(self._kick)
        timer = loop.call_later(max(0.0, timeout - (loop.time() - started)), _time_out, fut)
        try:
            return await fut
        finally:
            timer.cancel()
            if not queued.out:  # timed out or cancelled before it was proposed
                self._unqueue(queued)

    def _unqueue(self, queued: _Queued) -> None:
        queued.out = True
        with contextlib.suppress(ValueError):
            self._queue.remove(queued)
        if queued.held:
            self.queued_bytes -= queued.size
            self._admit_waiters()

    def _fits(self, size: int) -> bool:
        """Whether a write of size may join the queue now (nobody waits before it)."""
        if self._waiters:
            return False
        return self.queued_bytes == 0 or self.queued_bytes + size <= self._max_queued_bytes

    async def _admission(self, size: int, wait: float) -> None:
        """Wait, first come first served, until a write of size fits in the queue.

        Returns with its bytes reserved in ``queued_bytes``; raises the
        RESOURCE_EXHAUSTED refusal when ``wait`` passes first.
        """
        loop = asyncio.get_running_loop()
        waiter = _Waiter(size, loop.create_future())
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.admitted), wait)
            return
        except TimeoutError:
            self._withdraw(waiter)
        except asyncio.CancelledError:
            self._withdraw(waiter)
            raise
        self.refused += 1
        retry = self.drain_seconds()
        raise StoreError(
            Code.RESOURCE_EXHAUSTED,
            f"{TOO_MANY_REQUESTS}: {self.queued_bytes / MIB:.1f} MiB of writes queued on "
            f"this member; retry after {retry:.2f} s",
            retry_after=retry,
        )

    def _withdraw(self, waiter: _Waiter) -> None:
        """A waiter gives up: drop it, or give back its reservation if it got one meanwhile."""
        if waiter.admitted.done() and not waiter.admitted.cancelled():
            self.queued_bytes -= waiter.size
        else:
            waiter.admitted.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
        self._admit_waiters()

    def _admit_waiters(self) -> None:
        """Let waiting writes into the queue, oldest first, while they fit."""
        while self._waiters:
            head = self._waiters[0]
            if self.queued_bytes and self.queued_bytes + head.size > self._max_queued_bytes:
                return
            self._waiters.popleft()
            if not head.admitted.done():
                head.admitted.set_result(None)
                self.queued_bytes += head.size

    def drain_seconds(self) -> float:
        """A guess at how long until the queued writes have been proposed and applied."""
        batches = 1 + self.queued_bytes // max(self._max_batch_bytes, 1)
        return min(5.0, max(0.05, batches * self.batch_seconds))

    @property
    def pending(self) -> int:
        """Commands queued or in flight (for metrics; safe from another thread)."""
        inflight = list(self._inflight.values())  # one C-level copy, no iteration race
        return len(self._queue) + len(self._waiters) + sum(len(e.futures) for e in inflight)

    @property
    def floor(self) -> int:
        return min(self._inflight, default=self._seq + 1)

    def _kick(self) -> None:
        self._kick_scheduled = False
        while self._queue and len(self._inflight) < self._max_inflight:
            take = self._take_batch()
            if not take:
                continue
            self._seq += 1
            seq = self._seq
            batch = (
                self.proposer,
                seq,
                self.floor if self._inflight else seq,
                [q.cmd for q in take],
            )
            now = self._clock()
            entry = _Inflight(seq, batch, [q.fut for q in take], now, now)
            self._inflight[seq] = entry
            self.batches_proposed += 1
            self.commands_proposed += len(take)
            by_op = self.proposed_by_op
            for cmd in batch[3]:
                by_op[cmd[0]] = by_op.get(cmd[0], 0) + 1
            self._send(entry)
        self._admit_waiters()

    def _take_batch(self) -> list[_Queued]:
        """The next batch; what is not taken stays queued in order.

        Every queued command that is not a write (barriers of linearizable reads,
        lease and member commands: a few bytes each) goes now, then writes,
        oldest first, while they fit in ``max_batch_bytes``. A write larger than
        that goes in a batch with no other write; if reads are waiting it lets
        them go first, once, so that a read waits behind at most one large
        entry. At most ``max_batch`` commands.
        """
        for q in self._queue:
            if q.fut.done():  # its caller gave up before it was proposed
                self._leave(q)
        live = [q for q in self._queue if not q.out]
        reads_waiting = any(not q.held for q in live)
        take: list[_Queued] = []
        rest: list[_Queued] = []
        total = 0
        for q in live:
            fits = total + q.size <= self._max_batch_bytes
            alone = total == 0 and (q.deferred or not reads_waiting)
            if len(take) < self._max_batch and (not q.held or fits or alone):
                take.append(q)
                self._leave(q)
                total += q.size if q.held else 0
            else:
                q.deferred = q.deferred or total == 0
                rest.append(q)
        self._queue = rest
        return take

    def _leave(self, q: _Queued) -> None:
        q.out = True
        if q.held:
            self.queued_bytes -= q.size

    def _send(self, entry: _Inflight) -> None:
        loop = self._loop
        assert loop is not None
        seq, attempt = entry.seq, entry.attempts

        def callback(result: Any, error: Any) -> None:  # runs in the Raft tick thread
            with contextlib.suppress(RuntimeError):  # loop closed during shutdown
                loop.call_soon_threadsafe(self._on_result, seq, attempt, result, error)

        self._submit(entry.batch, callback)

    def _on_result(self, seq: int, attempt: int, result: Any, error: Any) -> None:
        entry = self._inflight.get(seq)
        if entry is None:
            return  # answered already (an earlier or later copy won)
        if error == SUCCESS:
            del self._inflight[seq]
            if entry.retry_handle is not None:
                entry.retry_handle.cancel()
            for fut, res in zip(entry.futures, result, strict=True):
                if not fut.done():
                    fut.set_result(res)
            took = self._clock() - entry.proposed_at
            self.batch_seconds = 0.8 * self.batch_seconds + 0.2 * took
            if self.on_applied is not None:
                self.on_applied(took)
            self._schedule_kick()
            return
        if attempt != entry.attempts or entry.retry_handle is not None:
            return  # a stale failure of a copy already resent
        if self._abandon_if_unwanted(entry):
            return
        loop = self._loop
        assert loop is not None
        entry.retry_handle = loop.call_later(self._retry_backoff, self._resend, seq)

    def _resend(self, seq: int) -> None:
        entry = self._inflight.get(seq)
        if entry is None:
            return
        entry.retry_handle = None
        if self._abandon_if_unwanted(entry):
            return
        entry.attempts += 1
        entry.sent_at = self._clock()
        self.resends += 1
        self._send(entry)

    def _abandon_if_unwanted(self, entry: _Inflight) -> bool:
        if all(f.done() for f in entry.futures):
            del self._inflight[entry.seq]
            self._schedule_kick()
            return True
        return False

    def check_stuck(self) -> None:
        """Resend batches with no answer for ``resend_delay``; call periodically."""
        now = self._clock()
        for entry in list(self._inflight.values()):
            if self._abandon_if_unwanted(entry):
                continue
            if entry.retry_handle is None and now - entry.sent_at > self.resend_delay(entry):
                self._resend(entry.seq)

    def resend_delay(self, entry: _Inflight) -> float:
        """How long an unanswered batch waits before it is proposed again.

        ``resend_after``, or four times the recent proposed-to-applied time if
        that is longer, doubled for each copy already sent (at most 8 s): when
        Raft is merely slow, a copy adds a whole entry's load to what is already
        too much, and under a flood of large writes such copies fed elections.
        """
        base = max(self._resend_after, 4 * self.batch_seconds)
        return min(MAX_RESEND_DELAY, base * 2 ** (entry.attempts - 1))

    def _schedule_kick(self) -> None:
        if self._queue and not self._kick_scheduled and self._loop is not None:
            self._kick_scheduled = True
            self._loop.call_soon(self._kick)

    def fail_all(self, error: StoreError) -> None:
        """Fail every waiting caller (shutdown)."""
        for waiter in self._waiters:
            if not waiter.admitted.done():
                waiter.admitted.set_exception(error)
        self._waiters.clear()
        for q in self._queue:
            q.out = True
            if not q.fut.done():
                q.fut.set_exception(error)
        self._queue.clear()
        self.queued_bytes = 0
        for entry in self._inflight.values():
            for fut in entry.futures:
                if not fut.done():
                    fut.set_exception(error)
        self._inflight.clear()
