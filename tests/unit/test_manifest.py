"""Manifests: YAML/JSON <-> typed messages, quantities, and exact error messages."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from mizzen.api import kinds
from mizzen.api.defaults import apply_defaults
from mizzen.api.manifest import (
    MAX_DEPTH,
    ManifestError,
    dump_json,
    dump_yaml,
    load_manifests,
    load_paths,
    to_manifest,
)
from mizzen.api.validation import validate
from protos import objects_pb2 as pb

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(text: str, source: str = "t.yaml") -> list[Message]:
    return [m.message for m in load_manifests(textwrap.dedent(text), source)]


def load_one(text: str) -> Any:
    (msg,) = load(text)
    return msg


def error_lines(text: str, source: str = "t.yaml") -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_manifests(textwrap.dedent(text), source)
    return str(info.value).splitlines()


# ---------------------------------------------------------------- round trips

MANIFESTS = {
    "Node": """
        apiVersion: mizzen/v1
        kind: Node
        metadata: {name: host-1, labels: {zone: a}}
        spec:
          unschedulable: true
          taints: [{key: dedicated, value: db, effect: NoSchedule, timeAdded: 2024-05-01T10:00:00Z}]
        status:
          capacity: {cpu: "8", memory: 16Gi, pids: 4194304}
          allocatable: {cpu: 7500m, memory: 15Gi, pids: 0}
          addresses: [{type: AgentGRPC, address: "10.0.0.1:7000"}]
          conditions:
            - {type: Ready, status: "True", lastHeartbeatTime: "2024-05-01T10:00:05.250Z"}
          nodeInfo: {machineId: abc, cgroupVersion: v2}
    """,
    "Pod": """
        apiVersion: mizzen/v1
        kind: Pod
        metadata:
          name: web-1
          namespace: default
          annotations: {note: "1"}
          ownerReferences:
            - {apiVersion: mizzen/v1, kind: ReplicaSet, name: web-abc, uid: u1, controller: true}
          finalizers: [mizzen.io/cleanup]
          deletionGracePeriodSeconds: 0
        spec:
          restartPolicy: OnFailure
          nodeSelector: {disk: ssd}
          tolerations: [{key: k, operator: Exists, effect: NoExecute, tolerationSeconds: 0}]
          terminationGracePeriodSeconds: 0
          processes:
            - name: main
              command: [/bin/server]
              args: [--port, "8080"]
              env: [{name: A, value: b}]
              workingDir: /srv
              user: "1000"
              stdin: true
              stdinOnce: true
              ports: [{name: http, port: 8080, protocol: TCP}]
              resources:
                requests: {cpu: 250m, memory: 64Mi}
                limits: {cpu: 1, memory: 1G, pids: 100}
              livenessProbe:
                exec: {command: [/bin/true]}
                initialDelaySeconds: 0
              readinessProbe:
                httpGet:
                  path: /healthz
                  port: 8080
                  httpHeaders: [{name: X-Probe, value: "yes"}]
        status:
          phase: Running
          startTime: 2024-05-01T10:00:00Z
          processStatuses:
            - name: main
              ready: true
              restartCount: 2
              pid: 4242
              state: {running: {startedAt: 2024-05-01T10:00:01Z}}
              lastState: {terminated: {exitCode: 137, signal: 9, reason: OOMKilled}}
    """,
    "ReplicaSet": """
        apiVersion: mizzen/v1
        kind: ReplicaSet
        metadata: {name: web-abc}
        spec:
          replicas: 0
          selector:
            matchExpressions: [{key: app, operator: In, values: [web, api]}]
          template:
            metadata: {labels: {app: web}}
            spec: {processes: [{name: main, command: [/bin/server]}]}
        status: {replicas: 3, readyReplicas: 2, observedGeneration: 7}
    """,
    "Deployment": """
        apiVersion: mizzen/v1
        kind: Deployment
        metadata: {name: web, generation: 3}
        spec:
          replicas: 3
          selector: {matchLabels: {app: web}}
          strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 25%}}
          revisionHistoryLimit: 0
          progressDeadlineSeconds: 120
          paused: true
          template:
            metadata: {labels: {app: web}}
            spec:
              processes:
                - name: main
                  command: [/bin/server]
                  resources: {limits: {memory: 128Mi}}
        status:
          updatedReplicas: 3
          conditions:
            - {type: Available, status: "True", reason: MinimumReplicasAvailable}
            - type: Progressing
              status: "True"
              reason: ReplicaSetUpdated
              lastUpdateTime: "2026-12-07T10:00:00Z"
    """,
    "DaemonSet": """
        apiVersion: mizzen/v1
        kind: DaemonSet
        metadata: {name: agent}
        spec:
          selector: {matchLabels: {app: agent}}
          updateStrategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: "10%", maxSurge: 0}}
          template:
            metadata: {labels: {app: agent}}
            spec: {processes: [{name: main, command: [/bin/agent]}]}
        status: {desiredNumberScheduled: 4, numberReady: 4}
    """,
    "Job": """
        apiVersion: mizzen/v1
        kind: Job
        metadata: {name: once}
        spec:
          parallelism: 2
          completions: 4
          backoffLimit: 0
          activeDeadlineSeconds: 600
          ttlSecondsAfterFinished: 0
          template:
            metadata: {labels: {job: once}}
            spec:
              restartPolicy: Never
              processes: [{name: main, command: [sh, -c, "echo hello; sleep 1"]}]
        status: {succeeded: 1, completionTime: 2024-05-01T10:00:00Z}
    """,
    "Event": """
        apiVersion: mizzen/v1
        kind: Event
        metadata: {name: web-1.abc}
        spec:
          involvedObject: {kind: Pod, name: web-1, fieldPath: "spec.processes{main}"}
          reason: BackOff
          message: restarting
          type: Warning
          source: {component: agent, host: host-1}
          firstTimestamp: 2024-05-01T10:00:00Z
          count: 5
    """,
    "Lease": """
        apiVersion: mizzen/v1
        kind: Lease
        metadata: {name: scheduler, namespace: mizzen-system}
        spec:
          holderIdentity: host-1
          leaseDurationSeconds: 15
          renewTime: "2024-05-01T10:00:00.123456789Z"
          leaseTransitions: 0
    """,
    "ConfigMap": """
        apiVersion: mizzen/v1
        kind: ConfigMap
        metadata: {name: web-config}
        data: {app.conf: "listen 8080\\n", LOG_LEVEL: debug}
        binaryData: {logo.png: iVBORw0K}
    """,
    "Secret": """
        apiVersion: mizzen/v1
        kind: Secret
        metadata: {name: db}
        type: Opaque
        data: {DB_PASSWORD: czNjcjN0}
        immutable: true
    """,
    "Service": """
        apiVersion: mizzen/v1
        kind: Service
        metadata: {name: db}
        spec:
          selector: {app: db}
          ports: [{name: http, targetPort: http}, {name: admin, targetPort: 9000}]
    """,
    "Endpoints": """
        apiVersion: mizzen/v1
        kind: Endpoints
        metadata: {name: db}
        subsets:
        - addresses: [{ip: 198.18.0.2, nodeName: n1, targetRef: {kind: Pod, name: db-1}}]
          ports: [{name: http, port: 20001, protocol: TCP}]
    """,
}


def test_every_kind_has_a_manifest() -> None:
    assert set(MANIFESTS) == {info.kind for info in kinds.KINDS}


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_yaml_round_trip(kind: str) -> None:
    first = load(MANIFESTS[kind])
    assert kinds.kind_of(first[0]).kind == kind
    text = dump_yaml(first)
    assert load(text) == first
    assert dump_yaml(load(text)) == text


def _fill(msg: Message) -> None:
    """Set every field of msg (recursively) to a non-default value; optional ints to 0."""
    for field in msg.DESCRIPTOR.fields:
        desc = field.message_type
        if desc is not None and desc.GetOptions().map_entry:
            is_bytes = desc.fields_by_name["value"].type == FieldDescriptor.TYPE_BYTES
            x, two = (b"x\x00\xff", b"2") if is_bytes else ("x", "2")
            getattr(msg, field.name).update({"b": x, "a.io/k": two})
        elif desc is not None and desc.full_name == "google.protobuf.Timestamp":
            stamp = getattr(msg, field.name)
            (stamp.add() if field.is_repeated else stamp).FromJsonString("2024-05-01T10:00:00.5Z")
        elif desc is not None and desc.full_name == "mizzen.v1.ResourceList":
            getattr(msg, field.name).MergeFrom(
                pb.ResourceList(cpu_millis=1500, memory_bytes=123456789, pids=0)
            )
        elif desc is not None:
            targets = (
                [getattr(msg, field.name).add(), getattr(msg, field.name).add()]
                if field.is_repeated
                else [getattr(msg, field.name)]
            )
            for target in targets:
                _fill(target)
        else:
            value = _scalar(field)
            if field.is_repeated:
                getattr(msg, field.name).extend([value, value])
            else:
                setattr(msg, field.name, value)


def _scalar(field: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_STRING:
        return {"max_surge": "3", "max_unavailable": "25%"}.get(field.name, f"v-{field.name}")
    if field.type == FieldDescriptor.TYPE_BOOL:
        return True
    return 0 if field.has_presence else -7


@pytest.mark.parametrize("info", kinds.KINDS, ids=lambda info: info.kind)
def test_round_trip_of_every_field(info: kinds.KindInfo) -> None:
    msg = info.message()
    _fill(msg)
    assert load(dump_yaml([msg])) == [msg]
    assert load(dump_json([msg]), "x.json") == [msg]


def test_empty_submessage_keeps_its_presence() -> None:
    pod = pb.Pod()
    pod.metadata.name = "p"
    pod.spec.processes.add(name="main").liveness_probe.tcp_socket.SetInParent()
    text = dump_yaml([pod])
    assert "tcpSocket: {}" in text
    assert load(text) == [pod]


def test_empty_fields_are_omitted_and_keys_ordered() -> None:
    deploy = pb.Deployment()
    deploy.metadata.name = "web"
    deploy.spec.replicas = 0
    assert to_manifest(deploy) == {
        "apiVersion": "mizzen/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 0},
    }
    assert list(to_manifest(pb.Lease())) == ["apiVersion", "kind"]


# ---------------------------------------------------------------- translations


def test_quantities_parse_into_typed_fields() -> None:
    pod = load_one("""
        apiVersion: mizzen/v1
        kind: Pod
        metadata: {name: p}
        spec:
          processes:
            - name: main
              resources:
                requests: {cpu: 500m, memory: 128Mi, pids: 100}
                limits: {cpu: 0.75, memory: 1e3, pids: 1k}
            - name: other
              resources: {limits: {cpu: 2, memory: 1G}}
    """)
    first, second = pod.spec.processes
    assert first.resources.requests == pb.ResourceList(
        cpu_millis=500, memory_bytes=128 * 2**20, pids=100
    )
    assert first.resources.limits == pb.ResourceList(cpu_millis=750, memory_bytes=1000, pids=1000)
    assert second.resources.limits == pb.ResourceList(cpu_millis=2000, memory_bytes=10**9)
    assert not second.resources.HasField("requests")


def test_quantities_format_back() -> None:
    pod = pb.Pod()
    process = pod.spec.processes.add(name="main")
    process.resources.requests.MergeFrom(pb.ResourceList(cpu_millis=500, memory_bytes=128 * 2**20))
    process.resources.limits.MergeFrom(pb.ResourceList(cpu_millis=2000, memory_bytes=0, pids=64))
    resources = to_manifest(pod)["spec"]["processes"][0]["resources"]
    assert resources == {
        "requests": {"cpu": "500m", "memory": "128Mi"},
        "limits": {"cpu": "2", "memory": "0", "pids": 64},
    }


def test_node_capacity_and_allocatable_are_quantities() -> None:
    node = load_one(MANIFESTS["Node"])
    assert node.status.capacity == pb.ResourceList(
        cpu_millis=8000, memory_bytes=16 * 2**30, pids=4194304
    )
    assert node.status.allocatable.HasField("pids")
    assert to_manifest(node)["status"]["allocatable"] == {
        "cpu": "7500m",
        "memory": "15Gi",
        "pids": 0,
    }


def test_int_or_percent_fields_take_integers() -> None:
    deploy = load_one(MANIFESTS["Deployment"])
    assert deploy.spec.strategy.rolling_update.max_surge == "1"
    assert deploy.spec.strategy.rolling_update.max_unavailable == "25%"
    rolling = to_manifest(deploy)["spec"]["strategy"]["rollingUpdate"]
    assert rolling == {"maxUnavailable": "25%", "maxSurge": 1}


def test_timestamps_quoted_or_not() -> None:
    lease = load_one("""
        apiVersion: mizzen/v1
        kind: Lease
        metadata: {name: l, creationTimestamp: 2024-05-01T10:00:00Z}
        spec: {acquireTime: "2024-05-01T12:00:00+02:00", renewTime: 2024-05-01 10:00:00}
    """)
    assert lease.metadata.creation_timestamp.ToJsonString() == "2024-05-01T10:00:00Z"
    assert lease.spec.acquire_time == lease.metadata.creation_timestamp
    assert lease.spec.renew_time == lease.metadata.creation_timestamp
    assert to_manifest(lease)["spec"]["renewTime"] == "2024-05-01T10:00:00Z"


def test_null_means_unset() -> None:
    deploy = load_one("""
        apiVersion: mizzen/v1
        kind: Deployment
        metadata: {name: web, labels: null}
        spec:
          replicas: null
          template: {spec: {processes: [{name: a, resources: {limits: {cpu: null}}}]}}
        status: null
    """)
    assert not deploy.spec.HasField("replicas")
    assert not deploy.HasField("status")
    assert not deploy.spec.template.spec.processes[0].resources.limits.HasField("cpu_millis")


def test_multiple_documents_with_empty_ones() -> None:
    text = textwrap.dedent("""
        ---
        # only a comment
        ---
        apiVersion: mizzen/v1
        kind: Job
        metadata: {name: a}
        ---
        ---
        apiVersion: mizzen/v1
        kind: Lease
        metadata: {name: b}
        ---
    """)
    loaded = load_manifests(text, "many.yaml")
    assert [(m.kind.kind, m.message.metadata.name, m.index) for m in loaded] == [  # type: ignore[attr-defined]
        ("Job", "a", 2),
        ("Lease", "b", 4),
    ]
    assert {m.source for m in loaded} == {"many.yaml"}
    assert load_manifests("", "-") == []
    assert load_manifests("# nothing\n", "-") == []


def test_dump_yaml_of_several_and_json_list() -> None:
    messages = load(MANIFESTS["Job"]) + load(MANIFESTS["Lease"])
    text = dump_yaml(messages)
    assert text.count("\n---\n") == 1
    assert load(text) == messages
    listed = dump_json(messages)
    assert yaml.safe_load(listed)["kind"] == "List"
    assert load(listed, "all.json") == messages
    assert [m.index for m in load_manifests(listed, "all.json")] == [1, 1]
    assert '"kind": "Job"' in dump_json(messages[:1])
    assert "List" not in dump_json(messages[:1])


# ---------------------------------------------------------------- errors

BAD_QUANTITIES = """
    apiVersion: mizzen/v1
    kind: Deployment
    metadata: {name: web}
    spec:
      template:
        spec:
          processes:
            - name: main
              resources:
                requests: {cpu: 0.0001, memory: 1.5, pids: -1}
                limits: {memory: 12XB, cpu: [1], disk: 1Gi}
"""


def test_all_quantity_errors_of_a_document() -> None:
    p = "web.yaml: document 2 (Deployment web): spec.template.spec.processes[0].resources"
    assert error_lines("---\n---\n" + textwrap.dedent(BAD_QUANTITIES), "web.yaml") == [
        f'{p}.requests.cpu: invalid quantity "0.0001": must be a whole number of millicores (1m)',
        f'{p}.requests.memory: invalid quantity "1.5": must be a whole number of bytes',
        f'{p}.requests.pids: invalid quantity "-1": must not be negative',
        f'{p}.limits.memory: invalid quantity "12XB"',
        f"{p}.limits.cpu: invalid quantity: expected a string or number, got list",
        f"{p}.limits.disk: unknown field",
        # and what the server would refuse too (mizzen.api.validation)
        "web.yaml: document 2 (Deployment web): spec.selector: required: a non-empty selector",
        f"{p[: p.rindex('.resources')]}.command: required",
    ]


def test_yaml_syntax_error_names_document_and_line() -> None:
    text = "apiVersion: mizzen/v1\nkind: Lease\nmetadata: {name: a}\n---\nkind: [Pod\nx: 1\n"
    assert error_lines(text, "bad.yaml") == [
        "bad.yaml: document 2: invalid YAML at line 6, column 2: expected ',' or ']', but got ':'"
    ]


def test_duplicate_keys_are_rejected() -> None:
    text = "apiVersion: mizzen/v1\nkind: Lease\nmetadata:\n  name: a\n  name: b\n"
    assert error_lines(text) == [
        't.yaml: document 1: invalid YAML at line 5, column 3: duplicate key "name"'
    ]
    merged = """
        apiVersion: mizzen/v1
        kind: List
        items:
          - {apiVersion: mizzen/v1, kind: Lease, metadata: {name: a}, spec: &s {holderIdentity: x}}
          - apiVersion: mizzen/v1
            kind: Lease
            metadata: {name: b}
            spec: {<<: *s, holderIdentity: y}
    """
    leases: list[Any] = load(merged)
    assert [lease.spec.holder_identity for lease in leases] == ["x", "y"]


def test_json_syntax_error() -> None:
    assert error_lines('{"kind": "Pod",\n  oops}', "x.json") == [
        "x.json: document 1: invalid JSON at line 2, column 3: "
        "Expecting property name enclosed in double quotes"
    ]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("kind: Pod", 'document 1 (Pod p): apiVersion: required: must be "mizzen/v1"'),
        (
            "apiVersion: apps/v1\nkind: Pod",
            'document 1 (Pod p): apiVersion: unsupported apiVersion string "apps/v1": '
            'must be "mizzen/v1"',
        ),
        (
            "apiVersion: v1\nkind: Pod",
            'document 1 (Pod p): apiVersion: unsupported apiVersion string "v1": '
            'must be "mizzen/v1"',
        ),
        ("apiVersion: mizzen/v1", "document 1 (p): kind: required"),
        (
            "apiVersion: mizzen/v1\nkind: Ingress",
            'document 1 (Ingress p): kind: unknown kind "Ingress"; known kinds: '
            "Node, Pod, ReplicaSet, Deployment, DaemonSet, Job, Event, Lease, ConfigMap, Secret, "
            "Service, Endpoints",
        ),
        (
            "apiVersion: mizzen/v1\nkind: deploy",
            'document 1 (deploy p): kind: unknown kind "deploy"; did you mean "Deployment"?',
        ),
        (
            "apiVersion: mizzen/v1\nkind: 3",
            "document 1 (p): kind: expected a string, got integer 3",
        ),
    ],
)
def test_api_version_and_kind_errors(header: str, expected: str) -> None:
    assert error_lines(f"{header}\nmetadata: {{name: p}}\n", "-") == [f"-: {expected}"]


def test_document_must_be_an_object() -> None:
    assert error_lines("- a\n- b\n") == [
        "t.yaml: document 1: expected an object with apiVersion and kind, got list"
    ]


UNKNOWN_FIELDS = """
    apiVersion: mizzen/v1
    kind: Event
    metadata: {name: e, nmae: x}
    spec:
      involvedObject: {kind: Pod, name: p, field_path: x}
      reason: R
      weird: 1
    status: {}
    specs: {}
"""


def test_unknown_fields_are_reported_with_their_path() -> None:
    assert error_lines(UNKNOWN_FIELDS) == [
        't.yaml: document 1 (Event e): metadata.nmae: unknown field; did you mean "name"?',
        "t.yaml: document 1 (Event e): spec.involvedObject.field_path: unknown field; "
        'did you mean "fieldPath"?',
        "t.yaml: document 1 (Event e): spec.weird: unknown field",
        "t.yaml: document 1 (Event e): status: unknown field",
        't.yaml: document 1 (Event e): specs: unknown field; did you mean "spec"?',
    ]


WRONG_TYPES = """
    apiVersion: mizzen/v1
    kind: Deployment
    metadata: {name: web, labels: {version: 1, ok: "yes"}}
    spec:
      replicas: two
      paused: "true"
      minReadySeconds: 3000000000
      selector: [app]
      template:
        spec:
          processes:
            - name: main
              command: /bin/server
              env: [null]
            - not-an-object
      strategy: {rollingUpdate: {maxSurge: 1.5}}
    status: {conditions: [{type: A, lastTransitionTime: yesterday}]}
"""


def test_wrong_types_are_reported_with_their_path() -> None:
    p = "t.yaml: document 1 (Deployment web)"
    assert error_lines(WRONG_TYPES) == [
        f"{p}: metadata.labels[version]: expected a string, got integer 1 (quote it)",
        f'{p}: spec.replicas: expected an integer, got string "two"',
        f'{p}: spec.paused: expected a boolean, got string "true"',
        f"{p}: spec.minReadySeconds: integer 3000000000 is out of range [-2147483648, 2147483647]",
        f"{p}: spec.selector: expected an object, got list",
        f'{p}: spec.template.spec.processes[0].command: expected a list, got string "/bin/server"',
        f"{p}: spec.template.spec.processes[0].env[0]: must not be null",
        f'{p}: spec.template.spec.processes[1]: expected an object, got string "not-an-object"',
        f"{p}: spec.strategy.rollingUpdate.maxSurge: expected a string, got number 1.5 (quote it)",
        f'{p}: status.conditions[0].lastTransitionTime: invalid timestamp "yesterday": '
        "use RFC 3339, e.g. 2024-01-02T15:04:05Z",
        f"{p}: status.conditions[0].status: required",
    ]


def test_problems_of_every_document_are_collected() -> None:
    text = "\n---\n".join(
        [
            textwrap.dedent(MANIFESTS["Job"]),
            "apiVersion: mizzen/v1\nkind: Job\nmetadata: {name: a}\nspec: {completions: x}",
            "kind: Lease",
        ]
    )
    assert error_lines(text, "j.yaml") == [
        'j.yaml: document 2 (Job a): spec.completions: expected an integer, got string "x"',
        "j.yaml: document 2 (Job a): spec.selector: required: a non-empty selector",
        "j.yaml: document 2 (Job a): spec.template.spec.processes: "
        "at least one process is required",
        'j.yaml: document 3 (Lease): apiVersion: required: must be "mizzen/v1"',
    ]


def test_list_item_errors_carry_the_item_path() -> None:
    listed = yaml.safe_load(dump_json(load(MANIFESTS["Job"]) + load(MANIFESTS["Lease"])))
    listed["items"][1]["spec"]["holderIdentity"] = 5
    listed["items"].append(7)
    assert error_lines(yaml.safe_dump(listed)) == [
        "t.yaml: document 1 (Lease scheduler): items[1].spec.holderIdentity: "
        "expected a string, got integer 5 (quote it)",
        "t.yaml: document 1: items[2]: expected an object, got integer 7",
    ]
    assert error_lines("apiVersion: v1\nkind: List\nitems: {}\nextra: 1\n") == [
        't.yaml: document 1 (List): apiVersion: unsupported apiVersion string "v1": '
        'must be "mizzen/v1"',
        "t.yaml: document 1 (List): extra: unknown field",
        "t.yaml: document 1 (List): items: expected a list, got object",
    ]


def test_manifest_error_keeps_structured_problems() -> None:
    with pytest.raises(ManifestError) as info:
        load_manifests(textwrap.dedent(BAD_QUANTITIES), "web.yaml")
    problem = info.value.problems[3]
    assert (problem.source, problem.document, problem.label) == ("web.yaml", 1, "Deployment web")
    assert problem.path == "spec.template.spec.processes[0].resources.limits.memory"
    assert problem.message == 'invalid quantity "12XB"'
    assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------- paths


def test_load_paths_files_directories_and_stdin(tmp_path: Path) -> None:
    (tmp_path / "b.yml").write_text(textwrap.dedent(MANIFESTS["Lease"]))
    (tmp_path / "a.yaml").write_text(textwrap.dedent(MANIFESTS["Job"]))
    (tmp_path / "c.json").write_text(dump_json(load(MANIFESTS["Event"])))
    (tmp_path / "notes.txt").write_text("not a manifest")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.yaml").write_text(textwrap.dedent(MANIFESTS["Pod"]))
    stdin = io.StringIO(textwrap.dedent(MANIFESTS["Node"]))
    single = str(tmp_path / "sub" / "d.yaml")
    loaded = load_paths([str(tmp_path), "-", single], stdin=stdin)
    assert [(Path(m.source).name, m.kind.kind) for m in loaded] == [
        ("a.yaml", "Job"),
        ("b.yml", "Lease"),
        ("c.json", "Event"),
        ("-", "Node"),
        ("d.yaml", "Pod"),
    ]
    assert loaded[0].source == str(tmp_path / "a.yaml")


def test_load_paths_reports_every_bad_source(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: mizzen/v1\nkind: Nope\n")
    missing = str(tmp_path / "missing.yaml")
    with pytest.raises(ManifestError) as info:
        load_paths([missing, str(bad)])
    assert str(info.value).splitlines() == [
        f"{missing}: cannot read: No such file or directory",
        f'{bad}: document 1 (Nope): kind: unknown kind "Nope"; known kinds: '
        "Node, Pod, ReplicaSet, Deployment, DaemonSet, Job, Event, Lease, ConfigMap, Secret, "
        "Service, Endpoints",
    ]


# ---------------------------------------------------------------- examples


@pytest.mark.parametrize("name", ["web.yaml", "job.yaml"])
def test_examples_load_and_validate(name: str) -> None:
    (manifest,) = load_paths([str(EXAMPLES / name)])
    apply_defaults(manifest.message)
    assert validate(manifest.message) == []
    assert load(dump_yaml([manifest.message])) == [manifest.message]


def test_web_example_content() -> None:
    (manifest,) = load_paths([str(EXAMPLES / "web.yaml")])
    deploy: Any = manifest.message
    assert deploy.spec.replicas == 1
    (process,) = deploy.spec.template.spec.processes
    assert list(process.command) == ["python3", "-m", "http.server", "8080"]
    assert process.resources.limits == pb.ResourceList(
        cpu_millis=500, memory_bytes=128 * 2**20, pids=64
    )
    assert process.readiness_probe.http_get.path == "/"
    assert process.liveness_probe.tcp_socket.port == 8080
    job: Any = load_paths([str(EXAMPLES / "job.yaml")])[0].message
    assert list(job.spec.template.spec.processes[0].command) == [
        "sh",
        "-c",
        "echo hello; sleep 1",
    ]


# ---------------------------------------------------------------- nesting depth

DEEP = 500


def _deep_yaml(depth: int) -> str:
    """A Pod whose labels value is a flow list nested depth deep, on line 5."""
    return (
        "apiVersion: mizzen/v1\nkind: Pod\nmetadata:\n  name: p\n"
        f"  labels: {'[' * depth}{']' * depth}\n"
    )


def _deep_block_yaml(depth: int) -> str:
    """The same in block style: one mapping per line, so the line says how deep."""
    lines = ["apiVersion: mizzen/v1", "kind: Pod", "metadata:"]
    lines += [f"{'  ' * i}k{i}:" for i in range(1, depth + 1)]
    return "\n".join(lines) + " 1\n"


def test_yaml_nested_too_deep_is_one_line_naming_the_line() -> None:
    lines = error_lines("---\n" + _deep_yaml(DEEP), "deep.yaml")
    assert lines == [
        f"deep.yaml: document 1: invalid YAML at line 6, column {9 + MAX_DEPTH}: "
        f"nested more than {MAX_DEPTH} levels deep"
    ]
    block = error_lines(_deep_block_yaml(DEEP), "block.yaml")
    # the document is level 1, the mapping holding k1 (line 4) level 2, so the one
    # holding k{MAX_DEPTH} (line 3 + MAX_DEPTH, indented 2 * MAX_DEPTH) is one too many
    assert block == [
        f"block.yaml: document 1: invalid YAML at line {3 + MAX_DEPTH}, "
        f"column {2 * MAX_DEPTH + 1}: nested more than {MAX_DEPTH} levels deep"
    ]


def test_yaml_nested_to_the_limit_loads() -> None:
    # MAX_DEPTH levels in all (the document's mapping is one): parsed, then refused by
    # the decoder for what it is (a list where labels belong), not for its depth
    lines = error_lines(_deep_yaml(MAX_DEPTH - 2))
    assert lines == [
        "t.yaml: document 1 (Pod p): metadata.labels: expected an object, got list",
        "t.yaml: document 1 (Pod p): spec.processes: at least one process is required",
    ]


def test_json_nested_too_deep_is_one_line_naming_the_line() -> None:
    deep = (
        '{"kind": "Pod",\n "metadata": {"name": "p", "labels":\n' + "[" * DEEP + "]" * DEEP + "}}"
    )
    assert error_lines(deep, "deep.json") == [
        f"deep.json: document 1: invalid JSON at line 3, column {MAX_DEPTH - 1}: "
        f"nested more than {MAX_DEPTH} levels deep"
    ]
    # brackets inside strings do not count
    quoted = '{"apiVersion": "mizzen/v1", "kind": "Lease", "metadata": {"name": "a"},'
    quoted += ' "spec": {"holderIdentity": "' + "[{" * DEEP + '\\"[["}}'
    lease: Any
    (lease,) = load(quoted, "q.json")
    assert lease.spec.holder_identity == "[{" * DEEP + '"[['


def test_deep_manifest_is_a_one_line_cli_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mizzen.cli.main import main

    path = tmp_path / "deep.yaml"
    path.write_text(_deep_yaml(DEEP))
    for command in (["apply"], ["delete"]):
        code = main([*command, "-f", str(path), "--endpoints", "127.0.0.1:1"])
        err = capsys.readouterr().err
        assert code == 1, (command, err)
        assert err.startswith(f"mizzen: {path}: document 1: invalid YAML at line 5"), err
        assert err.count("\n") == 1, err


# ---------------------------------------------------------------- every bad field at once


def test_every_bad_field_of_a_document_at_once() -> None:
    """An invalid name, a bad quantity and an unknown field: all three, each with its path."""
    lines = error_lines(
        """
        apiVersion: mizzen/v1
        kind: Pod
        metadata:
          name: Bad_Name
        spec:
          processz: 1
          processes:
            - name: main
              command: [sleep, "1"]
              resources:
                limits: {memory: 12XB}
        """,
        "bad.yaml",
    )
    where = "bad.yaml: document 1 (Pod Bad_Name)"
    assert [line.removeprefix(f"{where}: ").split(":")[0] for line in lines] == [
        "spec.processz",
        "spec.processes[0].resources.limits.memory",
        "metadata.name",
    ]
    assert lines[2].startswith(f"{where}: metadata.name: a DNS-1123 subdomain must consist of")


def test_fields_the_decoder_dropped_are_not_reported_again() -> None:
    """A field refused for its type is not also "required" once validation misses it."""
    lines = error_lines(
        """
        apiVersion: mizzen/v1
        kind: Deployment
        metadata: {name: web}
        spec:
          selector: [app]
          template:
            metadata: {labels: {app: web}}
            spec:
              processes: {name: main}
        """
    )
    assert [line.split(": ")[2] for line in lines] == [
        "spec.selector",
        "spec.template.spec.processes",
    ]


def test_an_element_dropped_from_a_list_does_not_shift_the_paths_reported() -> None:
    # processes[0] is refused, so the decoded list starts at the one written second: the
    # bad name of processes[2] must not be reported as processes[1]'s
    lines = error_lines(
        """
        apiVersion: mizzen/v1
        kind: Pod
        metadata: {name: p}
        spec:
          processes:
            - oops
            - {name: ok, command: [a]}
            - {name: Bad Name, command: [b]}
        """
    )
    assert lines == [
        't.yaml: document 1 (Pod p): spec.processes[0]: expected an object, got string "oops"'
    ]


# ---------------------------------------------------------------- libyaml's parser


VARIED_YAML = """\
# a comment
apiVersion: mizzen/v1
kind: Deployment
metadata: &meta
  name: web
  labels: {app: web, "quoted key": 'single ''quoted''', tier: "a\\tb\\u00e9"}
  annotations:
    folded: >
      one
      two
    literal: |-
      line 1
        line 2
    plain multi: this is
      one line
    empty: ""
    tilde: ~
    yes-word: yes
    octal: 0o17
    hex: 0x1F
    under: 1_000
    float: 1.5e3
    inf: .inf
    when: 2024-01-02T15:04:05Z
    day: 2024-01-02
    tagged: !!str 42
    unicode: "日本語 ✓"
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      <<: *meta
      name: overridden
    spec:
      processes:
      - name: main
        command: [/bin/sh, -c, "echo 'hi' # not a comment"]
        env: [{name: A, value: "1"}, {name: B, value: ''}]
...
---
---
- just
- a: [list, {of: things}]
--- !!map
? complex key
: value
"""


def test_libyaml_reads_what_the_python_parser_reads() -> None:
    """The C parser gives the very documents PyYAML's Python parser gives."""
    from mizzen.api.manifest import _FastLoader, _StrictLoader

    if yaml.__with_libyaml__:
        assert _FastLoader is not None
    if _FastLoader is None:
        pytest.skip("PyYAML without libyaml")
    fast = list(yaml.load_all(VARIED_YAML, Loader=_FastLoader))
    slow = list(yaml.load_all(VARIED_YAML, Loader=_StrictLoader))
    assert fast == slow
    assert len(fast) == 4 and fast[1] is None
    assert fast[0]["spec"]["template"]["metadata"]["labels"]["tier"] == "a\tbé"


def test_libyaml_path_keeps_the_nesting_limit_and_the_duplicate_key_check() -> None:
    from mizzen.api.manifest import _FastLoader

    if _FastLoader is None:
        pytest.skip("PyYAML without libyaml")
    with pytest.raises(yaml.YAMLError, match="levels deep"):
        list(yaml.load_all(_deep_yaml(DEEP), Loader=_FastLoader))
    with pytest.raises(yaml.YAMLError, match='duplicate key "a"'):
        list(yaml.load_all("a: 1\nb: 2\na: 3\n", Loader=_FastLoader))


def test_a_scalar_yaml_cannot_construct_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A date with month 13 or ``!!int abc`` raised ValueError out of PyYAML: a traceback."""
    doc = """\
        apiVersion: mizzen/v1
        kind: Pod
        metadata:
          name: a
          annotations: {{d: {value}}}
        spec: {{}}
        """
    assert error_lines(doc.format(value="2024-13-45")) == [
        't.yaml: document 1: invalid YAML at line 5, column 20: invalid timestamp "2024-13-45": '
        "month must be in 1..12"
    ]
    assert error_lines("---\n" + doc.format(value="!!int abc")) == [
        't.yaml: document 1: invalid YAML at line 6, column 28: invalid int "abc": '
        "invalid literal for int() with base 10: 'abc'"
    ]
    from mizzen.cli.main import main

    path = tmp_path / "bad-date.yaml"
    path.write_text(textwrap.dedent(doc.format(value="2024-02-30")))
    assert main(["apply", "-f", str(path), "--endpoints", "127.0.0.1:1"]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"mizzen: {path}: document 1: invalid YAML at line 5, column 20: "
        'invalid timestamp "2024-02-30": day is out of range for month\n'
    )
