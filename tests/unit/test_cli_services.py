"""`get svc`, `get endpoints` and `describe service`: text from messages, time passed in."""

from __future__ import annotations

from mizzen.api import kinds
from mizzen.cli import tables
from mizzen.cli.describe import describe
from protos import objects_pb2 as pb

NOW = 1_700_000_000.0


def _meta(name: str, age_seconds: float = 30) -> pb.ObjectMeta:
    meta = pb.ObjectMeta(name=name, namespace="default")
    meta.creation_timestamp.FromSeconds(int(NOW - age_seconds))
    return meta


def service() -> pb.Service:
    svc = pb.Service(metadata=_meta("db"))
    svc.spec.selector.update({"app": "db", "tier": "data"})
    svc.spec.ports.add(name="http", target_port="http", protocol="TCP")
    svc.spec.ports.add(name="admin", target_port="9000", protocol="UDP")
    return svc


def endpoints(ready: int = 2) -> pb.Endpoints:
    ep = pb.Endpoints(metadata=_meta("db"))
    for i in range(ready):
        subset = ep.subsets.add()
        subset.addresses.add(
            ip="10.0.0.1", node_name="n1", target_ref=pb.ObjectReference(kind="Pod", name=f"db-{i}")
        )
        subset.ports.add(name="http", port=20001 + i, protocol="TCP")
    ep.subsets[0].not_ready_addresses.add(
        ip="10.0.0.2", node_name="n2", target_ref=pb.ObjectReference(kind="Pod", name="db-x")
    )
    return ep


def test_services_table_and_wide_selector() -> None:
    unnamed = pb.Service(metadata=_meta("cache", 600))
    unnamed.spec.ports.add(target_port="6379")
    rows = tables.table(kinds.lookup("svc"), [service(), unnamed], now=NOW, wide=True)
    assert rows == [
        ["NAME", "PORT(S)", "AGE", "SELECTOR"],
        ["db", "http:http/TCP,admin:9000/UDP", "30s", "app=db,tier=data"],
        ["cache", "6379/TCP", "10m", "<none>"],
    ]


def test_endpoints_table_shows_three_ready_then_a_count() -> None:
    empty = pb.Endpoints(metadata=_meta("nothing"))
    rows = tables.table(kinds.lookup("ep"), [endpoints(2), endpoints(5), empty], now=NOW)
    assert rows == [
        ["NAME", "ENDPOINTS", "AGE"],
        ["db", "10.0.0.1:20001,10.0.0.1:20002", "30s"],
        ["db", "10.0.0.1:20001,10.0.0.1:20002,10.0.0.1:20003 + 2 more...", "30s"],
        ["nothing", "<none>", "30s"],
    ]


def test_describe_service_with_endpoints_and_condition() -> None:
    svc = service()
    svc.status.conditions.add(
        type="TargetPortsResolved", status="False", reason="TargetPortNotFound", message="m"
    )
    text = describe(svc, [], now=NOW, endpoints=endpoints(2))
    lines = text.splitlines()
    start = lines.index("Ports:")
    assert lines[start - 1].split() == ["Selector:", "app=db,tier=data"]
    assert [line.rstrip() for line in lines[start : start + 8]] == [
        "Ports:",
        "  http:   targetPort http/TCP",
        "    Endpoints:  10.0.0.1:20001 (db-0)",
        "                10.0.0.1:20002 (db-1)",
        "    Not Ready:  10.0.0.2:20001 (db-x)",
        "  admin:  targetPort 9000/UDP",
        "    Endpoints:  <none>",
        "Conditions:",
    ]
    assert "TargetPortsResolved   False    TargetPortNotFound   m" in text
    assert text.splitlines()[-1].split() == ["Events:", "<none>"]


def test_describe_service_without_endpoints_object_or_selector() -> None:
    svc = service()
    svc.spec.selector.clear()
    words = [" ".join(line.split()) for line in describe(svc, [], now=NOW).splitlines()]
    assert "Selector: <none>" in words
    assert "(no selector: its Endpoints are written by hand)" in words
    assert "Endpoints: <no Endpoints object>" in words


def test_describe_endpoints() -> None:
    text = describe(endpoints(1), [], now=NOW)
    assert "\nSubsets:\n  Ports:  http 20001/TCP\n" in text
    assert "    Addresses:          10.0.0.1 (Pod/db-0 on n1)" in text
    assert "    NotReadyAddresses:  10.0.0.2 (Pod/db-x on n2)" in text
    empty = describe(pb.Endpoints(metadata=_meta("e")), [], now=NOW)
    assert [line.split() for line in empty.splitlines()][-2] == ["Subsets:", "<none>"]
