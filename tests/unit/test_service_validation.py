"""Service and Endpoints validation and defaults: exact field paths and messages."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mizzen.api.defaults import apply_defaults
from mizzen.api.manifest import load_manifests, load_paths
from mizzen.api.service_validation import parse_target_port, target_port_problems
from mizzen.api.validation import validate
from protos import objects_pb2 as pb


def service() -> pb.Service:
    svc = pb.Service(metadata=pb.ObjectMeta(name="db"))
    svc.spec.selector["app"] = "db"
    svc.spec.ports.add(name="http", target_port="http")
    svc.spec.ports.add(name="admin", target_port="9000", protocol="UDP")
    apply_defaults(svc)
    return svc


def endpoints() -> pb.Endpoints:
    ep = pb.Endpoints(metadata=pb.ObjectMeta(name="db"))
    subset = ep.subsets.add()
    subset.addresses.add(ip="10.0.0.1", node_name="n1").target_ref.CopyFrom(
        pb.ObjectReference(kind="Pod", name="db-1", namespace="default")
    )
    subset.not_ready_addresses.add(ip="n2.example.com", node_name="n2.example.com")
    subset.ports.add(name="http", port=20001)
    apply_defaults(ep)
    return ep


def test_valid_and_defaulted() -> None:
    svc, ep = service(), endpoints()
    assert validate(svc) == []
    assert validate(ep) == []
    assert [p.protocol for p in svc.spec.ports] == ["TCP", "UDP"]
    assert ep.subsets[0].ports[0].protocol == "TCP"


def test_a_selector_that_selects_nothing_and_one_unnamed_port_are_valid() -> None:
    svc = pb.Service(metadata=pb.ObjectMeta(name="nothing", namespace="default"))
    svc.spec.selector["app"] = "no-such-app"
    svc.spec.ports.add(target_port="8080")
    apply_defaults(svc)
    assert validate(svc) == []


SERVICE_CASES: list[tuple[Callable[[pb.Service], object], dict[str, str]]] = [
    (lambda s: s.spec.ClearField("ports"), {"spec.ports": "at least one port is required"}),
    (
        lambda s: s.spec.selector.update({"bad key!": "x"}),
        {"spec.selector[bad key!]": "name part must consist of"},
    ),
    (lambda s: s.spec.selector.update({"app": "a b"}), {"spec.selector[app]": "a label value"}),
    (
        lambda s: setattr(s.spec.ports[1], "name", "http"),
        {"spec.ports[1].name": 'duplicate port name "http"'},
    ),
    (
        lambda s: setattr(s.spec.ports[1], "name", ""),
        {"spec.ports[1].name": "required when the Service has more than one port"},
    ),
    (lambda s: setattr(s.spec.ports[0], "name", "Http"), {"spec.ports[0].name": "DNS-1123"}),
    (
        lambda s: setattr(s.spec.ports[0], "target_port", ""),
        {"spec.ports[0].targetPort": "required"},
    ),
    (
        lambda s: setattr(s.spec.ports[0], "target_port", "0"),
        {"spec.ports[0].targetPort": "must be between 1 and 65535, inclusive"},
    ),
    (
        lambda s: setattr(s.spec.ports[0], "target_port", "65536"),
        {"spec.ports[0].targetPort": "must be between 1 and 65535, inclusive"},
    ),
    (
        lambda s: setattr(s.spec.ports[0], "target_port", "080"),
        {"spec.ports[0].targetPort": "a port number must not have leading zeros"},
    ),
    (
        lambda s: setattr(s.spec.ports[0], "target_port", "-1"),
        {"spec.ports[0].targetPort": "must be a port number (1-65535) or the name of a process"},
    ),
    (
        lambda s: setattr(s.spec.ports[0], "target_port", "HTTP_PORT"),
        {"spec.ports[0].targetPort": "must be a port number (1-65535) or the name of a process"},
    ),
    (
        lambda s: setattr(s.spec.ports[0], "protocol", "SCTP"),
        {"spec.ports[0].protocol": 'unsupported value "SCTP"'},
    ),
    (
        lambda s: s.status.conditions.add(type="TargetPortsResolved", status="Maybe"),
        {"status.conditions[0].status": "unsupported value"},
    ),
    (lambda s: setattr(s.metadata, "name", "a" * 64), {"metadata.name": "no more than 63"}),
]


@pytest.mark.parametrize(("mutate", "expected"), SERVICE_CASES)
def test_service_errors(mutate: Callable[[Any], object], expected: dict[str, str]) -> None:
    svc = service()
    mutate(svc)
    errors = {e.path: e.message for e in validate(svc)}
    assert sorted(errors) == sorted(expected), errors
    for path, text in expected.items():
        assert text in errors[path]


ENDPOINTS_CASES: list[tuple[Callable[[pb.Endpoints], object], dict[str, str]]] = [
    (
        lambda e: setattr(e.subsets[0].addresses[0], "ip", ""),
        {"subsets[0].addresses[0].ip": "required"},
    ),
    (
        lambda e: setattr(e.subsets[0].not_ready_addresses[0], "ip", "a b"),
        {"subsets[0].notReadyAddresses[0].ip": "must not contain whitespace"},
    ),
    (
        lambda e: setattr(e.subsets[0].addresses[0], "node_name", "N_1"),
        {"subsets[0].addresses[0].nodeName": "DNS-1123 subdomain"},
    ),
    (
        lambda e: setattr(e.subsets[0].ports[0], "port", 0),
        {"subsets[0].ports[0].port": "must be between 1 and 65535"},
    ),
    (
        lambda e: e.subsets[0].ports.add(name="http", port=1, protocol="TCP"),
        {"subsets[0].ports[1].name": 'duplicate port name "http"'},
    ),
    (
        lambda e: e.subsets[0].ports.add(port=1, protocol="TCP"),
        {"subsets[0].ports[1].name": "required when the subset has more than one port"},
    ),
    (
        lambda e: setattr(e.subsets[0].ports[0], "protocol", "ICMP"),
        {"subsets[0].ports[0].protocol": 'unsupported value "ICMP"'},
    ),
]


@pytest.mark.parametrize(("mutate", "expected"), ENDPOINTS_CASES)
def test_endpoints_errors(mutate: Callable[[Any], object], expected: dict[str, str]) -> None:
    ep = endpoints()
    mutate(ep)
    errors = {e.path: e.message for e in validate(ep)}
    assert sorted(errors) == sorted(expected), errors
    for path, text in expected.items():
        assert text in errors[path]


@pytest.mark.parametrize(
    ("value", "parsed", "ok"),
    [("http", "http", True), ("8080", 8080, True), ("1", 1, True), ("65535", 65535, True)],
)
def test_target_port_parse(value: str, parsed: int | str, ok: bool) -> None:
    assert parse_target_port(value) == parsed
    assert (target_port_problems(value) == []) is ok


def test_manifest_target_port_int_or_string() -> None:
    (manifest,) = load_manifests(
        "apiVersion: mizzen/v1\nkind: Service\nmetadata: {name: db}\n"
        "spec:\n  selector: {app: db}\n  ports: [{name: http, targetPort: http}, "
        "{name: admin, targetPort: 9000}]\n"
    )
    svc: Any = manifest.message
    assert [p.target_port for p in svc.spec.ports] == ["http", "9000"]
    apply_defaults(svc)
    assert validate(svc) == []


def test_web_service_example() -> None:
    path = Path(__file__).resolve().parents[2] / "examples" / "web-service.yaml"
    (manifest,) = load_paths([str(path)])
    svc: Any = manifest.message
    apply_defaults(svc)
    assert validate(svc) == []
    assert dict(svc.spec.selector) == {"app": "web"}
    assert [(p.name, p.target_port, p.protocol) for p in svc.spec.ports] == [
        ("http", "http", "TCP")
    ]
