"""ObjectWatchSink: etcd watch responses -> typed WatchEvents, filtered server-side."""

from __future__ import annotations

from typing import Any

from mizzen.api import kinds
from mizzen.api.selectors import parse_field_selector, parse_label_selector
from protos import kv_pb2, rpc_pb2
from protos import objects_api_pb2 as api
from protos import objects_pb2 as pb
from store.errors import Code, StoreError
from store.objects_codec import encode
from store.objects_watch import ObjectWatchSink, Selection

POD = kinds.lookup("Pod")
EV = api.WatchEvent


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def sink(labels: str = "", fields: str = "", *, clock: FakeClock | None = None) -> ObjectWatchSink:
    selection = Selection(POD, parse_label_selector(labels), parse_field_selector(fields, "Pod"))
    return ObjectWatchSink(
        selection, bookmarks=True, bookmark_interval=5.0, clock=clock or FakeClock()
    )


def kv(name: str, rev: int, node: str = "", **labels: str) -> kv_pb2.KeyValue:
    obj = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace="ns", labels=labels))
    obj.spec.node_name = node
    return kv_pb2.KeyValue(
        key=f"/registry/pods/ns/{name}".encode(), value=encode(obj), mod_revision=rev
    )


def put(new: kv_pb2.KeyValue, prev: kv_pb2.KeyValue | None = None) -> kv_pb2.Event:
    ev = kv_pb2.Event(type=kv_pb2.Event.PUT, kv=new)
    if prev is not None:
        ev.prev_kv.CopyFrom(prev)
    return ev


def delete(prev: kv_pb2.KeyValue, rev: int) -> kv_pb2.Event:
    return kv_pb2.Event(
        type=kv_pb2.Event.DELETE,
        kv=kv_pb2.KeyValue(key=prev.key, mod_revision=rev),
        prev_kv=prev,
    )


def feed(s: ObjectWatchSink, *events: kv_pb2.Event) -> list[tuple[Any, str, str]]:
    s.send(rpc_pb2.WatchResponse(events=events).SerializeToString())
    out = []
    while not s.queue.empty():
        item = s.queue.get_nowait()
        assert isinstance(item, api.WatchEvent)
        meta = item.object.pod.metadata
        out.append((item.type, meta.name, meta.resource_version))
    return out


def test_put_put_delete_become_added_modified_deleted() -> None:
    s = sink()
    a1, a2 = kv("a", 5), kv("a", 6)
    assert feed(s, put(a1), put(a2, a1), delete(a2, 7)) == [
        (EV.ADDED, "a", "5"),
        (EV.MODIFIED, "a", "6"),
        (EV.DELETED, "a", "7"),
    ]


def test_field_selector_entering_and_leaving_the_selection() -> None:
    s = sink(fields="spec.nodeName=n1")
    free, bound = kv("p", 5), kv("p", 6, node="n1")
    other = kv("q", 7, node="n2")
    assert feed(s, put(free), put(bound, free), put(other)) == [(EV.ADDED, "p", "6")]
    s2 = sink(labels="app=web")
    web, db = kv("p", 5, app="web"), kv("p", 6, app="db")
    assert feed(s2, put(web), put(db, web), delete(db, 7)) == [
        (EV.ADDED, "p", "5"),
        (EV.DELETED, "p", "6"),  # left the selection at revision 6
    ]


def test_progress_notification_is_a_bookmark() -> None:
    s = sink()
    s.send(rpc_pb2.WatchResponse(created=True).SerializeToString())
    assert s.queue.empty()
    s.send(rpc_pb2.WatchResponse(header=rpc_pb2.ResponseHeader(revision=42)).SerializeToString())
    item = s.queue.get_nowait()
    assert isinstance(item, api.WatchEvent) and item.type == EV.BOOKMARK
    assert item.object.pod.metadata.resource_version == "42"


def test_filtered_out_traffic_still_advances_through_bookmarks() -> None:
    clock = FakeClock()
    s = sink(fields="spec.nodeName=n1", clock=clock)
    assert feed(s, put(kv("x", 5, node="n2"))) == []
    clock.now += 6
    assert feed(s, put(kv("y", 9, node="n2"))) == [(EV.BOOKMARK, "", "9")]
    assert feed(s, put(kv("z", 10, node="n2"))) == []  # throttled


def test_compacted_cancel_is_out_of_range() -> None:
    s = sink()
    s.send(
        rpc_pb2.WatchResponse(
            canceled=True, compact_revision=50, cancel_reason="compacted"
        ).SerializeToString()
    )
    err = s.queue.get_nowait()
    assert isinstance(err, StoreError) and err.code == Code.OUT_OF_RANGE
    assert "too old resource version" in err.message
