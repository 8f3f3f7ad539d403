"""Where the CLI finds the store: --endpoints, then MIZZEN_ENDPOINTS, then the config file."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from mizzen.cli.config import (
    DEFAULT_ENDPOINT,
    resolve_client,
    resolve_credentials,
    resolve_endpoints,
)
from mizzen.cli.errors import UsageError


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config"
    path.write_text("endpoints:\n  - 10.0.0.1:2379\n  - 10.0.0.2:2379\n")
    return path


def test_flag_wins_over_env_and_file(config: Path) -> None:
    env = {"MIZZEN_ENDPOINTS": "e:1", "MIZZEN_CONFIG": str(config)}
    assert resolve_endpoints("a:1, b:2,", env) == ["a:1", "b:2"]


def test_env_wins_over_file(config: Path) -> None:
    env = {"MIZZEN_ENDPOINTS": "e:1,e:2", "MIZZEN_CONFIG": str(config)}
    assert resolve_endpoints(None, env) == ["e:1", "e:2"]


def test_blank_env_falls_through_to_file(config: Path) -> None:
    env = {"MIZZEN_ENDPOINTS": "  ", "MIZZEN_CONFIG": str(config)}
    assert resolve_endpoints(None, env) == ["10.0.0.1:2379", "10.0.0.2:2379"]


def test_file_endpoints_may_be_a_comma_string(tmp_path: Path) -> None:
    path = tmp_path / "c"
    path.write_text("endpoints: a:1,b:2\n")
    assert resolve_endpoints(None, {"MIZZEN_CONFIG": str(path)}) == ["a:1", "b:2"]


def test_default_config_path_is_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path.parent)  # no ./.mizzen/config here
    (tmp_path / ".mizzen").mkdir()
    (tmp_path / ".mizzen" / "config").write_text("endpoints: [h:9]\n")
    assert resolve_endpoints(None, {}) == ["h:9"]


def test_local_config_of_mizzen_up_wins_over_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    for d, endpoint in ((home, "h:9"), (work, "w:1")):
        (d / ".mizzen").mkdir(parents=True)
        (d / ".mizzen" / "config").write_text(f"endpoints: [{endpoint}]\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    assert resolve_endpoints(None, {}) == ["w:1"]


def test_default_when_nothing_is_configured(tmp_path: Path) -> None:
    env = {"MIZZEN_CONFIG": str(tmp_path / "missing")}
    assert resolve_endpoints(None, env) == [DEFAULT_ENDPOINT]


def test_file_without_endpoints_uses_default(tmp_path: Path) -> None:
    path = tmp_path / "c"
    path.write_text("# nothing yet\n")
    assert resolve_endpoints(None, {"MIZZEN_CONFIG": str(path)}) == [DEFAULT_ENDPOINT]


@pytest.mark.parametrize("text", ["endpoints: [1, 2]\n", "endpoints: []\n", "endpoints: [a\n"])
def test_malformed_file_is_a_usage_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c"
    path.write_text(text)
    with pytest.raises(UsageError, match=str(path)):
        resolve_endpoints(None, {"MIZZEN_CONFIG": str(path)})


def test_empty_flag_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--endpoints"):
        resolve_endpoints(" , ", {})


def _args(**flags: str | None) -> argparse.Namespace:
    base = {"endpoints": None, "cacert": None, "cert": None, "key": None, "token": None}
    return argparse.Namespace(**{**base, **flags})


def _pem(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
    return path


def test_credentials_from_file_are_relative_to_it(tmp_path: Path) -> None:
    for name in ("ca.crt", "admin.crt", "admin.key"):
        _pem(tmp_path / "pki" / name)
    config = tmp_path / "config"
    config.write_text(
        "endpoints: [h:1]\ncacert: pki/ca.crt\ncert: pki/admin.crt\nkey: pki/admin.key\n"
    )
    got = resolve_client(_args(), {"MIZZEN_CONFIG": str(config)})
    assert got.endpoints == ["h:1"]
    assert got.credentials.cacert == str(tmp_path / "pki" / "ca.crt")
    assert got.credentials.cert == str(tmp_path / "pki" / "admin.crt")
    assert got.credentials.secure


def test_credential_flag_beats_env_beats_file(tmp_path: Path) -> None:
    file_ca, env_ca, flag_ca = (_pem(tmp_path / n) for n in ("file.crt", "env.crt", "flag.crt"))
    config = tmp_path / "config"
    config.write_text(f"cacert: {file_ca}\n")
    env = {"MIZZEN_CONFIG": str(config), "MIZZEN_CACERT": str(env_ca)}
    assert resolve_credentials(_args(), env).cacert == str(env_ca)
    assert resolve_credentials(_args(cacert=str(flag_ca)), env).cacert == str(flag_ca)
    assert resolve_credentials(_args(), {"MIZZEN_CONFIG": str(config)}).cacert == str(file_ca)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"cert": "a.crt"}, "--cert and --key must be given together"),
        ({"token": "t"}, "a token needs TLS"),
        ({"cacert": "/nonexistent/ca.crt"}, "CA certificate /nonexistent/ca.crt"),
    ],
)
def test_bad_credentials_are_one_line_errors(flags: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        resolve_credentials(_args(**flags), {"MIZZEN_CONFIG": "/nonexistent/config"})


def test_no_settings_mean_plaintext() -> None:
    creds = resolve_credentials(_args(), {"MIZZEN_CONFIG": "/nonexistent/config"})
    assert not creds.secure


def test_deeply_nested_file_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "c"
    path.write_text("endpoints: " + "[" * 500 + "]" * 500 + "\n")
    with pytest.raises(UsageError) as info:
        resolve_endpoints(None, {"MIZZEN_CONFIG": str(path)})
    assert str(info.value) == (
        f"{path}: cannot read config: invalid YAML at line 1, column 111: "
        "nested more than 100 levels deep"
    )


def test_a_value_yaml_cannot_construct_is_a_one_line_error(tmp_path: Path) -> None:
    """A date with month 13 raised ValueError out of PyYAML: a traceback."""
    path = tmp_path / "c"
    path.write_text("endpoints: [127.0.0.1:2379]\nnote: 2024-13-45\n")
    with pytest.raises(UsageError) as info:
        resolve_endpoints(None, {"MIZZEN_CONFIG": str(path)})
    assert str(info.value) == (
        f"{path}: cannot read config: invalid YAML at line 2, column 7: "
        'invalid timestamp "2024-13-45": month must be in 1..12'
    )
