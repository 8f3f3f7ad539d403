"""A rate-limited, deduplicating work queue of string keys (client-go's workqueue).

Guarantees:

* a key is queued at most once: adding a key that is already waiting is a no-op;
* a key is handed to at most one worker at a time: a key added while it is
  being processed is queued again when ``done(key)`` is called, never before;
* ``add_after`` delays a key (the earliest pending delay wins);
  ``add_rate_limited`` delays it by a per-key exponential backoff
  (``base_delay * 2**failures``, capped at ``max_delay``) until ``forget``;
* ``shutdown`` wakes every ``get`` with ``QueueShutDown``;
* ``adds`` counts keys actually queued (deduplicated adds are not counted) and
  ``retries`` counts ``add_rate_limited`` calls, for metrics read at scrape time.

Time comes from ``clock`` and waiting from ``sleep`` so unit tests can step
time; ``get_nowait`` serves tests that drive the queue without an event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class QueueShutDown(Exception):
    """The queue was shut down: workers should exit."""


class RateLimitedQueue:
    def __init__(
        self,
        *,
        base_delay: float = 0.005,
        max_delay: float = 60.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._clock = clock
        self._sleep = sleep
        self._ready: deque[str] = deque()
        self._queued: set[str] = set()
        self._processing: set[str] = set()
        self._dirty: set[str] = set()
        self._failures: dict[str, int] = {}
        self._delayed: list[tuple[float, int, str]] = []
        self._delayed_at: dict[str, float] = {}
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._shut = False
        self.adds = 0
        self.retries = 0

    # -- adding -------------------------------------------------------------------

    def add(self, key: str) -> None:
        """Queue key now (deduplicated; deferred until done() while it is processed)."""
        if self._shut or key in self._queued:
            return
        if key in self._processing:
            if key not in self._dirty:
                self.adds += 1
                self._dirty.add(key)
            return
        self.adds += 1
        self._queued.add(key)
        self._ready.append(key)
        self._wakeup.set()

    def add_after(self, key: str, delay: float) -> None:
        """Queue key after delay seconds; an earlier pending delay for it is kept."""
        if self._shut:
            return
        if delay <= 0:
            self.add(key)
            return
        at = self._clock() + delay
        current = self._delayed_at.get(key)
        if current is not None and current <= at:
            return
        self._delayed_at[key] = at
        heapq.heappush(self._delayed, (at, next(self._seq), key))
        self._wakeup.set()

    def add_rate_limited(self, key: str) -> None:
        """Queue key after its backoff; each call doubles the next one until forget(key)."""
        self.retries += 1
        self.add_after(key, self.backoff(key))
        self._failures[key] = self._failures.get(key, 0) + 1

    def backoff(self, key: str) -> float:
        """The delay the next add_rate_limited(key) will use."""
        n = self._failures.get(key, 0)
        return min(self.base_delay * (2.0 ** min(n, 64)), self.max_delay)

    def forget(self, key: str) -> None:
        """Reset key's backoff (after a successful reconcile)."""
        self._failures.pop(key, None)

    def num_requeues(self, key: str) -> int:
        return self._failures.get(key, 0)

    # -- taking -------------------------------------------------------------------

    def get_nowait(self) -> str | None:
        """A ready key (marked as processing), or None; promotes due delayed keys first."""
        if self._shut:
            raise QueueShutDown
        self._promote_due()
        if not self._ready:
            return None
        key = self._ready.popleft()
        self._queued.discard(key)
        self._processing.add(key)
        return key

    async def get(self) -> str:
        """Wait for a key; the caller must call done(key) when finished with it."""
        while True:
            self._wakeup.clear()
            key = self.get_nowait()
            if key is not None:
                return key
            wait = self._next_due_in()
            waiter = asyncio.ensure_future(self._wakeup.wait())
            sleeper = asyncio.ensure_future(self._sleep(wait)) if wait is not None else None
            try:
                await asyncio.wait(
                    [f for f in (waiter, sleeper) if f is not None],
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                for f in (waiter, sleeper):
                    if f is not None and not f.done():
                        f.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await f

    def done(self, key: str) -> None:
        """key is no longer processed; if it was added meanwhile it is queued again."""
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def shutdown(self) -> None:
        """Refuse new keys and wake every waiting get() with QueueShutDown."""
        self._shut = True
        self._wakeup.set()

    # -- introspection ------------------------------------------------------------

    def __len__(self) -> int:
        """Keys ready to be taken now (delayed keys not yet due are not counted)."""
        return len(self._ready)

    def __contains__(self, key: object) -> bool:
        return key in self._queued or key in self._delayed_at or key in self._dirty

    def delayed(self) -> dict[str, float]:
        """key -> seconds until it is due, for keys waiting on add_after."""
        now = self._clock()
        return {k: at - now for k, at in self._delayed_at.items()}

    # -- internals ----------------------------------------------------------------

    def _promote_due(self) -> None:
        now = self._clock()
        while self._delayed and self._delayed[0][0] <= now:
            at, _, key = heapq.heappop(self._delayed)
            if self._delayed_at.get(key) != at:
                continue  # superseded by an earlier add_after
            del self._delayed_at[key]
            self.add(key)

    def _next_due_in(self) -> float | None:
        while self._delayed:
            at, _, key = self._delayed[0]
            if self._delayed_at.get(key) == at:
                return max(at - self._clock(), 0.0)
            heapq.heappop(self._delayed)
        return None
