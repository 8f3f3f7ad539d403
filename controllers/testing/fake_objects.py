"""FakeObjects: an in-memory ObjectsClient with the store's semantics, for controller tests.

It mirrors ``store/objects_service.py``: creates are defaulted and validated
(``generate_name``, uid, creation_timestamp, generation 1), updates need the
resource_version read (else ``ConflictError``), keep status, bump generation
when spec changes; ``update_status`` changes status only; delete is graceful
for bound, running pods, waits for finalizers, and records the propagation
policy as the ``foregroundDeletion`` / ``orphan`` finalizer. Errors are the
real client's (``mizzen.client.errors``). Every successful write is appended
to ``writes`` as ``(op, kind, key)``, e.g. ``("create", "Pod", "default/web-x1")``.

``fenced(key, rev)`` returns a view whose writes raise ``FencedError`` unless
``fences[key] == rev``. ``fail(op, kind, error)`` makes the next matching write
raise error once. ``FakeInformers`` (below) keeps informer caches equal to the
objects after every write, synchronously (or on ``sync()`` when ``auto_sync``
is False, to test a lagging cache).

One file because it is one fake with the store's semantics (plus its fencing
wrapper and the informers fed from it); each call's behaviour must match
``store/objects_service.py`` call by call, which is easiest to check in one
place.
"""

from __future__ import annotations

import builtins
import itertools
import time
import uuid
from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message

from controllers.base import SharedInformer, SharedInformers
from controllers.podutil import mark_condition
from mizzen.api import selectors
from mizzen.api.defaults import DEFAULT_TERMINATION_GRACE_SECONDS, apply_defaults
from mizzen.api.field_errors import FieldError
from mizzen.api.kinds import KindInfo, kind_of, lookup
from mizzen.api.messages import copy_message
from mizzen.api.pods import has_ended
from mizzen.api.validation import validate, validate_update
from mizzen.client.errors import (
    AlreadyExistsError,
    ConflictError,
    FencedError,
    InvalidArgumentError,
    NotFoundError,
)
from mizzen.client.objects import ListResult
from protos import objects_pb2 as pb

Write = tuple[str, str, str]
Listener = Callable[[str, Any], None]
StoreKey = tuple[str, str, str]

CONFLICT = "the object has been modified; please apply your changes to the latest version"
PROPAGATION_FINALIZERS = {"Foreground": "foregroundDeletion", "Orphan": "orphan"}
_SUFFIX = itertools.count()


def _info(kind: str | KindInfo) -> KindInfo:
    return kind if isinstance(kind, KindInfo) else lookup(kind)


def _qkey(namespace: str, name: str) -> str:
    return f"{namespace}/{name}" if namespace else name


class FakeObjects:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.revision = 1
        self.writes: list[Write] = []
        self.fences: dict[bytes, int] = {}
        self._objects: dict[StoreKey, Any] = {}
        self._listeners: list[Listener] = []
        self._failures: list[tuple[str, str | None, Exception]] = []

    # -- test helpers ----------------------------------------------------------------

    def add(self, *objs: Any) -> builtins.list[Any]:
        """Put objects in as they are (fields the server owns filled when missing); not logged."""
        out = []
        for obj in objs:
            stored = copy_message(obj)
            info = kind_of(stored)
            meta = stored.metadata
            if info.namespaced and not meta.namespace:
                meta.namespace = "default"
            apply_defaults(stored)
            if not meta.uid:
                meta.uid = str(uuid.uuid4())
            if not meta.HasField("creation_timestamp"):
                meta.creation_timestamp.FromNanoseconds(int(self.clock() * 1e9))
            if not meta.generation:
                meta.generation = 1
            self._put(info, stored)
            out.append(copy_message(stored))
        return out

    def objects(self, kind: str | KindInfo, namespace: str | None = None) -> builtins.list[Any]:
        """Copies of every stored object of kind (in a namespace), by name."""
        info = _info(kind)
        items = [
            copy_message(o)
            for (k, ns, _), o in sorted(self._objects.items())
            if k == info.kind and (namespace is None or ns == namespace)
        ]
        return items

    def peek(self, kind: str | KindInfo, name: str, namespace: str = "") -> Any:
        """A copy of the stored object, None when there is none."""
        obj = self._objects.get((_info(kind).kind, namespace, name))
        return None if obj is None else copy_message(obj)

    def fail(self, op: str, kind: str | None, error: Exception) -> None:
        """The next write op ("create", "update", ...) of kind (None: any) raises error."""
        self._failures.append((op, None if kind is None else lookup(kind).kind, error))

    def clear_writes(self) -> None:
        self.writes.clear()

    def subscribe(self, listener: Listener) -> None:
        """listener(event type, object copy) after every change ("ADDED", "MODIFIED", "DELETED")."""
        self._listeners.append(listener)

    def fenced(self, key: bytes, create_revision: int) -> FencedObjects:
        return FencedObjects(self, key, create_revision)

    # -- reads -----------------------------------------------------------------------

    async def get(self, kind: str | KindInfo, name: str, namespace: str = "") -> Any:
        info = _info(kind)
        self._check_namespace(info, namespace)
        obj = self._objects.get((info.kind, namespace if info.namespaced else "", name))
        if obj is None:
            raise NotFoundError(f'{info.plural} "{name}" not found', details="not found")
        return copy_message(obj)

    async def list(
        self,
        kind: str | KindInfo,
        namespace: str = "",
        *,
        label_selector: str = "",
        field_selector: str = "",
        limit: int = 0,
        continue_token: str = "",
    ) -> ListResult:
        info = _info(kind)
        try:
            labels = selectors.parse_label_selector(label_selector)
            fields = selectors.parse_field_selector(field_selector, info.kind)
        except selectors.SelectorError as err:
            raise InvalidArgumentError(str(err)) from None
        items = [
            o
            for o in self.objects(info, namespace or None)
            if labels.matches(o.metadata.labels) and fields.matches(o)
        ]
        return ListResult(items, str(self.revision))

    # -- writes ----------------------------------------------------------------------

    async def create(self, obj: Any) -> Any:
        new = copy_message(obj)
        info = kind_of(new)
        self._injected("create", info)
        meta = new.metadata
        if not meta.name and meta.generate_name:
            meta.name = f"{meta.generate_name}{next(_SUFFIX):05d}"
        apply_defaults(new)
        for f in ("resource_version", "deletion_timestamp", "deletion_grace_period_seconds"):
            meta.ClearField(f)
        meta.uid = str(uuid.uuid4())
        meta.creation_timestamp.FromNanoseconds(int(self.clock() * 1e9))
        meta.generation = 1
        self._check(info, new, validate(new))
        if (info.kind, meta.namespace, meta.name) in self._objects:
            raise AlreadyExistsError(f'{info.plural} "{meta.name}" already exists')
        self._put(info, new)
        self.writes.append(("create", info.kind, _qkey(meta.namespace, meta.name)))
        return copy_message(new)

    async def update(self, obj: Any) -> Any:
        new = copy_message(obj)
        info, old = self._current(new, "update")
        meta, old_meta = new.metadata, old.metadata
        if not meta.uid:
            meta.uid = old_meta.uid
        if not meta.HasField("creation_timestamp"):
            meta.creation_timestamp.CopyFrom(old_meta.creation_timestamp)
        meta.ClearField("deletion_timestamp")
        if old_meta.HasField("deletion_timestamp"):
            meta.deletion_timestamp.CopyFrom(old_meta.deletion_timestamp)
        meta.ClearField("deletion_grace_period_seconds")
        if old_meta.HasField("deletion_grace_period_seconds"):
            meta.deletion_grace_period_seconds = old_meta.deletion_grace_period_seconds
        meta.generation = old_meta.generation
        if info.has_status:
            new.status.CopyFrom(old.status)
        if isinstance(new, pb.Pod) and new.spec.node_name and not old.spec.node_name:
            # binding records PodScheduled in the same write, as the store does
            mark_condition(new.status.conditions, "PodScheduled", "True", "", "", self.clock())
        apply_defaults(new)
        if info.has_spec and new.spec != old.spec:
            meta.generation = old_meta.generation + 1
        self._check(info, new, validate_update(old, new))
        return self._replace(info, "update", old, new)

    async def update_status(self, obj: Any) -> Any:
        given = copy_message(obj)
        info, old = self._current(given, "update_status")
        if not info.has_status:
            raise InvalidArgumentError(f"{info.plural} have no status")
        new = copy_message(old)
        new.status.CopyFrom(given.status)
        self._check(info, new, validate_update(old, new))
        return self._replace(info, "update_status", old, new)

    async def delete(
        self,
        kind: str | KindInfo,
        name: str,
        namespace: str = "",
        *,
        grace_period_seconds: int | None = None,
        resource_version: str = "",
        propagation_policy: str = "",
    ) -> tuple[Any, bool]:
        info = _info(kind)
        self._injected("delete", info)
        self._check_namespace(info, namespace)
        if propagation_policy not in ("", "Background", *PROPAGATION_FINALIZERS):
            raise InvalidArgumentError(
                f"propagation_policy: unsupported value {propagation_policy!r}"
            )
        skey = (info.kind, namespace if info.namespaced else "", name)
        stored = self._objects.get(skey)
        if stored is None:
            raise NotFoundError(f'{info.plural} "{name}" not found')
        if resource_version and resource_version != stored.metadata.resource_version:
            raise ConflictError(CONFLICT)
        obj = copy_message(stored)
        grace = _grace_seconds(obj, grace_period_seconds)
        finalizer = PROPAGATION_FINALIZERS.get(propagation_policy)
        qkey = _qkey(skey[1], name)
        if not obj.metadata.finalizers and grace == 0 and finalizer is None:
            self._remove(info, skey)
            self.writes.append(("delete", info.kind, qkey))
            return obj, True
        meta = obj.metadata
        adds = finalizer is not None and finalizer not in meta.finalizers
        shorter = meta.HasField("deletion_timestamp") and grace < meta.deletion_grace_period_seconds
        if not meta.HasField("deletion_timestamp") or shorter or adds:
            pending = copy_message(obj)
            if not meta.HasField("deletion_timestamp"):
                pending.metadata.deletion_timestamp.FromNanoseconds(int(self.clock() * 1e9))
                pending.metadata.deletion_grace_period_seconds = grace
            elif shorter:
                pending.metadata.deletion_grace_period_seconds = grace
            if adds and finalizer is not None:
                pending.metadata.finalizers.append(finalizer)
            obj = self._replace(info, "delete", obj, pending, log=False)
            self.writes.append(("delete", info.kind, qkey))
        gone = not obj.metadata.finalizers and grace == 0
        return obj, gone

    # -- internals -------------------------------------------------------------------

    def _injected(self, op: str, info: KindInfo) -> None:
        for i, (fop, fkind, err) in enumerate(self._failures):
            if fop == op and (fkind is None or fkind == info.kind):
                del self._failures[i]
                raise err

    def _check_namespace(self, info: KindInfo, namespace: str) -> None:
        if info.namespaced and not namespace:
            raise InvalidArgumentError(f"namespace is required for {info.plural}")

    def _current(self, obj: Any, op: str) -> tuple[KindInfo, Any]:
        info = kind_of(obj)
        self._injected(op, info)
        meta = obj.metadata
        if info.namespaced and not meta.namespace:
            meta.namespace = "default"
        if not meta.resource_version:
            raise InvalidArgumentError("metadata.resourceVersion: must be specified for an update")
        stored = self._objects.get((info.kind, meta.namespace, meta.name))
        if stored is None:
            raise NotFoundError(f'{info.plural} "{meta.name}" not found')
        if stored.metadata.resource_version != meta.resource_version:
            raise ConflictError(CONFLICT)
        return info, copy_message(stored)

    def _replace(self, info: KindInfo, op: str, old: Any, new: Any, *, log: bool = True) -> Any:
        meta = new.metadata
        skey = (info.kind, meta.namespace, meta.name)
        qkey = _qkey(meta.namespace, meta.name)
        graceful = isinstance(new, pb.Pod) and meta.deletion_grace_period_seconds > 0
        if meta.HasField("deletion_timestamp") and not meta.finalizers and not graceful:
            self._remove(info, skey)
            if log:
                self.writes.append((op, info.kind, qkey))
            return new
        new.metadata.resource_version = old.metadata.resource_version
        if new == old:
            return copy_message(old)
        self._put(info, new)
        if log:
            self.writes.append((op, info.kind, qkey))
        return copy_message(new)

    def _put(self, info: KindInfo, obj: Any) -> None:
        self.revision += 1
        meta = obj.metadata
        meta.resource_version = str(self.revision)
        skey = (info.kind, meta.namespace, meta.name)
        event = "MODIFIED" if skey in self._objects else "ADDED"
        self._objects[skey] = obj
        self._notify(event, obj)

    def _remove(self, info: KindInfo, skey: StoreKey) -> None:
        obj = self._objects.pop(skey)
        self.revision += 1
        gone = copy_message(obj)
        gone.metadata.resource_version = str(self.revision)
        self._notify("DELETED", gone)

    def _notify(self, event: str, obj: Any) -> None:
        for listener in self._listeners:
            listener(event, copy_message(obj))

    @staticmethod
    def _check(info: KindInfo, obj: Any, errors: builtins.list[FieldError]) -> None:
        if errors:
            detail = "; ".join(str(e) for e in errors)
            text = f'{info.kind} "{obj.metadata.name}" is invalid: {detail}'
            raise InvalidArgumentError(text, details=text)


def _grace_seconds(obj: Any, requested: int | None) -> int:
    if not isinstance(obj, pb.Pod):
        return 0
    if requested is not None:
        grace = requested
    elif obj.spec.HasField("termination_grace_period_seconds"):
        grace = obj.spec.termination_grace_period_seconds
    else:
        grace = DEFAULT_TERMINATION_GRACE_SECONDS
    if not obj.spec.node_name or has_ended(obj):
        return 0
    return int(grace)


class FencedObjects:
    """FakeObjects' writes guarded by a fence (see ``ObjectsClient.fenced``); reads pass through."""

    def __init__(self, objects: FakeObjects, key: bytes, create_revision: int) -> None:
        self.objects = objects
        self.key = key
        self.create_revision = create_revision

    def _check(self) -> None:
        current = self.objects.fences.get(self.key)
        if current != self.create_revision:
            key = self.key.decode()
            text = f"fenced: {key} create_revision is {current}, not {self.create_revision}"
            raise FencedError(text, details=text)

    async def get(self, kind: str | KindInfo, name: str, namespace: str = "") -> Any:
        return await self.objects.get(kind, name, namespace)

    async def list(self, kind: str | KindInfo, namespace: str = "", **kwargs: Any) -> ListResult:
        return await self.objects.list(kind, namespace, **kwargs)

    async def create(self, obj: Any) -> Any:
        self._check()
        return await self.objects.create(obj)

    async def update(self, obj: Any) -> Any:
        self._check()
        return await self.objects.update(obj)

    async def update_status(self, obj: Any) -> Any:
        self._check()
        return await self.objects.update_status(obj)

    async def delete(
        self, kind: str | KindInfo, name: str, namespace: str = "", **kwargs: Any
    ) -> tuple[Any, bool]:
        self._check()
        return await self.objects.delete(kind, name, namespace, **kwargs)


class FakeInformers(SharedInformers):
    """SharedInformers fed from a FakeObjects' state instead of list/watch; never run."""

    def __init__(self, objects: FakeObjects, *, auto_sync: bool = True) -> None:
        super().__init__(objects)
        self._objects = objects
        self.auto_sync = auto_sync
        self._backlog: list[tuple[str, Any]] = []
        objects.subscribe(self._on_change)

    def _make(self, info: KindInfo) -> SharedInformer:
        informer = SharedInformer(self._objects, info)
        informer.replace(self._objects.objects(info), str(self._objects.revision))
        return informer

    def _on_change(self, event: str, obj: Message) -> None:
        self._backlog.append((event, obj))
        if self.auto_sync:
            self.sync()

    def sync(self) -> int:
        """Deliver every change not yet seen by the caches; how many were delivered."""
        backlog, self._backlog = self._backlog, []
        for event, obj in backlog:
            informer = self._informers.get(kind_of(obj).kind)
            if informer is not None:
                informer.apply_event(event, obj)
        return len(backlog)
