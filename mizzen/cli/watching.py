"""Watch-driven caches for commands that wait (`wait`, `apply --wait`): no polling.

    async with Watching(client) as w:
        w.watch("deployments", "default")
        w.watch("pods", "default")
        await w.start(deadline)              # every cache listed (synced), or TimeoutError
        while not done(w.get("deployments", "default", "web")):
            await w.changed(until=deadline)  # the next event of any cache, or the time

Each (kind, namespace, label selector) is one ``mizzen.client.informer.Informer``
(list, then watch from the list's revision; relists on compaction), all
running in one task group that ``__aexit__`` cancels. ``changed`` returns as
soon as any of them applied an event (events that arrived since the last call
count), so a caller re-evaluates at once after each change, and otherwise
sleeps until its own deadline (a grace period, the timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import TracebackType
from typing import Any

from mizzen.api import kinds
from mizzen.client.informer import Informer
from mizzen.client.objects import ObjectsClient

CacheKey = tuple[str, str, str]
"""(kind, namespace, label selector); kind as KindInfo.kind."""


class Watching:
    def __init__(self, client: ObjectsClient, *, clock: Any = time.monotonic) -> None:
        self._client = client
        self._clock = clock
        self._informers: dict[CacheKey, Informer] = {}
        self._event = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Watching:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def watch(self, kind: str, namespace: str, label_selector: str = "") -> None:
        """Cache kind's objects in namespace (matching label_selector); before start()."""
        info = kinds.lookup(kind)
        ns = namespace if info.namespaced else ""
        key = (info.kind, ns, label_selector)
        if key in self._informers:
            return
        if self._tasks:
            raise RuntimeError("watch() after start()")
        inf = Informer(self._client, info, namespace=ns, label_selector=label_selector)
        inf.on_add(self._notify)
        inf.on_update(lambda old, new: self._event.set())
        inf.on_delete(self._notify)
        self._informers[key] = inf

    def _notify(self, obj: Any) -> None:
        self._event.set()

    async def start(self, deadline: float | None) -> None:
        """Run every cache and wait until each has listed; TimeoutError at the deadline.

        One small List per cache first (a page of one object), so that a store
        that cannot be reached, or a kind the caller may not list, is the
        client's error at once (a StoreClientError) rather than an informer
        retrying until the deadline.
        """
        for inf in self._informers.values():
            await self._client.list(
                inf.kind, inf.namespace, label_selector=inf.label_selector, limit=1
            )
        for inf in self._informers.values():
            self._tasks.append(asyncio.create_task(inf.run()))
        waits = [inf.has_synced.wait() for inf in self._informers.values()]
        timeout = None if deadline is None else max(deadline - self._clock(), 0.0)
        async with asyncio.timeout(timeout):
            await asyncio.gather(*waits)
        for task in self._tasks:
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    def _informer(self, kind: str, namespace: str, label_selector: str) -> Informer:
        info = kinds.lookup(kind)
        ns = namespace if info.namespaced else ""
        return self._informers[(info.kind, ns, label_selector)]

    def get(self, kind: str, namespace: str, name: str, label_selector: str = "") -> Any | None:
        inf = self._informer(kind, namespace, label_selector)
        return inf.get(inf.namespace, name)

    def list(self, kind: str, namespace: str, label_selector: str = "") -> list[Any]:
        return self._informer(kind, namespace, label_selector).list()

    async def changed(self, until: float | None) -> bool:
        """Wait for an event of any cache (True) or until the clock reaches until (False)."""
        if not self._event.is_set():
            timeout = None if until is None else max(until - self._clock(), 0.0)
            try:
                async with asyncio.timeout(timeout):
                    await self._event.wait()
            except TimeoutError:
                return False
        self._event.clear()
        return True


__all__ = ["Watching"]
