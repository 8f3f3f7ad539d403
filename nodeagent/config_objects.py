"""The ConfigMaps and Secrets this node's pods refer to, each followed once for the whole node.

``ConfigObjects.follow(kind, namespace, name)`` returns the object's
``Followed`` entry and counts one more user; ``release`` counts one less, and
the object stops being followed when nobody uses it. One task per followed
object, the contract with the store's node authorizer (exactly these two
calls, nothing on other objects):

* ``Objects.Get`` of the object: its content (or NOT_FOUND: it is missing);
* ``Objects.Watch`` of its kind in its namespace with field selector
  ``metadata.name=<name>``, from the resource version the Get returned, so no
  change in between is lost. When the object was missing, or that version was
  compacted away, the watch starts "now" and the object is read again at the
  watch's first bookmark (the store sends one within its progress interval):
  a creation between the Get and the watch's start is seen then, and every
  later change by the watch.

A failed call (store unreachable, permission denied) is retried with a capped
exponential backoff; the entry keeps the last content it had, and when it has
none, ``error`` says why (for the pod's ``ConfigError``). Subscribers are
called, in the loop, whenever the entry's content or existence changes.

Never logged: values. Log lines carry kind, namespace and name only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog

from mizzen.client.errors import CompactedError, NotFoundError, StoreClientError

log = structlog.get_logger(__name__)

Key = tuple[str, str, str]
"""(kind, namespace, name)"""

RETRY_INITIAL = 0.5
RETRY_CAP = 30.0


def _rv(obj: Any) -> int:
    rv = obj.metadata.resource_version if obj is not None else ""
    return int(rv) if rv.isdigit() else 0


def _content(obj: Any) -> Any:
    """What consumers care about: existence and data (not metadata)."""
    if obj is None:
        return None
    return (dict(obj.data), dict(getattr(obj, "binary_data", {})))


class Followed:
    """One followed object: its last known state and who wants to hear about changes."""

    def __init__(self, key: Key) -> None:
        self.key = key
        self.obj: Any = None
        # Set once the first Get has answered (found or NOT_FOUND) or failed.
        self.known = asyncio.Event()
        # Why the object cannot be read, when no content is known ("" otherwise).
        self.error = ""
        self._rv = 0
        self._subscribers: list[Callable[[], None]] = []
        self.users = 0
        self.task: asyncio.Task[None] | None = None

    @property
    def kind(self) -> str:
        return self.key[0]

    @property
    def name(self) -> str:
        return self.key[2]

    def subscribe(self, fn: Callable[[], None]) -> None:
        self._subscribers.append(fn)

    def unsubscribe(self, fn: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(fn)

    def set(self, obj: Any, rv: int = 0) -> bool:
        """Record obj (None: missing) seen at rv; notify when content or existence changed.

        An answer older than the one already recorded (rv below it) is ignored.
        """
        rv = rv or _rv(obj)
        if self.known.is_set() and rv and rv < self._rv:
            return False
        changed = not self.known.is_set() or bool(self.error) or _content(obj) != _content(self.obj)
        self.obj = obj
        self._rv = max(self._rv, rv)
        self.error = ""
        self.known.set()
        if changed:
            self._notify()
        return changed

    def fail(self, reason: str) -> None:
        """The object could not be read; an entry with no content yet reports reason."""
        if self.known.is_set() and not self.error:
            return  # keep the last content
        changed = self.error != reason
        self.error = reason
        self.known.set()
        if changed:
            self._notify()

    def _notify(self) -> None:
        for fn in list(self._subscribers):
            try:
                fn()
            except Exception:
                log.exception("config_subscriber_failed", kind=self.kind, name=self.name)


class ConfigObjects:
    def __init__(
        self,
        client: Any,
        *,
        retry_initial: float = RETRY_INITIAL,
        retry_cap: float = RETRY_CAP,
    ) -> None:
        self.client = client
        self.retry_initial = retry_initial
        self.retry_cap = retry_cap
        self.entries: dict[Key, Followed] = {}
        self.gets = 0
        self.watches = 0

    def follow(self, kind: str, namespace: str, name: str) -> Followed:
        key = (kind, namespace, name)
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = Followed(key)
            entry.task = asyncio.get_running_loop().create_task(
                self._follow(entry), name=f"follow-{kind}-{namespace}-{name}"
            )
            log.info("config_follow", kind=kind, namespace=namespace, name=name)
        entry.users += 1
        return entry

    def release(self, entry: Followed) -> None:
        entry.users -= 1
        if entry.users > 0 or self.entries.get(entry.key) is not entry:
            return
        del self.entries[entry.key]
        if entry.task is not None:
            entry.task.cancel()
        kind, namespace, name = entry.key
        log.info("config_unfollow", kind=kind, namespace=namespace, name=name)

    async def close(self) -> None:
        tasks = [e.task for e in self.entries.values() if e.task is not None]
        self.entries.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- one object --------------------------------------------------------------------

    async def _get(self, entry: Followed) -> str:
        """Read the object into entry; the resource version to watch from ("" when missing)."""
        kind, namespace, name = entry.key
        self.gets += 1
        try:
            obj = await self.client.get(kind, name, namespace)
        except NotFoundError:
            entry.set(None)
            return ""
        entry.set(obj)
        return str(obj.metadata.resource_version)

    async def _follow(self, entry: Followed) -> None:
        kind, namespace, name = entry.key
        delay = self.retry_initial
        from_now = False
        while True:
            try:
                rv = await self._get(entry)
                if from_now:
                    rv = ""
                from_now = False
                delay = self.retry_initial
                await self._watch(entry, rv)
            except CompactedError:
                from_now = True  # the object's version is older than the watch history
                continue
            except StoreClientError as err:
                entry.fail(f"cannot read {kind} {namespace}/{name}: {err}")
                log.warning(
                    "config_read_failed",
                    kind=kind,
                    namespace=namespace,
                    name=name,
                    error=str(err),
                    retry_in=delay,
                )
            except Exception:
                # a bug must not leave the pods waiting forever without a reason
                entry.fail(f"cannot read {kind} {namespace}/{name}: internal error in the agent")
                log.exception("config_follow_failed", kind=kind, namespace=namespace, name=name)
            # (a watch that ended by itself is read again after the initial delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_cap)

    async def _watch(self, entry: Followed, rv: str) -> None:
        kind, namespace, name = entry.key
        recheck = rv == ""
        self.watches += 1
        events = self.client.watch(
            kind,
            namespace,
            field_selector=f"metadata.name={name}",
            resource_version=rv,
            allow_bookmarks=True,
        )
        async for event_type, obj in events:
            if event_type == "BOOKMARK":
                if recheck:
                    recheck = False
                    await self._get(entry)
                continue
            if event_type == "DELETED":
                entry.set(None, _rv(obj))
            else:
                entry.set(obj)
