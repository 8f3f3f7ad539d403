"""mizzen.v1.Objects: validated, defaulted, versioned typed objects over the KV store.

Every write is one Txn guarded by a compare on the key (create_revision == 0
for Create, mod_revision == resource_version for Update, UpdateStatus and
Delete), so concurrent writers cannot lose each other's changes. Reads are
linearizable (a barrier first).

Fencing: a write whose gRPC metadata carries ``mizzen-fence-key`` and
``mizzen-fence-revision`` also requires, in the same Txn, that the key's
create_revision is that revision; otherwise it fails with FAILED_PRECONDITION
("fenced: ..."). A controller manager fences every write with its election
key, so a deposed leader cannot have any write accepted. Only controllers and
admins may send fence metadata (it would let anyone probe any key's existence
and create revision): PERMISSION_DENIED for anyone else, before anything is read.

Authorization on stored state (secure servers, see store/authz.py): the
AuthInterceptor leaves the caller in ``CALLER``; each handler decides the
rules that depend on the stored object on the object it acts on — a Get after
its barrier, a write on the record whose mod_revision guards its Txn — so a
lagging member never decides on an older copy than the one the call uses.

ConfigMaps and Secrets (docs/objects.md): a Secret's ``stringData`` is merged
into ``data`` by defaulting, so it is never stored or returned; Secrets are
sealed with the store's keyring on every write and opened on every read
(``ValueCodec``, store/objects_codec.py), and a write whose content is
unchanged is still made when the stored value is not sealed with the primary
key (that is how ``mizzen secrets reencrypt`` rewrites them). A node's Get or
Watch of either kind is decided on the pods bound to it (``check_config``,
store/config_index.py), after the barrier and again for each watch event; so is
a node's Get, List or Watch of Services and Endpoints, on the namespaces of the
pods bound to it (``check_discovery``).

A stored value that does not decode as its kind (only the admin-only raw KV
API can write one) is skipped by List (reported in ``undecodable_keys``, and
logged) and Watch (treated as absent, logged); Get and updates fail with
DATA_LOSS naming the key; Delete removes it.

Owner-reference cascading is not done here: Delete records the propagation
policy as a finalizer (foregroundDeletion, orphan) and the garbage collector
controller acts on dependents.

One file because the Objects servicer and the Txn it builds for each call are
one idea: every rule of a typed write (defaults, validation, fencing,
authorization on the stored object, the compare that makes it safe) is read
next to the one RPC that applies it, and the helpers below the class serve
only those RPCs.
"""

from __future__ import annotations

import asyncio
import contextvars
import secrets
import string
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from functools import wraps
from typing import Any, TypeVar

import grpc
import structlog
from google.protobuf.message import Message

from mizzen.api import selectors
from mizzen.api.defaults import DEFAULT_TERMINATION_GRACE_SECONDS, apply_defaults
from mizzen.api.field_errors import FieldError
from mizzen.api.kinds import KindInfo, kind_of
from mizzen.api.pods import has_ended
from mizzen.api.validation import validate, validate_update
from mizzen.echo import echo, join_bounded
from mizzen.keyrange import prefix_end
from mizzen.security.server_auth import Denied, Identity, current_caller
from protos import objects_api_pb2 as api
from protos import objects_api_pb2_grpc as api_grpc
from protos import objects_pb2 as pb
from protos import rpc_pb2

from .authz import (
    CONFIG_KINDS,
    DISCOVERY_KINDS,
    check_config,
    check_discovery,
    check_fence,
    check_stored,
    check_undecodable,
    refusal,
)
from .config_index import PodConfigIndex
from .errors import Code, StoreError
from .grpc_errors import grpc_errors, grpc_stream_errors
from .kv_service import check_size
from .node import StoreNode
from .objects_codec import (
    MAX_REVISION,
    UndecodableError,
    ValueCodec,
    decode_continue,
    encode,
    encode_continue,
    kind_prefix,
    object_key,
    parse_resource_version,
    resolve_kind,
    storage_key,
    unwrap,
    wrap,
)
from .objects_watch import ObjectWatchSink, Selection
from .state_machine import Record, StateMachine
from .watch_hub import WatchStream

log = structlog.get_logger("store.objects")

FENCE_KEY_HEADER = "mizzen-fence-key"
FENCE_REVISION_HEADER = "mizzen-fence-revision"
FOREGROUND_FINALIZER = "foregroundDeletion"
ORPHAN_FINALIZER = "orphan"
PROPAGATION_FINALIZERS = {"Foreground": FOREGROUND_FINALIZER, "Orphan": ORPHAN_FINALIZER}
CONFLICT = "the object has been modified; please apply your changes to the latest version"
LIST_CHUNK = 500
DELETE_ATTEMPTS = 5
# How often the node authorizer's index follows the state once a node has asked
# (so it stays within the watch history and never needs a rebuild while in use).
CONFIG_INDEX_REFRESH = 1.0
_SUFFIX_CHARS = string.ascii_lowercase + string.digits


Fence = tuple[bytes, int]
_fence: contextvars.ContextVar[Fence | None] = contextvars.ContextVar("fence", default=None)
R = TypeVar("R")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Coroutine[Any, Any, R]]


def fence_of(metadata: Any) -> Fence | None:
    """The (key, create_revision) a write must be fenced by, from gRPC metadata."""
    values = {k: v for k, v in (metadata or ()) if k in (FENCE_KEY_HEADER, FENCE_REVISION_HEADER)}
    if not values:
        return None
    key, revision = values.get(FENCE_KEY_HEADER), values.get(FENCE_REVISION_HEADER)
    if not key or revision is None:
        raise StoreError(
            Code.INVALID_ARGUMENT,
            f"{FENCE_KEY_HEADER} and {FENCE_REVISION_HEADER} must be given together",
        )
    try:
        rev = int(revision)
    except ValueError:
        rev = 0
    if not 0 < rev <= MAX_REVISION:
        raise StoreError(
            Code.INVALID_ARGUMENT, f"{FENCE_REVISION_HEADER}: must be a positive revision"
        )
    return (key.encode() if isinstance(key, str) else bytes(key)), rev


def fenced_write(handler: Handler[R]) -> Handler[R]:
    """Run a write handler with the request's fence (if any) in effect for its Txns.

    Fence metadata from a caller who may not fence is refused before anything is read.
    """
    rpc = handler.__name__

    @wraps(handler)
    async def run(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        metadata = context.invocation_metadata()
        if any(k in (FENCE_KEY_HEADER, FENCE_REVISION_HEADER) for k, _ in metadata or ()):
            _authorize(rpc, lambda who: check_fence(who, rpc))
        token = _fence.set(fence_of(metadata))
        try:
            return await handler(self, request, context)
        finally:
            _fence.reset(token)

    return run


class ObjectsService(api_grpc.ObjectsServicer):
    def __init__(self, node: StoreNode, codec: ValueCodec | None = None) -> None:
        self.node = node
        self.codec = codec or ValueCodec()
        self.config_index = PodConfigIndex()
        self._index_followed = False

    # ------------------------------------------------------------------ reads

    @grpc_errors
    async def Get(self, request: api.GetRequest, context: grpc.aio.ServicerContext) -> api.Object:
        info = resolve_kind(request.kind)
        key = object_key(info, request.namespace, request.name)
        await self.node.barrier()
        if info.kind in CONFIG_KINDS:
            # decided on the pods bound to the caller, before anything is read: a node
            # learns nothing of objects its pods do not refer to, not even whether they exist
            self._check_config("Get", info, request.namespace, request.name)
            record = self._get(info, key, request.name)
            return wrap(self._decode_for("Get", info, record, key, request.namespace, request.name))
        if info.kind in DISCOVERY_KINDS:
            self._check_discovery("Get", info, request.namespace, request.name)
            record = self._get(info, key, request.name)
            return wrap(self._decode_for("Get", info, record, key, request.namespace, request.name))
        record = self._get(info, key, request.name)
        obj = self._decode_for("Get", info, record, key, request.namespace, request.name)
        _authorize("Get", lambda who: check_stored(who, "Get", obj))
        return wrap(obj)

    @grpc_errors
    async def List(
        self, request: api.ListRequest, context: grpc.aio.ServicerContext
    ) -> api.ListResponse:
        info = resolve_kind(request.kind)
        selection = _selection(info, request.label_selector, request.field_selector)
        if request.limit < 0:
            raise StoreError(Code.INVALID_ARGUMENT, "limit must not be negative")
        prefix = kind_prefix(info, request.namespace)
        if request.continue_token:
            start, revision = decode_continue(request.continue_token, prefix)
            if revision > self.node.read(lambda sm: sm.revision):
                await self.node.barrier()  # this member lags behind the first page's
        else:
            await self.node.barrier()
            start, revision = prefix, self.node.read(lambda sm: sm.revision)
        if info.kind in DISCOVERY_KINDS:
            self._check_discovery("List", info, request.namespace, "")
        page = self.node.read(
            lambda sm: _list_page(sm, selection, prefix, start, revision, request.limit, self.codec)
        )
        for key in page.undecodable_keys:
            log.warning("undecodable_object_skipped", key=key, kind=info.kind, op="list")
        return page

    # ----------------------------------------------------------------- writes

    @grpc_errors
    @fenced_write
    async def Create(
        self, request: api.CreateRequest, context: grpc.aio.ServicerContext
    ) -> api.Object:
        obj: Any = unwrap(request.object)
        info = kind_of(obj)
        meta = obj.metadata
        if not meta.name and meta.generate_name:
            meta.name = meta.generate_name + "".join(
                secrets.choice(_SUFFIX_CHARS) for _ in range(5)
            )
        apply_defaults(obj)
        for field in ("resource_version", "deletion_timestamp", "deletion_grace_period_seconds"):
            meta.ClearField(field)
        meta.uid = str(uuid.uuid4())
        meta.creation_timestamp.GetCurrentTime()
        meta.generation = 1
        _check(info, obj, validate(obj))
        key = storage_key(obj)
        value = self.codec.value(info, key, obj)
        txn = rpc_pb2.TxnRequest(
            compare=[
                rpc_pb2.Compare(
                    key=key,
                    target=rpc_pb2.Compare.CREATE,
                    result=rpc_pb2.Compare.EQUAL,
                    create_revision=0,
                )
            ],
            success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value))],
        )
        resp = await self._txn(txn)
        if not resp.succeeded:
            raise StoreError(
                Code.ALREADY_EXISTS, f'{info.plural} "{echo(meta.name)}" already exists'
            )
        meta.resource_version = str(resp.header.revision)
        return wrap(obj)

    @grpc_errors
    @fenced_write
    async def Update(
        self, request: api.UpdateRequest, context: grpc.aio.ServicerContext
    ) -> api.Object:
        new: Any = unwrap(request.object)
        info, key, rev, old = await self._current("Update", new)
        if not new.metadata.uid:
            new.metadata.uid = old.metadata.uid
        if not new.metadata.HasField("creation_timestamp"):
            _copy_field(old.metadata, new.metadata, "creation_timestamp")
        for field in ("deletion_timestamp", "deletion_grace_period_seconds", "generation"):
            _copy_field(old.metadata, new.metadata, field)
        if info.has_status:
            new.status.CopyFrom(old.status)
        if isinstance(new, pb.Pod) and new.spec.node_name and not old.spec.node_name:
            _mark_scheduled(new)
        apply_defaults(new)
        # decided on old: the version the Txn below is guarded by
        _authorize("Update", lambda who: check_stored(who, "Update", old, new))
        if info.has_spec and new.spec != old.spec:
            new.metadata.generation = old.metadata.generation + 1
        _check(info, new, validate_update(old, new))
        return wrap(await self._replace(info, key, rev, old, new))

    @grpc_errors
    @fenced_write
    async def UpdateStatus(
        self, request: api.UpdateRequest, context: grpc.aio.ServicerContext
    ) -> api.Object:
        given: Any = unwrap(request.object)
        info, key, rev, old = await self._current("UpdateStatus", given)
        if not info.has_status:
            raise StoreError(Code.INVALID_ARGUMENT, f"{info.plural} have no status")
        _authorize("UpdateStatus", lambda who: check_stored(who, "UpdateStatus", old, given))
        new: Any = type(old)()
        new.CopyFrom(old)
        new.status.CopyFrom(given.status)
        _check(info, new, validate_update(old, new))
        return wrap(await self._replace(info, key, rev, old, new))

    @grpc_errors
    @fenced_write
    async def Delete(
        self, request: api.DeleteRequest, context: grpc.aio.ServicerContext
    ) -> api.DeleteResponse:
        info = resolve_kind(request.kind)
        key = object_key(info, request.namespace, request.name)
        if request.HasField("grace_period_seconds") and request.grace_period_seconds < 0:
            raise StoreError(Code.INVALID_ARGUMENT, "grace_period_seconds must not be negative")
        if request.propagation_policy not in ("", "Background", *PROPAGATION_FINALIZERS):
            raise StoreError(
                Code.INVALID_ARGUMENT,
                f'propagation_policy: unsupported value "{request.propagation_policy}": '
                "must be Background, Foreground or Orphan",
            )
        wanted = parse_resource_version(request.resource_version)
        await self.node.barrier()
        for _ in range(DELETE_ATTEMPTS - 1):
            try:
                return await self._delete_once(info, key, request, wanted)
            except StoreError as err:
                if wanted or err.code != Code.ABORTED:
                    raise
                # no precondition: a concurrent write is no reason to fail; look again
        return await self._delete_once(info, key, request, wanted)

    async def _delete_once(
        self, info: KindInfo, key: bytes, request: api.DeleteRequest, wanted: int
    ) -> api.DeleteResponse:
        record = self._get(info, key, request.name)
        try:
            obj: Any = self.codec.decode(info, record.value, record.mod_revision, key)
        except UndecodableError as err:
            ns, name = request.namespace, request.name
            _authorize("Delete", lambda who: check_undecodable(who, "Delete", info, ns, name))
            if wanted and wanted != record.mod_revision:
                raise StoreError(Code.ABORTED, CONFLICT) from None
            await self._delete(key, record.mod_revision, name, info)
            log.warning("undecodable_object_deleted", key=err.key, kind=info.kind)
            return api.DeleteResponse(object=wrap(_stub(info, ns, name, record)), deleted=True)
        # decided on record: every write below is guarded by its mod_revision
        _authorize("Delete", lambda who: check_stored(who, "Delete", obj))
        if wanted and wanted != record.mod_revision:
            raise StoreError(Code.ABORTED, CONFLICT)
        grace = _grace_seconds(obj, request)
        finalizer = PROPAGATION_FINALIZERS.get(request.propagation_policy)
        if not obj.metadata.finalizers and grace == 0 and finalizer is None:
            await self._delete(key, record.mod_revision, request.name, info)
            return api.DeleteResponse(object=wrap(obj), deleted=True)
        meta = obj.metadata
        adds_finalizer = finalizer is not None and finalizer not in meta.finalizers
        pending_since = meta.HasField("deletion_timestamp")
        shortens = not pending_since or grace < meta.deletion_grace_period_seconds
        if shortens or adds_finalizer:
            pending: Any = type(obj)()
            pending.CopyFrom(obj)
            if not pending_since:
                pending.metadata.deletion_timestamp.GetCurrentTime()
            if shortens:
                pending.metadata.deletion_grace_period_seconds = grace
            if adds_finalizer:
                pending.metadata.finalizers.append(finalizer)
            obj = await self._replace(info, key, record.mod_revision, obj, pending)
        gone = not obj.metadata.finalizers and grace == 0
        return api.DeleteResponse(object=wrap(obj), deleted=gone)

    # ------------------------------------------------------------------ watch

    @grpc_stream_errors
    async def Watch(
        self, request: api.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api.WatchEvent]:
        info = resolve_kind(request.kind)
        selection = _selection(info, request.label_selector, request.field_selector)
        after = parse_resource_version(request.resource_version)
        prefix = kind_prefix(info, request.namespace)
        config_name = ""
        discovery = info.kind in DISCOVERY_KINDS and _is_node_caller()
        if discovery:
            # a node watches Services or Endpoints of a namespace where it has pods:
            # decided after a barrier, and again for every event
            await self.node.barrier()
            self._check_discovery("Watch", info, request.namespace, "")
        if info.kind in CONFIG_KINDS and _is_node_caller():
            # a node watches one object its pods refer to (the interceptor checked the
            # selector names one): decided after a barrier, and again for every event
            config_name = selection.fields.value_of("metadata.name") or ""
            await self.node.barrier()
            self._check_config("Watch", info, request.namespace, config_name)
        sink = ObjectWatchSink(
            selection,
            bookmarks=request.allow_bookmarks,
            bookmark_interval=self.node.hub.progress_interval,
            codec=self.codec,
        )
        stream = WatchStream(sink)
        hub = self.node.hub
        hub.create(
            stream,
            rpc_pb2.WatchCreateRequest(
                key=prefix,
                range_end=prefix_end(prefix),
                start_revision=after + 1 if after else 0,
                prev_kv=True,
                progress_notify=request.allow_bookmarks,
            ),
        )
        try:
            while True:
                item = await sink.queue.get()
                if item is None:
                    return
                if isinstance(item, StoreError):
                    raise item
                if config_name and item.type != api.WatchEvent.BOOKMARK:
                    self._check_config("Watch", info, request.namespace, config_name)
                if discovery and item.type != api.WatchEvent.BOOKMARK:
                    self._check_discovery("Watch", info, request.namespace, "")
                yield item
        finally:
            hub.remove_stream(stream)

    # ---------------------------------------------------------------- helpers

    def _check_config(self, rpc: str, info: KindInfo, namespace: str, name: str) -> None:
        """A node's access to a ConfigMap or Secret, on the pods bound to it now."""
        if not _is_node_caller():
            return
        index = self._synced_index()
        _authorize(rpc, lambda who: check_config(who, rpc, info, namespace, name, index.refers))

    def _check_discovery(self, rpc: str, info: KindInfo, namespace: str, name: str) -> None:
        """A node's access to Services or Endpoints, on the namespaces of its pods now."""
        if not _is_node_caller():
            return
        index = self._synced_index()
        _authorize(
            rpc, lambda who: check_discovery(who, rpc, info, namespace, name, index.has_pods)
        )

    def _synced_index(self) -> PodConfigIndex:
        index = self.config_index
        index.sync(self.node.read)
        if not self._index_followed:
            self._index_followed = True
            self.node._spawn(self._follow_config_index())  # stopped with the node
        return index

    async def _follow_config_index(self) -> None:
        """Keep the node authorizer's index near the state's revision: an incremental
        sync a second costs a prefix test per write, where falling behind the watch
        history would cost a rebuild from every pod at the next node's request."""
        while True:
            await asyncio.sleep(CONFIG_INDEX_REFRESH)
            try:
                self.config_index.sync(self.node.read)
            except Exception:  # never let the follower die: requests sync themselves anyway
                log.exception("config_index_sync_failed")

    def _decode_for(
        self, rpc: str, info: KindInfo, record: Record, key: bytes, ns: str, name: str
    ) -> Any:
        """The stored object rpc acts on; DATA_LOSS naming the key when it does not decode
        (PERMISSION_DENIED for a caller who could not be told whether it is theirs)."""
        try:
            return self.codec.decode(info, record.value, record.mod_revision, key)
        except UndecodableError as err:
            log.warning("undecodable_object", key=err.key, kind=info.kind, op=rpc)
            _authorize(rpc, lambda who: check_undecodable(who, rpc, info, ns, name))
            raise

    def _get(self, info: KindInfo, key: bytes, name: str) -> Record:
        record = self.node.read(lambda sm: sm.get(key))
        if record is None:
            raise StoreError(Code.NOT_FOUND, f'{info.plural} "{echo(name)}" not found')
        return record

    async def _current(self, rpc: str, obj: Any) -> tuple[KindInfo, bytes, int, Any]:
        """(kind, key, the version the client read, the stored object) for an update.

        The stored object is the version rev, the one the update's Txn is guarded by.
        """
        info = kind_of(obj)
        if info.namespaced and not obj.metadata.namespace:
            obj.metadata.namespace = "default"
        key = storage_key(obj)
        rev = parse_resource_version(obj.metadata.resource_version, "metadata.resourceVersion")
        if not rev:
            raise StoreError(
                Code.INVALID_ARGUMENT, "metadata.resourceVersion: must be specified for an update"
            )
        record = self.node.read(lambda sm: sm.get(key))
        if record is None or record.mod_revision != rev:
            await self.node.barrier()  # this member may lag: look again
            record = self._get(info, key, obj.metadata.name)
        if record.mod_revision != rev:
            raise StoreError(Code.ABORTED, CONFLICT)
        meta = obj.metadata
        return info, key, rev, self._decode_for(rpc, info, record, key, meta.namespace, meta.name)

    async def _replace(self, info: KindInfo, key: bytes, rev: int, old: Any, new: Any) -> Any:
        """Write new over the stored version rev; delete it instead once it may go."""
        if new.metadata.HasField("deletion_timestamp") and not new.metadata.finalizers:
            grace = new.metadata.deletion_grace_period_seconds
            if not (isinstance(new, pb.Pod) and grace > 0):
                await self._delete(key, rev, new.metadata.name, info)
                return new
        if encode(new) == encode(old) and not self._stale(info, key, rev):
            return old  # no change: no write, no new version
        value = self.codec.value(info, key, new)
        txn = rpc_pb2.TxnRequest(
            compare=[_mod_equals(key, rev)],
            success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value))],
            failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key))],
        )
        resp = await self._txn(txn)
        if not resp.succeeded:
            _raise_conflict(resp, info, new.metadata.name)
        new.metadata.resource_version = str(resp.header.revision)
        return new

    def _stale(self, info: KindInfo, key: bytes, rev: int) -> bool:
        """Whether the stored version rev should be rewritten even unchanged (codec.stale)."""
        record = self.node.read(lambda sm: sm.get(key))
        return (
            record is not None
            and record.mod_revision == rev
            and self.codec.stale(info, record.value)
        )

    async def _delete(self, key: bytes, rev: int, name: str, info: KindInfo) -> None:
        txn = rpc_pb2.TxnRequest(
            compare=[_mod_equals(key, rev)],
            success=[rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key))],
            failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key))],
        )
        resp = await self._txn(txn)
        if not resp.succeeded:
            _raise_conflict(resp, info, name)

    async def _txn(self, txn: rpc_pb2.TxnRequest) -> rpc_pb2.TxnResponse:
        fence = _fence.get()
        if fence is not None:
            fence_key, fence_rev = fence
            txn.compare.append(
                rpc_pb2.Compare(
                    key=fence_key,
                    target=rpc_pb2.Compare.CREATE,
                    result=rpc_pb2.Compare.EQUAL,
                    create_revision=fence_rev,
                )
            )
            txn.failure.append(rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=fence_key)))
        check_size(txn)
        resp: rpc_pb2.TxnResponse = await self.node.propose(("txn", txn.SerializeToString()))
        if fence is not None and not resp.succeeded:
            kvs = resp.responses.pop().response_range.kvs
            if not kvs or kvs[0].create_revision != fence[1]:
                raise StoreError(
                    Code.FAILED_PRECONDITION,
                    f"fenced: {fence[0].decode(errors='replace')} is no longer at create "
                    f"revision {fence[1]} (leadership lost)",
                )
        return resp


def _mod_equals(key: bytes, rev: int) -> rpc_pb2.Compare:
    return rpc_pb2.Compare(
        key=key, target=rpc_pb2.Compare.MOD, result=rpc_pb2.Compare.EQUAL, mod_revision=rev
    )


def _raise_conflict(resp: rpc_pb2.TxnResponse, info: KindInfo, name: str) -> None:
    if resp.responses and not resp.responses[0].response_range.kvs:
        raise StoreError(Code.NOT_FOUND, f'{info.plural} "{echo(name)}" not found')
    raise StoreError(Code.ABORTED, CONFLICT)


_PRESENCE = {"creation_timestamp", "deletion_timestamp", "deletion_grace_period_seconds"}


def _copy_field(src: Any, dst: Any, field: str) -> None:
    """dst.field = src.field, including "unset" for fields with presence."""
    if field in _PRESENCE and not src.HasField(field):
        dst.ClearField(field)
        return
    value = getattr(src, field)
    if isinstance(value, Message):
        getattr(dst, field).CopyFrom(value)
    else:
        setattr(dst, field, value)


def _mark_scheduled(pod: pb.Pod) -> None:
    """Binding a pod (setting spec.nodeName) also records PodScheduled=True, in the same
    write, as Kubernetes' Binding does: one store write per scheduled pod, not two."""
    for cond in pod.status.conditions:
        if cond.type == "PodScheduled":
            if cond.status != "True":
                cond.status = "True"
                cond.last_transition_time.GetCurrentTime()
            cond.reason, cond.message = "", ""
            return
    cond = pod.status.conditions.add(type="PodScheduled", status="True")
    cond.last_transition_time.GetCurrentTime()


def _grace_seconds(obj: Any, request: api.DeleteRequest) -> int:
    """Seconds a pod's processes get to stop; 0 (delete at once) for other kinds.

    As in Kubernetes, a pod that was never scheduled or has finished has no
    processes to stop and goes at once.
    """
    if not isinstance(obj, pb.Pod):
        return 0
    if request.HasField("grace_period_seconds"):
        grace = request.grace_period_seconds
    elif obj.spec.HasField("termination_grace_period_seconds"):
        grace = obj.spec.termination_grace_period_seconds
    else:
        grace = DEFAULT_TERMINATION_GRACE_SECONDS
    if not obj.spec.node_name or has_ended(obj):
        return 0
    return int(grace)


def _is_node_caller() -> bool:
    who = current_caller()
    return who is not None and who.role == "node"


def _stub(info: KindInfo, namespace: str, name: str, record: Record) -> Any:
    """What Delete answers for an undecodable object: its kind, name and last version."""
    obj: Any = info.message()
    obj.metadata.name = name
    obj.metadata.namespace = namespace if info.namespaced else ""
    obj.metadata.resource_version = str(record.mod_revision)
    return obj


def _authorize(rpc: str, check: Callable[[Identity], None]) -> None:
    """Run an authorization check for the caller; PERMISSION_DENIED (logged) if it refuses.

    No caller means no AuthInterceptor: an insecure server, where everyone is admin.
    """
    identity = current_caller()
    if identity is None:
        return
    try:
        check(identity)
    except Denied as denied:
        raise refusal(identity, rpc, denied) from None


def _check(info: KindInfo, obj: Any, errors: list[FieldError]) -> None:
    if errors:
        detail = join_bounded(str(e) for e in errors)
        raise StoreError(
            Code.INVALID_ARGUMENT, f'{info.kind} "{echo(obj.metadata.name)}" is invalid: {detail}'
        )


def _selection(info: KindInfo, labels: str, fields: str) -> Selection:
    try:
        return Selection(
            info,
            selectors.parse_label_selector(labels),
            selectors.parse_field_selector(fields, info.kind),
        )
    except selectors.SelectorError as err:
        raise StoreError(Code.INVALID_ARGUMENT, str(err)) from None


def _list_page(
    sm: StateMachine,
    selection: Selection,
    prefix: bytes,
    start: bytes,
    revision: int,
    limit: int,
    codec: ValueCodec | None = None,
) -> api.ListResponse:
    """One page of matching objects from start, read at revision (raises if compacted)."""
    codec = codec or ValueCodec()
    out = api.ListResponse(resource_version=str(revision))
    end = prefix_end(prefix)
    key = start
    while True:
        chunk = sm.range(
            rpc_pb2.RangeRequest(key=key, range_end=end, revision=revision, limit=LIST_CHUNK)
        )
        for i, kv in enumerate(chunk.kvs):
            try:
                obj = codec.decode(selection.info, kv.value, kv.mod_revision, kv.key)
            except UndecodableError as err:
                out.undecodable_keys.append(err.key)  # skipped: one bad value fails no list
                continue
            if selection.matches(obj):
                out.items.append(wrap(obj))
            if limit and len(out.items) == limit:
                if i + 1 < len(chunk.kvs) or chunk.more:
                    out.continue_token = encode_continue(kv.key + b"\0", revision)
                return out
        if not chunk.more:
            return out
        key = chunk.kvs[-1].key + b"\0"


__all__ = ["ObjectsService"]
