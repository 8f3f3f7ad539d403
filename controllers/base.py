"""What every controller is built from: Controller, Result, errors, context, shared informers.

A controller registers informer handlers in ``setup`` that only enqueue keys
(``"namespace/name"``, or ``"name"`` for cluster-scoped kinds) on
``self.queue``, and does its work in ``reconcile(key)``: read the shared
caches, compare with the desired state, make one step through
``ctx.client``. ``controllers.runner`` calls reconcile with one key at a time
per worker and never hands one key to two workers at once.

``SharedInformers`` holds one ``Informer`` per kind for every controller in
the process. Handlers may be registered after the informer has started (a
standby manager keeps warm caches and only registers handlers when it
becomes leader): a handler registered on a synced informer is first called
with every cached object as an add, so it sees the same level as one
registered before the start. ``clear_handlers`` removes them all again.

Controllers never need configuration values, only whether they changed
(``controllers.confighash``): the shared informers of ConfigMaps and Secrets
cache ``digested`` copies (every value replaced by its SHA-256), so the
manager keeps no configuration, and no secret value, in memory. Deployments
and DaemonSets are indexed by the objects their templates refer to
(``BY_CONFIG_REF``).

One file because Controller, Result, the errors, the context and the shared
informers are the one contract every controller is written against; a reader
adding a controller reads this file and ``runner.py``.
"""

from __future__ import annotations

import asyncio
import builtins
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from controllers.confighash import BY_CONFIG_REF, config_ref_index, digested
from controllers.workqueue import RateLimitedQueue
from mizzen.api.dependencies import index_keys as dependency_index_keys
from mizzen.api.kinds import API_VERSION, KindInfo, kind_of, lookup
from mizzen.client.informer import AddHandler, DeleteHandler, Delta, Informer, UpdateHandler
from mizzen.client.objects import ListResult
from protos import objects_pb2 as pb

if TYPE_CHECKING:
    from controllers.config import ManagerConfig

log = structlog.get_logger(__name__)

BY_OWNER = "by_owner"
"""Index of every kind: uid of the owner in the object's controller reference ("" for orphans)."""
BY_ANY_OWNER = "by_any_owner"
"""Index of every kind: uid of every owner reference (controller or not)."""
BY_NAMESPACE = "by_namespace"
"""Index of every kind: metadata.namespace ("" for cluster-scoped kinds)."""
BY_NODE = "by_node"
"""Index of pods: spec.node_name ("" for pods not bound yet)."""
BY_DEPENDENCY = "by_dependency"
"""Index of pods, ReplicaSets, Deployments, DaemonSets and Jobs: what they depend on
(``mizzen.api.dependencies.index_key``, e.g. "Service/default/db")."""
DEPENDENT_KINDS = ("Pod", "ReplicaSet", "Deployment", "DaemonSet", "Job")
DIGESTED_KINDS = ("ConfigMap", "Secret")
"""Kinds the shared informers cache as digests (see the module doc)."""


@dataclass(frozen=True)
class Result:
    """What reconcile asks for: None is done; a number requeues the key after that many seconds."""

    requeue_after: float | None = None


class TemporaryError(Exception):
    """Reconcile failed for now: requeue the key (after ``delay``, else with backoff)."""

    def __init__(self, message: str, *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(Exception):
    """Reconcile cannot succeed until the object changes: logged, a Warning Event, no hot retry."""

    def __init__(self, message: str, *, reason: str = "ReconcileFailed") -> None:
        super().__init__(message)
        self.reason = reason


class ObjectsAPI(Protocol):
    """The ObjectsClient surface controllers use (the real client and FakeObjects have it)."""

    async def get(self, kind: str | KindInfo, name: str, namespace: str = "") -> Any: ...

    async def list(
        self,
        kind: str | KindInfo,
        namespace: str = "",
        *,
        label_selector: str = "",
        field_selector: str = "",
        limit: int = 0,
        continue_token: str = "",
    ) -> ListResult: ...

    async def create(self, obj: Any) -> Any: ...

    async def update(self, obj: Any) -> Any: ...

    async def update_status(self, obj: Any) -> Any: ...

    async def delete(
        self,
        kind: str | KindInfo,
        name: str,
        namespace: str = "",
        *,
        grace_period_seconds: int | None = None,
        resource_version: str = "",
        propagation_policy: str = "",
    ) -> tuple[Any, bool]: ...


class EventSink(Protocol):
    """Where controllers report Events (``mizzen.client.events.EventRecorder``)."""

    def record(self, obj: Any, type: str, reason: str, message: str) -> None: ...


# ------------------------------------------------------------------ keys and owners


def queue_key(obj: Any) -> str:
    """The queue key of an object: "namespace/name", or "name" when cluster-scoped."""
    meta = obj.metadata
    return f"{meta.namespace}/{meta.name}" if meta.namespace else meta.name


def split_key(key: str) -> tuple[str, str]:
    """(namespace, name) of a queue key; namespace "" for a cluster-scoped key."""
    namespace, _, name = key.rpartition("/")
    return namespace, name


def controller_ref(obj: Any) -> pb.OwnerReference | None:
    """The owner reference with controller=true, if any."""
    for ref in obj.metadata.owner_references:
        if ref.controller:
            return ref
    return None


def owner_key(obj: Any, kind: str) -> str | None:
    """The queue key of obj's controller when that is of kind, else None."""
    ref = controller_ref(obj)
    if ref is None or ref.kind != kind:
        return None
    ns = obj.metadata.namespace
    return f"{ns}/{ref.name}" if ns else ref.name


def owner_reference(owner: Any) -> pb.OwnerReference:
    """A controller reference to owner, as the contract wants it on dependents."""
    return pb.OwnerReference(
        api_version=API_VERSION,
        kind=kind_of(owner).kind,
        name=owner.metadata.name,
        uid=owner.metadata.uid,
        controller=True,
        block_owner_deletion=True,
    )


def is_terminating(obj: Any) -> bool:
    return bool(obj.metadata.HasField("deletion_timestamp"))


# ------------------------------------------------------------------ informers


def _owner_uids(obj: Any) -> list[str]:
    ref = controller_ref(obj)
    return [ref.uid] if ref is not None else [""]


def _any_owner_uids(obj: Any) -> list[str]:
    return [ref.uid for ref in obj.metadata.owner_references]


class SharedInformer(Informer):
    """An Informer whose handlers may come and go while it runs (see the module doc)."""

    def __init__(self, client: Any, kind: KindInfo, **kwargs: Any) -> None:
        super().__init__(client, kind, **kwargs)
        self.info = kind
        self._shared_add: list[AddHandler] = []
        self._shared_update: list[UpdateHandler] = []
        self._shared_delete: list[DeleteHandler] = []
        super().on_add(self._dispatch_add)
        super().on_update(self._dispatch_update)
        super().on_delete(self._dispatch_delete)
        self.add_indexer(BY_OWNER, _owner_uids)
        self.add_indexer(BY_ANY_OWNER, _any_owner_uids)
        self.add_indexer(BY_NAMESPACE, lambda o: [o.metadata.namespace])
        if kind.kind == "Pod":
            self.add_indexer(BY_NODE, lambda o: [o.spec.node_name])
        if kind.kind in ("Deployment", "DaemonSet"):
            self.add_indexer(BY_CONFIG_REF, config_ref_index)
        if kind.kind in DEPENDENT_KINDS:
            self.add_indexer(BY_DEPENDENCY, dependency_index_keys)
        self._digests = kind.kind in DIGESTED_KINDS

    def replace(self, items: Iterable[Any], resource_version: str) -> builtins.list[Delta]:
        if self._digests:
            items = [digested(o) for o in items]
        return super().replace(items, resource_version)

    def apply_event(self, event_type: str, obj: Any) -> None:
        if self._digests and event_type != "BOOKMARK":
            obj = digested(obj)
        super().apply_event(event_type, obj)

    def on_add(self, fn: AddHandler) -> None:
        self._shared_add.append(fn)
        if self.has_synced.is_set():
            for obj in self.list():
                self._call(fn, obj)

    def on_update(self, fn: UpdateHandler) -> None:
        self._shared_update.append(fn)

    def on_delete(self, fn: DeleteHandler) -> None:
        self._shared_delete.append(fn)

    def clear_handlers(self) -> None:
        self._shared_add.clear()
        self._shared_update.clear()
        self._shared_delete.clear()

    def by_owner(self, uid: str) -> builtins.list[Any]:
        """Objects whose controller reference points at uid ("": objects with no controller)."""
        return self.by_index(BY_OWNER, uid)

    def owned_by(self, owner: Any) -> builtins.list[Any]:
        """Objects of owner's namespace whose controller reference points at owner."""
        namespace = owner.metadata.namespace
        return [o for o in self.by_owner(owner.metadata.uid) if o.metadata.namespace == namespace]

    def orphans(self, namespace: str) -> builtins.list[Any]:
        """Objects of namespace that have no controller reference (candidates for adoption)."""
        return [o for o in self.by_index(BY_OWNER, "") if o.metadata.namespace == namespace]

    def in_namespace(self, namespace: str) -> builtins.list[Any]:
        return self.by_index(BY_NAMESPACE, namespace)

    def get_key(self, key: str) -> Any | None:
        namespace, name = split_key(key)
        return self.get(namespace, name)

    def queue_keys(self) -> builtins.list[str]:
        """Every cached object's queue key."""
        return [f"{ns}/{name}" if ns else name for ns, name in self.keys()]

    def _dispatch_add(self, obj: Any) -> None:
        for fn in builtins.list(self._shared_add):
            self._call(fn, obj)

    def _dispatch_update(self, old: Any, new: Any) -> None:
        for fn in builtins.list(self._shared_update):
            self._call(fn, old, new)

    def _dispatch_delete(self, obj: Any) -> None:
        for fn in builtins.list(self._shared_delete):
            self._call(fn, obj)


class SharedInformers:
    """One SharedInformer per kind, created on first ``get`` and run by ``run``.

    An informer created while ``run`` is running starts at once. Every kind
    has the BY_OWNER, BY_ANY_OWNER and BY_NAMESPACE indexes; pods also BY_NODE;
    pods and workloads BY_DEPENDENCY.
    """

    def __init__(self, client: Any, *, resync_period: float | None = None) -> None:
        self._client = client
        self._resync = resync_period
        self._informers: dict[str, SharedInformer] = {}
        self._group: asyncio.TaskGroup | None = None

    def get(self, kind: str | KindInfo) -> SharedInformer:
        info = kind if isinstance(kind, KindInfo) else lookup(kind)
        informer = self._informers.get(info.kind)
        if informer is None:
            informer = self._informers[info.kind] = self._make(info)
            if self._group is not None:
                self._group.create_task(informer.run(), name=f"informer-{info.plural}")
        return informer

    def _make(self, info: KindInfo) -> SharedInformer:
        return SharedInformer(self._client, info, resync_period=self._resync)

    def all(self) -> builtins.list[SharedInformer]:
        return builtins.list(self._informers.values())

    async def run(self) -> None:
        """Run every informer, present and future, until cancelled."""
        async with asyncio.TaskGroup() as tg:
            self._group = tg
            try:
                for info_kind, informer in builtins.list(self._informers.items()):
                    tg.create_task(informer.run(), name=f"informer-{info_kind}")
                await asyncio.Event().wait()
            finally:
                self._group = None

    async def wait_synced(self, kinds: Iterable[str | KindInfo] | None = None) -> None:
        """Wait until the given informers (default: all created so far) have listed once."""
        targets = [self.get(k) for k in kinds] if kinds is not None else self.all()
        for informer in targets:
            await informer.has_synced.wait()

    def synced(self) -> bool:
        return all(i.has_synced.is_set() for i in self._informers.values())

    def clear_handlers(self) -> None:
        """Unregister every controller's handlers (the manager stopped leading)."""
        for informer in self._informers.values():
            informer.clear_handlers()


# ------------------------------------------------------------------ controllers


@dataclass
class ControllerContext:
    """What a controller works with; one per leadership term, shared by all controllers."""

    client: ObjectsAPI
    informers: SharedInformers
    events: EventSink
    clock: Callable[[], float]
    config: ManagerConfig
    extra: dict[str, Any] = field(default_factory=dict)


class Controller(ABC):
    """A level-triggered controller; see the module doc.

    ``primary_kind`` (e.g. "ReplicaSet") names the kind whose keys the runner
    re-enqueues every resync period; None disables the periodic resync.
    """

    name: str = "controller"
    workers: int = 1
    primary_kind: str | None = None
    _queue: RateLimitedQueue | None = None
    _ctx: ControllerContext | None = None

    @property
    def ctx(self) -> ControllerContext:
        """The context ``setup`` kept (``self._ctx = ctx``); RuntimeError before that."""
        if self._ctx is None:
            raise RuntimeError(f"{self.name}: setup() was not called")
        return self._ctx

    @property
    def queue(self) -> RateLimitedQueue:
        if self._queue is None:
            self._queue = RateLimitedQueue()
        return self._queue

    @queue.setter
    def queue(self, value: RateLimitedQueue) -> None:
        self._queue = value

    def enqueue(self, obj: Any) -> None:
        """Handler helper: queue obj's own key."""
        self.queue.add(queue_key(obj))

    def enqueue_changes(
        self, informer: SharedInformer, on_delete: Callable[[Any], None] | None = None
    ) -> None:
        """Handler helper: queue an object's own key on add and update; on delete, on_delete.

        on_delete defaults to queueing the key too (reconcile then sees it gone).
        """
        informer.on_add(self.enqueue)
        informer.on_update(lambda old, new: self.enqueue(new))
        informer.on_delete(on_delete if on_delete is not None else self.enqueue)

    def enqueue_owner(self, obj: Any, kind: str) -> None:
        """Handler helper: queue the key of obj's controller when it is of this kind."""
        key = owner_key(obj, kind)
        if key is not None:
            self.queue.add(key)

    @abstractmethod
    def setup(self, ctx: ControllerContext) -> None:
        """Register informer handlers (they only enqueue keys) and keep ctx as ``self._ctx``."""

    @abstractmethod
    async def reconcile(self, key: str) -> Result:
        """One step toward the desired state of key; idempotent."""
