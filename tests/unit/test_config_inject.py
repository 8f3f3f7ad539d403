"""Environment and volume files from ConfigMaps and Secrets: nodeagent.config_inject."""

from __future__ import annotations

import os
from typing import Any

import pytest

from nodeagent.config_inject import (
    ConfigError,
    FileSpec,
    check_file_path,
    project,
    resolve_env,
    volume_source,
)
from protos import objects_pb2 as pb


def cm(name: str, data: dict[str, str], binary: dict[str, bytes] | None = None) -> pb.ConfigMap:
    return pb.ConfigMap(
        metadata=pb.ObjectMeta(name=name, namespace="default"),
        data=data,
        binary_data=binary or {},
    )


def secret(name: str, data: dict[str, bytes]) -> pb.Secret:
    return pb.Secret(metadata=pb.ObjectMeta(name=name, namespace="default"), data=data)


def lookup_of(*objs: Any) -> Any:
    table = {(type(o).__name__, o.metadata.name): o for o in objs}
    return lambda kind, name: table.get((kind, name))


def env_of(process: pb.Process, *objs: Any) -> dict[str, str]:
    env, skipped = resolve_env(process, lookup_of(*objs))
    assert not skipped
    return dict(env)


def from_cm(name: str, key: str, optional: bool | None = None) -> pb.EnvVarSource:
    ref = pb.ConfigMapKeySelector(name=name, key=key)
    if optional is not None:
        ref.optional = optional
    return pb.EnvVarSource(config_map_key_ref=ref)


def from_secret(name: str, key: str, optional: bool | None = None) -> pb.EnvVarSource:
    ref = pb.SecretKeySelector(name=name, key=key)
    if optional is not None:
        ref.optional = optional
    return pb.EnvVarSource(secret_key_ref=ref)


# ------------------------------------------------------------------ environment


def test_literal_and_key_references() -> None:
    p = pb.Process(name="main")
    p.env.add(name="PLAIN", value="1")
    p.env.add(name="LEVEL", value_from=from_cm("app", "level"))
    p.env.add(name="PASSWORD", value_from=from_secret("db", "password"))
    env = env_of(p, cm("app", {"level": "debug"}), secret("db", {"password": b"s3cr3t"}))
    assert env == {"PLAIN": "1", "LEVEL": "debug", "PASSWORD": "s3cr3t"}


def test_env_from_with_prefix_then_env_overrides_in_order() -> None:
    p = pb.Process(name="main")
    p.env_from.add(config_map_ref=pb.ConfigMapEnvSource(name="app"))
    p.env_from.add(prefix="DB_", secret_ref=pb.SecretEnvSource(name="db"))
    p.env.add(name="b", value="literal wins")
    app = cm("app", {"a": "1", "b": "2"}, binary={"bin": b"\x00\x01"})
    env = env_of(p, app, secret("db", {"user": b"u", "pass": b"p"}))
    # binaryData is not used for variables (as in Kubernetes)
    assert env == {"a": "1", "b": "literal wins", "DB_pass": "p", "DB_user": "u"}


def test_a_later_env_from_source_overrides_an_earlier_one() -> None:
    p = pb.Process(name="main")
    p.env_from.add(config_map_ref=pb.ConfigMapEnvSource(name="one"))
    p.env_from.add(config_map_ref=pb.ConfigMapEnvSource(name="two"))
    assert env_of(p, cm("one", {"x": "1", "y": "1"}), cm("two", {"x": "2"})) == {"x": "2", "y": "1"}


def test_optional_missing_object_or_key_leaves_the_variable_out() -> None:
    p = pb.Process(name="main")
    p.env.add(name="A", value_from=from_cm("absent", "k", optional=True))
    p.env.add(name="B", value_from=from_cm("app", "absent", optional=True))
    p.env.add(name="C", value_from=from_secret("absent", "k", optional=True))
    p.env_from.add(config_map_ref=pb.ConfigMapEnvSource(name="absent", optional=True))
    p.env_from.add(secret_ref=pb.SecretEnvSource(name="absent", optional=True))
    assert env_of(p, cm("app", {"other": "x"})) == {}


def test_an_optional_missing_key_keeps_what_env_from_gave() -> None:
    p = pb.Process(name="main")
    p.env_from.add(config_map_ref=pb.ConfigMapEnvSource(name="app"))
    p.env.add(name="k", value_from=from_cm("other", "k", optional=True))
    assert env_of(p, cm("app", {"k": "from envFrom"})) == {"k": "from envFrom"}


@pytest.mark.parametrize(
    ("process", "message"),
    [
        (
            pb.Process(name="m", env=[pb.EnvVar(name="A", value_from=from_cm("app", "k"))]),
            'ConfigMap "app" not found (env A)',
        ),
        (
            pb.Process(name="m", env=[pb.EnvVar(name="A", value_from=from_cm("there", "k"))]),
            'key "k" not found in ConfigMap "there" (env A)',
        ),
        (
            pb.Process(name="m", env=[pb.EnvVar(name="P", value_from=from_secret("db", "pw"))]),
            'Secret "db" not found (env P)',
        ),
        (
            pb.Process(
                name="m", env_from=[pb.EnvFromSource(secret_ref=pb.SecretEnvSource(name="db"))]
            ),
            'Secret "db" not found (envFrom[0])',
        ),
    ],
)
def test_a_missing_reference_names_the_object_and_key(process: pb.Process, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_env(process, lookup_of(cm("there", {"other": "v"})))
    assert str(err.value) == message


def test_secret_bytes_reach_the_process_byte_for_byte() -> None:
    raw = b"caf\xc3\xa9 \xff\xfe"  # valid UTF-8, then bytes that are not
    p = pb.Process(name="main", env=[pb.EnvVar(name="S", value_from=from_secret("s", "k"))])
    value = env_of(p, secret("s", {"k": raw}))["S"]
    assert os.fsencode(value) == raw


def test_a_nul_byte_cannot_be_a_variable_and_the_message_has_no_value() -> None:
    p = pb.Process(name="main", env=[pb.EnvVar(name="S", value_from=from_secret("s", "k"))])
    with pytest.raises(ConfigError) as err:
        resolve_env(p, lookup_of(secret("s", {"k": b"top\x00secret"})))
    assert "NUL" in str(err.value) and "secret" not in str(err.value).replace("Secret", "")


def test_invalid_names_from_env_from_are_skipped_and_reported() -> None:
    p = pb.Process(name="main")
    p.env_from.add(config_map_ref=pb.ConfigMapEnvSource(name="app"))
    env, skipped = resolve_env(p, lookup_of(cm("app", {"ok": "1", "a=b": "2", "": "3"})))
    assert dict(env) == {"ok": "1"}
    assert sorted(skipped) == ["", "a=b"]


def test_an_unreadable_object_is_a_config_error() -> None:
    def lookup(kind: str, name: str) -> Any:
        raise ConfigError(f"cannot read {kind} default/{name}: permission denied")

    p = pb.Process(name="main", env=[pb.EnvVar(name="A", value_from=from_cm("app", "k"))])
    with pytest.raises(ConfigError, match="permission denied"):
        resolve_env(p, lookup)


# -------------------------------------------------------------------- volumes


def cm_volume(name: str = "conf", **kwargs: Any) -> pb.Volume:
    return pb.Volume(name=name, config_map=pb.ConfigMapVolumeSource(name="app", **kwargs))


def secret_volume(**kwargs: Any) -> pb.Volume:
    return pb.Volume(name="creds", secret=pb.SecretVolumeSource(secret_name="db", **kwargs))


def projected(volume: pb.Volume, obj: Any) -> dict[str, FileSpec]:
    source = volume_source(volume)
    assert source is not None
    return project(source, obj)


def test_every_key_as_a_file_configmap_0644_with_binary_data() -> None:
    files = projected(cm_volume(), cm("app", {"a.conf": "x=1\n"}, binary={"logo": b"\x89PNG"}))
    assert files == {"a.conf": FileSpec(b"x=1\n", 0o644), "logo": FileSpec(b"\x89PNG", 0o644)}


def test_secret_files_are_0400_and_default_mode_overrides() -> None:
    assert projected(secret_volume(), secret("db", {"pw": b"p"})) == {"pw": FileSpec(b"p", 0o400)}
    files = projected(secret_volume(default_mode=0o440), secret("db", {"pw": b"p"}))
    assert files == {"pw": FileSpec(b"p", 0o440)}


def test_items_choose_keys_paths_and_modes() -> None:
    items = [
        pb.KeyToPath(key="a", path="dir/a.conf"),
        pb.KeyToPath(key="b", path="b.conf", mode=0o600),
    ]
    files = projected(cm_volume(items=items), cm("app", {"a": "1", "b": "2", "c": "3"}))
    assert files == {"dir/a.conf": FileSpec(b"1", 0o644), "b.conf": FileSpec(b"2", 0o600)}


def test_a_missing_item_key_is_an_error_unless_optional() -> None:
    items = [pb.KeyToPath(key="absent", path="x")]
    with pytest.raises(ConfigError, match='key "absent" not found in ConfigMap "app"'):
        projected(cm_volume(items=items), cm("app", {"a": "1"}))
    assert projected(cm_volume(items=items, optional=True), cm("app", {"a": "1"})) == {}


def test_a_missing_object_is_an_error_unless_optional_then_empty() -> None:
    with pytest.raises(ConfigError, match=r'Secret "db" not found \(volume creds\)'):
        projected(secret_volume(), None)
    assert projected(secret_volume(optional=True), None) == {}


@pytest.mark.parametrize("path", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "..data"])
def test_unsafe_file_paths_are_refused(path: str) -> None:
    assert check_file_path(path) is not None
    items = [pb.KeyToPath(key="a", path=path)]
    with pytest.raises(ConfigError, match="file path"):
        projected(cm_volume(items=items), cm("app", {"a": "1"}))


def test_a_key_named_like_the_writers_directory_is_refused() -> None:
    with pytest.raises(ConfigError, match=r'"\.\.data"'):
        projected(cm_volume(), cm("app", {"..data": "1"}))


@pytest.mark.parametrize("path", ["a", "a.conf", "dir/sub/a", "a..b", ".hidden"])
def test_ordinary_file_paths_are_accepted(path: str) -> None:
    assert check_file_path(path) is None


def test_clashing_and_duplicate_paths_are_refused() -> None:
    clash = [pb.KeyToPath(key="a", path="x"), pb.KeyToPath(key="b", path="x/y")]
    with pytest.raises(ConfigError, match="both a file and a directory"):
        projected(cm_volume(items=clash), cm("app", {"a": "1", "b": "2"}))
    twice = [pb.KeyToPath(key="a", path="x"), pb.KeyToPath(key="b", path="x")]
    with pytest.raises(ConfigError, match="two items"):
        projected(cm_volume(items=twice), cm("app", {"a": "1", "b": "2"}))


def test_a_mode_out_of_range_is_refused() -> None:
    with pytest.raises(ConfigError, match="mode"):
        projected(cm_volume(default_mode=0o1777), cm("app", {"a": "1"}))
