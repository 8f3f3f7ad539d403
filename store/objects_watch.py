"""Watch of typed objects: etcd watch events on a kind's prefix -> WatchEvents.

The WatchHub sends serialized etcd WatchResponses to a sink; ObjectWatchSink
decodes them in the loop thread, applies the label and field selectors
server-side and queues WatchEvents for one gRPC stream. Each etcd event
carries its previous value, so a change that moves an object out of the
selection becomes DELETED for this watcher (and into it, ADDED), as in
Kubernetes. A progress notification becomes a BOOKMARK when asked for.

A value that does not decode as the kind (written through the admin-only raw
KV API, or a Secret sealed with a key this member does not have) is treated
as absent, as List skips it: logged, never sent, and never
the end of the stream. An object that becomes undecodable is DELETED for a
watcher that had it; one that becomes valid again is ADDED.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from google.protobuf.message import Message

from mizzen.api.kinds import KindInfo
from mizzen.api.selectors import FieldMatcher, LabelMatcher
from protos import kv_pb2, rpc_pb2
from protos import objects_api_pb2 as api

from .errors import Code, StoreError
from .objects_codec import UndecodableError, ValueCodec, wrap

log = structlog.get_logger("store.objects")

Item = api.WatchEvent | StoreError | None


@dataclass(frozen=True)
class Selection:
    """Which objects of one kind a watch or list wants."""

    info: KindInfo
    labels: LabelMatcher
    fields: FieldMatcher

    def matches(self, obj: Message) -> bool:
        meta: Any = obj.metadata  # type: ignore[attr-defined]
        return self.labels.matches(meta.labels) and self.fields.matches(obj)


class ObjectWatchSink:
    """Converts one watcher's etcd responses into queued WatchEvents (None ends the stream)."""

    def __init__(
        self,
        selection: Selection,
        *,
        bookmarks: bool,
        bookmark_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        codec: ValueCodec | None = None,
    ) -> None:
        self.selection = selection
        self.codec = codec or ValueCodec()
        self.bookmarks = bookmarks
        self.bookmark_interval = bookmark_interval
        self._clock = clock
        self._last_put = clock()
        self.queue: asyncio.Queue[Item] = asyncio.Queue()

    def _put(self, item: Item) -> None:
        self._last_put = self._clock()
        self.queue.put_nowait(item)

    def pending(self) -> int:
        return self.queue.qsize()

    def send(self, data: bytes) -> None:
        resp = rpc_pb2.WatchResponse.FromString(data)
        if resp.canceled:
            self._put(_cancel_error(resp))
            return
        if resp.created:
            return
        if not resp.events:
            # a progress notification: every event up to header.revision was sent
            if self.bookmarks and resp.header.revision:
                self._put(self._bookmark(resp.header.revision))
            return
        sent = False
        for ev in resp.events:
            out = self._convert(ev)
            if out is not None:
                self._put(out)
                sent = True
        if not sent and self.bookmarks and self._clock() - self._last_put >= self.bookmark_interval:
            # The hub saw this watcher busy, so it sends no progress notifications,
            # yet the selectors dropped everything: advance the client's version anyway.
            self._put(self._bookmark(resp.events[-1].kv.mod_revision))

    def _convert(self, ev: kv_pb2.Event) -> api.WatchEvent | None:
        revision = ev.kv.mod_revision
        new = self._decode(ev.kv, revision) if ev.type == kv_pb2.Event.PUT else None
        old = self._decode(ev.prev_kv, revision) if ev.HasField("prev_kv") else None
        new_in = new is not None and self.selection.matches(new)
        old_in = old is not None and self.selection.matches(old)
        if new is not None and new_in:
            kind = api.WatchEvent.MODIFIED if old_in else api.WatchEvent.ADDED
            return api.WatchEvent(type=kind, object=wrap(new))
        if old is not None and old_in:
            # deleted, or changed so that it no longer matches: the last state it
            # matched in, at the revision of the change (as Kubernetes' watch cache does)
            return api.WatchEvent(type=api.WatchEvent.DELETED, object=wrap(old))
        return None

    def _decode(self, kv: kv_pb2.KeyValue, revision: int) -> Message | None:
        """The object kv holds (at revision), or None (logged) when it does not decode."""
        try:
            return self.codec.decode(self.selection.info, kv.value, revision, kv.key)
        except UndecodableError as err:
            log.warning(
                "undecodable_object_skipped",
                key=err.key,
                kind=self.selection.info.kind,
                op="watch",
                revision=revision,
            )
            return None

    def _bookmark(self, revision: int) -> api.WatchEvent:
        empty = self.selection.info.message()
        empty.metadata.resource_version = str(revision)  # type: ignore[attr-defined]
        return api.WatchEvent(type=api.WatchEvent.BOOKMARK, object=wrap(empty))


def _cancel_error(resp: rpc_pb2.WatchResponse) -> StoreError:
    if resp.compact_revision:
        return StoreError(
            Code.OUT_OF_RANGE,
            f"too old resource version: history before revision {resp.compact_revision} "
            "has been compacted; list again and watch from the list's resource_version",
        )
    return StoreError(Code.UNAVAILABLE, f"watch cancelled: {resp.cancel_reason}")
