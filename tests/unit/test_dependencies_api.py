"""dependsOn in the API: manifests, defaults by kind, validation with exact paths, index keys."""

from __future__ import annotations

import textwrap

import pytest

from mizzen.api import dependencies as deps
from mizzen.api.defaults import apply_defaults
from mizzen.api.manifest import load_manifests
from mizzen.api.validation import validate
from protos import objects_pb2 as pb

DEPLOYMENT = """\
apiVersion: mizzen/v1
kind: Deployment
metadata: {name: api}
spec:
  selector: {matchLabels: {app: api}}
  dependsOn: DEPS
  template:
    metadata: {labels: {app: api}}
    spec:
      processes: [{name: main, command: [/bin/api]}]
"""


def deployment(depends_on: str) -> pb.Deployment:
    (m,) = load_manifests(DEPLOYMENT.replace("DEPS", depends_on))
    obj = m.message
    assert isinstance(obj, pb.Deployment)
    obj.metadata.namespace = "default"
    apply_defaults(obj)
    return obj


def errors(obj: object) -> list[str]:
    return [str(e) for e in validate(obj)]  # type: ignore[arg-type]


def test_manifest_reads_every_form_and_defaults_the_condition_by_kind() -> None:
    d = deployment("[{service: db}, {kind: Deployment, name: cache}, {kind: Job, name: migrate}]")
    assert [(x.service, x.kind, x.name, x.condition) for x in d.spec.depends_on] == [
        ("db", "", "", ""),
        ("", "Deployment", "cache", "Available"),
        ("", "Job", "migrate", "Complete"),
    ]
    assert errors(d) == []
    assert [deps.describe(x) for x in d.spec.depends_on] == [
        "service db",
        "Deployment cache (Available)",
        "Job migrate (Complete)",
    ]


@pytest.mark.parametrize(
    ("depends_on", "expected"),
    [
        ("[{}]", ["spec.dependsOn[0]: must specify service, or kind and name"]),
        (
            "[{service: db, kind: Deployment, name: db}]",
            ["spec.dependsOn[0]: may not specify kind or name together with service"],
        ),
        (
            "[{service: db, condition: Available}]",
            [
                "spec.dependsOn[0].condition: may not be specified with service: a Service "
                "dependency is met when the Service has a ready endpoint"
            ],
        ),
        ("[{service: Db_1}]", ["spec.dependsOn[0].service: "]),
        (
            "[{kind: StatefulSet, name: db}]",
            [
                'spec.dependsOn[0].kind: unsupported value "StatefulSet": supported values: '
                '"Deployment", "Job"'
            ],
        ),
        ("[{kind: Deployment}]", ["spec.dependsOn[0].name: required"]),
        ("[{name: db}]", ["spec.dependsOn[0].kind: required"]),
        (
            "[{kind: Job, name: migrate, condition: Available}]",
            [
                'spec.dependsOn[0].condition: unsupported value "Available": supported values: '
                '"Complete"'
            ],
        ),
        (
            "[{kind: Deployment, name: db, condition: Complete}]",
            [
                'spec.dependsOn[0].condition: unsupported value "Complete": supported values: '
                '"Available"'
            ],
        ),
        (
            "[{service: db}, {kind: Deployment, name: db}, {service: db}]",
            ['spec.dependsOn[2]: duplicate dependency on service "db"'],
        ),
    ],
)
def test_bad_dependencies_name_the_field(depends_on: str, expected: list[str]) -> None:
    found = errors(deployment(depends_on))
    assert len(found) == len(expected), found
    for got, want in zip(found, expected, strict=True):
        assert got.startswith(want), (got, want)


def test_a_workload_template_may_not_carry_its_own_dependencies() -> None:
    d = deployment("[]")
    d.spec.template.spec.depends_on.add(service="db")
    assert errors(d) == [
        "spec.template.spec.dependsOn: may not be set in a Deployment's pod template: set "
        "spec.dependsOn, which the Deployment copies into every pod"
    ]


def test_pods_and_replicaset_templates_validate_their_own() -> None:
    pod = pb.Pod(metadata=pb.ObjectMeta(name="p", namespace="default"))
    pod.spec.processes.add(name="main", command=["/bin/true"])
    pod.spec.depends_on.add(kind="Job", name="m")
    pod.spec.depends_on.add()
    apply_defaults(pod)
    assert pod.spec.depends_on[0].condition == "Complete"
    assert errors(pod) == ["spec.dependsOn[1]: must specify service, or kind and name"]

    rs = pb.ReplicaSet(metadata=pb.ObjectMeta(name="api-x", namespace="default"))
    rs.spec.selector.match_labels["app"] = "api"
    rs.spec.template.metadata.labels["app"] = "api"
    rs.spec.template.spec.processes.add(name="main", command=["/bin/true"])
    rs.spec.template.spec.depends_on.add(service="db")
    apply_defaults(rs)
    assert errors(rs) == []
    rs.spec.template.spec.depends_on.add(service="db")
    assert errors(rs) == ['spec.template.spec.dependsOn[1]: duplicate dependency on service "db"']


@pytest.mark.parametrize("kind", ["DaemonSet", "Job"])
def test_daemonsets_and_jobs_take_spec_depends_on(kind: str) -> None:
    text = textwrap.dedent(f"""\
        apiVersion: mizzen/v1
        kind: {kind}
        metadata: {{name: w, namespace: default}}
        spec:
          selector: {{matchLabels: {{app: w}}}}
          dependsOn: [{{kind: Deployment, name: db}}, {{service: ""}}]
          template:
            metadata: {{labels: {{app: w}}}}
            spec:
              processes: [{{name: main, command: [/bin/true]}}]
        """)
    (m,) = load_manifests(text)
    apply_defaults(m.message)
    assert errors(m.message) == ["spec.dependsOn[1]: must specify service, or kind and name"]


def test_index_keys_name_every_target_in_the_objects_namespace() -> None:
    d = deployment("[{service: db}, {kind: Job, name: migrate}]")
    d.metadata.namespace = "shop"
    assert deps.index_keys(d) == ["Job/shop/migrate", "Service/shop/db"]
    pod = pb.Pod(metadata=pb.ObjectMeta(name="p", namespace="shop"))
    assert deps.index_keys(pod) == []
    pod.spec.depends_on.add(kind="Deployment", name="api")
    assert deps.index_keys(pod) == ["Deployment/shop/api"]
    rs = pb.ReplicaSet(metadata=pb.ObjectMeta(name="r", namespace="shop"))
    rs.spec.template.spec.depends_on.add(service="db")
    assert deps.index_keys(rs) == ["Service/shop/db"]
    assert deps.index_keys(pb.Node()) == []
