"""Fan-out of applied events to watchers, with etcd's Watch semantics.

Lives in the asyncio thread. The Raft glue hands over the events of every
applied batch, in log order; ``delivered`` is the last revision handed to
watchers. A new watch starting at an older revision first receives history
``(start-1, delivered]`` from the state machine and then live events, both
taken synchronously in the loop thread, so nothing falls between them: every
event after the start revision is sent once, in order.

A watcher never blocks the store: each stream has a bound on queued responses;
a stream that exceeds it has its watchers cancelled with a reason naming the
revision to resume from.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from protos import rpc_pb2

from .keyspace import in_range
from .state_machine import Event

log = structlog.get_logger("store.watch")

CATCHUP_CHUNK = 1000


class Sink(Protocol):
    """Where a stream's responses go (a queue drained by the gRPC handler)."""

    def send(self, resp: bytes) -> None: ...
    def pending(self) -> int: ...


@dataclass(eq=False)
class Watcher:
    watch_id: int
    stream: WatchStream
    key: bytes
    range_end: bytes
    next_rev: int  # first revision this watcher has not been sent
    prev_kv: bool = False
    no_put: bool = False
    no_delete: bool = False
    progress_notify: bool = False
    last_sent: float = 0.0

    def wants(self, ev: Event) -> bool:
        if ev.revision < self.next_rev or not in_range(ev.key, self.key, self.range_end):
            return False
        return not (self.no_delete if ev.is_delete else self.no_put)


@dataclass(eq=False)
class WatchStream:
    """One gRPC Watch call: many watchers multiplexed by watch_id."""

    sink: Sink
    watchers: dict[int, Watcher] = field(default_factory=dict)
    next_id: int = 0

    def allocate_id(self) -> int:
        while self.next_id in self.watchers:
            self.next_id += 1
        wid = self.next_id
        self.next_id += 1
        return wid


class WatchHub:
    def __init__(
        self,
        history: Callable[[int], tuple[list[Event], int]],
        header: Callable[[int], rpc_pb2.ResponseHeader],
        *,
        max_pending: int = 50_000,
        progress_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``history(after)`` returns (events with revision > after, compacted revision)."""
        self._history = history
        self._header = header
        self._max_pending = max_pending
        self.progress_interval = progress_interval
        self._clock = clock
        self.delivered = 0
        self._watchers: set[Watcher] = set()
        self.events_sent = 0
        self.slow_cancelled = 0

    @property
    def watcher_count(self) -> int:
        return len(self._watchers)

    # ---------------------------------------------------------------- create

    def create(self, stream: WatchStream, req: rpc_pb2.WatchCreateRequest) -> None:
        if req.watch_id:
            wid = req.watch_id
            if wid in stream.watchers:
                self._send(
                    stream,
                    rpc_pb2.WatchResponse(
                        header=self._header(self.delivered),
                        watch_id=wid,
                        created=True,
                        canceled=True,
                        cancel_reason="mvcc: duplicate watch ID",
                    ),
                )
                return
        else:
            wid = stream.allocate_id()
        if not req.key:
            self._send(
                stream,
                rpc_pb2.WatchResponse(
                    header=self._header(self.delivered),
                    watch_id=wid,
                    created=True,
                    canceled=True,
                    cancel_reason="etcdserver: key is not provided",
                ),
            )
            return
        start = req.start_revision if req.start_revision > 0 else self.delivered + 1
        filters = set(req.filters)
        w = Watcher(
            watch_id=wid,
            stream=stream,
            key=req.key,
            range_end=req.range_end,
            next_rev=start,
            prev_kv=req.prev_kv,
            no_put=rpc_pb2.WatchCreateRequest.NOPUT in filters,
            no_delete=rpc_pb2.WatchCreateRequest.NODELETE in filters,
            progress_notify=req.progress_notify,
            last_sent=self._clock(),
        )
        events, compacted = ([], 0) if start > self.delivered else self._history(start - 1)
        if start <= compacted:
            self._send(
                stream,
                rpc_pb2.WatchResponse(
                    header=self._header(self.delivered),
                    watch_id=wid,
                    created=True,
                    canceled=True,
                    compact_revision=compacted,
                    cancel_reason="etcdserver: mvcc: required revision has been compacted",
                ),
            )
            return
        self._send(
            stream,
            rpc_pb2.WatchResponse(header=self._header(self.delivered), watch_id=wid, created=True),
        )
        stream.watchers[wid] = w
        self._watchers.add(w)
        backlog = [ev for ev in events if ev.revision <= self.delivered and w.wants(ev)]
        for i in range(0, len(backlog), CATCHUP_CHUNK):
            self._deliver(w, backlog[i : i + CATCHUP_CHUNK], {})
            if w not in self._watchers:
                return
        w.next_rev = max(w.next_rev, self.delivered + 1)

    def cancel(self, stream: WatchStream, watch_id: int) -> None:
        w = stream.watchers.pop(watch_id, None)
        if w is not None:
            self._watchers.discard(w)
        self._send(
            stream,
            rpc_pb2.WatchResponse(
                header=self._header(self.delivered), watch_id=watch_id, canceled=True
            ),
        )

    def progress(self, stream: WatchStream) -> None:
        """Answer a WatchProgressRequest: every future event is above this revision."""
        self._send(stream, rpc_pb2.WatchResponse(header=self._header(self.delivered), watch_id=-1))

    def remove_stream(self, stream: WatchStream) -> None:
        for w in stream.watchers.values():
            self._watchers.discard(w)
        stream.watchers.clear()

    # --------------------------------------------------------------- deliver

    def on_events(self, events: list[Event]) -> None:
        """Events of one applied batch, in revision order (loop thread)."""
        if not events:
            return
        cache: dict[Any, bytes] = {}
        for w in list(self._watchers):
            mine = [ev for ev in events if w.wants(ev)]
            if mine:
                self._deliver(w, mine, cache)
        self.delivered = max(self.delivered, events[-1].revision)
        for w in self._watchers:
            if w.next_rev <= self.delivered:
                w.next_rev = self.delivered + 1

    def _deliver(self, w: Watcher, events: list[Event], cache: dict[Any, bytes]) -> None:
        """Send events to one watcher.

        The serialized header+events part is shared by every watcher that gets
        the same events in the same form (the common case: many watchers on one
        prefix), so a write costs one serialization plus a few bytes per watcher.
        Protobuf merges concatenated encodings, so watch_id is simply prepended.
        """
        key = (tuple(map(id, events)), w.prev_kv)
        body = cache.get(key)
        if body is None:
            rev = max(self.delivered, events[-1].revision)
            body = rpc_pb2.WatchResponse(
                header=self._header(rev), events=[ev.to_proto(w.prev_kv) for ev in events]
            ).SerializeToString()
            cache[key] = body
        w.next_rev = events[-1].revision + 1
        w.last_sent = self._clock()
        self.events_sent += len(events)
        self._send(w.stream, rpc_pb2.WatchResponse(watch_id=w.watch_id).SerializeToString() + body)

    def _send(self, stream: WatchStream, resp: rpc_pb2.WatchResponse | bytes) -> None:
        stream.sink.send(resp if isinstance(resp, bytes) else resp.SerializeToString())
        if stream.sink.pending() > self._max_pending and stream.watchers:
            self._cancel_slow(stream)

    def _cancel_slow(self, stream: WatchStream) -> None:
        for w in list(stream.watchers.values()):
            self._watchers.discard(w)
            self.slow_cancelled += 1
            log.info("slow_watcher_cancelled", watch_id=w.watch_id, resume_revision=w.next_rev)
            cancel = rpc_pb2.WatchResponse(
                header=self._header(self.delivered),
                watch_id=w.watch_id,
                canceled=True,
                cancel_reason=f"mizzen: watcher too slow; resume from revision {w.next_rev}",
            )
            stream.sink.send(cancel.SerializeToString())  # not via _send: no recursion
        stream.watchers.clear()

    def progress_tick(self) -> None:
        """Send progress notifications to idle watchers that asked for them."""
        now = self._clock()
        for w in list(self._watchers):
            if w.progress_notify and now - w.last_sent >= self.progress_interval:
                w.last_sent = now
                self._send(
                    w.stream,
                    rpc_pb2.WatchResponse(header=self._header(self.delivered), watch_id=w.watch_id),
                )

    def resync(self, revision: int) -> None:
        """The state jumped (snapshot installed): deliver what history still has, else cancel."""
        if revision <= self.delivered:
            return
        events, compacted = self._history(self.delivered)
        if compacted <= self.delivered:
            self.on_events([ev for ev in events if ev.revision <= revision])
            self.delivered = revision
            return
        for w in list(self._watchers):
            self._watchers.discard(w)
            w.stream.watchers.pop(w.watch_id, None)
            self._send(
                w.stream,
                rpc_pb2.WatchResponse(
                    header=self._header(revision),
                    watch_id=w.watch_id,
                    canceled=True,
                    compact_revision=compacted,
                    cancel_reason="etcdserver: mvcc: required revision has been compacted",
                ),
            )
        self.delivered = revision
