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
escaped a handler). One that does not parse is refused by gRPC Python itself
before any Mizzen code runs: UNKNOWN naming the DecodeError (etcd answers
INTERNAL "grpc: error unmarshalling request"). A rejected request changes
nothing: revision and every key as before. After each Objects example every
stored object lists, reads back equal and passes the server's own validation,
and no key under /registry/ is left without its object. After each test the
store process is alive, SERVING, and a Put/Get round trip works.

Examples are derandomized, so a failure replays on every run.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor, FileDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
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
MAX_REQUEST_BYTES = 1536 * 1024  # the store's (etcd's) --max-request-bytes
GRPC_RECEIVE_LIMIT = 2 * 1024 * 1024  # the server's grpc.max_receive_message_length
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]
REGISTRY = "/registry/"
NAMESPACE = "fuzz"
TOO_LARGE = "etcdserver: request is too large"
NOT_A_STATUS = (
    grpc.StatusCode.DEADLINE_EXCEEDED,  # our deadline: the server hung
    grpc.StatusCode.UNAVAILABLE,  # the server died or dropped the connection
    grpc.StatusCode.CANCELLED,
)

P = rpc_pb2.PutRequest
R = rpc_pb2.RangeRequest
D = rpc_pb2.DeleteRangeRequest
T = rpc_pb2.TxnRequest
Op = rpc_pb2.RequestOp
Cmp = rpc_pb2.Compare

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        # the only function-scoped fixture checks health once after the whole test
        HealthCheck.function_scoped_fixture,
    ],
)


def fuzz(max_examples: int) -> settings:
    return settings(FUZZ, max_examples=max_examples)


# ------------------------------------------------------------------ methods


@dataclass(frozen=True)
class Method:
    path: str
    request: type[Message]
    response: type[Message]

    def parses(self, data: bytes) -> bool:
        try:
            self.request.FromString(data)
        except DecodeError:
            return False
        return True


def _unary_methods(file: FileDescriptor, service: str) -> dict[str, Method]:
    desc = file.services_by_name[service]
    return {
        m.name: Method(
            f"/{desc.full_name}/{m.name}",
            GetMessageClass(m.input_type),
            GetMessageClass(m.output_type),
        )
        for m in desc.methods
        if not (m.client_streaming or m.server_streaming)
    }


KV = _unary_methods(rpc_pb2.DESCRIPTOR, "KV")
OBJECTS = _unary_methods(api.DESCRIPTOR, "Objects")
ALL_METHODS = sorted(KV.values(), key=lambda m: m.path) + sorted(
    OBJECTS.values(), key=lambda m: m.path
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
        # refused by gRPC Python's deserializer before any Mizzen code runs
        assert answer.code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), what
        assert "Error parsing message" in answer.details, what
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


def _wrap(obj: Message) -> api.Object:
    field = next(
        f.name
        for f in api.Object.DESCRIPTOR.oneofs_by_name["object"].fields
        if f.message_type is not None and f.message_type.full_name == obj.DESCRIPTOR.full_name
    )
    out = api.Object()
    getattr(out, field).CopyFrom(obj)
    return out


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


# ------------------------------------------------------------------ strategies

HOSTILE_TEXT = [
    "", " ", "/", "//", ".", "..", "../..", "a/b", "/registry/pods/x", "-", "-a", "a-",
    "default", NAMESPACE, "fuzz-a", "A", "\x00", "a\x00b", "\n", "\t\r", "\x7f", "é", "名前",
    "\u202e", "\ufeff", "\U0001f600", "²", "٣", "-1", "0", "1e3", "25%", "101%", "²%", "%",
    "9" * 30, "9" * 5000, "a" * 63, "a" * 64, "a" * 253, "a" * 254, "Infinity", "NaN", "*",
    "a in (", "!", "=", ",", "x=y", "app=web,tier!=db", "Pod", "pods", "po",
]  # fmt: skip
BIG_SIZES = [64 * 1024, MAX_REQUEST_BYTES - 4096, MAX_REQUEST_BYTES + 1, GRPC_RECEIVE_LIMIT + 1]

texts = st.one_of(
    st.sampled_from(HOSTILE_TEXT),
    st.text(max_size=24),
    st.text(alphabet="abz09-./_%", max_size=16),
)
binaries = st.one_of(
    st.sampled_from([b"", b"\0", b"\xff\xff", b"/", b".."]), st.binary(max_size=24)
)
big_sizes = st.one_of(st.none(), st.none(), st.none(), st.sampled_from(BIG_SIZES))


def integers(bits: int, signed: bool = True) -> st.SearchStrategy[int]:
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    edges = sorted({lo, hi, 0, 1, max(lo, -1), hi - 1, lo + 1})
    return st.one_of(st.sampled_from(edges), st.integers(max(lo, -5), min(hi, 1000)))


int64s = integers(64)
_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    FieldDescriptor.CPPTYPE_INT32: integers(32),
    FieldDescriptor.CPPTYPE_INT64: int64s,
    FieldDescriptor.CPPTYPE_UINT32: integers(32, signed=False),
    FieldDescriptor.CPPTYPE_UINT64: integers(64, signed=False),
    FieldDescriptor.CPPTYPE_BOOL: st.booleans(),
    FieldDescriptor.CPPTYPE_STRING: texts,
    FieldDescriptor.CPPTYPE_DOUBLE: st.floats(),
    FieldDescriptor.CPPTYPE_FLOAT: st.floats(width=32),
}
MAX_DEPTH = 4


def _field_values(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    desc = field.message_type
    if desc is not None and desc.GetOptions().map_entry:
        key, value = (desc.fields_by_name[n] for n in ("key", "value"))
        return st.dictionaries(_single(key, depth), _single(value, depth), max_size=3)
    one = _single(field, depth)
    return st.lists(one, max_size=3) if field.is_repeated else one


def _single(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is not None:
        return hostile(GetMessageClass(field.message_type), depth + 1)
    if field.enum_type is not None:
        known = [v.number for v in tuple(field.enum_type.values)]
        return st.one_of(st.sampled_from(known), integers(32))
    if field.type == FieldDescriptor.TYPE_BYTES:
        return binaries
    return _SCALARS[field.cpp_type]


_hostile: dict[tuple[str, int], st.SearchStrategy[Message]] = {}


def hostile(cls: type[Message], depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of cls with a few fields set, each to a hostile value, nested up to MAX_DEPTH."""
    fields: tuple[Any, ...] = tuple(cls.DESCRIPTOR.fields)  # FieldDescriptors (upb or pure)
    if depth > MAX_DEPTH or not fields:
        return st.just(cls())
    cached = _hostile.get((cls.DESCRIPTOR.full_name, depth))
    if cached is None:
        chosen = st.lists(st.sampled_from(fields), max_size=4, unique_by=lambda f: f.number)
        cached = _hostile[cls.DESCRIPTOR.full_name, depth] = chosen.flatmap(
            lambda picked: st.tuples(*(_field_values(f, depth) for f in picked)).map(
                lambda values: _assemble(cls, picked, values)
            )
        )
    return cached


def _assemble(
    cls: type[Message], fields: list[FieldDescriptor], values: tuple[Any, ...]
) -> Message:
    msg = cls()
    for field, value in zip(fields, values, strict=True):
        target = getattr(msg, field.name)
        if field.is_repeated and isinstance(value, dict):
            for k, v in value.items():
                target[k] = v
        elif field.is_repeated:
            target.extend(value)
        elif field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(msg, field.name, value)
    return msg


def template(info: KindInfo, name: str) -> Any:
    """A valid object of the kind, in namespace fuzz unless cluster-scoped."""
    obj: Any = info.message()
    obj.metadata.name = name
    if info.namespaced:
        obj.metadata.namespace = NAMESPACE
    if info.kind == "Pod":
        obj.spec.processes.add(name="main", command=["/bin/true"])
    elif info.kind in ("ReplicaSet", "Deployment", "DaemonSet", "Job"):
        obj.spec.selector.match_labels["app"] = name
        obj.spec.template.metadata.labels["app"] = name
        obj.spec.template.spec.processes.add(name="main", command=["/bin/true"])
    elif info.kind == "Event":
        obj.spec.involved_object.kind = "Pod"
        obj.spec.involved_object.name = "p"
        obj.spec.reason = "Fuzz"
        obj.spec.type = "Normal"
    return obj


def _enlarge(obj: Any, size: int | None) -> None:
    """Grow obj by size bytes in a field validation accepts, to reach the size limits."""
    if size:
        obj.metadata.owner_references.add(api_version="v1", kind="K", name="x" * size, uid="u")


def mostly(valid: Any, hostile: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """valid two times in three, so that a request gets past its first check often."""
    return st.integers(0, 2).flatmap(lambda i: hostile if i == 2 else st.just(valid))


rarely = st.sampled_from([False, False, False, True])
kind_infos = st.sampled_from(kinds.KINDS)
kind_names = st.one_of(
    st.sampled_from([a for i in kinds.KINDS for a in (i.kind, i.plural, *i.short_names)]), texts
)
namespaces = mostly(NAMESPACE, texts)
names = mostly("seed", texts)
SELECTOR_WORDS = ["app", "a/b", "=", "==", "!=", "!", " in ", " notin ", "(", ")", ",", " "]
FIELD_WORDS = ["metadata.name", "spec.nodeName", "involvedObject.kind", "no.such", "=", "!=", ","]
_PODS_PREFIX = base64.b64encode(b"/registry/pods/").decode()
TOKEN_JSON = ["[]", '"x"', "{}", '{"k":null,"r":1}'] + [
    f'{{"k":"{_PODS_PREFIX}","r":{r}}}'
    for r in ("Infinity", "NaN", "1e400", '"1"', "true", "-1", 2**63 - 1, 2**63, 2**70)
]

label_selectors = st.one_of(
    texts, st.lists(st.sampled_from(SELECTOR_WORDS), max_size=8).map("".join)
)
field_selectors = st.one_of(texts, st.lists(st.sampled_from(FIELD_WORDS), max_size=6).map("".join))
continue_tokens = st.one_of(
    texts,
    st.one_of(
        st.sampled_from(TOKEN_JSON),
        st.builds(
            lambda key, rev: json.dumps({"k": base64.b64encode(key).decode(), "r": rev}),
            st.one_of(binaries, st.just(b"/registry/pods/"), binaries.map(b"/registry/".__add__)),
            st.one_of(int64s, st.integers()),
        ),
    ).map(lambda raw: base64.urlsafe_b64encode(raw.encode()).decode()),
)

get_requests = st.builds(api.GetRequest, kind=kind_names, namespace=namespaces, name=names)
list_requests = st.builds(
    api.ListRequest,
    kind=kind_names,
    namespace=mostly("", namespaces),
    label_selector=mostly("", label_selectors),
    field_selector=mostly("", field_selectors),
    limit=mostly(0, int64s),
    continue_token=mostly("", continue_tokens),
)
delete_requests = st.builds(
    api.DeleteRequest,
    kind=kind_names,
    namespace=namespaces,
    name=names,
    grace_period_seconds=mostly(None, int64s),
    resource_version=mostly("", texts),
    propagation_policy=mostly(
        "", st.one_of(st.sampled_from(["Background", "Foreground", "Orphan"]), texts)
    ),
)


@st.composite
def hostile_objects(draw: st.DrawFn) -> Any:
    """An object of any kind: a valid one overlaid with hostile fields, or hostile throughout."""
    info = draw(kind_infos)
    obj = template(info, "fuzz-c") if draw(st.booleans()) else info.message()
    obj.MergeFrom(draw(hostile(info.message)))
    _enlarge(obj, draw(big_sizes))
    return obj


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


@st.composite
def garbage_envelopes(draw: st.DrawFn) -> bytes:
    """A CreateRequest/UpdateRequest whose Object holds garbage or another kind's bytes."""
    field = draw(st.integers(1, 10))  # 1..8 are the kinds, 9 and 10 unknown fields
    other = draw(kind_infos)
    payload = draw(
        st.one_of(
            st.binary(max_size=64),
            st.just(template(other, "fuzz-w").SerializeToString()),
            hostile(other.message).map(lambda m: m.SerializeToString()),
            st.just(P(key=b"k", value=b"v").SerializeToString()),
        )
    )
    return _length_delimited(1, _length_delimited(field, payload))


# -- KV

kv_keys = st.one_of(
    st.sampled_from([b"", b"\0", b"fuzz/a", b"fuzz/b", b"\xff\xff"]),
    binaries.map(b"fuzz/".__add__),
    binaries,
)
kv_values = st.one_of(binaries, big_sizes.map(lambda n: b"v" * (n or 1)))
range_ends = st.one_of(st.just(b""), st.just(b"\0"), kv_keys)
enum_values = st.one_of(st.integers(0, 5), integers(32))
puts = st.builds(
    P,
    key=kv_keys,
    value=kv_values,
    lease=mostly(0, st.sampled_from([1, -1, 2**63 - 1])),
    prev_kv=st.booleans(),
    ignore_value=rarely,
    ignore_lease=rarely,
)
ranges = st.builds(
    R,
    key=kv_keys,
    range_end=range_ends,
    limit=int64s,
    revision=int64s,
    sort_order=enum_values,
    sort_target=enum_values,
    serializable=st.booleans(),
    keys_only=st.booleans(),
    count_only=st.booleans(),
    min_mod_revision=int64s,
    max_mod_revision=int64s,
    min_create_revision=int64s,
    max_create_revision=int64s,
)
deletes = st.builds(D, key=kv_keys, range_end=range_ends, prev_kv=st.booleans())
compares = st.builds(
    Cmp,
    key=kv_keys,
    range_end=range_ends,
    target=enum_values,
    result=enum_values,
    version=int64s,
    mod_revision=int64s,
)
leaf_ops = st.one_of(
    puts.map(lambda p: Op(request_put=p)),
    ranges.map(lambda r: Op(request_range=r)),
    deletes.map(lambda d: Op(request_delete_range=d)),
    st.just(Op()),
)


def _txns(ops: st.SearchStrategy[Op]) -> st.SearchStrategy[T]:
    return st.builds(
        T,
        compare=st.lists(compares, max_size=3),
        success=st.lists(ops, max_size=4),
        failure=st.lists(ops, max_size=4),
    )


nested_txns = st.recursive(
    _txns(leaf_ops),
    lambda inner: _txns(st.one_of(leaf_ops, inner.map(lambda t: Op(request_txn=t)))),
    max_leaves=10,
)


@st.composite
def wide_txns(draw: st.DrawFn) -> T:
    """Up to and beyond the 128-op limit, keys drawn from a few so that some repeat."""
    n = draw(st.integers(120, 132))
    pool = draw(st.integers(1, n))
    ops = [Op(request_put=P(key=b"fuzz/w%d" % (i % pool), value=b"v")) for i in range(n)]
    branch = draw(st.sampled_from(["success", "failure", "compare"]))
    if branch == "compare":
        return T(compare=[Cmp(key=op.request_put.key, target=Cmp.VERSION) for op in ops])
    return T(success=ops) if branch == "success" else T(failure=ops)


kv_requests: dict[str, st.SearchStrategy[Message]] = {
    "Range": ranges,
    "Put": puts,
    "DeleteRange": deletes,
    "Txn": st.one_of(nested_txns, wide_txns()),
    "Compact": st.builds(rpc_pb2.CompactionRequest, revision=int64s, physical=st.booleans()),
}


# -- valid requests, to be mutated

valid_requests: dict[str, st.SearchStrategy[Message]] = {
    "Range": st.builds(R, key=st.just(b"fuzz/a"), range_end=st.sampled_from([b"", b"fuzz0"])),
    "Put": st.builds(P, key=st.just(b"fuzz/a"), value=st.binary(max_size=16)),
    "DeleteRange": st.just(D(key=b"fuzz/a", range_end=b"fuzz0")),
    "Txn": st.just(
        T(
            compare=[Cmp(key=b"fuzz/a", target=Cmp.VERSION, result=Cmp.EQUAL, version=0)],
            success=[Op(request_put=P(key=b"fuzz/a", value=b"v"))],
            failure=[Op(request_range=R(key=b"fuzz/a"))],
        )
    ),
    "Compact": st.just(rpc_pb2.CompactionRequest(revision=1)),
    "Create": kind_infos.map(lambda i: api.CreateRequest(object=_wrap(template(i, "fuzz-m")))),
    "Get": kind_infos.map(lambda i: api.GetRequest(kind=i.plural, namespace=NAMESPACE, name="x")),
    "List": kind_infos.map(lambda i: api.ListRequest(kind=i.kind, label_selector="app=x", limit=2)),
    "Update": kind_infos.map(lambda i: api.UpdateRequest(object=_wrap(template(i, "fuzz-m")))),
    "UpdateStatus": kind_infos.map(
        lambda i: api.UpdateRequest(object=_wrap(template(i, "fuzz-m")))
    ),
    "Delete": kind_infos.map(
        lambda i: api.DeleteRequest(kind=i.plural, namespace=NAMESPACE, name="x")
    ),
}


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """data truncated, bit-flipped, spliced with random bytes or repeated, 1-3 times."""
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["truncate", "flip", "splice", "repeat"]))
        if how == "repeat" or not data:
            data = data + data if data else draw(st.binary(max_size=8))
            continue
        i = draw(st.integers(0, len(data) - 1))
        if how == "truncate":
            data = data[:i]
        elif how == "flip":
            flipped = bytearray(data)
            flipped[i] ^= 1 << draw(st.integers(0, 7))
            data = bytes(flipped)
        else:
            data = data[:i] + draw(st.binary(min_size=1, max_size=8)) + data[i:]
    return data


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
