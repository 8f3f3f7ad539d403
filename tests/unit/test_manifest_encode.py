"""encode()'s generated per-type encoders write exactly what the field walk wrote.

``walk_encode`` below is the converter encode() replaced (a walk of
ListFields with one converter per field), kept here as the reference: for
objects of every kind with every field set, with random fields set, with
empty and zero-valued fields, maps, repeated fields, timestamps, quantities
and int-or-string values, and for protobuf's own descriptor, wrapper and
struct messages (enums, bytes, floats, proto2 presence, fields declared out of
number order), both must give the same mapping and the same JSON text, key
order included.
"""

from __future__ import annotations

import base64
import json
import math
import random
from collections.abc import Callable
from typing import Any, cast

import pytest
from google.protobuf import descriptor_pb2, struct_pb2, wrappers_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from mizzen.api import kinds
from mizzen.api.manifest import dump_json
from mizzen.api.manifest_convert import (
    INT_OR_STRING,
    RESOURCE_LIST,
    TIMESTAMP,
    _encode_int_or_string,
    _encode_resources,
    encode,
)
from protos import objects_pb2 as pb

_F = FieldDescriptor

# ---------------------------------------------------------------- the reference


def walk_encode(msg: Message) -> dict[str, Any]:
    return {field.json_name: _walk_field(field)(value) for field, value in msg.ListFields()}


def _walk_field(field: FieldDescriptor) -> Callable[[Any], Any]:
    mt = field.message_type
    if mt is not None and mt.GetOptions().map_entry:
        single = _walk_single(mt.fields_by_name["value"])
        return lambda value: {key: single(value[key]) for key in sorted(value)}
    single = _walk_single(field)
    if field.is_repeated:
        return lambda value: [single(item) for item in value]
    return single


def _walk_single(field: FieldDescriptor) -> Callable[[Any], Any]:
    if field.type == _F.TYPE_MESSAGE:
        assert field.message_type is not None
        name = field.message_type.full_name
        if name == TIMESTAMP:
            return lambda value: value.ToJsonString()
        if name == RESOURCE_LIST:
            return _encode_resources
        return walk_encode
    if field.type == _F.TYPE_STRING and field.name in INT_OR_STRING:
        return _encode_int_or_string
    if field.type == _F.TYPE_ENUM and field.enum_type is not None:
        values = field.enum_type.values_by_number
        return lambda value: values[value].name
    if field.type == _F.TYPE_BYTES:
        return lambda value: base64.b64encode(value).decode("ascii")
    return lambda value: value


def same(msg: Message) -> None:
    want, got = walk_encode(msg), encode(msg)
    assert json.dumps(got, ensure_ascii=False) == json.dumps(want, ensure_ascii=False)
    assert json.dumps(got, indent=2) == json.dumps(want, indent=2)


# ---------------------------------------------------------------- objects to encode

STRINGS = ["", "a", "web-1", "ünïcødé ✓", 'quote " and \\ and \n newline', "25%", "3", "03", "0"]
STAMP_NANOS = [0, 1, 500_000_000, 123_000_000, 123_456_000, 123_456_789, 999_999_999]
STAMP_SECONDS = [0, 1, -1, 1_700_000_000, 1_700_000_001, -62135596800, 253402300799, 86399]


def _scalar(field: FieldDescriptor, rng: random.Random) -> Any:
    t = field.type
    if t == _F.TYPE_STRING:
        return rng.choice(STRINGS)
    if t == _F.TYPE_BOOL:
        return rng.random() < 0.5
    if t in (_F.TYPE_INT32, _F.TYPE_SINT32, _F.TYPE_SFIXED32):
        return rng.choice([0, 1, -1, 30, 2**31 - 1, -(2**31)])
    if t in (_F.TYPE_INT64, _F.TYPE_SINT64, _F.TYPE_SFIXED64):
        return rng.choice([0, 1, -5, 134217728, 2**63 - 1, -(2**63)])
    if t in (_F.TYPE_UINT32, _F.TYPE_FIXED32):
        return rng.choice([0, 1, 2**32 - 1])
    if t in (_F.TYPE_UINT64, _F.TYPE_FIXED64):
        return rng.choice([0, 1, 2**64 - 1])
    if t in (_F.TYPE_FLOAT, _F.TYPE_DOUBLE):
        return rng.choice([0.0, -0.0, 1.5, -2.25, math.inf, -math.inf, 1e300])
    if t == _F.TYPE_ENUM:
        assert field.enum_type is not None
        return rng.choice(field.enum_type.values).number
    if t == _F.TYPE_BYTES:
        return rng.choice([b"", b"\x00\xff", b"abc"])
    raise AssertionError(field.full_name)


def _timestamp(stamp: Timestamp, rng: random.Random) -> None:
    stamp.seconds = rng.choice(STAMP_SECONDS)
    stamp.nanos = rng.choice(STAMP_NANOS)


def fill(msg: Message, rng: random.Random, p_set: float, depth: int = 0) -> None:
    """Set fields of msg at random (each with probability p_set), recursively."""
    name = msg.DESCRIPTOR.full_name
    if name == TIMESTAMP:
        _timestamp(msg, rng)  # type: ignore[arg-type]
        return
    for field in msg.DESCRIPTOR.fields:
        if rng.random() >= p_set:
            continue
        if field.containing_oneof is not None and msg.WhichOneof(field.containing_oneof.name):
            continue
        _set(msg, cast(FieldDescriptor, field), rng, p_set, depth)


def _set(msg: Message, field: FieldDescriptor, rng: random.Random, p: float, depth: int) -> None:
    value: Any = getattr(msg, field.name)
    mt = field.message_type
    if mt is not None and mt.GetOptions().map_entry:
        value_field = mt.fields_by_name["value"]
        keys = rng.sample(["zeta", "alpha", "m", "Beta", "a.b/c", "ü"], rng.randint(0, 4))
        for key in keys:
            if value_field.type == _F.TYPE_MESSAGE:
                if depth < 5:
                    fill(value[key], rng, p, depth + 1)
            else:
                value[key] = _scalar(value_field, rng)
        return
    if field.is_repeated:
        for _ in range(rng.randint(0, 3)):
            if field.type == _F.TYPE_MESSAGE:
                if depth < 5:
                    fill(value.add(), rng, p, depth + 1)
            else:
                value.append(_scalar(field, rng))
        return
    if field.type == _F.TYPE_MESSAGE:
        if rng.random() < 0.15 or depth >= 5:
            value.SetInParent()  # set but empty: kept as {}
        else:
            fill(value, rng, p, depth + 1)
        return
    setattr(msg, field.name, _scalar(field, rng))


def _every_kind() -> list[type[Message]]:
    return [info.message for info in kinds.KINDS]


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("cls", _every_kind(), ids=lambda c: c.DESCRIPTOR.name)
def test_every_kind_with_every_field_set(cls: type[Message]) -> None:
    for seed in range(20):
        msg = cls()
        fill(msg, random.Random(seed), p_set=1.0)
        same(msg)


@pytest.mark.parametrize("cls", _every_kind(), ids=lambda c: c.DESCRIPTOR.name)
def test_every_kind_with_random_fields_set(cls: type[Message]) -> None:
    for seed in range(200):
        rng = random.Random(seed)
        msg = cls()
        fill(msg, rng, p_set=rng.choice([0.1, 0.3, 0.6]))
        same(msg)


@pytest.mark.parametrize("cls", _every_kind(), ids=lambda c: c.DESCRIPTOR.name)
def test_empty_objects(cls: type[Message]) -> None:
    same(cls())
    assert encode(cls()) == {}


def test_zero_valued_presence_fields_and_empty_submessages_are_kept() -> None:
    pod = pb.Pod()
    pod.metadata.deletion_grace_period_seconds = 0
    pod.spec.termination_grace_period_seconds = 0
    process = pod.spec.processes.add(name="main")
    process.resources.limits.cpu_millis = 0
    process.resources.requests.SetInParent()
    pod.status.SetInParent()
    same(pod)
    got = encode(pod)
    assert got["metadata"] == {"deletionGracePeriodSeconds": 0}
    assert got["spec"]["processes"][0]["resources"] == {"limits": {"cpu": "0"}, "requests": {}}
    assert got["status"] == {}


def test_protobufs_own_messages() -> None:
    """Enums, bytes, floats and doubles (-0.0 included), proto2 presence, oneofs and
    fields declared out of number order, none of which Mizzen's objects use yet."""
    for seed in range(100):
        rng = random.Random(seed)
        for cls in (
            descriptor_pb2.FileDescriptorProto,
            descriptor_pb2.FieldDescriptorProto,
            struct_pb2.Struct,
            struct_pb2.Value,
            wrappers_pb2.BytesValue,
            wrappers_pb2.DoubleValue,
            wrappers_pb2.FloatValue,
            wrappers_pb2.Int64Value,
        ):
            msg = cls()
            fill(msg, rng, p_set=rng.choice([0.3, 0.8, 1.0]))
            same(msg)
    assert encode(wrappers_pb2.DoubleValue(value=-0.0)) == {"value": -0.0}
    assert encode(wrappers_pb2.DoubleValue(value=0.0)) == {}


def test_timestamps_as_protobuf_writes_them() -> None:
    stamp = Timestamp()
    rng = random.Random(7)
    cases = [(s, n) for s in STAMP_SECONDS for n in STAMP_NANOS]
    cases += [
        (rng.randint(-62135596800, 253402300799), rng.choice(STAMP_NANOS)) for _ in range(500)
    ]
    for seconds, nanos in cases * 2:  # the second time from the cache of whole seconds
        stamp.seconds, stamp.nanos = seconds, nanos
        pod = pb.Pod()
        pod.metadata.creation_timestamp.CopyFrom(stamp)
        assert encode(pod)["metadata"]["creationTimestamp"] == stamp.ToJsonString()
    for seconds, nanos in [(253402300800, 0), (-62135596801, 0), (0, -1), (0, 10**9)]:
        pod = pb.Pod()
        pod.metadata.creation_timestamp.seconds = seconds
        pod.metadata.creation_timestamp.nanos = nanos
        with pytest.raises(ValueError, match="Timestamp is not valid"):
            encode(pod)
    pod = pb.Pod()
    pod.metadata.creation_timestamp.seconds = 1_700_000_000
    encode(pod)  # now cached
    pod.metadata.creation_timestamp.nanos = 10**9
    with pytest.raises(ValueError, match="Timestamp is not valid"):
        encode(pod)


def _walk_dump_json(msgs: list[Message]) -> str:
    """dump_json as it was, on the reference encoder."""
    objects = [
        {"apiVersion": "mizzen/v1", "kind": kinds.kind_of(m).kind, **walk_encode(m)} for m in msgs
    ]
    if len(objects) == 1:
        return json.dumps(objects[0], indent=2, ensure_ascii=False) + "\n"
    head = '{\n  "apiVersion": "mizzen/v1",\n  "kind": "List",\n'
    if not objects:
        return head + '  "items": []\n}\n'
    items = ",\n".join("    " + json.dumps(o, ensure_ascii=False) for o in objects)
    return head + '  "items": [\n' + items + "\n  ]\n}\n"


def test_dump_json_text_is_unchanged() -> None:
    rng = random.Random(3)
    msgs: list[Message] = []
    for cls in _every_kind() * 5:
        msg = cls()
        fill(msg, rng, p_set=0.5)
        msgs.append(msg)
    for group in (msgs, msgs[:1], []):
        assert dump_json(group) == _walk_dump_json(group)
