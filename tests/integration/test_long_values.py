"""Huge request values echoed in errors: the status stays small and precise.

gRPC carries a status message in HTTP/2 trailers, and a peer refuses
metadata over 8 KiB: an error that echoed a 20,000-character name whole
reached the client as INTERNAL (or a reset stream) instead of the
INVALID_ARGUMENT naming the field. Each case below goes through a real store
and checks the code, the field named, and that the message stays well under
the limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from mizzen.testing.local_cluster import MizzenCluster
from protos import objects_api_pb2 as api
from protos import objects_api_pb2_grpc as api_grpc
from protos import objects_pb2 as pb

pytestmark = pytest.mark.integration

HUGE = 20_000
# The status message must leave room for the rest of the trailers (8 KiB in all).
MAX_MESSAGE = 2048
TIMEOUT = 10.0
OPTIONS = [("grpc.max_send_message_length", 8 * 1024 * 1024)]


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    with (
        MizzenCluster(1, Path(tmp_path_factory.mktemp("long"))) as cluster,
        grpc.insecure_channel(cluster.endpoints[0], options=OPTIONS) as ch,
    ):
        yield ch


def _pod(name: str, **labels: str) -> api.Object:
    pod = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace="long", labels=labels))
    pod.spec.processes.add(name="main", command=["/bin/true"])
    return api.Object(pod=pod)


def _status(call: object, request: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=TIMEOUT)  # type: ignore[operator]
    err = info.value
    return err.code(), err.details() or ""


def _short(details: str) -> str:
    assert len(details.encode()) < MAX_MESSAGE, details[:300]
    return details


def test_huge_name_is_invalid_argument_naming_metadata_name(channel: grpc.Channel) -> None:
    objects = api_grpc.ObjectsStub(channel)
    code, details = _status(objects.Create, api.CreateRequest(object=_pod("a" * HUGE)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details[:300]
    assert "metadata.name: must be no more than 253 characters" in _short(details)
    assert f"({HUGE} chars)" in details  # says how long the value was


def test_huge_name_not_found(channel: grpc.Channel) -> None:
    objects = api_grpc.ObjectsStub(channel)
    code, details = _status(
        objects.Get, api.GetRequest(kind="pods", namespace="long", name="b" * HUGE)
    )
    assert code == grpc.StatusCode.NOT_FOUND, details[:300]
    assert _short(details).startswith('pods "bbbb')


def test_huge_label_key_and_many_bad_labels(channel: grpc.Channel) -> None:
    objects = api_grpc.ObjectsStub(channel)
    request = api.CreateRequest(object=_pod("labels", **{"k" * HUGE: "v"}))
    code, details = _status(objects.Create, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details[:300]
    assert _short(details).startswith('Pod "labels" is invalid: metadata.labels[kkkk')

    # every one of 500 labels is bad: the message lists what fits and counts the rest
    many = {f"bad_{i}_": "v" for i in range(500)}
    code, details = _status(objects.Create, api.CreateRequest(object=_pod("many", **many)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details[:300]
    assert _short(details).startswith('Pod "many" is invalid: metadata.labels[bad_0_]: ')
    assert "more)" in details


def test_huge_selector_and_resource_version(channel: grpc.Channel) -> None:
    objects = api_grpc.ObjectsStub(channel)
    bad_selector = api.ListRequest(kind="pods", label_selector="x in (" + "y" * HUGE)
    code, details = _status(objects.List, bad_selector)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details[:300]
    _short(details)
    bad_version = api.DeleteRequest(
        kind="pods", namespace="long", name="p", resource_version="9" * HUGE
    )
    code, details = _status(objects.Delete, bad_version)
    assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), details[:300]
    _short(details)
