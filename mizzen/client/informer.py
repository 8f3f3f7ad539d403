"""Informer: a local cache of one kind, kept current by list-then-watch.

    informer = Informer(client, "pods", field_selector="spec.nodeName=n1")
    informer.add_indexer("node", lambda p: [p.spec.node_name])
    informer.on_add(enqueue)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(informer.run())
        await informer.has_synced.wait()
        ...

``run`` lists the kind, replaces the cache with the result, then watches from
the list's resource_version. What is guaranteed:

* handlers are called in the informer's task, one at a time, in store order;
  a handler that raises is logged and does not stop the informer;
* after a relist the handlers have seen the difference between the old cache
  and the store (adds, updates, deletes), so a consumer that only reacts to
  handler calls converges to the store (level-triggered) even when events were
  lost to compaction or an outage;
* a compacted resource version (``CompactedError``, OUT_OF_RANGE "too old
  resource version") relists at once; a watch that could not be resumed
  (``UnavailableError``) or a failed list relists after a capped exponential
  backoff, reset once a watch delivers an event;
* cancelling ``run`` (by its owner) is the only way it ends.

Cached objects are the messages the client returned: treat them as read-only.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from mizzen.api.kinds import KindInfo
from mizzen.client.errors import CompactedError, StoreClientError
from mizzen.client.objects import ObjectsClient

log = structlog.get_logger("mizzen.client")

Key = tuple[str, str]
"""(namespace, name); namespace is "" for cluster-scoped kinds."""

AddHandler = Callable[[Any], None]
UpdateHandler = Callable[[Any, Any], None]
DeleteHandler = Callable[[Any], None]
IndexFn = Callable[[Any], Iterable[str]]
Sleep = Callable[[float], Awaitable[None]]


def cache_key(obj: Any) -> Key:
    return (obj.metadata.namespace, obj.metadata.name)


def _version(obj: Any) -> int:
    rv = obj.metadata.resource_version
    return int(rv) if rv.isdigit() else 0


@dataclass(frozen=True)
class Delta:
    """One difference between a cache and the store: old is None for add, new for delete."""

    type: Literal["add", "update", "delete"]
    old: Any
    new: Any


def relist_diff(cache: Mapping[Key, Any], items: Iterable[Any]) -> list[Delta]:
    """What turns cache into items: adds and updates in items' order, then deletes.

    An object whose resource_version is unchanged is not an update. Pure: the
    cache is not modified.
    """
    deltas: list[Delta] = []
    seen: set[Key] = set()
    for obj in items:
        key = cache_key(obj)
        seen.add(key)
        old = cache.get(key)
        if old is None:
            deltas.append(Delta("add", None, obj))
        elif old.metadata.resource_version != obj.metadata.resource_version:
            deltas.append(Delta("update", old, obj))
    for key, old in cache.items():
        if key not in seen:
            deltas.append(Delta("delete", old, None))
    return deltas


class Backoff:
    """Capped exponential delays: initial, 2x, 4x, ... up to cap; reset() starts over."""

    def __init__(self, initial: float = 0.1, cap: float = 10.0) -> None:
        self.initial = initial
        self.cap = cap
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.initial


class Informer:
    """A cache of one kind's objects (matching the selectors) with event handlers."""

    def __init__(
        self,
        client: ObjectsClient,
        kind: str | KindInfo,
        *,
        namespace: str = "",
        label_selector: str = "",
        field_selector: str = "",
        resync_period: float | None = None,
        backoff: Backoff | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._client = client
        self.kind = kind
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.resync_period = resync_period
        self._backoff = backoff or Backoff()
        self._sleep = sleep
        self._cache: dict[Key, Any] = {}
        self._add: list[AddHandler] = []
        self._update: list[UpdateHandler] = []
        self._delete: list[DeleteHandler] = []
        self._index_fns: dict[str, IndexFn] = {}
        self._indexes: dict[str, dict[str, set[Key]]] = {}
        self._started = False
        self.has_synced = asyncio.Event()
        self.resource_version = ""
        self.relists = 0
        self._kind_name = kind.kind if isinstance(kind, KindInfo) else kind

    # -- registration (before run) ---------------------------------------------------

    def on_add(self, fn: AddHandler) -> None:
        self._check_not_started("on_add")
        self._add.append(fn)

    def on_update(self, fn: UpdateHandler) -> None:
        self._check_not_started("on_update")
        self._update.append(fn)

    def on_delete(self, fn: DeleteHandler) -> None:
        self._check_not_started("on_delete")
        self._delete.append(fn)

    def add_indexer(self, name: str, fn: IndexFn) -> None:
        """fn(obj) -> the index values obj is found under by ``by_index(name, value)``."""
        self._check_not_started("add_indexer")
        if name in self._index_fns:
            raise ValueError(f"indexer {name!r} already registered")
        self._index_fns[name] = fn
        self._indexes[name] = {}

    def _check_not_started(self, what: str) -> None:
        if self._started:
            raise RuntimeError(f"{what} must be called before run()")

    # -- reads -----------------------------------------------------------------------

    def get(self, namespace: str, name: str) -> Any | None:
        return self._cache.get((namespace, name))

    def list(self) -> list[Any]:
        return list(self._cache.values())

    def keys(self) -> builtins.list[Key]:
        return list(self._cache)

    def by_index(self, name: str, value: str) -> builtins.list[Any]:
        keys = self._indexes[name].get(value, ())
        return [self._cache[k] for k in sorted(keys)]

    # -- the loop --------------------------------------------------------------------

    async def run(self) -> None:
        """List and watch until cancelled."""
        if self._started:
            raise RuntimeError("Informer.run() called twice")
        self._started = True
        async with asyncio.TaskGroup() as tg:
            if self.resync_period is not None and self.resync_period > 0:
                tg.create_task(self._resync_loop(self.resync_period))
            tg.create_task(self._list_watch_loop())

    async def _list_watch_loop(self) -> None:
        while True:
            try:
                result = await self._client.list(
                    self.kind,
                    self.namespace,
                    label_selector=self.label_selector,
                    field_selector=self.field_selector,
                )
            except StoreClientError as err:
                delay = self._backoff.next()
                log.warning(
                    "informer_list_failed", kind=self._kind_name, error=str(err), retry_in=delay
                )
                await self._sleep(delay)
                continue
            self.replace(result.items, result.resource_version)
            try:
                await self._watch(result.resource_version)
            except CompactedError as err:
                log.info(
                    "informer_relist", kind=self._kind_name, reason="compacted", error=str(err)
                )
                continue
            except StoreClientError as err:
                delay = self._backoff.next()
                log.warning(
                    "informer_watch_failed", kind=self._kind_name, error=str(err), retry_in=delay
                )
                await self._sleep(delay)
                continue
            log.info("informer_relist", kind=self._kind_name, reason="stream ended")

    async def _watch(self, resource_version: str) -> None:
        events = self._client.watch(
            self.kind,
            self.namespace,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
            resource_version=resource_version,
            allow_bookmarks=True,
        )
        async for event_type, obj in events:
            self._backoff.reset()
            self.apply_event(event_type, obj)

    async def _resync_loop(self, period: float) -> None:
        while True:
            await self._sleep(period)
            for obj in list(self._cache.values()):
                self._emit_update(obj, obj)

    # -- cache changes (also driven directly by unit tests) ----------------------------

    def replace(self, items: Iterable[Any], resource_version: str) -> builtins.list[Delta]:
        """Make the cache equal to items (a full list) and emit the differences."""
        deltas = relist_diff(self._cache, items)
        for delta in deltas:
            if delta.type == "delete":
                self._remove(cache_key(delta.old))
                self._emit_delete(delta.old)
            else:
                self._store(delta.new)
                if delta.type == "add":
                    self._emit_add(delta.new)
                else:
                    self._emit_update(delta.old, delta.new)
        self.resource_version = resource_version
        if self.has_synced.is_set():
            self.relists += 1
        self.has_synced.set()
        return deltas

    def apply_event(self, event_type: str, obj: Any) -> None:
        """One watch event: ADDED / MODIFIED upsert, DELETED removes, BOOKMARK advances."""
        if obj.metadata.resource_version:
            self.resource_version = obj.metadata.resource_version
        if event_type == "BOOKMARK":
            return
        key = cache_key(obj)
        old = self._cache.get(key)
        if event_type == "DELETED":
            if old is not None:
                self._remove(key)
                self._emit_delete(obj)
            return
        if old is not None and _version(old) >= _version(obj):
            return  # already seen (the list was newer than this event)
        self._store(obj)
        if old is None:
            self._emit_add(obj)
        else:
            self._emit_update(old, obj)

    def _store(self, obj: Any) -> None:
        key = cache_key(obj)
        if key in self._cache:
            self._unindex(key)
        self._cache[key] = obj
        for name, fn in self._index_fns.items():
            index = self._indexes[name]
            for value in fn(obj):
                index.setdefault(value, set()).add(key)

    def _remove(self, key: Key) -> None:
        if key in self._cache:
            self._unindex(key)
            del self._cache[key]

    def _unindex(self, key: Key) -> None:
        old = self._cache[key]
        for name, fn in self._index_fns.items():
            index = self._indexes[name]
            for value in fn(old):
                keys = index.get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del index[value]

    # -- handlers ---------------------------------------------------------------------

    def _emit_add(self, obj: Any) -> None:
        for fn in self._add:
            self._call(fn, obj)

    def _emit_update(self, old: Any, new: Any) -> None:
        for fn in self._update:
            self._call(fn, old, new)

    def _emit_delete(self, obj: Any) -> None:
        for fn in self._delete:
            self._call(fn, obj)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("informer_handler_failed", kind=self._kind_name, handler=repr(fn))
