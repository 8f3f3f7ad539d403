"""mizzen/api/config_refs.py: every way a pod spec refers to a ConfigMap or Secret."""

from __future__ import annotations

import textwrap

from mizzen.api.config_refs import CONFIG_MAP, SECRET, ConfigRef, config_refs, referenced_names
from mizzen.api.manifest import load_manifests
from protos import objects_pb2 as pb


def test_every_kind_of_reference_is_found() -> None:
    (manifest,) = load_manifests(
        textwrap.dedent(
            """
        apiVersion: mizzen/v1
        kind: Pod
        metadata: {name: p}
        spec:
          processes:
          - name: main
            command: [app]
            env:
            - {name: PLAIN, value: x}
            - name: LEVEL
              valueFrom: {configMapKeyRef: {name: cfg, key: level}}
            - name: PW
              valueFrom: {secretKeyRef: {name: db, key: password, optional: true}}
            envFrom:
            - {prefix: APP_, configMapRef: {name: cfg2}}
            - secretRef: {name: tokens}
            volumeMounts: [{name: conf, mountPath: conf}]
          volumes:
          - {name: conf, configMap: {name: files, items: [{key: a, path: a.conf}]}}
          - {name: certs, secret: {secretName: tls, optional: true}}
        """
        )
    )
    pod = manifest.message
    assert isinstance(pod, pb.Pod)
    assert config_refs(pod.spec) == [
        ConfigRef(CONFIG_MAP, "cfg", "env", "level"),
        ConfigRef(SECRET, "db", "env", "password", optional=True),
        ConfigRef(CONFIG_MAP, "cfg2", "envFrom"),
        ConfigRef(SECRET, "tokens", "envFrom"),
        ConfigRef(CONFIG_MAP, "files", "volume", volume="conf"),
        ConfigRef(SECRET, "tls", "volume", volume="certs", optional=True),
    ]
    assert referenced_names(pod.spec, SECRET) == {"db", "tokens", "tls"}
    assert referenced_names(pod.spec, CONFIG_MAP) == {"cfg", "cfg2", "files"}
