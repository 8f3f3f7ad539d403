"""ConfigMaps and Secrets: validation, defaults, immutability, manifests (base64), the
references a pod spec makes to them, and apply's idea of a change."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from mizzen.api.defaults import apply_defaults
from mizzen.api.manifest import ManifestError, dump_yaml, load_manifests
from mizzen.api.validation import MAX_CONFIG_DATA_BYTES, validate, validate_update
from mizzen.cli.apply_cmd import differs, merged
from protos import objects_pb2 as pb

VALUE = "hunter2-very-secret"


def config_map() -> pb.ConfigMap:
    cm = pb.ConfigMap(metadata=pb.ObjectMeta(name="web-config"))
    cm.data["app.conf"] = "listen 8080\n"
    cm.data["LOG_LEVEL"] = "debug"
    cm.binary_data["logo.png"] = b"\x89PNG\x00\xff"
    apply_defaults(cm)
    return cm


def secret() -> pb.Secret:
    s = pb.Secret(metadata=pb.ObjectMeta(name="db"))
    s.data["DB_PASSWORD"] = VALUE.encode()
    apply_defaults(s)
    return s


def _paths(obj: Any) -> list[str]:
    return [e.path for e in validate(obj)]


def test_valid_config_objects_and_defaults() -> None:
    assert validate(config_map()) == []
    s = secret()
    assert validate(s) == []
    assert s.type == "Opaque" and s.metadata.namespace == "default"


def test_string_data_is_merged_into_data_and_wins() -> None:
    s = pb.Secret(metadata=pb.ObjectMeta(name="db"))
    s.data["user"] = b"old"
    s.data["keep"] = b"\x00\x01"
    s.string_data["user"] = "admin"
    s.string_data["token"] = "t0k3n"
    apply_defaults(s)
    assert dict(s.data) == {"user": b"admin", "keep": b"\x00\x01", "token": b"t0k3n"}
    assert not s.string_data
    again = pb.Secret()
    again.CopyFrom(s)
    apply_defaults(again)  # idempotent
    assert again == s


CASES: list[tuple[str, Callable[[], Any], Callable[[Any], object], list[str]]] = [
    ("bad key", config_map, lambda o: o.data.update({"a b": "x"}), ["data[a b]"]),
    ("dot key", config_map, lambda o: o.data.update({"..x": "x"}), ["data[..x]"]),
    ("dotdot", config_map, lambda o: o.binary_data.update({"..": b"x"}), ["binaryData[..]"]),
    (
        "long key",
        config_map,
        lambda o: o.data.update({"k" * 254: "x"}),
        [f"data[{'k' * 100}…(254 chars)]"],
    ),
    (
        "same key twice",
        config_map,
        lambda o: o.binary_data.update({"LOG_LEVEL": b"x"}),
        ["binaryData[LOG_LEVEL]"],
    ),
    ("secret key", secret, lambda o: o.data.update({"pass/word": b"x"}), ["data[pass/word]"]),
    (
        "secret string key",
        secret,
        lambda o: o.string_data.update({"a:b": "x"}),
        ["stringData[a:b]"],
    ),
    ("no type", secret, lambda o: o.ClearField("type"), ["type"]),
    ("long type", secret, lambda o: setattr(o, "type", "t" * 300), ["type"]),
    ("bad name", secret, lambda o: setattr(o.metadata, "name", "DB"), ["metadata.name"]),
]


@pytest.mark.parametrize(("case", "make", "mutate", "paths"), CASES, ids=[c[0] for c in CASES])
def test_config_validation(
    case: str, make: Callable[[], Any], mutate: Callable[[Any], object], paths: list[str]
) -> None:
    obj = make()
    mutate(obj)
    assert _paths(obj) == paths, case


def test_size_limit_names_the_limit_and_never_a_value() -> None:
    cm = config_map()
    cm.data["big"] = "x" * MAX_CONFIG_DATA_BYTES
    errors = validate(cm)
    assert [e.path for e in errors] == ["data", "object"]
    assert f"at most {MAX_CONFIG_DATA_BYTES} bytes of keys and values" in errors[0].message
    s = secret()
    s.data["big"] = VALUE.encode() * (MAX_CONFIG_DATA_BYTES // len(VALUE))
    errors = validate(s)
    assert errors and errors[0].path == "data"
    assert all(VALUE not in str(e) for e in errors)


def test_secret_errors_name_keys_not_values() -> None:
    s = secret()
    s.data["bad key"] = VALUE.encode()
    s.type = ""
    assert all(VALUE not in str(e) for e in validate(s))


def _updated(old: Any, mutate: Callable[[Any], object]) -> list[str]:
    new = type(old)()
    new.CopyFrom(old)
    mutate(new)
    apply_defaults(new)
    return [e.path for e in validate_update(old, new)]


def _immutable(obj: Any) -> Any:
    obj.immutable = True
    return obj


@pytest.mark.parametrize(
    ("case", "old", "mutate", "paths"),
    [
        ("mutable data", config_map(), lambda o: o.data.update({"a": "b"}), []),
        ("immutable data", _immutable(config_map()), lambda o: o.data.update({"a": "b"}), ["data"]),
        (
            "immutable binary",
            _immutable(config_map()),
            lambda o: o.binary_data.clear(),
            ["binaryData"],
        ),
        (
            "unset immutable",
            _immutable(config_map()),
            lambda o: o.ClearField("immutable"),
            ["immutable"],
        ),
        (
            "false immutable",
            _immutable(config_map()),
            lambda o: setattr(o, "immutable", False),
            ["immutable"],
        ),
        (
            "labels of immutable",
            _immutable(config_map()),
            lambda o: o.metadata.labels.update({"a": "b"}),
            [],
        ),
        ("make immutable", config_map(), lambda o: setattr(o, "immutable", True), []),
        ("secret data", _immutable(secret()), lambda o: o.data.update({"b": b"x"}), ["data"]),
        (
            "secret string data",
            _immutable(secret()),
            lambda o: o.string_data.update({"DB_PASSWORD": "other"}),
            ["data"],
        ),
        (
            "same string data",
            _immutable(secret()),
            lambda o: o.string_data.update({"DB_PASSWORD": VALUE}),
            [],
        ),
        ("secret type", secret(), lambda o: setattr(o, "type", "kubernetes.io/tls"), ["type"]),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_immutability(
    case: str, old: Any, mutate: Callable[[Any], object], paths: list[str]
) -> None:
    assert _updated(old, mutate) == paths, case


# ------------------------------------------------------------------ pod references


def pod() -> pb.Pod:
    p = pb.Pod(metadata=pb.ObjectMeta(name="web"))
    proc = p.spec.processes.add(name="main", command=["/bin/server"])
    proc.env.add(
        name="A",
        value_from=pb.EnvVarSource(
            config_map_key_ref=pb.ConfigMapKeySelector(name="web-config", key="LOG_LEVEL")
        ),
    )
    proc.env.add(
        name="B",
        value_from=pb.EnvVarSource(
            secret_key_ref=pb.SecretKeySelector(name="db", key="DB_PASSWORD", optional=True)
        ),
    )
    proc.env_from.add(prefix="CFG_", config_map_ref=pb.ConfigMapEnvSource(name="web-config"))
    proc.env_from.add(secret_ref=pb.SecretEnvSource(name="db"))
    proc.volume_mounts.add(name="conf", mount_path="conf", read_only=True)
    proc.volume_mounts.add(name="creds", mount_path="secrets/db")
    p.spec.volumes.add(
        name="conf",
        config_map=pb.ConfigMapVolumeSource(
            name="web-config",
            items=[pb.KeyToPath(key="app.conf", path="nginx/app.conf", mode=0o600)],
        ),
    )
    p.spec.volumes.add(
        name="creds", secret=pb.SecretVolumeSource(secret_name="db", default_mode=0o400)
    )
    apply_defaults(p)
    return p


def _env(i: int) -> Callable[[Any], Any]:
    return lambda p: p.spec.processes[0].env[i]


POD_CASES: list[tuple[str, Callable[[Any], object], list[str]]] = [
    (
        "both refs",
        lambda p: _env(0)(p).value_from.secret_key_ref.SetInParent(),
        [
            "spec.processes[0].env[0].valueFrom",
            "spec.processes[0].env[0].valueFrom.secretKeyRef.name",
            "spec.processes[0].env[0].valueFrom.secretKeyRef.key",
        ],
    ),
    (
        "no ref",
        lambda p: _env(0)(p).value_from.ClearField("config_map_key_ref"),
        ["spec.processes[0].env[0].valueFrom"],
    ),
    (
        "value and valueFrom",
        lambda p: setattr(_env(1)(p), "value", "x"),
        ["spec.processes[0].env[1].valueFrom"],
    ),
    (
        "ref key",
        lambda p: setattr(_env(0)(p).value_from.config_map_key_ref, "key", "a b"),
        ["spec.processes[0].env[0].valueFrom.configMapKeyRef.key"],
    ),
    (
        "ref name",
        lambda p: setattr(_env(1)(p).value_from.secret_key_ref, "name", "DB"),
        ["spec.processes[0].env[1].valueFrom.secretKeyRef.name"],
    ),
    (
        "envFrom none",
        lambda p: p.spec.processes[0].env_from.add(prefix="X"),
        ["spec.processes[0].envFrom[2]"],
    ),
    (
        "envFrom both",
        lambda p: p.spec.processes[0].env_from[1].config_map_ref.SetInParent(),
        ["spec.processes[0].envFrom[1]", "spec.processes[0].envFrom[1].configMapRef.name"],
    ),
    (
        "envFrom prefix",
        lambda p: setattr(p.spec.processes[0].env_from[0], "prefix", "A=B"),
        ["spec.processes[0].envFrom[0].prefix"],
    ),
    ("volume no source", lambda p: p.spec.volumes.add(name="empty"), ["spec.volumes[2]"]),
    (
        "volume two sources",
        lambda p: p.spec.volumes[0].secret.SetInParent(),
        ["spec.volumes[0]", "spec.volumes[0].secret.secretName"],
    ),
    (
        "volume name twice",
        lambda p: setattr(p.spec.volumes[1], "name", "conf"),
        ["spec.volumes[1].name", "spec.processes[0].volumeMounts[1].name"],
    ),
    (
        "volume bad name",
        lambda p: setattr(p.spec.volumes[1], "name", "Creds"),
        ["spec.volumes[1].name", "spec.processes[0].volumeMounts[1].name"],
    ),
    (
        "item absolute",
        lambda p: setattr(p.spec.volumes[0].config_map.items[0], "path", "/etc/x"),
        ["spec.volumes[0].configMap.items[0].path"],
    ),
    (
        "item climbs",
        lambda p: setattr(p.spec.volumes[0].config_map.items[0], "path", "a/../../x"),
        ["spec.volumes[0].configMap.items[0].path"],
    ),
    (
        "item the volume",
        lambda p: setattr(p.spec.volumes[0].config_map.items[0], "path", "./"),
        ["spec.volumes[0].configMap.items[0].path"],
    ),
    (
        "item bad key",
        lambda p: setattr(p.spec.volumes[0].config_map.items[0], "key", ""),
        ["spec.volumes[0].configMap.items[0].key"],
    ),
    (
        "item mode",
        lambda p: setattr(p.spec.volumes[0].config_map.items[0], "mode", 0o1000),
        ["spec.volumes[0].configMap.items[0].mode"],
    ),
    (
        "default mode",
        lambda p: setattr(p.spec.volumes[1].secret, "default_mode", -1),
        ["spec.volumes[1].secret.defaultMode"],
    ),
    (
        "same item path",
        lambda p: p.spec.volumes[0].config_map.items.add(key="x", path="nginx//app.conf"),
        ["spec.volumes[0].configMap.items[1].path"],
    ),
    (
        "mount unknown",
        lambda p: setattr(p.spec.processes[0].volume_mounts[0], "name", "nope"),
        ["spec.processes[0].volumeMounts[0].name"],
    ),
    (
        "mount no path",
        lambda p: setattr(p.spec.processes[0].volume_mounts[0], "mount_path", ""),
        ["spec.processes[0].volumeMounts[0].mountPath"],
    ),
    (
        "mount climbs",
        lambda p: setattr(p.spec.processes[0].volume_mounts[0], "mount_path", "../etc"),
        ["spec.processes[0].volumeMounts[0].mountPath"],
    ),
    (
        "mount working dir",
        lambda p: setattr(p.spec.processes[0].volume_mounts[0], "mount_path", "."),
        ["spec.processes[0].volumeMounts[0].mountPath"],
    ),
    (
        "mount twice",
        lambda p: setattr(p.spec.processes[0].volume_mounts[1], "mount_path", "conf/"),
        ["spec.processes[0].volumeMounts[1].mountPath"],
    ),
]


@pytest.mark.parametrize(("case", "mutate", "paths"), POD_CASES, ids=[c[0] for c in POD_CASES])
def test_pod_references(case: str, mutate: Callable[[Any], object], paths: list[str]) -> None:
    assert validate(pod()) == []
    p = pod()
    mutate(p)
    assert sorted(_paths(p)) == sorted(paths), case


def test_absolute_mount_paths_are_refused() -> None:
    """Only the node knows the pod directory (MIZZEN_POD_DIR): an absolute mountPath
    cannot be known to lie inside it."""
    p = pod()
    p.spec.processes[0].volume_mounts[0].mount_path = "/var/lib/mizzen/pods/x/conf"
    (err,) = validate(p)
    assert err.path == "spec.processes[0].volumeMounts[0].mountPath"
    assert "must be relative" in err.message


def test_template_references_are_validated_too() -> None:
    d = pb.Deployment(metadata=pb.ObjectMeta(name="web"))
    d.spec.selector.match_labels["app"] = "web"
    d.spec.template.metadata.labels["app"] = "web"
    d.spec.template.spec.CopyFrom(pod().spec)
    d.spec.template.spec.processes[0].volume_mounts[0].name = "nope"
    apply_defaults(d)
    assert _paths(d) == ["spec.template.spec.processes[0].volumeMounts[0].name"]


# ------------------------------------------------------------------ manifests

SECRET_DOC = """\
apiVersion: mizzen/v1
kind: Secret
metadata: {{name: db}}
{body}
"""


def _load(body: str) -> Any:
    return load_manifests(SECRET_DOC.format(body=body), "s.yaml")[0].message


def test_base64_round_trip_through_manifests() -> None:
    s = _load("data: {DB_PASSWORD: aHVudGVyMg==, bin: AP8=}\nstringData: {user: admin}")
    assert dict(s.data) == {"DB_PASSWORD": b"hunter2", "bin": b"\x00\xff"}
    apply_defaults(s)
    text = dump_yaml([s])
    assert "aHVudGVyMg==" in text and "YWRtaW4=" in text and "stringData" not in text
    assert load_manifests(text, "again.yaml")[0].message == s
    cm = config_map()
    assert load_manifests(dump_yaml([cm]), "cm.yaml")[0].message == cm


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("data: {k: 'hunter2!'}", "s.yaml: document 1 (Secret db): data[k]: invalid base64: "),
        ("data: {k: aHVudGVyMg}", "data[k]: invalid base64: Incorrect padding"),
        ("data: {k: 12345}", "data[k]: expected a base64 string, got an integer"),
        ("stringData: {k: 12345}", "stringData[k]: expected a string, got an integer (quote it)"),
        ("stringData: {k: [hunter2]}", "stringData[k]: expected a string, got a list"),
    ],
)
def test_bad_secret_values_are_named_by_key_never_shown(body: str, problem: str) -> None:
    with pytest.raises(ManifestError) as err:
        _load(body)
    assert problem in str(err.value)
    for shown in ("hunter2", "12345", "aHVudGVyMg"):
        assert shown not in str(err.value)


def test_config_map_values_may_still_be_quoted_in_errors() -> None:
    """Only Secret values are hidden; a ConfigMap's are configuration."""
    doc = "apiVersion: mizzen/v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {port: 8080}\n"
    with pytest.raises(ManifestError, match="data\\[port\\]: expected a string, got integer 8080"):
        load_manifests(doc, "c.yaml")


# ------------------------------------------------------------------ apply


def _stored(obj: Any) -> Any:
    out = type(obj)()
    out.CopyFrom(obj)
    apply_defaults(out)
    out.metadata.uid = "u-1"
    out.metadata.resource_version = "7"
    return out


def test_apply_compares_the_data_of_kinds_without_a_spec() -> None:
    cm = config_map()
    assert not differs(cm, _stored(cm))
    changed = config_map()
    changed.data["LOG_LEVEL"] = "info"
    assert differs(changed, _stored(cm))
    update = merged(changed, _stored(cm))
    assert update.metadata.uid == "u-1" and update.data["LOG_LEVEL"] == "info"


def test_apply_of_string_data_is_a_change_only_when_the_value_is() -> None:
    stored = _stored(secret())
    same = pb.Secret(metadata=pb.ObjectMeta(name="db"))
    same.string_data["DB_PASSWORD"] = VALUE
    assert not differs(same, stored)
    other = pb.Secret(metadata=pb.ObjectMeta(name="db"))
    other.string_data["DB_PASSWORD"] = "new"
    assert differs(other, stored)
    immutable = pb.Secret()
    immutable.CopyFrom(same)
    immutable.immutable = True
    assert differs(immutable, stored)
