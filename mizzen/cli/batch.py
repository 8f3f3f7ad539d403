"""One request per object, many in flight, results shown in input order.

`mizzen apply -f` and `mizzen delete` hand ``run_in_order`` their objects and
the work to do for one. At most ``window`` objects are in flight at a time
(started in input order); each result is shown as soon as every object before
it has its result, so the output reads exactly as if they had been done one
after the other:

* success: ``out(line)``, the line the work returned;
* a failure the store answered for this object (invalid, not found, conflict,
  permission denied, an ambiguous write, ...): ``err(failure(item, error))``,
  and the run goes on with the next objects;
* the store cannot be reached (``UnavailableError``, after the client's own
  retries within its timeout): no new object is started, the ones in flight
  finish, and the summary says how many objects were not done. Nothing is
  printed for those, so a store that is down gives one line, not one per
  object.

Two items with the same ``key`` (the same object twice in the input) never
overlap: the later one starts only after the earlier one finished, as it
would have one after the other.

Any other exception is a bug: no new object is started, and it is raised
once the objects in flight are done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from mizzen.client.errors import StoreClientError, UnavailableError

T = TypeVar("T")

WINDOW = 64
"""Objects in flight by default. A one-member store commits ~1,000 small writes/s
on two CPUs; 64 keeps it busy without approaching the store's per-identity rate
limit (2,000 requests/s, burst 4,000: an apply is at most a Get and a write per
object, and the store answers fewer than 2,000 of them a second)."""


@dataclass(frozen=True)
class Summary:
    total: int
    # Objects whose failure was reported (with err).
    failed: int
    # Objects not done because the store could not be reached (never started,
    # or failed with UnavailableError); 0 unless stopped is set.
    not_done: int
    # The error that stopped the run: the store could not be reached.
    stopped: UnavailableError | None

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.stopped is None


async def run_in_order(
    items: Sequence[T],
    work: Callable[[T], Awaitable[str]],
    *,
    key: Callable[[T], Hashable],
    failure: Callable[[T, StoreClientError], str],
    out: Callable[[str], None],
    err: Callable[[str], None],
    window: int = WINDOW,
) -> Summary:
    """Do work(item) for every item, at most ``window`` at a time (see the module doc)."""
    if window < 1:
        raise ValueError(f"window must be at least 1, not {window}")
    total = len(items)
    # (True, stdout line) | (False, stderr line, "" for nothing) once done
    results: list[tuple[bool, str] | None] = [None] * total
    done = [asyncio.Event() for _ in range(total)]
    earlier: list[int | None] = []
    last_of: dict[Hashable, int] = {}
    for i, item in enumerate(items):
        k = key(item)
        earlier.append(last_of.get(k))
        last_of[k] = i

    started = 0
    shown = 0
    failed = 0
    unreachable = 0
    stopped: UnavailableError | None = None
    crashed: Exception | None = None

    def show() -> None:
        nonlocal shown
        while shown < total:
            result = results[shown]
            if result is None:
                return
            ok, line = result
            if ok:
                out(line)
            elif line:
                err(line)
            shown += 1

    async def one(i: int) -> None:
        nonlocal failed, unreachable, stopped, crashed
        item = items[i]
        try:
            before = earlier[i]
            if before is not None:
                await done[before].wait()
            results[i] = (True, await work(item))
        except UnavailableError as exc:
            unreachable += 1
            stopped = stopped or exc
            results[i] = (False, "")
        except StoreClientError as exc:
            failed += 1
            results[i] = (False, failure(item, exc))
        except Exception as exc:
            crashed = crashed or exc
            results[i] = (False, "")
        finally:
            done[i].set()
        show()

    async def worker() -> None:
        nonlocal started
        while started < total and stopped is None and crashed is None:
            i = started
            started += 1
            await one(i)

    await asyncio.gather(*(worker() for _ in range(min(window, total))))
    if crashed is not None:
        raise crashed
    not_done = unreachable + (total - started) if stopped is not None else 0
    return Summary(total, failed, not_done, stopped)
