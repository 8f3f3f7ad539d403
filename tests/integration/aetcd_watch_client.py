"""aetcd watch scenarios, run in a child process by test_etcd_clients_watch.py.

A process of its own because aetcd registers its own copy of etcd's protos
(etcdserverpb, authpb, mvccpb) in protobuf's default descriptor pool, and
Mizzen's generated modules register the same symbols: the two cannot be
imported into one interpreter. This file imports only aetcd and the standard
library.

    python aetcd_watch_client.py SCENARIO HOST:PORT

exits 0 when the scenario's checks pass; every await is bounded by WAIT, so a
client that hangs fails with TimeoutError instead of blocking.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aetcd

WAIT = 10.0  # seconds for one client call or event (a hang guard, not a measurement)


async def bounded(pending: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(pending, WAIT)


async def next_event(events: AsyncIterator[Any]) -> Any:
    return await bounded(anext(events))


def fresh_prefix() -> bytes:
    return f"/aetcd/{uuid.uuid4().hex[:8]}/".encode()


async def compacted(client: aetcd.Client) -> None:
    """A watch from a compacted revision raises aetcd's compacted error."""
    key = fresh_prefix() + b"k"
    first = await bounded(client.put(key, b"1"))
    second = await bounded(client.put(key, b"2"))
    await bounded(client.put(key, b"3"))
    await bounded(client.compact(second.header.revision, physical=True))
    watch = await bounded(client.watch(key, start_revision=first.header.revision))
    try:
        await next_event(aiter(watch))
    except aetcd.RevisionCompactedError as err:
        assert err.compacted_revision == second.header.revision, err.compacted_revision
    else:
        raise AssertionError("no RevisionCompactedError")


async def put_delete_cancel(client: aetcd.Client) -> None:
    """Puts and a delete with prev_kv on a prefix watch, then cancel ends it."""
    p = fresh_prefix()
    watch = await bounded(client.watch(p, range_end=p[:-1] + b"0", prev_kv=True))
    events = aiter(watch)
    created = await bounded(client.put(p + b"a", b"1"))
    await bounded(client.put(p + b"a", b"2"))
    await bounded(client.delete(p + b"a"))
    got = [await next_event(events) for _ in range(3)]
    assert [e.kind for e in got] == ["PUT", "PUT", "DELETE"], got
    assert [e.kv.value for e in got] == [b"1", b"2", b""], got
    # a create has no previous value (aetcd shows the empty message as a KeyValue)
    assert got[0].prev_kv is None or got[0].prev_kv.key == b"", got[0]
    assert (got[1].prev_kv.value, got[2].prev_kv.value) == (b"1", b"2"), got
    revs = [e.kv.mod_revision for e in got]
    assert revs == [created.header.revision + i for i in range(3)], revs
    await bounded(watch.cancel())
    await bounded(client.put(p + b"a", b"after cancel"))
    try:
        extra = await next_event(events)
    except StopAsyncIteration:
        return
    raise AssertionError(f"an event after cancel: {extra}")


async def two_watches(client: aetcd.Client) -> None:
    """A delete-only watch and a second watch on the same stream."""
    p = fresh_prefix()
    deletes = await bounded(client.watch(p + b"a", kind=aetcd.rtypes.EventKind.DELETE))
    everything = await bounded(client.watch(p + b"a"))
    await bounded(client.put(p + b"a", b"1"))
    await bounded(client.delete(p + b"a"))
    only = await next_event(aiter(deletes))
    assert (only.kind, only.kv.key) == ("DELETE", p + b"a"), only
    both = aiter(everything)
    kinds = [(await next_event(both)).kind for _ in range(2)]
    assert kinds == ["PUT", "DELETE"], kinds
    await bounded(deletes.cancel())
    await bounded(everything.cancel())


SCENARIOS: dict[str, Callable[[aetcd.Client], Awaitable[None]]] = {
    "compacted": compacted,
    "put_delete_cancel": put_delete_cancel,
    "two_watches": two_watches,
}


async def main(scenario: str, endpoint: str) -> None:
    host, port = endpoint.rsplit(":", 1)
    client = aetcd.Client(host=host, port=int(port), timeout=int(WAIT))
    await bounded(client.connect())
    try:
        await SCENARIOS[scenario](client)
    finally:
        await bounded(client.close())


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
    print("ok")
