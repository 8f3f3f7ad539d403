"""The garbage collector: owner references and delete propagation, for every kind.

Keys are ``"<Kind>:<namespace>/<name>"`` (``"<Kind>:<name>"`` when
cluster-scoped). Reconciling a key does what its object needs:

* **background** — a dependent whose owners (by uid) are all gone is
  deleted. Before deleting, each owner is looked up live (``client.get``):
  the cache may lag behind a just-created owner. The dependent is deleted
  with the policy its own finalizers ask for (Orphan, Foreground) or in the
  background, guarded by the resource_version read live, so a dependent that
  was adopted meanwhile survives. When only some owners are gone, the
  dangling references are removed instead;
* **foreground** — an owner being deleted with finalizer ``foregroundDeletion``
  has its dependents deleted (Foreground for those that have dependents
  themselves, so grandchildren go first); once no dependent with
  ``block_owner_deletion`` is left, the finalizer is removed and the store
  deletes the owner;
* **orphan** — an owner being deleted with finalizer ``orphan`` has its
  reference removed from every dependent, then the finalizer is removed.

Every write re-reads the object it changes, so a step interrupted halfway
(crash, lost leadership, conflict) is redone safely on the next reconcile.
Events are not collected (they have no owners; see ``controllers.event_ttl``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from controllers.base import (
    BY_ANY_OWNER,
    Controller,
    ControllerContext,
    Result,
    SharedInformer,
    TemporaryError,
    is_terminating,
    split_key,
)
from mizzen.api.kinds import KINDS, KindInfo, UnknownKindError, kind_of, lookup
from mizzen.client.errors import ConflictError, NotFoundError

if TYPE_CHECKING:
    from controllers.config import ManagerConfig

log = structlog.get_logger(__name__)

FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"
GC_KINDS: tuple[KindInfo, ...] = tuple(k for k in KINDS if k.kind != "Event")
FOREGROUND_RECHECK = 5.0
SYNC_RECHECK = 0.5


def gc_key(kind: str, namespace: str, name: str) -> str:
    return f"{kind}:{namespace}/{name}" if namespace else f"{kind}:{name}"


def key_for(obj: Any) -> str:
    return gc_key(kind_of(obj).kind, obj.metadata.namespace, obj.metadata.name)


def parse_gc_key(key: str) -> tuple[str, str, str]:
    """(kind, namespace, name) of a gc key."""
    kind, _, rest = key.partition(":")
    namespace, name = split_key(rest)
    return kind, namespace, name


class GarbageCollector(Controller):
    """See the module doc."""

    name = "garbage-collector"
    primary_kind = None

    def __init__(self, *, workers: int = 2, kinds: tuple[KindInfo, ...] = GC_KINDS) -> None:
        self.workers = workers
        self.kinds = kinds

    def setup(self, ctx: ControllerContext) -> None:
        self._ctx = ctx
        self.informers: dict[str, SharedInformer] = {}
        for info in self.kinds:
            informer = ctx.informers.get(info)
            self.informers[info.kind] = informer
            informer.on_add(self._changed)
            informer.on_update(self._updated)
            informer.on_delete(self._deleted)

    # -- handlers ---------------------------------------------------------------------

    def _changed(self, obj: Any) -> None:
        meta = obj.metadata
        waiting = is_terminating(obj) and (
            FOREGROUND in meta.finalizers or ORPHAN in meta.finalizers
        )
        if meta.owner_references or waiting:
            self.queue.add(key_for(obj))

    def _updated(self, old: Any, new: Any) -> None:
        """Only changes the collector acts on: status updates are the bulk and are not."""
        a, b = old.metadata, new.metadata
        if (
            list(a.owner_references) != list(b.owner_references)
            or list(a.finalizers) != list(b.finalizers)
            or a.HasField("deletion_timestamp") != b.HasField("deletion_timestamp")
            or a.uid != b.uid
            or a.resource_version == b.resource_version  # a resync: look again
        ):
            self._changed(new)

    def _deleted(self, obj: Any) -> None:
        for dependent in self.dependents(obj):
            self.queue.add(key_for(dependent))
        for ref in obj.metadata.owner_references:
            owner_ns = self._owner_namespace(obj, ref.kind)
            if owner_ns is not None:
                self.queue.add(gc_key(ref.kind, owner_ns, ref.name))

    # -- graph ------------------------------------------------------------------------

    def dependents(self, owner: Any) -> list[Any]:
        """Cached objects with an owner reference to owner's uid (same namespace)."""
        uid, namespace = owner.metadata.uid, owner.metadata.namespace
        out: list[Any] = []
        for informer in self.informers.values():
            for obj in informer.by_index(BY_ANY_OWNER, uid):
                if not namespace or obj.metadata.namespace == namespace:
                    out.append(obj)
        return out

    def _owner_namespace(self, dependent: Any, kind: str) -> str | None:
        """Where an owner of kind lives for dependent; None when it cannot exist."""
        try:
            info = lookup(kind)
        except UnknownKindError:
            return None
        if not info.namespaced:
            return ""
        return dependent.metadata.namespace or None

    def _cached_owner(self, dependent: Any, ref: Any) -> Any | None:
        namespace = self._owner_namespace(dependent, ref.kind)
        if namespace is None:
            return None
        informer = self.informers.get(lookup(ref.kind).kind)
        cached = informer.get(namespace, ref.name) if informer is not None else None
        return cached if cached is not None and cached.metadata.uid == ref.uid else None

    async def _owner_gone(self, dependent: Any, ref: Any) -> bool:
        """Whether the owner ref points at is gone, checked live when the cache does not show it.

        An owner that cannot be looked up (unknown kind, a namespaced owner of a
        cluster-scoped object) is never presumed gone: deleting on a guess is
        not recoverable.
        """
        if self._cached_owner(dependent, ref) is not None:
            return False
        namespace = self._owner_namespace(dependent, ref.kind)
        if namespace is None:
            log.warning("gc_unresolvable_owner", dependent=key_for(dependent), kind=ref.kind)
            return False
        try:
            live = await self.ctx.client.get(ref.kind, ref.name, namespace)
        except NotFoundError:
            return True
        return bool(live.metadata.uid != ref.uid)

    # -- reconcile --------------------------------------------------------------------

    async def reconcile(self, key: str) -> Result:
        kind, namespace, name = parse_gc_key(key)
        informer = self.informers.get(kind)
        if informer is None:
            return Result()
        obj = informer.get(namespace, name)
        if obj is None:
            return Result()
        if not all(i.has_synced.is_set() for i in self.informers.values()):
            return Result(requeue_after=SYNC_RECHECK)  # dependents may be missing yet
        result = Result()
        if is_terminating(obj) and ORPHAN in obj.metadata.finalizers:
            await self._orphan(obj)
        elif is_terminating(obj) and FOREGROUND in obj.metadata.finalizers:
            result = await self._foreground(obj)
        if obj.metadata.owner_references:
            await self._check_owners(obj)
        return result

    async def _check_owners(self, obj: Any) -> None:
        if all(self._cached_owner(obj, ref) is not None for ref in obj.metadata.owner_references):
            return
        info = kind_of(obj)
        live = await self._read(info, obj)
        if live is None or live.metadata.uid != obj.metadata.uid:
            return
        dangling = set()
        for ref in live.metadata.owner_references:
            if await self._owner_gone(live, ref):
                dangling.add(ref.uid)
        if not dangling:
            return
        if dangling != {ref.uid for ref in live.metadata.owner_references}:
            await self._remove_refs(info, live, dangling)
            return
        policy = "Background"
        if ORPHAN in live.metadata.finalizers:
            policy = "Orphan"
        elif FOREGROUND in live.metadata.finalizers:
            policy = "Foreground"
        if is_terminating(live) and policy == "Background":
            return
        log.info("gc_delete_dependent", object=key_for(live), policy=policy)
        await self._delete(info, live, policy, resource_version=live.metadata.resource_version)

    async def _foreground(self, owner: Any) -> Result:
        uid = owner.metadata.uid
        blocking = 0
        for dep in self.dependents(owner):
            refs = [r for r in dep.metadata.owner_references if r.uid == uid]
            blocking += any(r.block_owner_deletion for r in refs)
            if is_terminating(dep):
                continue
            policy = "Foreground" if self.dependents(dep) else "Background"
            log.info(
                "gc_delete_dependent", object=key_for(dep), owner=key_for(owner), policy=policy
            )
            await self._delete(kind_of(dep), dep, policy)
        if blocking:
            return Result(requeue_after=FOREGROUND_RECHECK)
        await self._remove_finalizer(owner, FOREGROUND)
        return Result()

    async def _orphan(self, owner: Any) -> None:
        uid = owner.metadata.uid
        for dep in self.dependents(owner):
            info = kind_of(dep)
            live = await self._read(info, dep)
            if live is not None:
                await self._remove_refs(info, live, {uid})
        await self._remove_finalizer(owner, ORPHAN)

    # -- writes -----------------------------------------------------------------------

    async def _read(self, info: KindInfo, obj: Any) -> Any | None:
        try:
            return await self.ctx.client.get(info, obj.metadata.name, obj.metadata.namespace)
        except NotFoundError:
            return None

    async def _remove_refs(self, info: KindInfo, live: Any, uids: set[str]) -> None:
        kept = [r for r in live.metadata.owner_references if r.uid not in uids]
        if len(kept) == len(live.metadata.owner_references):
            return
        del live.metadata.owner_references[:]
        live.metadata.owner_references.extend(kept)
        log.info("gc_remove_owner_refs", object=key_for(live), owners=sorted(uids))
        await self._update(live)

    async def _remove_finalizer(self, cached: Any, finalizer: str) -> None:
        live = await self._read(kind_of(cached), cached)
        if live is None or live.metadata.uid != cached.metadata.uid:
            return
        if finalizer not in live.metadata.finalizers:
            return
        kept = [f for f in live.metadata.finalizers if f != finalizer]
        del live.metadata.finalizers[:]
        live.metadata.finalizers.extend(kept)
        log.info("gc_remove_finalizer", object=key_for(live), finalizer=finalizer)
        await self._update(live)

    async def _update(self, live: Any) -> None:
        try:
            await self.ctx.client.update(live)
        except NotFoundError:
            return
        except ConflictError as err:
            raise TemporaryError(f"{key_for(live)} changed: {err}") from None

    async def _delete(
        self, info: KindInfo, obj: Any, policy: str, *, resource_version: str = ""
    ) -> None:
        try:
            await self.ctx.client.delete(
                info,
                obj.metadata.name,
                obj.metadata.namespace,
                resource_version=resource_version,
                propagation_policy=policy,
            )
        except NotFoundError:
            return
        except ConflictError as err:
            raise TemporaryError(f"{key_for(obj)} changed before deletion: {err}") from None


def garbage_collector_from_config(config: ManagerConfig) -> GarbageCollector:
    """The manager's factory."""
    return GarbageCollector()
