"""RateLimitedQueue: dedup, one worker per key, delays and backoff on a stepped clock."""

from __future__ import annotations

import asyncio

import pytest

from controllers.workqueue import QueueShutDown, RateLimitedQueue


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def make() -> tuple[RateLimitedQueue, Clock]:
    clock = Clock()
    return RateLimitedQueue(clock=clock, sleep=clock.sleep), clock


def drain(q: RateLimitedQueue) -> list[str]:
    out = []
    while (key := q.get_nowait()) is not None:
        out.append(key)
    return out


def test_a_queued_key_is_not_duplicated_and_order_is_fifo() -> None:
    q, _ = make()
    for key in ["a", "b", "a", "c", "b"]:
        q.add(key)
    assert len(q) == 3
    assert drain(q) == ["a", "b", "c"]


def test_a_key_added_while_processing_waits_for_done() -> None:
    q, _ = make()
    q.add("a")
    assert q.get_nowait() == "a"
    q.add("a")
    q.add("a")
    assert q.get_nowait() is None  # never handed to a second worker
    assert "a" in q
    q.done("a")
    assert q.get_nowait() == "a"
    q.done("a")
    assert q.get_nowait() is None


def test_done_without_readd_does_not_requeue() -> None:
    q, _ = make()
    q.add("a")
    assert q.get_nowait() == "a"
    q.done("a")
    assert len(q) == 0 and "a" not in q


def test_add_after_becomes_ready_when_due_and_earliest_delay_wins() -> None:
    q, clock = make()
    q.add_after("a", 10)
    q.add_after("a", 3)
    q.add_after("a", 20)
    assert q.get_nowait() is None
    assert q.delayed() == {"a": 3}
    clock.now += 2.9
    assert q.get_nowait() is None
    clock.now += 0.1
    assert q.get_nowait() == "a"
    q.done("a")
    clock.now += 100
    assert q.get_nowait() is None  # the superseded 10 s and 20 s entries do not fire again


def test_add_after_non_positive_is_add() -> None:
    q, _ = make()
    q.add_after("a", 0)
    assert q.get_nowait() == "a"


def test_rate_limited_backoff_doubles_caps_and_forget_resets() -> None:
    q = RateLimitedQueue(base_delay=0.005, max_delay=0.04, clock=lambda: 0.0)
    delays = []
    for _ in range(6):
        delays.append(q.backoff("k"))
        q.add_rate_limited("k")
    assert delays == [0.005, 0.01, 0.02, 0.04, 0.04, 0.04]
    assert q.num_requeues("k") == 6
    assert q.num_requeues("other") == 0
    q.forget("k")
    assert q.num_requeues("k") == 0
    assert q.backoff("k") == 0.005


def test_rate_limited_key_is_delayed_by_its_backoff() -> None:
    q, clock = make()
    q.add_rate_limited("k")
    q.add_rate_limited("k")  # second failure: still the first (earlier) due time
    assert q.get_nowait() is None
    clock.now += 0.005
    assert q.get_nowait() == "k"


async def test_get_waits_for_an_add() -> None:
    q, _ = make()
    task = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    assert not task.done()
    q.add("x")
    assert await task == "x"


async def test_get_returns_a_delayed_key_once_due() -> None:
    q, clock = make()
    q.add_after("late", 5)
    start = clock.now
    assert await asyncio.wait_for(q.get(), 5) == "late"
    assert clock.now - start >= 5


async def test_two_workers_never_get_the_same_key() -> None:
    q, _ = make()
    q.add("a")
    first = await q.get()
    second = asyncio.create_task(q.get())
    q.add("a")
    await asyncio.sleep(0)
    assert not second.done()
    q.add("b")
    assert await second == "b"
    q.done(first)
    assert await q.get() == "a"


async def test_shutdown_wakes_waiting_workers_and_refuses_keys() -> None:
    q, _ = make()
    waiters = [asyncio.create_task(q.get()) for _ in range(3)]
    await asyncio.sleep(0)
    q.shutdown()
    for waiter in waiters:
        with pytest.raises(QueueShutDown):
            await waiter
    q.add("a")
    assert len(q) == 0
    with pytest.raises(QueueShutDown):
        q.get_nowait()
