"""Manifests: dynamic ports and probes that name a port (`port: http`)."""

from __future__ import annotations

import textwrap

import pytest

from mizzen.api.defaults import apply_defaults
from mizzen.api.manifest import ManifestError, dump_yaml, load_manifests
from mizzen.api.validation import validate
from protos import objects_pb2 as pb

POD = """
apiVersion: mizzen/v1
kind: Pod
metadata: {name: web}
spec:
  processes:
  - name: server
    command: [python3, -m, http.server]
    ports: [{name: http}, {name: admin, port: 9000}]
    livenessProbe: {tcpSocket: {port: http}}
    readinessProbe: {httpGet: {path: /, port: admin}}
"""


def load_pod(text: str) -> pb.Pod:
    (manifest,) = load_manifests(textwrap.dedent(text), "t.yaml")
    assert isinstance(manifest.message, pb.Pod)
    return manifest.message


def test_probe_port_by_name() -> None:
    pod = load_pod(POD)
    process = pod.spec.processes[0]
    assert [(p.name, p.port) for p in process.ports] == [("http", 0), ("admin", 9000)]
    assert process.liveness_probe.tcp_socket.port_name == "http"
    assert process.liveness_probe.tcp_socket.port == 0
    assert process.readiness_probe.http_get.port_name == "admin"
    pod.metadata.namespace = "default"
    apply_defaults(pod)
    assert validate(pod) == []


def test_a_quoted_number_is_a_number() -> None:
    pod = load_pod(POD.replace("port: http}", 'port: "8080"}'))
    assert pod.spec.processes[0].liveness_probe.tcp_socket.port == 8080
    assert pod.spec.processes[0].liveness_probe.tcp_socket.port_name == ""


def test_written_back_as_port_name_and_read_again() -> None:
    pod = load_pod(POD)
    text = dump_yaml([pod])
    assert "portName: http" in text
    assert load_pod(text) == pod


def test_name_and_port_name_together() -> None:
    with pytest.raises(ManifestError) as info:
        load_pod(POD.replace("port: http}", "port: http, portName: web}"))
    assert "spec.processes[0].livenessProbe.tcpSocket.port: a port name here and portName" in str(
        info.value
    )


def test_a_name_in_another_int_field_is_still_an_error() -> None:
    with pytest.raises(ManifestError, match=r"ports\[0\].port: expected an integer"):
        load_pod(POD.replace("[{name: http}", "[{name: http, port: http}"))
