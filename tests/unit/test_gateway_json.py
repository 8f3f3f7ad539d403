"""The gateway's JSON mapping: Go's base64 and type errors, metadata, error bodies.

The expected messages are what etcd 3.4.23's gateway answered to the same input
(tests/integration/test_etcd_gateway.py compares the two live).
"""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from protos import kv_pb2, rpc_pb2
from store.gateway import call_metadata
from store.gateway_json import (
    GatewayAbort,
    JsonValues,
    error_body,
    go_b64decode,
    render,
    stream_error_body,
    to_message,
)


@pytest.mark.parametrize(
    ("text", "offset"),
    [
        ("YQ", 0),
        ("YQ=", 3),
        ("Y", 0),
        ("YQ==YQ==", 4),
        ("Zm9v!", 4),
        ("Zm9", 0),
        ("Zm-v", 2),
        ("Zm_v", 2),
        ("Y===", 1),
    ],
)
def test_base64_errors_name_go_offsets(text: str, offset: int) -> None:
    with pytest.raises(GatewayAbort) as err:
        go_b64decode(text)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details == f"illegal base64 data at input byte {offset}"


@pytest.mark.parametrize(
    ("text", "data"),
    [("", b""), ("Zm9v", b"foo"), ("Zm9v\n", b"foo"), ("YR==", b"a"), ("YQ=\n=", b"a")],
)
def test_base64_accepts_what_go_accepts(text: str, data: bytes) -> None:
    assert go_b64decode(text) == data


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"key": 1}, "json: cannot unmarshal number into Go value of type []uint8"),
        ([1], "json: cannot unmarshal array into Go value of type map[string]json.RawMessage"),
        (
            {"key": "YQ==", "sort_order": "NOPE"},
            'unknown value "NOPE" for enum etcdserverpb.RangeRequest_SortOrder',
        ),
        (
            {"key": "YQ==", "limit": 1.5},
            "json: cannot unmarshal number 1.5 into Go value of type int64",
        ),
        ({"key": "YQ==", "limit": "x"}, "invalid character 'x' looking for beginning of value"),
        (
            {"key": "YQ==", "count_only": 1},
            "json: cannot unmarshal number into Go value of type bool",
        ),
    ],
)
def test_request_errors_read_as_etcds(value: object, message: str) -> None:
    with pytest.raises(GatewayAbort) as err:
        to_message(value, rpc_pb2.RangeRequest)
    assert err.value.details == message


def test_requests_take_both_field_spellings_and_ignore_unknown_fields() -> None:
    msg = to_message(
        {"key": "YQ==", "keysOnly": True, "range_end": "Yg==", "limit": "5", "x": 1},
        rpc_pb2.RangeRequest,
    )
    assert msg == rpc_pb2.RangeRequest(key=b"a", keys_only=True, range_end=b"b", limit=5)
    other = to_message({"compare": [{"key": "Zm9v!"}]}, rpc_pb2.DeleteRangeRequest)
    assert other == rpc_pb2.DeleteRangeRequest()  # compare: not a DeleteRange field
    with pytest.raises(GatewayAbort, match="input byte 4"):
        to_message({"compare": [{"key": "Zm9v!"}]}, rpc_pb2.TxnRequest)


def test_render_uses_proto_names_and_int64_strings() -> None:
    resp = rpc_pb2.RangeResponse(
        kvs=[kv_pb2.KeyValue(key=b"a", create_revision=2, mod_revision=3, version=1)], count=1
    )
    assert render(resp) == {
        "kvs": [{"key": "YQ==", "create_revision": "2", "mod_revision": "3", "version": "1"}],
        "count": "1",
    }


def test_error_bodies() -> None:
    assert json.loads(error_body(grpc.StatusCode.NOT_FOUND, "gone")) == {
        "error": "gone",
        "message": "gone",
        "code": 5,
    }
    assert json.loads(stream_error_body(grpc.StatusCode.PERMISSION_DENIED, "no")) == {
        "error": {"grpc_code": 7, "http_code": 403, "message": "no", "http_status": "Forbidden"}
    }


def test_metadata_from_headers() -> None:
    headers = {"Authorization": "tok.1", "Grpc-Metadata-Hasleader": "true", "Accept": "x"}
    assert call_metadata(headers) == (
        ("authorization", "tok.1"),
        ("token", "tok.1"),
        ("hasleader", "true"),
    )
    assert call_metadata({"Authorization": "Bearer abc"}) == (("authorization", "Bearer abc"),)


def test_a_body_of_several_values_in_chunks() -> None:
    chunks = [b'{"a":', b' 1}  {"b"', b":2}\n", b"\xc3", b'\xa9"', b""]
    chunks[3:5] = [b'"\xc3', b'\xa9"']

    async def read() -> bytes:
        return chunks.pop(0) if chunks else b""

    async def all_values() -> list[object]:
        values = JsonValues(read, 1024)
        out: list[object] = []
        while True:
            found, value = await values.next()
            if not found:
                return out
            out.append(value)

    assert asyncio.run(all_values()) == [{"a": 1}, {"b": 2}, "é"]


def test_a_value_over_the_limit_is_refused() -> None:
    chunks = [b'{"key": "', b"QUFB" * 100, b'"}', b""]

    async def read() -> bytes:
        return chunks.pop(0)

    with pytest.raises(GatewayAbort) as err:
        asyncio.run(JsonValues(read, 300).next())
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
