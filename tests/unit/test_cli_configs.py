"""The CLI for ConfigMaps and Secrets without a store: `create` sources, tables, describe."""

from __future__ import annotations

from pathlib import Path

import pytest

from mizzen.api.kinds import lookup
from mizzen.cli import tables
from mizzen.cli.create_cmd import collect, config_map, secret
from mizzen.cli.describe import describe
from mizzen.cli.errors import UsageError
from protos import objects_pb2 as pb

NOW = 1_700_000_000.0
VALUE = "hunter2-cli-secret"


def test_sources_in_order_files_directories_env_files(tmp_path: Path) -> None:
    conf = tmp_path / "app.conf"
    conf.write_text("listen 8080\n")
    d = tmp_path / "dir"
    d.mkdir()
    (d / "a.txt").write_text("A")
    (d / "logo.png").write_bytes(b"\x89PNG\xff")
    (d / "sub").mkdir()  # directories inside are skipped
    env = tmp_path / "x.env"
    env.write_text("# comment\n\n  USER=app\nPASSWORD='quoted stays'\n")
    got = collect(
        [
            ("literal", "LOG_LEVEL=debug=yes"),
            ("file", str(conf)),
            ("file", f"renamed={conf}"),
            ("file", str(d)),
            ("env-file", str(env)),
        ]
    )
    assert got == {
        "LOG_LEVEL": b"debug=yes",
        "app.conf": b"listen 8080\n",
        "renamed": b"listen 8080\n",
        "a.txt": b"A",
        "logo.png": b"\x89PNG\xff",
        "USER": b"app",
        "PASSWORD": b"'quoted stays'",
    }
    cm = config_map("web", "ns", got)
    assert cm.binary_data["logo.png"] == b"\x89PNG\xff" and "logo.png" not in cm.data
    assert cm.data["app.conf"] == "listen 8080\n"
    s = secret("db", "ns", got, "Opaque")
    assert s.data["logo.png"] == b"\x89PNG\xff" and s.type == "Opaque"


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ([("literal", VALUE)], "--from-literal #1: expected KEY=VALUE"),
        ([("literal", "a=1"), ("literal", f"={VALUE}")], "--from-literal #2: expected KEY=VALUE"),
        ([("literal", f"bad key={VALUE}")], "invalid key 'bad key'"),
        ([("literal", f"a={VALUE}"), ("literal", "a=2")], "key 'a' is given twice"),
        ([("file", "/nonexistent/x")], "--from-file /nonexistent/x: No such file or directory"),
    ],
)
def test_source_errors_never_show_a_value(sources: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(UsageError) as err:
        collect(sources)
    assert message in str(err.value)
    assert VALUE not in str(err.value)


def test_env_file_errors_name_the_line(tmp_path: Path) -> None:
    env = tmp_path / "x.env"
    env.write_text(f"A=1\n{VALUE}\n")
    with pytest.raises(UsageError) as err:
        collect([("env-file", str(env))])
    assert str(err.value) == f"--from-env-file {env}: line 2: expected KEY=VALUE"


def _meta(name: str) -> pb.ObjectMeta:
    meta = pb.ObjectMeta(name=name, namespace="default", uid=f"uid-{name}")
    meta.creation_timestamp.FromSeconds(int(NOW - 60))
    return meta


def test_tables_count_keys_and_show_the_secret_type() -> None:
    cm = pb.ConfigMap(metadata=_meta("web"), data={"a": "1"}, binary_data={"b": b"2"})
    rows = tables.table(lookup("configmaps"), [cm], now=NOW)
    assert rows == [["NAME", "DATA", "AGE"], ["web", "2", "60s"]]
    s = pb.Secret(metadata=_meta("db"), type="Opaque", data={"p": VALUE.encode()})
    rows = tables.table(lookup("secrets"), [s], now=NOW)
    assert rows == [["NAME", "TYPE", "DATA", "AGE"], ["db", "Opaque", "1", "60s"]]


def test_describe_shows_config_map_values_and_only_secret_sizes() -> None:
    cm = pb.ConfigMap(metadata=_meta("web"), data={"app.conf": "listen 8080\nworkers 4\n"})
    cm.binary_data["logo.png"] = b"\x00" * 10
    lines = describe(cm, [], now=NOW).splitlines()
    at = lines.index("Data:")
    assert lines[at + 1 : at + 4] == ["  app.conf:", "    listen 8080", "    workers 4"]
    assert lines[lines.index("BinaryData:") + 1].split() == ["logo.png:", "10", "bytes"]

    s = pb.Secret(metadata=_meta("db"), type="Opaque", data={"password": VALUE.encode()})
    s.immutable = True
    text = describe(s, [], now=NOW)
    assert VALUE not in text
    lines = text.splitlines()
    assert lines[lines.index("Data:") + 1].split() == ["password:", str(len(VALUE)), "bytes"]
    assert "Immutable:    true" in lines


def _pod() -> pb.Pod:
    p = pb.Pod(metadata=_meta("app"))
    proc = p.spec.processes.add(name="main", command=["/bin/server"])
    proc.env.add(name="PLAIN", value="x")
    proc.env.add(
        name="PW",
        value_from=pb.EnvVarSource(secret_key_ref=pb.SecretKeySelector(name="db", key="pw")),
    )
    proc.env.add(
        name="LVL",
        value_from=pb.EnvVarSource(
            config_map_key_ref=pb.ConfigMapKeySelector(name="web", key="lvl", optional=True)
        ),
    )
    proc.env_from.add(prefix="CFG_", config_map_ref=pb.ConfigMapEnvSource(name="web"))
    proc.volume_mounts.add(name="creds", mount_path="secrets", read_only=True)
    p.spec.volumes.add(
        name="creds",
        secret=pb.SecretVolumeSource(
            secret_name="db", items=[pb.KeyToPath(key="pw", path="pw.txt")], default_mode=0o400
        ),
    )
    return p


def test_describe_pod_shows_references_and_whether_each_resolves() -> None:
    web = pb.ConfigMap(metadata=_meta("web"), data={"other": "1"})
    lines = describe(
        _pod(),
        [],
        now=NOW,
        configs={("Secret", "db"): "permission denied", ("ConfigMap", "web"): web},
    ).splitlines()
    assert any(line.split() == ["PLAIN:", "x"] for line in lines)
    assert any(
        " ".join(line.split()) == "PW: <set to the key 'pw' in Secret 'db'>" for line in lines
    )
    assert any("<set to the key 'lvl' of ConfigMap 'web'> (optional)" in line for line in lines)
    env_from = lines.index("    Environment Variables from:")
    assert lines[env_from + 1].split() == ["web:", "ConfigMap", "with", "prefix", "'CFG_'"]
    assert lines[lines.index("    Mounts:") + 1].split() == ["secrets:", "from", "creds", "(ro)"]
    volumes = lines[lines.index("Volumes:") :]
    assert [v.split() for v in volumes[1:6]] == [
        ["creds:"],
        ["Type:", "Secret", "(files", "from", "a", "Secret)"],
        ["Name:", "db"],
        ["Items:", "pw", "->", "pw.txt"],
        ["Default", "Mode:", "0400"],
    ]
    refs = lines[lines.index("Config References:") + 1 :]
    assert [r.split() for r in refs[:5]] == [
        ["KIND", "NAME", "USE", "RESOLVED"],
        ["Secret", "db", "env", "key", "pw", "unknown", "(permission", "denied)"],
        ["ConfigMap", "web", "env", "key", "lvl", "no", "key", "lvl,", "optional"],
        ["ConfigMap", "web", "envFrom", "ok"],
        ["Secret", "db", "volume", "creds", "unknown", "(permission", "denied)"],
    ]
    missing = describe(_pod(), [], now=NOW, configs={}).splitlines()
    assert any(r.split()[:2] == ["Secret", "db"] and "not looked up" in r for r in missing)
    gone = describe(_pod(), [], now=NOW, configs={("Secret", "db"): None}).splitlines()
    assert any(r.split() == ["Secret", "db", "volume", "creds", "missing"] for r in gone)
    plain = describe(_pod(), [], now=NOW).splitlines()
    assert "Config References:" not in plain
