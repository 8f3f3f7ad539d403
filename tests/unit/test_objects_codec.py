"""Key layout, value encoding and continue tokens of the Objects API (no server)."""

from __future__ import annotations

import base64

import pytest

from mizzen.api import kinds
from protos import objects_pb2 as pb
from store.errors import Code, StoreError
from store.objects_codec import (
    decode,
    decode_continue,
    encode,
    encode_continue,
    kind_prefix,
    object_key,
    parse_resource_version,
    resolve_kind,
    storage_key,
    unwrap,
    wrap,
)

POD = kinds.lookup("Pod")
NODE = kinds.lookup("Node")


def test_namespaced_key_layout() -> None:
    assert object_key(POD, "default", "web-1") == b"/registry/pods/default/web-1"
    assert kind_prefix(POD) == b"/registry/pods/"
    assert kind_prefix(POD, "default") == b"/registry/pods/default/"


def test_cluster_scoped_key_layout_ignores_namespace() -> None:
    assert object_key(NODE, "", "host-1") == b"/registry/nodes/host-1"
    assert kind_prefix(NODE, "default") == b"/registry/nodes/"


def test_namespaced_key_needs_namespace() -> None:
    with pytest.raises(StoreError) as err:
        object_key(POD, "", "web-1")
    assert err.value.code == Code.INVALID_ARGUMENT


def test_namespace_prefix_does_not_match_longer_namespace() -> None:
    assert not object_key(POD, "ab", "x").startswith(kind_prefix(POD, "a"))


def test_storage_key_of_message() -> None:
    pod = pb.Pod(metadata=pb.ObjectMeta(name="p", namespace="ns"))
    assert storage_key(pod) == b"/registry/pods/ns/p"


def test_wrap_unwrap_every_kind() -> None:
    for info in kinds.KINDS:
        obj = info.message()
        obj.metadata.name = "x"  # type: ignore[attr-defined]
        assert unwrap(wrap(obj)) == obj


def test_unwrap_empty_is_invalid() -> None:
    from protos import objects_api_pb2 as api

    with pytest.raises(StoreError) as err:
        unwrap(api.Object())
    assert err.value.code == Code.INVALID_ARGUMENT


def test_stored_value_has_no_resource_version_and_decode_sets_it() -> None:
    pod = pb.Pod(metadata=pb.ObjectMeta(name="p", namespace="ns", resource_version="7"))
    value = encode(pod)
    assert pb.Pod.FromString(value).metadata.resource_version == ""
    assert pod.metadata.resource_version == "7"  # the caller's object is untouched
    back = decode(POD, value, 42)
    assert back.metadata.resource_version == "42"  # type: ignore[attr-defined]


def test_continue_token_round_trip() -> None:
    token = encode_continue(b"/registry/pods/ns/p-100\0", 1234)
    assert decode_continue(token, b"/registry/pods/") == (b"/registry/pods/ns/p-100\0", 1234)


DEEP_TOKEN = base64.urlsafe_b64encode(b"[" * 100_000 + b"]" * 100_000).decode()


@pytest.mark.parametrize(
    "token", ["garbage", "e30=", "!!!", encode_continue(b"/registry/x", 5), DEEP_TOKEN]
)
def test_bad_continue_token_is_invalid_argument(token: str) -> None:
    with pytest.raises(StoreError) as err:
        decode_continue(token, b"/registry/pods/")
    assert err.value.code == Code.INVALID_ARGUMENT


def test_resource_version_parsing() -> None:
    assert parse_resource_version("") == 0
    assert parse_resource_version("17") == 17
    for bad in ("x", "-3"):
        with pytest.raises(StoreError):
            parse_resource_version(bad)


def test_resolve_kind_accepts_aliases_and_rejects_unknown() -> None:
    assert resolve_kind("po") is POD
    for bad in ("", "widgets"):
        with pytest.raises(StoreError) as err:
            resolve_kind(bad)
        assert err.value.code == Code.INVALID_ARGUMENT
