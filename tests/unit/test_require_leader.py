"""Which methods the require-leader interceptor guards (etcd guards every client service)."""

from __future__ import annotations

import pytest

from store.require_leader import _guarded


@pytest.mark.parametrize(
    "method",
    [
        "/etcdserverpb.KV/Put",
        "/etcdserverpb.Auth/UserAdd",
        "/v3lockpb.Lock/Lock",
        "/v3electionpb.Election/Campaign",
        "/mizzen.v1.Objects/Get",
    ],
)
def test_client_services_are_guarded(method: str) -> None:
    assert _guarded(method)


@pytest.mark.parametrize(
    "method",
    [
        "/etcdserverpb.Maintenance/Status",
        "/grpc.health.v1.Health/Check",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ],
)
def test_health_reflection_and_maintenance_pass(method: str) -> None:
    assert not _guarded(method)
