"""apply's decisions (what counts as a change, what an Update carries) and CLI error text."""

from __future__ import annotations

import grpc

from mizzen.api.defaults import apply_defaults
from mizzen.api.manifest import load_manifests
from mizzen.cli.apply_cmd import differs, merged
from mizzen.cli.objects_cmd import error_message
from mizzen.client.errors import UnavailableError, translate
from protos import objects_pb2 as pb

MANIFEST = """\
apiVersion: mizzen/v1
kind: Pod
metadata: {name: a, labels: {app: x}}
spec:
  processes: [{name: main, command: [/bin/true]}]
"""


def _desired() -> pb.Pod:
    msg = load_manifests(MANIFEST, "pod.yaml")[0].message
    assert isinstance(msg, pb.Pod)
    return msg


def _stored() -> pb.Pod:
    pod = _desired()
    apply_defaults(pod)
    pod.metadata.uid = "u-1"
    pod.metadata.resource_version = "7"
    pod.metadata.creation_timestamp.FromSeconds(1000)
    pod.metadata.finalizers.append("mizzen.io/cleanup")
    pod.status.phase = "Running"
    return pod


def test_defaulted_fields_are_not_a_change() -> None:
    assert not differs(_desired(), _stored())


def test_spec_labels_and_annotations_are_changes() -> None:
    for change in ("spec", "label", "annotation"):
        desired = _desired()
        if change == "spec":
            desired.spec.processes[0].args.append("x")
        elif change == "label":
            desired.metadata.labels["tier"] = "web"
        else:
            desired.metadata.annotations["note"] = "hi"
        assert differs(desired, _stored()), change


def test_status_and_server_fields_are_not_a_change() -> None:
    desired = _desired()
    desired.status.phase = "Failed"
    desired.metadata.uid = "other"
    assert not differs(desired, _stored())


def test_update_carries_version_and_what_the_server_owns() -> None:
    desired = _desired()
    desired.metadata.labels["tier"] = "web"
    new = merged(desired, _stored())
    assert new.metadata.resource_version == "7"
    assert new.metadata.uid == "u-1"
    assert new.metadata.namespace == "default"
    assert new.metadata.creation_timestamp.seconds == 1000
    assert list(new.metadata.finalizers) == ["mizzen.io/cleanup"]
    assert new.status.phase == "Running"
    assert new.metadata.labels["tier"] == "web"


def test_error_messages_use_the_server_text() -> None:
    not_found = translate(grpc.StatusCode.NOT_FOUND, 'pods "a" not found')
    assert error_message(not_found, ["h:1"]) == 'pods "a" not found'
    gone = UnavailableError("no endpoint answered")
    assert error_message(gone, ["h:1", "h:2"]) == (
        "cannot reach the store at h:1,h:2 (no endpoint answered)"
    )


def test_configmap_data_is_what_changes() -> None:
    (manifest,) = load_manifests(
        "apiVersion: mizzen/v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {level: debug}\n",
        "cm.yaml",
    )
    desired = manifest.message
    assert isinstance(desired, pb.ConfigMap)
    stored = pb.ConfigMap()
    stored.CopyFrom(desired)
    stored.metadata.namespace = "default"
    stored.metadata.uid = "u-2"
    stored.metadata.resource_version = "9"
    assert not differs(desired, stored)
    stored.data["level"] = "info"
    assert differs(desired, stored)
    update = merged(desired, stored)
    assert dict(update.data) == {"level": "debug"} and update.metadata.resource_version == "9"
