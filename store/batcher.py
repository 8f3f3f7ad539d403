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
"""

from __future__ import annotations

import asyncio
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


class Batcher:
    """Owned by the asyncio loop thread; ``submit`` hands a batch to Raft."""

    def __init__(
        self,
        submit: Submit,
        *,
        max_batch: int = 4096,
        max_inflight: int = 1,
        resend_after: float = 1.0,
        retry_backoff: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        proposer: str | None = None,
    ) -> None:
        self._submit = submit
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._resend_after = resend_after
        self._retry_backoff = retry_backoff
        self._clock = clock
        self.proposer = proposer or uuid.uuid4().hex
        self._queue: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._inflight: dict[int, _Inflight] = {}
        self._seq = 0
        self._kick_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # counters for metrics and the benchmark's batching factor
        self.batches_proposed = 0
        self.commands_proposed = 0
        self.resends = 0
        self.proposed_by_op: dict[str, int] = {}
        self.on_applied: Callable[[float], None] | None = None  # seconds since proposed

    async def propose(self, cmd: tuple[Any, ...], timeout: float) -> Any:
        """Propose one command; return its result once applied on this node.

        Raises StoreError(UNAVAILABLE, "etcdserver: request timed out") if it was
        not applied within ``timeout`` seconds; its outcome is then unknown.
        """
        loop = asyncio.get_running_loop()
        self._loop = loop
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append((cmd, fut))
        if not self._kick_scheduled:
            self._kick_scheduled = True
            loop.call_soon(self._kick)
        timer = loop.call_later(timeout, _time_out, fut)
        try:
            return await fut
        finally:
            timer.cancel()

    @property
    def pending(self) -> int:
        """Commands queued or in flight (for metrics; safe from another thread)."""
        inflight = list(self._inflight.values())  # one C-level copy, no iteration race
        return len(self._queue) + sum(len(e.futures) for e in inflight)

    @property
    def floor(self) -> int:
        return min(self._inflight, default=self._seq + 1)

    def _kick(self) -> None:
        self._kick_scheduled = False
        while self._queue and len(self._inflight) < self._max_inflight:
            take = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            take = [(c, f) for c, f in take if not f.done()]
            if not take:
                continue
            self._seq += 1
            seq = self._seq
            batch = (
                self.proposer,
                seq,
                self.floor if self._inflight else seq,
                [c for c, _ in take],
            )
            now = self._clock()
            entry = _Inflight(seq, batch, [f for _, f in take], now, now)
            self._inflight[seq] = entry
            self.batches_proposed += 1
            self.commands_proposed += len(take)
            by_op = self.proposed_by_op
            for cmd in batch[3]:
                by_op[cmd[0]] = by_op.get(cmd[0], 0) + 1
            self._send(entry)

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
            if self.on_applied is not None:
                self.on_applied(self._clock() - entry.proposed_at)
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
        """Resend batches with no answer for ``resend_after``; call periodically."""
        now = self._clock()
        for entry in list(self._inflight.values()):
            if self._abandon_if_unwanted(entry):
                continue
            if entry.retry_handle is None and now - entry.sent_at > self._resend_after:
                self._resend(entry.seq)

    def _schedule_kick(self) -> None:
        if self._queue and not self._kick_scheduled and self._loop is not None:
            self._kick_scheduled = True
            self._loop.call_soon(self._kick)

    def fail_all(self, error: StoreError) -> None:
        """Fail every waiting caller (shutdown)."""
        for _, fut in self._queue:
            if not fut.done():
                fut.set_exception(error)
        self._queue.clear()
        for entry in self._inflight.values():
            for fut in entry.futures:
                if not fut.done():
                    fut.set_exception(error)
        self._inflight.clear()
