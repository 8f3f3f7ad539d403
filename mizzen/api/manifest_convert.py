"""Conversion between manifest mappings (Kubernetes shape) and protobuf messages.

Both directions walk the message descriptors, so a new field or a new
ResourceList anywhere in protos/objects.proto needs no change here.

Decoder.message() checks a parsed YAML/JSON value against a descriptor and returns the
protobuf JSON mapping of it, ready for json_format.ParseDict, together with
every problem found (unknown fields, wrong types, bad quantities, bad
timestamps), each with its manifest path (``spec.template.spec.processes[0]``).
Only camelCase field names are accepted, as in Kubernetes manifests.

encode() is the reverse: a message to a plain dict with camelCase names, ints
as ints (the JSON mapping would write int64 as strings), quantities formatted
("500m", "128Mi") and unset fields omitted. A submessage that is set but empty
is kept as ``{}``, because presence means something (a probe's handler).

Secret values never appear in a problem: under a Secret's ``data`` and
``stringData`` a wrong value is described by its type only ("expected a
string, got an integer"), and bad base64 by the decoder's reason.

Three translations make manifests read like Kubernetes': a ResourceList is
written ``{cpu: "500m", memory: "128Mi", pids: 100}``, int-or-percent
fields (max_surge, max_unavailable, strings in the proto) also take integers,
and a probe's ``port`` (tcpSocket, httpGet) also takes a port's name, which is
stored in ``port_name`` (and written back as ``portName``).

One file because both directions walk the same descriptors with the same field
rules (camelCase names, quantities, int-or-string, timestamps), so a rule is
written once for reading and writing.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import difflib
import keyword
import math
from collections.abc import Callable, Mapping
from typing import Any, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from mizzen.api import quantity
from mizzen.api.field_errors import FieldError
from mizzen.api.pod_validation import RESOURCES
from protos import objects_pb2 as pb

RESOURCE_LIST = pb.ResourceList.DESCRIPTOR.full_name
TIMESTAMP = Timestamp.DESCRIPTOR.full_name
# String fields that also accept an integer (Kubernetes' IntOrString).
INT_OR_STRING = frozenset({"max_surge", "max_unavailable", "target_port"})
# Probe actions whose int ``port`` also takes a port's name (`port: http`), stored in
# ``port_name`` (written back as ``portName``).
NAMED_PORT = frozenset(
    {pb.TCPSocketAction.DESCRIPTOR.full_name, pb.HTTPGetAction.DESCRIPTOR.full_name}
)

_F = FieldDescriptor
_INT_RANGES: dict[int, tuple[int, int]] = {
    **dict.fromkeys((_F.TYPE_INT32, _F.TYPE_SINT32, _F.TYPE_SFIXED32), (-(2**31), 2**31 - 1)),
    **dict.fromkeys((_F.TYPE_INT64, _F.TYPE_SINT64, _F.TYPE_SFIXED64), (-(2**63), 2**63 - 1)),
    **dict.fromkeys((_F.TYPE_UINT32, _F.TYPE_FIXED32), (0, 2**32 - 1)),
    **dict.fromkeys((_F.TYPE_UINT64, _F.TYPE_FIXED64), (0, 2**64 - 1)),
}
_INT64_MAX = 2**63 - 1

# ResourceList field -> (manifest name, parser, formatter, unit for error messages)
_RESOURCE_PARSERS: dict[str, Callable[[quantity.Amount], int]] = {
    "cpu_millis": quantity.parse_cpu,
    "memory_bytes": quantity.parse_memory,
    "pids": quantity.parse_count,
}
_RESOURCE_FORMATS: dict[str, Callable[[int], str | int]] = {
    "cpu_millis": quantity.format_cpu,
    "memory_bytes": quantity.format_memory,
    "pids": int,
}
_RESOURCE_UNITS = {"cpu_millis": "millicores (1m)", "memory_bytes": "bytes", "pids": "units"}
_RESOURCE_BY_NAME = {name: field for field, name in RESOURCES}
# Fields whose values are secret: errors name their type, never the value.
SENSITIVE = {pb.Secret.DESCRIPTOR.full_name: frozenset({"data", "stringData"})}


def describe(value: object) -> str:
    """A value's type as a user reads it in an error: 'string "two"', 'list'."""
    match value:
        case None:
            return "null"
        case bool():
            return f"boolean {str(value).lower()}"
        case int():
            return f"integer {value}"
        case float():
            return f"number {value}"
        case str():
            return f'string "{value}"'
        case list():
            return "list"
        case dict():
            return "object"
        case datetime.datetime():
            return f"timestamp {value.isoformat()}"
        case datetime.date():
            return f"date {value.isoformat()}"
        case _:
            return type(value).__name__


def describe_type(value: object) -> str:
    """A value's type without the value, for fields whose values are secret."""
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int():
            return "an integer"
        case float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "a list"
        case dict():
            return "an object"
        case datetime.date():
            return "a date"
        case _:
            return type(value).__name__


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _is_map(field: FieldDescriptor) -> bool:
    return bool(field.message_type is not None and field.message_type.GetOptions().map_entry)


def _message_type(field: FieldDescriptor) -> Descriptor:
    desc = field.message_type
    assert desc is not None, field.full_name
    return desc


def _map_value(field: FieldDescriptor) -> FieldDescriptor:
    return _message_type(field).fields_by_name["value"]


_JSON_FIELDS: dict[str, dict[str, FieldDescriptor]] = {}


def _json_fields(desc: Descriptor) -> dict[str, FieldDescriptor]:
    """desc's fields by JSON name (built once per message type)."""
    fields = _JSON_FIELDS.get(desc.full_name)
    if fields is None:
        fields = _JSON_FIELDS[desc.full_name] = {field.json_name: field for field in desc.fields}
    return fields


class _InvalidQuantity(ValueError):
    pass


def parse_resource(field: str, amount: object) -> int:
    """The ResourceList value of a manifest quantity, or _InvalidQuantity with the reason."""
    if isinstance(amount, bool) or not isinstance(amount, str | int | float):
        raise _InvalidQuantity(
            f"invalid quantity: expected a string or number, got {describe(amount)}"
        )
    shown = f'invalid quantity "{amount}"'
    try:
        exact = quantity.parse_quantity(amount)
    except quantity.QuantityError:
        raise _InvalidQuantity(shown) from None
    if exact < 0:
        raise _InvalidQuantity(f"{shown}: must not be negative")
    try:
        value = _RESOURCE_PARSERS[field](amount)
    except quantity.QuantityError:
        raise _InvalidQuantity(
            f"{shown}: must be a whole number of {_RESOURCE_UNITS[field]}"
        ) from None
    if value > _INT64_MAX:
        raise _InvalidQuantity(f"{shown}: too large")
    return value


class Decoder:
    """Checks manifest values against descriptors; problems accumulate in errors."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []
        self.describe: Callable[[object], str] = describe

    def error(self, path: str, message: str) -> None:
        self.errors.append(FieldError(path, message))

    def unknown(self, path: str, key: str, known: Mapping[str, object]) -> None:
        camel = camel_case(key)
        if camel != key and camel in known:
            hint = camel
        else:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = close[0] if close else ""
        self.error(path, f'unknown field; did you mean "{hint}"?' if hint else "unknown field")

    def message(self, value: object, desc: Descriptor, path: str) -> dict[str, Any] | None:
        """The JSON mapping of value as a desc message; None (and errors) if it is not one."""
        if not isinstance(value, dict):
            self.error(path, f"expected an object, got {self.describe(value)}")
            return None
        fields = _json_fields(desc)
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                self.error(
                    join(path, str(key)), f"field name must be a string, not {self.describe(key)}"
                )
                continue
            fpath = join(path, key)
            field = fields.get(key)
            if field is None:
                self.unknown(fpath, key, fields)
                continue
            if item is None:  # null means unset, as in Kubernetes
                continue
            if key == "port" and isinstance(item, str) and desc.full_name in NAMED_PORT:
                if item.isascii() and item.isdigit():
                    item = int(item)
                elif "portName" in value:
                    self.error(fpath, "a port name here and portName too: give one of them")
                    continue
                else:
                    key, field, fpath = "portName", fields["portName"], join(path, "portName")
            if key in SENSITIVE.get(desc.full_name, ()):
                converted = self.sensitive_field(item, field, fpath)
            else:
                converted = self.field(item, field, fpath)
            if converted is not None:
                out[key] = converted
        return out

    def sensitive_field(self, value: object, field: FieldDescriptor, path: str) -> Any:
        """field, with values described by their type only in errors."""
        before, self.describe = self.describe, describe_type
        try:
            return self.field(value, field, path)
        finally:
            self.describe = before

    def field(self, value: object, field: FieldDescriptor, path: str) -> Any:
        if _is_map(field):
            if not isinstance(value, dict):
                self.error(path, f"expected an object, got {self.describe(value)}")
                return None
            key_field = _message_type(field).fields_by_name["key"]
            value_field = _map_value(field)
            entries: dict[str, Any] = {}
            for key, item in value.items():
                kpath = f"{path}[{key}]"
                if self.single(key, key_field, kpath) is None:
                    continue
                converted = self.single(item, value_field, kpath)
                if converted is not None:
                    entries[str(key)] = converted
            return entries
        if field.is_repeated:
            if not isinstance(value, list):
                self.error(path, f"expected a list, got {self.describe(value)}")
                return None
            items = [self.single(item, field, f"{path}[{i}]") for i, item in enumerate(value)]
            return [item for item in items if item is not None]
        return self.single(value, field, path)

    def single(self, value: object, field: FieldDescriptor, path: str) -> Any:
        """One value of field (an element, for repeated fields and maps)."""
        if value is None:
            self.error(path, "must not be null")
            return None
        if field.type == _F.TYPE_MESSAGE:
            desc = _message_type(field)
            if desc.full_name == TIMESTAMP:
                return self.timestamp(value, path)
            if desc.full_name == RESOURCE_LIST:
                return self.resource_list(value, path)
            return self.message(value, desc, path)
        return self.scalar(value, field, path)

    def scalar(self, value: object, field: FieldDescriptor, path: str) -> Any:
        kind = field.type
        if kind == _F.TYPE_STRING:
            if isinstance(value, str):
                return value
            if (
                field.name in INT_OR_STRING
                and isinstance(value, int)
                and not isinstance(value, bool)
            ):
                return str(value)
            quote = " (quote it)" if not isinstance(value, list | dict) else ""
            self.error(path, f"expected a string, got {self.describe(value)}{quote}")
        elif kind == _F.TYPE_BOOL:
            if isinstance(value, bool):
                return value
            self.error(path, f"expected a boolean, got {self.describe(value)}")
        elif kind in _INT_RANGES:
            if not isinstance(value, int) or isinstance(value, bool):
                self.error(path, f"expected an integer, got {self.describe(value)}")
                return None
            low, high = _INT_RANGES[kind]
            if not low <= value <= high:
                self.error(path, f"integer {value} is out of range [{low}, {high}]")
                return None
            return value
        elif kind in (_F.TYPE_FLOAT, _F.TYPE_DOUBLE):
            if isinstance(value, int | float) and not isinstance(value, bool):
                return value
            self.error(path, f"expected a number, got {self.describe(value)}")
        elif kind == _F.TYPE_ENUM:
            enum = field.enum_type
            if isinstance(value, str) and enum is not None and value in enum.values_by_name:
                return value
            self.error(path, f"unsupported value {self.describe(value)}")
        elif kind == _F.TYPE_BYTES:
            if not isinstance(value, str):
                self.error(path, f"expected a base64 string, got {self.describe(value)}")
                return None
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as err:
                reason = str(err).removeprefix("Invalid base64-encoded string: ")
                self.error(path, f"invalid base64: {reason}")
                return None
            return value
        return None

    def timestamp(self, value: object, path: str) -> str | None:
        """RFC 3339 text; YAML may already have parsed an unquoted time into a datetime."""
        stamp = Timestamp()
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=datetime.UTC)
            stamp.FromDatetime(value)
            return stamp.ToJsonString()
        if isinstance(value, str):
            try:
                stamp.FromJsonString(value)
            except ValueError:
                self.error(
                    path, f'invalid timestamp "{value}": use RFC 3339, e.g. 2024-01-02T15:04:05Z'
                )
                return None
            return value
        self.error(path, f"expected an RFC 3339 timestamp, got {self.describe(value)}")
        return None

    def resource_list(self, value: object, path: str) -> dict[str, int] | None:
        """{cpu: "500m", memory: "128Mi", pids: 100} -> {cpuMillis: 500, ...}; all errors."""
        if not isinstance(value, dict):
            self.error(path, f"expected an object of quantities, got {self.describe(value)}")
            return None
        json_names = {f.name: f.json_name for f in pb.ResourceList.DESCRIPTOR.fields}
        out: dict[str, int] = {}
        for key, amount in value.items():
            kpath = join(path, str(key))
            field = _RESOURCE_BY_NAME.get(key) if isinstance(key, str) else None
            if field is None:
                self.unknown(kpath, str(key), _RESOURCE_BY_NAME)
                continue
            if amount is None:
                continue
            try:
                out[json_names[field]] = parse_resource(field, amount)
            except _InvalidQuantity as exc:
                self.error(kpath, str(exc))
        return out


def camel_case(name: str) -> str:
    """protoc's json_name for a snake_case name: restart_policy -> restartPolicy."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


# ---------------------------------------------------------------- encoding
#
# encode() runs once per object of a listing (10,000 pods for `mizzen get pods
# -A -o json`), so each message type gets a function of its own, generated
# from its descriptor on first use: straight-line code that reads each field,
# keeps it when the message would list it (ListFields: fields with presence
# when set, other scalars when not zero/empty, repeated fields and maps when
# not empty), in field-number order as ListFields gives them, and converts
# only the fields that need it. A walk of ListFields with a converter looked up
# per field cost ~2x as much. The generated source is built only from the
# descriptors compiled into Mizzen (field names are checked identifiers, JSON
# names are string literals), never from anything a user or the network sends.


def encode(msg: Message) -> dict[str, Any]:
    """msg as a manifest mapping: camelCase names, set fields only, quantities as strings."""
    desc = cast(Descriptor, msg.DESCRIPTOR)
    fn = _MESSAGE_ENCODERS.get(desc)
    if fn is None:
        fn = _message_encoder(desc)
    return fn(msg)


_MESSAGE_ENCODERS: dict[Descriptor, Callable[[Any], dict[str, Any]]] = {}


def _message_encoder(desc: Descriptor) -> Callable[[Any], dict[str, Any]]:
    """The generated encoder of desc's messages (and, through it, of those it holds)."""
    fn = _MESSAGE_ENCODERS.get(desc)
    if fn is not None:
        return fn
    # A message type that (indirectly) holds itself finds this while its own
    # encoder is being built; by the time a message is encoded it is replaced.
    _MESSAGE_ENCODERS[desc] = lambda msg: _MESSAGE_ENCODERS[desc](msg)
    helpers: dict[str, Any] = {"sorted": sorted, "_copysign": math.copysign}
    lines = ["def encode(m):", "    d = {}"]
    try:
        for i, field in enumerate(sorted(desc.fields, key=lambda f: f.number)):
            lines += _field_lines(field, f"c{i}", helpers)
        lines.append("    return d")
        code = compile("\n".join(lines), f"<encode {desc.full_name}>", "exec")
        exec(code, helpers)  # source from our own descriptors only, see above
    except BaseException:
        del _MESSAGE_ENCODERS[desc]
        raise
    fn = _MESSAGE_ENCODERS[desc] = helpers["encode"]
    return fn


def _field_lines(field: FieldDescriptor, helper: str, helpers: dict[str, Any]) -> list[str]:
    """Source lines that put field into d (a manifest mapping) if m lists it."""
    name = field.name
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"field {field.full_name}: not a Python attribute name")
    key = repr(field.json_name)
    if _is_map(field):
        convert = _value_encoder(_map_value(field))
        if convert is None:
            put = "{k: v[k] for k in sorted(v)}"
        else:
            helpers[helper] = convert
            put = f"{{k: {helper}(v[k]) for k in sorted(v)}}"
        return [f"    v = m.{name}", f"    if v: d[{key}] = {put}"]
    convert = _value_encoder(field)
    if convert is not None:
        helpers[helper] = convert
    if field.is_repeated:
        put = "list(v)" if convert is None else f"[{helper}(x) for x in v]"
        return [f"    v = m.{name}", f"    if v: d[{key}] = {put}"]
    put = "v" if convert is None else f"{helper}(v)"
    if field.has_presence:  # messages, `optional` scalars, oneof members
        return [
            f"    if m.HasField({name!r}):",
            f"        v = m.{name}",
            f"        d[{key}] = {put}",
        ]
    if field.type in (_F.TYPE_FLOAT, _F.TYPE_DOUBLE):  # ListFields keeps -0.0
        return [f"    v = m.{name}", f"    if v or _copysign(1.0, v) < 0.0: d[{key}] = {put}"]
    return [f"    v = m.{name}", f"    if v: d[{key}] = {put}"]


def _value_encoder(field: FieldDescriptor) -> Callable[[Any], Any] | None:
    """How one value of field is written in a manifest; None when it is kept as it is."""
    if field.type == _F.TYPE_MESSAGE:
        desc = _message_type(field)
        if desc.full_name == TIMESTAMP:
            return _encode_timestamp
        if desc.full_name == RESOURCE_LIST:
            return _encode_resources
        return _message_encoder(desc)
    if field.type == _F.TYPE_STRING and field.name in INT_OR_STRING:
        return _encode_int_or_string
    if field.type == _F.TYPE_ENUM and field.enum_type is not None:
        values = field.enum_type.values_by_number
        return lambda value: values[value].name
    if field.type == _F.TYPE_BYTES:
        return lambda value: base64.b64encode(value).decode("ascii")
    return None


# Timestamp.ToJsonString() builds a datetime per call (~5 us, the largest single
# cost of a pod); the text of each whole second is kept and the fraction added.
_SECOND_TEXT: dict[int, str] = {}
_SECOND_TEXT_MAX = 100_000


def _encode_timestamp(value: Any) -> str:
    """value.ToJsonString(): RFC 3339 in UTC, with 0, 3, 6 or 9 fractional digits."""
    seconds, nanos = value.seconds, value.nanos
    head = _SECOND_TEXT.get(seconds)
    if head is None or not 0 <= nanos < 1_000_000_000:
        text: str = value.ToJsonString()  # raises ValueError for a time out of range
        if len(_SECOND_TEXT) >= _SECOND_TEXT_MAX:
            _SECOND_TEXT.clear()
        _SECOND_TEXT[seconds] = text[:19]  # "YYYY-MM-DDTHH:MM:SS", years 1 to 9999
        return text
    if nanos == 0:
        return head + "Z"
    if nanos % 1_000_000 == 0:
        return f"{head}.{nanos // 1_000_000:03d}Z"
    if nanos % 1_000 == 0:
        return f"{head}.{nanos // 1_000:06d}Z"
    return f"{head}.{nanos:09d}Z"


def _encode_resources(value: Any) -> dict[str, str | int]:
    return {
        manifest_name: _RESOURCE_FORMATS[f](getattr(value, f))
        for f, manifest_name in RESOURCES
        if value.HasField(f)
    }


def _encode_int_or_string(value: str) -> int | str:
    digits = value.isascii() and value.isdigit()
    return int(value) if digits and str(int(value)) == value else value
