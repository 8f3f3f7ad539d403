"""WatchHub on a real StateMachine: catch-up then live, filters, compaction, slow streams."""

from __future__ import annotations

from protos import rpc_pb2
from store.state_machine import Event, StateMachine
from store.watch_hub import WatchHub, WatchStream, _by_revisions


class ListSink:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.drained = 0

    def send(self, resp: bytes) -> None:
        self.sent.append(resp)

    def pending(self) -> int:
        return len(self.sent) - self.drained

    def responses(self) -> list[rpc_pb2.WatchResponse]:
        return [rpc_pb2.WatchResponse.FromString(b) for b in self.sent]


class Harness:
    def __init__(self, **kw: object) -> None:
        self.sm = StateMachine(history_limit=1000)
        self.hub = WatchHub(self.history, self.header, puts_at=self.puts_at, **kw)  # type: ignore[arg-type]
        self.hub.delivered = self.sm.revision

    def history(self, after: int) -> tuple[list[Event], int]:
        return list(self.sm.events_after(after)), self.sm.compacted

    def puts_at(self, rev: int, key: bytes, range_end: bytes) -> tuple[list[Event], int]:
        return self.sm.puts_at(rev, key, range_end), self.sm.compacted

    def header(self, rev: int) -> rpc_pb2.ResponseHeader:
        return rpc_pb2.ResponseHeader(revision=rev, member_id=7)

    def put(self, key: bytes, value: bytes = b"v", deliver: bool = True) -> int:
        before = self.sm.revision
        req = rpc_pb2.PutRequest(key=key, value=value)
        self.sm.apply(("put", req.SerializeToString()))
        if deliver:
            self.hub.on_events(self.sm.events_after(before))
        return self.sm.revision

    def delete(self, key: bytes) -> int:
        before = self.sm.revision
        self.sm.apply(("delete", rpc_pb2.DeleteRangeRequest(key=key).SerializeToString()))
        self.hub.on_events(self.sm.events_after(before))
        return self.sm.revision

    def watch(self, sink: ListSink, **kw: object) -> WatchStream:
        stream = WatchStream(sink)
        self.hub.create(stream, rpc_pb2.WatchCreateRequest(**kw))  # type: ignore[arg-type]
        return stream


def event_revs(sink: ListSink, watch_id: int = 0) -> list[int]:
    return [
        ev.kv.mod_revision for r in sink.responses() if r.watch_id == watch_id for ev in r.events
    ]


def test_catch_up_then_live_without_gaps_or_duplicates() -> None:
    h = Harness()
    revs = [h.put(b"k%d" % i) for i in range(5)]
    h.put(b"other")
    pending = h.put(b"k9", deliver=False)  # applied, not yet handed to the hub
    sink = ListSink()
    h.watch(sink, key=b"k", range_end=b"l", start_revision=revs[1])
    h.hub.on_events(h.sm.events_after(pending - 1))
    live = h.put(b"k5")
    first = sink.responses()[0]
    assert first.created and not first.canceled
    assert event_revs(sink) == [*revs[1:], pending, live]


def test_watch_from_now_sees_only_later_events_and_filters_apply() -> None:
    h = Harness()
    h.put(b"a")
    sink = ListSink()
    h.watch(sink, key=b"a", filters=[rpc_pb2.WatchCreateRequest.NOPUT], prev_kv=True)
    h.put(b"a", b"2")
    d = h.delete(b"a")
    events = [ev for r in sink.responses() for ev in r.events]
    assert [(e.type, e.kv.mod_revision) for e in events] == [(1, d)]  # only the DELETE
    assert events[0].prev_kv.value == b"2"


def test_compacted_start_revision_is_cancelled_with_compact_revision() -> None:
    h = Harness()
    for i in range(5):
        h.put(b"k%d" % i)
    h.sm.apply(("compact", 4))
    sink = ListSink()
    stream = h.watch(sink, key=b"k", range_end=b"l", start_revision=2)
    # etcd's sequence: created, then a separate cancel (one response with both hung aetcd)
    created, cancelled = sink.responses()
    assert created.created and not created.canceled and not created.compact_revision
    assert cancelled.canceled and not cancelled.created and cancelled.compact_revision == 4
    assert (cancelled.header.revision, cancelled.cancel_reason) == (0, "")
    assert h.hub.watcher_count == 0
    # its id stays taken until the client cancels it, as in etcd
    h.hub.create(stream, rpc_pb2.WatchCreateRequest(key=b"k", watch_id=0))
    assert sink.responses()[-1].watch_id == 1
    h.hub.cancel(stream, 0)
    h.hub.cancel(stream, 0)  # unknown by now: no answer
    assert [(r.watch_id, r.canceled) for r in sink.responses()[-2:]] == [(1, False), (0, True)]


def test_ids_are_per_stream_and_duplicates_refused() -> None:
    h = Harness()
    sink = ListSink()
    stream = h.watch(sink, key=b"a")
    h.hub.create(stream, rpc_pb2.WatchCreateRequest(key=b"b"))
    h.hub.create(stream, rpc_pb2.WatchCreateRequest(key=b"c", watch_id=1))
    ids = [(r.watch_id, r.created, r.canceled, r.cancel_reason) for r in sink.responses()]
    assert ids == [
        (0, True, False, ""),
        (1, True, False, ""),
        (-1, True, True, "mvcc: duplicate watch ID provided on the WatchStream"),
    ]
    h.hub.cancel(stream, 0)
    h.put(b"a")
    h.put(b"b")
    assert event_revs(sink, 0) == [] and len(event_revs(sink, 1)) == 1


def test_slow_stream_is_cancelled_with_resume_revision_and_never_blocks() -> None:
    h = Harness(max_pending=10)
    slow, fast = ListSink(), ListSink()
    h.watch(slow, key=b"k", range_end=b"l")
    h.watch(fast, key=b"k", range_end=b"l")
    fast.drained = 10**9  # a reader that keeps up
    for i in range(20):
        h.put(b"k%d" % i)
    last = slow.responses()[-1]
    assert last.canceled and "resume from revision" in last.cancel_reason
    resume = int(last.cancel_reason.rsplit(" ", 1)[1])
    assert resume == event_revs(slow)[-1] + 1
    assert len(event_revs(fast)) == 20


def test_one_serialization_shared_by_watchers_on_the_same_range() -> None:
    h = Harness()
    sinks = [ListSink() for _ in range(50)]
    for s in sinks:
        h.watch(s, key=b"p", range_end=b"q")
    rev = h.put(b"p1")
    for s in sinks:
        assert event_revs(s) == [rev]
    bodies = {s.sent[-1][2:] if s.sent[-1][:1] == b"\x10" else s.sent[-1] for s in sinks}
    assert len(bodies) == 1  # identical payload after the watch_id field


def test_progress_request_and_notifications() -> None:
    now = [0.0]
    h = Harness(progress_interval=1.0, clock=lambda: now[0])
    sink = ListSink()
    stream = h.watch(sink, key=b"a", progress_notify=True)
    rev = h.put(b"zz")  # not ours: no event, but progress moves
    h.hub.progress(stream)
    now[0] = 2.0
    h.hub.progress_tick()
    resp = sink.responses()
    assert (resp[1].watch_id, resp[1].header.revision) == (-1, rev)
    assert (resp[2].watch_id, resp[2].header.revision, list(resp[2].events)) == (0, rev, [])


def test_empty_ranges_refused_and_empty_key_is_the_smallest_key() -> None:
    h = Harness()
    sink = ListSink()
    stream = h.watch(sink, key=b"b", range_end=b"a")
    h.hub.create(stream, rpc_pb2.WatchCreateRequest(key=b"b", range_end=b"b"))
    h.hub.create(stream, rpc_pb2.WatchCreateRequest(key=b"", range_end=b"\0"))  # every key
    refused, refused_too, everything = sink.responses()
    for r in (refused, refused_too):
        assert (r.watch_id, r.created, r.canceled) == (-1, True, True)
        assert r.cancel_reason == "mvcc: watcher range is empty"
    assert (everything.watch_id, everything.canceled) == (0, False)
    rev = h.put(b"\x01")
    assert event_revs(sink) == [rev]


def test_fragment_splits_large_responses_as_etcd() -> None:
    h = Harness()
    value = b"x" * 600_000
    for k in (b"k1", b"k2", b"k3", b"k4"):
        h.put(k, value)
    whole, parts = ListSink(), ListSink()
    h.watch(whole, key=b"k", range_end=b"l", start_revision=1)
    h.watch(parts, key=b"k", range_end=b"l", start_revision=1, fragment=True)
    got = [(r.fragment, len(r.events)) for r in parts.responses()[1:]]
    # 2 MiB (etcd's 1.5 MiB request limit + 512 KiB): three events fit, the fourth does not
    assert got == [(True, 3), (False, 1)]
    assert [(r.fragment, len(r.events)) for r in whole.responses()[1:]] == [(False, 4)]
    assert event_revs(parts) == event_revs(whole)


def test_history_goes_in_runs_of_whole_revisions() -> None:
    evs = [Event(revision=r, key=b"k", record=None, prev=None) for r in (1, 2, 2, 2, 3, 4, 4)]
    assert [[e.revision for e in c] for c in _by_revisions(evs, 2)] == [[1, 2, 2, 2], [3, 4, 4]]
    assert [[e.revision for e in c] for c in _by_revisions(evs, 1)] == [[1], [2, 2, 2], [3], [4, 4]]
    assert _by_revisions([], 5) == []


def test_watch_from_exactly_the_compacted_revision_gets_its_puts_as_from_etcd() -> None:
    h = Harness()
    h.put(b"k1", b"old")
    n = h.put(b"k1", b"at-n")  # overwritten later: etcd's compaction keeps it
    h.put(b"k1", b"later")
    h.sm.apply(("compact", n))
    sink = ListSink()
    stream = WatchStream(sink, from_compaction_revision=True)
    h.hub.create(stream, rpc_pb2.WatchCreateRequest(key=b"k", range_end=b"l", start_revision=n))
    created, history = sink.responses()
    assert created.created and not history.canceled
    assert [(e.kv.mod_revision, e.kv.value, e.HasField("prev_kv")) for e in history.events] == [
        (n, b"at-n", False),  # no previous value: compacted
        (n + 1, b"later", False),
    ]
    d = h.delete(b"k1")
    h.sm.apply(("compact", d))  # a delete at the compacted revision is gone, as in etcd
    before = len(sink.sent)
    h.hub.create(stream, rpc_pb2.WatchCreateRequest(key=b"k1", start_revision=d))
    (only,) = sink.responses()[before:]  # created; nothing at d, not cancelled
    assert (only.watch_id, only.created, only.canceled) == (1, True, False)
    # the Objects watch keeps refusing it: it would lose that revision's deletes
    objects = ListSink()
    h.watch(objects, key=b"k", range_end=b"l", start_revision=d)
    assert objects.responses()[-1].compact_revision == d
