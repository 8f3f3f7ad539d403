"""The HTTP gateway's JSON: requests parsed and answers written as etcd's grpc-gateway does.

etcd 3.4's gateway (grpc-gateway v1 with golang/protobuf's jsonpb, OrigName)
reads a request body as JSON with Go's ``encoding/json``: bytes in standard
base64 with padding, 64-bit integers as numbers or quoted, enum values by name
or number, either field spelling (``keys_only`` or ``keysOnly``), unknown
fields ignored. Its refusals carry Go's messages ("illegal base64 data at
input byte 3", "json: cannot unmarshal number into Go value of type bool",
'unknown value "X" for enum etcdserverpb.RangeRequest_SortOrder'); this module
checks a decoded body against the message's descriptor to give the same
ones, then lets ``google.protobuf.json_format`` build the message. A body that
is not JSON at all is refused with Python's parser message (the one text that
differs). Answers are ``json_format`` with proto field names and default
values left out, as jsonpb writes them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, NoReturn

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

# grpc-gateway's runtime.HTTPStatusFromCode (the version etcd 3.4 vendors)
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 408,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 412,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}


# ------------------------------------------------------------------ errors


class GatewayAbort(grpc.aio.AbortError):
    """A call ended with a status (GatewayContext.abort, or a request that did not parse)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def error_body(code: grpc.StatusCode, message: str) -> bytes:
    """grpc-gateway's error for a unary call (and a stream's refused first request)."""
    number = code.value[0]
    return dumps({"error": message, "message": message, "code": number})


def stream_error_body(code: grpc.StatusCode, message: str) -> bytes:
    """grpc-gateway's error inside a streamed answer."""
    http = HTTP_STATUS.get(code, 500)
    return dumps(
        {
            "error": {
                "grpc_code": code.value[0],
                "http_code": http,
                "message": message,
                "http_status": HTTPStatus(http).phrase,
            }
        }
    )


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _invalid(message: str) -> NoReturn:
    raise GatewayAbort(grpc.StatusCode.INVALID_ARGUMENT, message)


# ------------------------------------------------------------------ JSON <-> protobuf


def go_b64decode(text: str) -> bytes:
    """Decode as Go's base64.StdEncoding (encoding/json's []byte) does, with its errors.

    The standard alphabet, padding required, CR and LF skipped anywhere; the
    error names the offset Go's CorruptInputError names.
    """
    data = text.encode("utf-8", "surrogatepass")
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    clean = bytearray()
    si, n = 0, len(data)

    def bad(offset: int) -> NoReturn:
        _invalid(f"illegal base64 data at input byte {offset}")

    while si < n:
        quantum = 0  # characters of this 4-character group read so far
        start = len(clean)
        while quantum < 4:
            if si == n:
                if quantum == 0:
                    break
                bad(si - quantum)
            c = data[si]
            si += 1
            if c in alphabet:
                clean.append(c)
                quantum += 1
                continue
            if c in b"\r\n":
                continue
            if c != ord("="):
                bad(si - 1)
            if quantum in (0, 1):
                bad(si - 1)
            if quantum == 2:
                while si < n and data[si] in b"\r\n":
                    si += 1
                if si == n:
                    bad(n)
                if data[si] != ord("="):
                    bad(si - 1)
                si += 1
            while si < n and data[si] in b"\r\n":
                si += 1
            if si < n:
                bad(si)
            clean.extend(b"=" * (4 - quantum))
            quantum = 4
        if len(clean) == start:
            break
    return base64.b64decode(bytes(clean))  # like Go's, ignores non-zero padding bits


_GO_TYPES = {dict: "object", list: "array", str: "string", bool: "bool", int: "number"}


def _go_type(value: Any) -> str:
    return _GO_TYPES.get(type(value), "number")


_F = FieldDescriptor
_GO_SCALARS = {
    _F.TYPE_BOOL: "bool",
    _F.TYPE_STRING: "string",
    _F.TYPE_INT64: "int64",
    _F.TYPE_SINT64: "int64",
    _F.TYPE_SFIXED64: "int64",
    _F.TYPE_UINT64: "uint64",
    _F.TYPE_FIXED64: "uint64",
    _F.TYPE_INT32: "int32",
    _F.TYPE_SINT32: "int32",
    _F.TYPE_SFIXED32: "int32",
    _F.TYPE_UINT32: "uint32",
    _F.TYPE_FIXED32: "uint32",
}


def _check_scalar(value: Any, go: str) -> None:
    """Refuse what Go's jsonpb refuses for a scalar field, with its message."""
    if value is None:
        return
    if go in ("bool", "string"):
        if not isinstance(value, bool if go == "bool" else str):
            _invalid(f"json: cannot unmarshal {_go_type(value)} into Go value of type {go}")
        return
    if isinstance(value, str):  # jsonpb takes an integer quoted too
        text = value.strip()
        if not text:
            _invalid("unexpected end of JSON input")
        if not text.lstrip("-").isdigit():
            _invalid(f"invalid character {text[0]!r} looking for beginning of value")
        return
    if isinstance(value, float) or not isinstance(value, int) or isinstance(value, bool):
        shown = f" {value}" if isinstance(value, float) else ""
        _invalid(f"json: cannot unmarshal {_go_type(value)}{shown} into Go value of type {go}")


def _bytes_field(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, str):
        _invalid(f"json: cannot unmarshal {_go_type(value)} into Go value of type []uint8")
    return base64.b64encode(go_b64decode(value)).decode()


def _prepare(value: dict[str, Any], desc: Any) -> dict[str, Any]:
    """The request object with bytes re-encoded after Go's rules, unknown fields dropped."""
    fields: dict[str, Any] = {}
    for f in desc.fields:
        fields[f.name] = fields[f.json_name] = f
    out: dict[str, Any] = {}
    for key, v in value.items():
        f = fields.get(key)
        if f is None:
            continue  # grpc-gateway (jsonpb) ignores fields it does not know
        repeated = f.is_repeated and isinstance(v, list)
        if f.type == FieldDescriptor.TYPE_BYTES:
            v = [_bytes_field(x) for x in v] if repeated else _bytes_field(v)
        elif f.type in _GO_SCALARS:
            for x in v if repeated else [v]:
                _check_scalar(x, _GO_SCALARS[f.type])
        elif f.type == FieldDescriptor.TYPE_ENUM:
            for name in v if repeated else [v]:
                if isinstance(name, str) and name not in f.enum_type.values_by_name:
                    _invalid(f'unknown value "{name}" for enum {_go_enum(f.enum_type)}')
        elif f.type == FieldDescriptor.TYPE_MESSAGE:
            sub = f.message_type
            if repeated:
                v = [_prepare(x, sub) if isinstance(x, dict) else x for x in v]
            elif isinstance(v, dict):
                v = _prepare(v, sub)
        out[key] = v
    return out


def _go_enum(enum: Any) -> str:
    """Go's name of an enum type: etcdserverpb.RangeRequest_SortOrder."""
    package = enum.file.package
    local = enum.full_name[len(package) + 1 :] if package else enum.full_name
    return f"{package}.{local.replace('.', '_')}" if package else local


def to_message(value: Any, cls: type[Message]) -> Message:
    """One decoded JSON value as a request message; GatewayAbort(INVALID_ARGUMENT) if not."""
    if value is None:
        return cls()
    if not isinstance(value, dict):
        _invalid(
            f"json: cannot unmarshal {_go_type(value)} into Go value of type "
            "map[string]json.RawMessage"
        )
    msg = cls()
    try:
        json_format.ParseDict(_prepare(value, msg.DESCRIPTOR), msg, ignore_unknown_fields=True)
    except json_format.ParseError as err:
        _invalid(str(err))
    return msg


def render(msg: Message) -> dict[str, Any]:
    """grpc-gateway's jsonpb: proto field names, defaults left out, int64 as strings."""
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


class JsonValues:
    """The JSON values of a request body, one after another (a body may hold several).

    At most ``limit`` bytes wait unparsed: a longer value is refused with
    RESOURCE_EXHAUSTED (as gRPC refuses a message over its receive limit).
    """

    def __init__(self, read: Callable[[], Awaitable[bytes]], limit: int) -> None:
        self._read = read
        self._limit = limit
        self._text = ""
        self._raw = b""
        self._eof = False
        self._decoder = json.JSONDecoder()

    async def next(self) -> tuple[bool, Any]:
        """(True, value), or (False, None) at the end; GatewayAbort if the body is not JSON."""
        while True:
            text = self._text.lstrip()
            if text:
                try:
                    value, end = self._decoder.raw_decode(text)
                except json.JSONDecodeError as err:
                    if self._eof:
                        _invalid(str(err))
                else:
                    self._text = text[end:]
                    return True, value
            elif self._eof:
                return False, None
            self._text = text
            await self._more()

    async def _more(self) -> None:
        chunk = await self._read()
        if not chunk:
            self._eof = True
        if len(self._text) + len(self._raw) + len(chunk) > self._limit:
            raise GatewayAbort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request larger than the gateway's limit of {self._limit} bytes",
            )
        self._raw += chunk
        try:
            decoded = self._raw.decode()
        except UnicodeDecodeError as err:
            if self._eof or err.end < len(self._raw):
                _invalid(f"invalid UTF-8 in request body: {err.reason}")
            return  # a character cut between chunks: wait for the rest
        self._raw = b""
        self._text += decoded
