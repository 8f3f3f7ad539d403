"""Expectations: the pod writes a controller has made that its cache has not shown yet.

Informer caches lag behind the controller's own writes. Deciding from a cache
that does not show the pods just created (or still shows the pods just
deleted) would create duplicates or delete twice, so a workload controller
records what it wrote here and does not scale a key again while
``satisfied(key, pods)`` is False. This is Kubernetes'
UIDTrackingControllerExpectations, but level-based: creations and deletions
are tracked by pod uid and checked against the cache's current pods of the
key, so no event can be counted twice or missed:

* a creation is met once its uid is in the cache (or its deletion was
  observed: a pod created and deleted before the cache listed it);
* a deletion is met once the uid is gone from the cache or marked
  terminating (``deletion_timestamp``).

An entry older than ``ttl`` counts as met even if it is not: an expected
event may never come (the pod was created and deleted in between before its
uid was recorded), and then the cache, being the truth again, wins. The TTL
runs from the latest ``expect_*`` of the key. Time comes from ``clock``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_TTL = 60.0


@dataclass
class _Pending:
    since: float
    creates: set[str] = field(default_factory=set)
    deletes: set[str] = field(default_factory=set)


class Expectations:
    """Pod creations and deletions per controller key, by uid; see the module doc."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, ttl: float = DEFAULT_TTL
    ) -> None:
        self.clock = clock
        self.ttl = ttl
        self._pending: dict[str, _Pending] = {}

    def _entry(self, key: str) -> _Pending:
        now = self.clock()
        entry = self._pending.get(key)
        if entry is None:
            entry = self._pending[key] = _Pending(now)
        entry.since = now
        return entry

    def expect_creations(self, key: str, uids: Iterable[str]) -> None:
        """Pods of key that were created (the create call returned them)."""
        self._entry(key).creates.update(uids)

    def expect_create(self, key: str, uid: str) -> None:
        self.expect_creations(key, (uid,))

    def expect_deletions(self, key: str, uids: Iterable[str]) -> None:
        """Pods of key about to be deleted (record before sending the delete)."""
        self._entry(key).deletes.update(uids)

    def expect_delete(self, key: str, uid: str) -> None:
        self.expect_deletions(key, (uid,))

    def lower(self, key: str, uid: str) -> None:
        """Stop expecting uid: its write failed, or its pod's deletion was observed."""
        entry = self._pending.get(key)
        if entry is not None:
            entry.creates.discard(uid)
            entry.deletes.discard(uid)

    def observe_deleted(self, key: str, uid: str) -> None:
        """An informer delete handler saw pod uid of key go: nothing more to expect of it."""
        self.lower(key, uid)

    def pending(self, key: str) -> tuple[int, int]:
        """(creations, deletions) of key not met at the last ``satisfied`` check."""
        entry = self._pending.get(key)
        return (0, 0) if entry is None else (len(entry.creates), len(entry.deletes))

    def forget(self, key: str) -> None:
        self._pending.pop(key, None)

    def satisfied(self, key: str, pods: Iterable[Any]) -> bool:
        """Whether pods (the cache's view of key's pods) reflect every expected write.

        Met expectations are dropped; a key that is satisfied (or expired) has
        no entry left.
        """
        entry = self._pending.get(key)
        if entry is None:
            return True
        present = {p.metadata.uid: p for p in pods}
        entry.creates = {uid for uid in entry.creates if uid not in present}
        entry.deletes = {
            uid
            for uid in entry.deletes
            if uid in present and not present[uid].metadata.HasField("deletion_timestamp")
        }
        if (entry.creates or entry.deletes) and self.clock() - entry.since < self.ttl:
            return False
        self.forget(key)
        return True

    def recheck_in(self, key: str) -> float:
        """Seconds until key's expectations expire (``ttl`` when it has none)."""
        entry = self._pending.get(key)
        return self.ttl if entry is None else max(0.0, entry.since + self.ttl - self.clock())
