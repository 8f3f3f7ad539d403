"""The kind registry: names users type, scope, message classes."""

from __future__ import annotations

import pytest
from google.protobuf.message import Message

from mizzen.api import kinds
from protos import objects_pb2 as pb


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("Pod", "Pod"),
        ("pods", "Pod"),
        ("pod", "Pod"),
        ("po", "Pod"),
        ("PO", "Pod"),
        ("no", "Node"),
        ("nodes", "Node"),
        ("deploy", "Deployment"),
        ("deployments", "Deployment"),
        ("rs", "ReplicaSet"),
        ("ds", "DaemonSet"),
        ("daemonset", "DaemonSet"),
        ("job", "Job"),
        ("jobs", "Job"),
        ("ev", "Event"),
        ("events", "Event"),
        ("lease", "Lease"),
        ("leases", "Lease"),
    ],
)
def test_lookup(name: str, kind: str) -> None:
    assert kinds.lookup(name).kind == kind


@pytest.mark.parametrize("name", ["", "pd", "ingresses", "volumes"])
def test_lookup_unknown(name: str) -> None:
    with pytest.raises(kinds.UnknownKindError, match="known kinds: nodes, pods"):
        kinds.lookup(name)


@pytest.mark.parametrize(
    ("message", "kind", "plural", "namespaced", "has_status"),
    [
        (pb.Node(), "Node", "nodes", False, True),
        (pb.Pod(), "Pod", "pods", True, True),
        (pb.ReplicaSet(), "ReplicaSet", "replicasets", True, True),
        (pb.Deployment(), "Deployment", "deployments", True, True),
        (pb.DaemonSet(), "DaemonSet", "daemonsets", True, True),
        (pb.Job(), "Job", "jobs", True, True),
        (pb.Event(), "Event", "events", True, False),
        (pb.Lease(), "Lease", "leases", True, False),
    ],
)
def test_kind_of(
    message: Message, kind: str, plural: str, namespaced: bool, has_status: bool
) -> None:
    info = kinds.kind_of(message)
    assert (info.kind, info.plural, info.namespaced, info.has_status) == (
        kind,
        plural,
        namespaced,
        has_status,
    )
    assert info.message is type(message)
    assert info.api_version == "mizzen/v1"
    assert info.singular == kind.lower()


def test_kind_of_rejects_non_objects() -> None:
    with pytest.raises(kinds.UnknownKindError, match=r"mizzen\.v1\.PodSpec is not an object kind"):
        kinds.kind_of(pb.PodSpec())


def test_every_kind_has_metadata_spec_and_declared_status() -> None:
    for info in kinds.KINDS:
        fields = info.message.DESCRIPTOR.fields_by_name
        assert "metadata" in fields
        # ConfigMap and Secret carry their data at the top, as in Kubernetes
        assert ("spec" in fields) is (info.kind not in ("ConfigMap", "Secret", "Endpoints"))
        assert ("status" in fields) is info.has_status


def test_aliases_are_unique() -> None:
    aliases = [
        alias
        for info in kinds.KINDS
        for alias in {a.lower() for a in (info.kind, info.plural, *info.short_names)}
    ]
    assert len(aliases) == len(set(aliases))
