"""What the fuzz tests in test_fuzz_api.py send: methods, strategies and request builders.

The methods are every unary method of etcdserverpb.KV and mizzen.v1.Objects.
Hostile messages are built field by field from the descriptors; valid requests
are drawn to be mutated byte by byte. Examples are derandomized (FUZZ).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor, FileDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from mizzen.api import kinds
from mizzen.api.kinds import KindInfo
from protos import objects_api_pb2 as api
from protos import rpc_pb2

MAX_REQUEST_BYTES = 1536 * 1024  # the store's (etcd's) --max-request-bytes
GRPC_RECEIVE_LIMIT = 2 * 1024 * 1024  # the server's grpc.max_receive_message_length
NAMESPACE = "fuzz"

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
    elif info.kind == "Service":
        obj.spec.selector["app"] = name
        obj.spec.ports.add(name="http", target_port="http")
    return obj


def _wrap(obj: Message) -> api.Object:
    field = next(
        f.name
        for f in api.Object.DESCRIPTOR.oneofs_by_name["object"].fields
        if f.message_type is not None and f.message_type.full_name == obj.DESCRIPTOR.full_name
    )
    out = api.Object()
    getattr(out, field).CopyFrom(obj)
    return out


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
