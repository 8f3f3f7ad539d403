"""Fuzzing etcdserverpb.KV and mizzen.v1.Objects with malformed, hostile and oversized requests.

Hypothesis sends to every unary method of both services, on one real
single-member store:

* arbitrary bytes, and truncated, bit-flipped or spliced encodings of valid requests;
* structurally valid but hostile messages built field by field from the
  descriptors: odd kinds, names and namespaces, garbage or wrong-type Object
  envelopes, deep and wide Txns with duplicate keys, weird limits and
  revisions, values around the 1.5 MiB request limit and over gRPC's 2 MiB;
* Updates of a stored object overlaid with hostile fields.

Every call must end within its deadline with a response or a real status. A
request that parses is never answered UNKNOWN or INTERNAL (that is a bug that
escaped a handler). One that does not parse is answered INVALID_ARGUMENT
naming the parse error (mizzen/malformed_requests.py; gRPC Python alone would say
UNKNOWN, etcd says INTERNAL "grpc: error unmarshalling request"). A rejected request changes
nothing: revision and every key as before. After each Objects example every
stored object lists, reads back equal and passes the server's own validation,
and no key under /registry/ is left without its object. After each test the
store process is alive, SERVING, and a Put/Get round trip works.

Examples are derandomized, so a failure replays on every run.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from fuzz_strategies import (
    ALL_METHODS,
    GRPC_RECEIVE_LIMIT,
    KV,
    MAX_REQUEST_BYTES,
    NAMESPACE,
    OBJECTS,
    D,
    Method,
    Op,
    P,
    R,
    T,
    _enlarge,
    _length_delimited,
    _wrap,
    big_sizes,
    continue_tokens,
    delete_requests,
    fuzz,
    garbage_envelopes,
    get_requests,
    hostile,
    hostile_objects,
    kind_infos,
    kv_requests,
    list_requests,
    mostly,
    mutated,
    template,
    texts,
    valid_requests,
)
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st

from mizzen.api import kinds
from mizzen.api.kinds import KindInfo
from mizzen.api.validation import validate
from mizzen.testing.local_cluster import MizzenCluster
from protos import objects_api_pb2 as api
from protos import objects_api_pb2_grpc as api_grpc
from protos import rpc_pb2, rpc_pb2_grpc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

CALL_TIMEOUT = 5.0
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]
REGISTRY = "/registry/"
TOO_LARGE = "etcdserver: request is too large"
NOT_A_STATUS = (
    grpc.StatusCode.DEADLINE_EXCEEDED,  # our deadline: the server hung
    grpc.StatusCode.UNAVAILABLE,  # the server died or dropped the connection
    grpc.StatusCode.CANCELLED,
)


# ------------------------------------------------------------------ the store


@dataclass
class Answer:
    response: Message | None
    code: grpc.StatusCode | None  # None: OK
    details: str
    changed: bool = False  # the key space differs after the call


Snapshot = tuple[int, list[tuple[bytes, bytes, int, int, int]]]


class Store:
    """One single-member store, a channel to it, and the checks every example makes."""

    def __init__(self, cluster: MizzenCluster, channel: grpc.Channel) -> None:
        self.cluster = cluster
        self.channel = channel
        self.kv = rpc_pb2_grpc.KVStub(channel)
        self.objects = api_grpc.ObjectsStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)
        self._seeds: dict[str, Any] = {}

    def call(self, method: Method, data: bytes) -> Answer:
        """Send data as method's request; check the answer is a response or a real status."""
        rpc = self.channel.unary_unary(
            method.path, request_serializer=None, response_deserializer=None
        )
        start = time.monotonic()
        try:
            raw = rpc(data, timeout=CALL_TIMEOUT)
        except grpc.RpcError as err:
            answer = Answer(None, err.code(), err.details() or "")
        else:
            answer = Answer(method.response.FromString(raw), None, "")
        assert time.monotonic() - start < CALL_TIMEOUT
        assert self.cluster.is_running(0), f"store died on {method.path}\n{self.log_tail()}"
        _check_status(method, data, answer)
        return answer

    def exercise(self, method: Method, data: bytes) -> Answer:
        """call(); a rejected request must have changed nothing, an accepted one left
        only whole, valid objects."""
        before = self.snapshot()
        answer = self.call(method, data)
        answer.changed = self.snapshot() != before
        if answer.code is not None:
            assert not answer.changed, (
                f"{method.path} failed ({answer.code}: {answer.details}) but changed the store"
            )
        if answer.changed:
            self.check_objects()
        return answer

    def seeds(self, infos: list[KindInfo]) -> list[Any]:
        """The stored object "seed" of each kind, as Get returns it; created when missing."""
        mods = {k: mod for k, _, _, mod, _ in self.snapshot()[1]}
        pending = {}
        for info in infos:
            key = _object_key(info, NAMESPACE if info.namespaced else "", "seed")
            cached = self._seeds.get(info.kind)
            if cached is not None and int(cached.metadata.resource_version) == mods.get(key):
                continue
            if key in mods:
                request: Any = api.GetRequest(kind=info.kind, namespace=NAMESPACE, name="seed")
                pending[info.kind] = self.objects.Get.future(request, timeout=CALL_TIMEOUT)
            else:
                request = api.CreateRequest(object=_wrap(template(info, "seed")))
                pending[info.kind] = self.objects.Create.future(request, timeout=CALL_TIMEOUT)
        for kind, future in pending.items():
            self._seeds[kind] = _unwrap(future.result())
        return [self._seeds[info.kind] for info in infos]

    def snapshot(self) -> Snapshot:
        """Revision and every key (serializable: on one member it is what is applied)."""
        resp = self.kv.Range(R(key=b"\0", range_end=b"\0", serializable=True), timeout=CALL_TIMEOUT)
        kvs = [
            (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) for kv in resp.kvs
        ]
        return int(resp.header.revision), kvs

    def revision(self) -> int:
        return self.snapshot()[0]

    def wipe(self) -> None:
        """Delete every key, so the next example starts from an empty key space."""
        if self.snapshot()[1]:
            self.kv.DeleteRange(D(key=b"\0", range_end=b"\0"), timeout=CALL_TIMEOUT)

    def check_objects(self) -> None:
        """Each key under /registry/ holds an object that lists, reads back and validates."""
        keys = {k for k, *_ in self.snapshot()[1] if k.startswith(REGISTRY.encode())}
        if not keys:
            return
        lists = {
            info: self.objects.List.future(api.ListRequest(kind=info.plural), timeout=CALL_TIMEOUT)
            for info in kinds.KINDS
        }
        listed: dict[bytes, tuple[api.GetRequest, api.Object]] = {}
        for info, future in lists.items():
            for item in future.result().items:
                obj: Any = _unwrap(item)
                assert kinds.kind_of(obj) is info, f"{info.plural} lists a {obj.DESCRIPTOR.name}"
                meta = obj.metadata
                assert bool(meta.namespace) == info.namespaced, meta
                assert validate(obj) == [], f"stored {info.kind} fails validation: {obj}"
                get = api.GetRequest(kind=info.kind, namespace=meta.namespace, name=meta.name)
                listed[_object_key(info, meta.namespace, meta.name)] = (get, item)
        assert set(listed) == keys, "keys under /registry/ that List does not return"
        gets = {
            key: self.objects.Get.future(get, timeout=CALL_TIMEOUT)
            for key, (get, _) in listed.items()
        }
        for key, future in gets.items():
            assert future.result() == listed[key][1], "Get differs from List"

    def wait_serving(self, timeout: float = 10.0) -> None:
        """Health is first evaluated a moment after the member starts."""
        deadline = time.monotonic() + timeout
        while self._health() != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, f"never SERVING\n{self.log_tail()}"
            time.sleep(0.1)

    def _health(self) -> int:
        request = health_pb2.HealthCheckRequest(service="")
        return int(self.health.Check(request, timeout=CALL_TIMEOUT).status)

    def assert_healthy(self) -> None:
        assert self.cluster.is_running(0), self.log_tail()
        assert self._health() == health_pb2.HealthCheckResponse.SERVING
        key, value = b"fuzz-health/" + uuid.uuid4().bytes, uuid.uuid4().bytes
        self.kv.Put(P(key=key, value=value), timeout=CALL_TIMEOUT)
        got = self.kv.Range(R(key=key), timeout=CALL_TIMEOUT)
        assert [kv.value for kv in got.kvs] == [value]
        self.kv.DeleteRange(D(key=key), timeout=CALL_TIMEOUT)

    def log_tail(self) -> str:
        return self.cluster.log_tail(0, 40)


def _check_status(method: Method, data: bytes, answer: Answer) -> None:
    what = f"{method.path} answered {answer.code}: {answer.details!r}"
    if len(data) > GRPC_RECEIVE_LIMIT:
        assert answer.code == grpc.StatusCode.RESOURCE_EXHAUSTED, what
        return
    if answer.code is None:
        return
    assert "Traceback" not in answer.details, what
    assert answer.code not in NOT_A_STATUS, what
    if not method.parses(data):
        # mizzen/malformed_requests.py: the parse error, named, as bad input
        assert answer.code == grpc.StatusCode.INVALID_ARGUMENT, what
        assert "malformed" in answer.details and "Error parsing message" in answer.details, what
    else:
        bug = answer.code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
        assert not bug, f"a bug escaped a handler: {what}"


def _unwrap(item: api.Object) -> Message:
    which = item.WhichOneof("object")
    assert which is not None, "an empty Object envelope"
    inner: Message = getattr(item, which)
    return inner


def _object_key(info: KindInfo, namespace: str, name: str) -> bytes:
    """Where objects_api.proto says an object lives."""
    scope = f"{namespace}/" if info.namespaced else ""
    return f"{REGISTRY}{info.plural}/{scope}{name}".encode()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    base: Path = tmp_path_factory.mktemp("fuzz")
    with (
        MizzenCluster(1, base, extra_args=["--fsync", "never"]) as cluster,
        grpc.insecure_channel(cluster.endpoint(0), options=CHANNEL_OPTIONS) as channel,
    ):
        grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT)
        fuzzed = Store(cluster, channel)
        fuzzed.wait_serving()
        yield fuzzed


@pytest.fixture(autouse=True)
def healthy_after(store: Store) -> Iterator[None]:
    yield
    store.assert_healthy()
    store.check_objects()
    store.wipe()


# ------------------------------------------------------------------ tests


def test_every_unary_method_is_fuzzed() -> None:
    assert set(KV) == set(kv_requests) == {"Range", "Put", "DeleteRange", "Txn", "Compact"}
    assert set(OBJECTS) == {"Create", "Get", "List", "Update", "UpdateStatus", "Delete"}
    assert set(valid_requests) == set(KV) | set(OBJECTS)


@fuzz(150)
@given(method=st.sampled_from(ALL_METHODS), data=st.binary(max_size=4096))
def test_arbitrary_bytes(store: Store, method: Method, data: bytes) -> None:
    if store.exercise(method, data).changed:
        store.wipe()


@fuzz(120)
@given(name=st.sampled_from(sorted(valid_requests)), data=st.data())
def test_mutated_valid_requests(store: Store, name: str, data: st.DataObject) -> None:
    valid = data.draw(valid_requests[name]).SerializeToString()
    method = KV.get(name) or OBJECTS[name]
    if store.exercise(method, data.draw(mutated(valid))).changed:
        store.wipe()


@fuzz(90)
@given(name=st.sampled_from(sorted(kv_requests)), data=st.data())
def test_kv_hostile_requests(store: Store, name: str, data: st.DataObject) -> None:
    request = data.draw(kv_requests[name])
    if store.exercise(KV[name], request.SerializeToString()).changed:
        store.wipe()


@fuzz(30)
@given(
    name=st.sampled_from(["Range", "Compact"]),
    offset=st.one_of(st.integers(-3, 3), st.sampled_from([-(2**40), 2**40])),
)
def test_kv_revisions_around_the_current_one(store: Store, name: str, offset: int) -> None:
    store.kv.Put(P(key=b"fuzz/rev", value=b"v"), timeout=CALL_TIMEOUT)
    revision = store.revision() + offset
    request: Message = (
        R(key=b"fuzz/rev", revision=revision)
        if name == "Range"
        else rpc_pb2.CompactionRequest(revision=revision)
    )
    answer = store.exercise(KV[name], request.SerializeToString())
    if offset > 0:
        assert answer.code == grpc.StatusCode.OUT_OF_RANGE


@fuzz(100)
@given(
    call=st.one_of(
        get_requests.map(lambda r: ("Get", r)),
        list_requests.map(lambda r: ("List", r)),
        delete_requests.map(lambda r: ("Delete", r)),
    ),
)
def test_objects_hostile_reads_and_deletes(store: Store, call: tuple[str, Message]) -> None:
    store.seeds(list(kinds.KINDS))
    name, request = call
    store.exercise(OBJECTS[name], request.SerializeToString())


@fuzz(60)
@given(info=kind_infos, limit=st.integers(0, 3), token=continue_tokens)
def test_objects_hostile_continue_tokens(
    store: Store, info: KindInfo, limit: int, token: str
) -> None:
    store.seeds([info])
    request = api.ListRequest(kind=info.plural, limit=limit, continue_token=token)
    store.exercise(OBJECTS["List"], request.SerializeToString())


@pytest.mark.parametrize("version", [str(2**63 - 1), str(2**63), "9" * 30])
def test_watch_from_a_version_past_int64(store: Store, version: str) -> None:
    request = api.WatchRequest(kind="pods", resource_version=version)
    with pytest.raises(grpc.RpcError) as err:
        next(iter(store.objects.Watch(request, timeout=CALL_TIMEOUT)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()


@fuzz(60)
@given(obj=hostile_objects())
def test_objects_hostile_creates(store: Store, obj: Any) -> None:
    data = api.CreateRequest(object=_wrap(obj)).SerializeToString()
    answer = store.exercise(OBJECTS["Create"], data)
    if answer.response is not None:
        created: Any = _unwrap(answer.response)  # type: ignore[arg-type]
        assert int(created.metadata.resource_version) == store.revision()
        store.wipe()


@fuzz(60)
@given(name=st.sampled_from(["Create", "Update", "UpdateStatus"]), data=garbage_envelopes())
def test_objects_garbage_envelopes(store: Store, name: str, data: bytes) -> None:
    store.seeds(list(kinds.KINDS))
    store.exercise(OBJECTS[name], data)


@fuzz(45)
@given(
    info=kind_infos,
    name=st.sampled_from(["Update", "UpdateStatus"]),
    overlay=st.data(),
    version=mostly(None, texts),
    size=big_sizes,
)
def test_objects_hostile_updates(
    store: Store,
    info: KindInfo,
    name: str,
    overlay: st.DataObject,
    version: str | None,
    size: int | None,
) -> None:
    obj: Any = info.message()
    obj.CopyFrom(store.seeds([info])[0])
    obj.MergeFrom(overlay.draw(hostile(info.message)))
    if version is not None:
        obj.metadata.resource_version = version
    _enlarge(obj, size)
    store.exercise(OBJECTS[name], api.UpdateRequest(object=_wrap(obj)).SerializeToString())


@fuzz(30)
@given(
    key=st.one_of(st.none(), st.text(alphabet="abc/-.0129 ", max_size=12)),
    revision=st.one_of(
        st.none(),
        st.sampled_from(["", "0", "-1", "1", "1e3", str(2**63 - 1), str(2**63), "9" * 40]),
    ),
)
def test_objects_hostile_fence_headers(store: Store, key: str | None, revision: str | None) -> None:
    headers = (("mizzen-fence-key", key), ("mizzen-fence-revision", revision))
    metadata = [(h, v) for h, v in headers if v is not None]
    before = store.snapshot()
    request = api.CreateRequest(object=_wrap(template(kinds.lookup("pods"), "fuzz-f")))
    try:
        store.objects.Create(request, metadata=metadata, timeout=CALL_TIMEOUT)
    except grpc.RpcError as err:
        answer = Answer(None, err.code(), err.details() or "")
        _check_status(OBJECTS["Create"], request.SerializeToString(), answer)
        assert store.snapshot() == before
    else:
        assert not metadata, "a fenced write without its fence key was accepted"
        store.wipe()


@pytest.mark.parametrize("depth", [8, 40, 64])
def test_deeply_nested_txn(store: Store, depth: int) -> None:
    """Nested past protobuf's parse depth limit (64 here does not parse; 40 does)."""
    data = T(success=[Op(request_put=P(key=b"fuzz/deep", value=b"v"))]).SerializeToString()
    for _ in range(depth):
        data = _length_delimited(2, _length_delimited(4, data))  # success[0].request_txn
    store.exercise(KV["Txn"], data)


@pytest.mark.parametrize("service", ["KV", "Objects"])
def test_requests_over_the_limits(store: Store, service: str) -> None:
    """Over 1.5 MiB: the store's INVALID_ARGUMENT; over 2 MiB: gRPC's RESOURCE_EXHAUSTED."""
    for size, code in (
        (MAX_REQUEST_BYTES + 1, grpc.StatusCode.INVALID_ARGUMENT),
        (GRPC_RECEIVE_LIMIT + 1, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ):
        pod = template(kinds.lookup("pods"), "fuzz-big")
        _enlarge(pod, size)
        request: Message = (
            P(key=b"fuzz/big", value=b"x" * size)
            if service == "KV"
            else api.CreateRequest(object=_wrap(pod))
        )
        method = KV["Put"] if service == "KV" else OBJECTS["Create"]
        answer = store.exercise(method, request.SerializeToString())
        assert answer.code == code, answer
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            assert answer.details == TOO_LARGE


def test_int_or_percent_with_a_unicode_digit(store: Store) -> None:
    deployment = template(kinds.lookup("deployments"), "fuzz-d")
    for surge in ("²", "9" * 5000):
        deployment.spec.strategy.rolling_update.max_surge = surge
        request = api.CreateRequest(object=_wrap(deployment))
        with pytest.raises(grpc.RpcError) as err:
            store.objects.Create(request, timeout=CALL_TIMEOUT)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
