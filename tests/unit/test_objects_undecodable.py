"""A stored value that does not decode as its kind: named by Get, skipped by List and Watch.

Only the admin-only raw KV API can put such a value under /registry/; one must
not make every list of the kind fail, nor end every watch of it.
"""

from __future__ import annotations

from typing import Any

import pytest

from mizzen.api import kinds
from mizzen.api.selectors import parse_field_selector, parse_label_selector
from protos import kv_pb2, rpc_pb2
from protos import objects_api_pb2 as api
from protos import objects_pb2 as pb
from store.errors import Code
from store.objects_codec import UndecodableError, decode, decode_continue, encode
from store.objects_service import _list_page
from store.objects_watch import ObjectWatchSink, Selection
from store.state_machine import StateMachine

POD = kinds.lookup("Pod")
GARBAGE = b"written raw: not a pod"
EV = api.WatchEvent


def _pod(name: str, node: str = "") -> pb.Pod:
    p = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace="ns"))
    p.spec.node_name = node
    return p


def _selection(fields: str = "") -> Selection:
    return Selection(POD, parse_label_selector(""), parse_field_selector(fields, "Pod"))


def test_decode_names_the_key_and_the_kind() -> None:
    with pytest.raises(UndecodableError) as err:
        decode(POD, GARBAGE, 7, b"/registry/pods/ns/broken")
    assert err.value.code == Code.DATA_LOSS
    assert err.value.key == "/registry/pods/ns/broken"
    assert err.value.message.startswith(
        "/registry/pods/ns/broken: the stored value does not decode as a Pod"
    )
    assert "mizzen delete pod NAME" in err.value.message


def _store(*values: tuple[str, bytes]) -> StateMachine:
    sm = StateMachine()
    for name, value in values:
        put = rpc_pb2.PutRequest(key=f"/registry/pods/ns/{name}".encode(), value=value)
        sm.apply(("put", put.SerializeToString()))
    return sm


@pytest.mark.parametrize("limit", [0, 1, 2])
def test_list_skips_and_reports_undecodable_values(limit: int) -> None:
    sm = _store(("a", encode(_pod("a"))), ("b", GARBAGE), ("c", encode(_pod("c"))))
    prefix = b"/registry/pods/ns/"
    names: list[str] = []
    skipped: list[str] = []
    start = prefix
    while True:
        page = _list_page(sm, _selection(), prefix, start, sm.revision, limit)
        names += [item.pod.metadata.name for item in page.items]
        skipped += page.undecodable_keys
        if not page.continue_token:
            break
        start, _ = decode_continue(page.continue_token, prefix)
    assert names == ["a", "c"]
    assert skipped == ["/registry/pods/ns/b"]


def _kv(name: str, value: bytes, rev: int) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(key=f"/registry/pods/ns/{name}".encode(), value=value, mod_revision=rev)


def _put(new: kv_pb2.KeyValue, prev: kv_pb2.KeyValue | None = None) -> kv_pb2.Event:
    ev = kv_pb2.Event(type=kv_pb2.Event.PUT, kv=new)
    if prev is not None:
        ev.prev_kv.CopyFrom(prev)
    return ev


def _feed(sink: ObjectWatchSink, *events: kv_pb2.Event) -> list[tuple[Any, str, str]]:
    sink.send(rpc_pb2.WatchResponse(events=events).SerializeToString())
    out = []
    while not sink.queue.empty():
        item = sink.queue.get_nowait()
        assert isinstance(item, api.WatchEvent), item
        meta = item.object.pod.metadata
        out.append((item.type, meta.name, meta.resource_version))
    return out


def test_watch_treats_an_undecodable_value_as_absent() -> None:
    sink = ObjectWatchSink(_selection(), bookmarks=False)
    good, bad = _kv("p", encode(_pod("p")), 5), _kv("p", GARBAGE, 6)
    gone = kv_pb2.Event(type=kv_pb2.Event.DELETE, kv=_kv("p", b"", 9), prev_kv=bad)
    assert _feed(sink, _put(_kv("q", GARBAGE, 4))) == []
    assert _feed(sink, _put(good)) == [(EV.ADDED, "p", "5")]
    # it becomes undecodable: gone for this watcher, as it is gone from a list
    assert _feed(sink, _put(bad, good)) == [(EV.DELETED, "p", "6")]
    assert _feed(sink, _put(_kv("p", encode(_pod("p")), 7), bad)) == [(EV.ADDED, "p", "7")]
    assert _feed(sink, _put(_kv("p", GARBAGE, 8), _kv("p", GARBAGE, 7)), gone) == []
    assert sink.queue.empty()
