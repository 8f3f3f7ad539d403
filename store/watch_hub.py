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

# History goes out in responses of at most this many revisions (etcd's
# watchBatchMaxRevs), never splitting a revision.
CATCHUP_REVISIONS = 1000
# etcd's "not a watch" id: refused creates and progress responses carry it.
INVALID_WATCH_ID = -1
# A fragment=true watcher gets responses at least this large split in parts, like
# etcd 3.4's default (--max-request-bytes 1.5 MiB plus 512 KiB of gRPC overhead).
FRAGMENT_BYTES = 1536 * 1024 + 512 * 1024


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
    fragment: bool = False
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
    # etcd's Watch API: a watch from exactly the compacted revision gets that
    # revision's surviving puts, as from etcd (WatchHub.create); the Objects watch
    # leaves this off (it would lose that revision's deletes silently)
    from_compaction_revision: bool = False

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
        puts_at: Callable[[int, bytes, bytes], tuple[list[Event], int]] | None = None,
    ) -> None:
        """``history(after)`` returns (events with revision > after, compacted revision);
        ``puts_at(rev, key, range_end)`` (the puts of revision rev still visible, the
        compacted revision): see StateMachine.puts_at."""
        self._history = history
        self._puts_at = puts_at
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
        """etcd 3.4's answers (etcdserver/api/v3rpc/watch.go, mvcc/watcher.go):

        - an empty key is the key "\\0" (the smallest key), so ``key="" range_end="\\0"``
          watches every key;
        - a refused create answers one response with watch_id -1, created and
          canceled, and the reason: an empty range (range_end <= key, "mvcc:
          watcher range is empty") or an id in use on the stream;
        - a watch from a compacted revision is created (one response), then
          cancelled in a second one carrying compact_revision, header revision 0
          and no reason; its id stays taken until the client cancels it;
        - a watch from exactly the compacted revision gets that revision's puts
          (on streams with ``from_compaction_revision``, see WatchStream).
        """
        key = req.key or b"\0"
        if req.range_end not in (b"", b"\0") and key >= req.range_end:
            self._refuse(stream, "mvcc: watcher range is empty")
            return
        if req.watch_id:
            wid = req.watch_id
            if wid in stream.watchers:
                self._refuse(stream, "mvcc: duplicate watch ID provided on the WatchStream")
                return
        else:
            wid = stream.allocate_id()
        start = req.start_revision if req.start_revision > 0 else self.delivered + 1
        filters = set(req.filters)
        w = Watcher(
            watch_id=wid,
            stream=stream,
            key=key,
            range_end=req.range_end,
            next_rev=start,
            prev_kv=req.prev_kv,
            no_put=rpc_pb2.WatchCreateRequest.NOPUT in filters,
            no_delete=rpc_pb2.WatchCreateRequest.NODELETE in filters,
            progress_notify=req.progress_notify,
            fragment=req.fragment,
            last_sent=self._clock(),
        )
        self._send(
            stream,
            rpc_pb2.WatchResponse(header=self._header(self.delivered), watch_id=wid, created=True),
        )
        stream.watchers[wid] = w
        events, compacted = ([], 0) if start > self.delivered else self._history(start - 1)
        if start == compacted and stream.from_compaction_revision and self._puts_at:
            # History holds no event at the compacted revision itself; etcd's
            # compaction keeps each key's newest version there, so a watch from it
            # gets that revision's puts (not its deletes).
            puts, now = self._puts_at(start, key, req.range_end)
            if now == compacted:
                events, compacted = puts + events, start - 1
            else:  # compacted further meanwhile: those events are gone
                compacted = now
        if start <= compacted:
            self._send_compacted(w, compacted)
            return
        self._watchers.add(w)
        backlog = [ev for ev in events if ev.revision <= self.delivered and w.wants(ev)]
        for chunk in _by_revisions(backlog, CATCHUP_REVISIONS):
            self._deliver(w, chunk, {})
            if w not in self._watchers:
                return
        w.next_rev = max(w.next_rev, self.delivered + 1)

    def _refuse(self, stream: WatchStream, reason: str) -> None:
        self._send(
            stream,
            rpc_pb2.WatchResponse(
                header=self._header(self.delivered),
                watch_id=INVALID_WATCH_ID,
                created=True,
                canceled=True,
                cancel_reason=reason,
            ),
        )

    def _send_compacted(self, w: Watcher, compacted: int) -> None:
        """Cancel a watcher whose next revision is compacted, as etcd's mvcc does.

        The watcher stops receiving events but keeps its id on the stream (a create
        with that id is a duplicate; a cancel of it is answered) until cancelled.
        """
        self._watchers.discard(w)
        self._send(
            w.stream,
            rpc_pb2.WatchResponse(
                header=self._header(0),
                watch_id=w.watch_id,
                canceled=True,
                compact_revision=compacted,
            ),
        )

    def cancel(self, stream: WatchStream, watch_id: int) -> None:
        """Cancel one watcher; like etcd, an id not in use on the stream gets no answer."""
        w = stream.watchers.pop(watch_id, None)
        if w is None:
            return
        self._watchers.discard(w)
        self._send(
            stream,
            rpc_pb2.WatchResponse(
                header=self._header(self.delivered), watch_id=watch_id, canceled=True
            ),
        )

    def progress(self, stream: WatchStream) -> None:
        """Answer a WatchProgressRequest: every future event is above this revision."""
        self._send(
            stream,
            rpc_pb2.WatchResponse(header=self._header(self.delivered), watch_id=INVALID_WATCH_ID),
        )

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
        if w.fragment and len(events) > 1:
            self._deliver_fragments(w, events)
            return
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

    def _deliver_fragments(self, w: Watcher, events: list[Event]) -> None:
        """etcd's sendFragments: a response of FRAGMENT_BYTES or more with two or more
        events goes in parts, each as large as it can be while under the limit (one
        event at least), all but the last marked fragment=true."""
        resp = rpc_pb2.WatchResponse(
            header=self._header(max(self.delivered, events[-1].revision)),
            watch_id=w.watch_id,
            events=[ev.to_proto(w.prev_kv) for ev in events],
        )
        w.next_rev = events[-1].revision + 1
        w.last_sent = self._clock()
        self.events_sent += len(events)
        if resp.ByteSize() < FRAGMENT_BYTES:
            self._send(w.stream, resp)
            return
        protos = list(resp.events)
        base = rpc_pb2.WatchResponse(header=resp.header, watch_id=w.watch_id, fragment=True)
        overhead = base.ByteSize()
        i = 0
        while i < len(protos):
            part = rpc_pb2.WatchResponse()
            part.CopyFrom(base)
            size = overhead
            while i < len(protos):
                n = protos[i].ByteSize()
                size += 1 + _varint_len(n) + n  # tag, length, event
                if part.events and size >= FRAGMENT_BYTES:
                    break
                part.events.append(protos[i])
                i += 1
            part.fragment = i < len(protos)
            self._send(w.stream, part)
            if w not in self._watchers:
                return

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
            self._send_compacted(w, compacted)
        self.delivered = revision


def _varint_len(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def _by_revisions(events: list[Event], most: int) -> list[list[Event]]:
    """Events in runs of at most ``most`` distinct revisions (events are in revision order)."""
    chunks: list[list[Event]] = []
    revs = 0
    for ev in events:
        if not chunks or (ev.revision != chunks[-1][-1].revision and revs == most):
            chunks.append([])
            revs = 0
        if not chunks[-1] or ev.revision != chunks[-1][-1].revision:
            revs += 1
        chunks[-1].append(ev)
    return chunks
