"""Certificates issued again when they expire soon or no longer fit (security/renewal.py)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from mizzen.cli.main import main
from mizzen.security import pki
from mizzen.security.renewal import RENEW_WITHIN, reissue_reason

NOW = dt.datetime.now(dt.UTC)


def _init(d: Path, hosts: list[str], renew: bool = True) -> dict[str, str]:
    renewed: dict[str, str] = {}
    pki.init_pki(
        d,
        hosts=hosts,
        nodes=["n1=10.0.0.9"],
        renew_within=RENEW_WITHIN if renew else None,
        renewed=lambda path, why: renewed.__setitem__(path.name, why),
    )
    return renewed


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def test_a_complete_fresh_directory_renews_nothing(tmp_path: Path) -> None:
    _init(tmp_path, ["10.0.0.1"])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert _init(tmp_path, ["10.0.0.1"]) == {}
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_certificate_that_expires_soon_is_issued_again(tmp_path: Path) -> None:
    _init(tmp_path, ["10.0.0.1"])
    pki.issue(tmp_path, "admin", "admin", not_after=NOW + dt.timedelta(days=10))
    old_key = (tmp_path / "admin.key").read_bytes()
    renewed = _init(tmp_path, ["10.0.0.1"])
    assert list(renewed) == ["admin.crt"]
    assert renewed["admin.crt"].startswith("expires ")
    cert = x509.load_pem_x509_certificate((tmp_path / "admin.crt").read_bytes())
    assert cert.not_valid_after_utc - NOW > dt.timedelta(days=360)
    assert (tmp_path / "admin.key").read_bytes() != old_key
    # without renew_within an existing certificate is left alone, as before
    pki.issue(tmp_path, "admin", "admin", not_after=NOW + dt.timedelta(days=10))
    assert _init(tmp_path, ["10.0.0.1"], renew=False) == {}


def test_an_expired_certificate_says_so(tmp_path: Path) -> None:
    _init(tmp_path, ["10.0.0.1"])
    pki.issue(
        tmp_path,
        "n1",
        "node",
        ["10.0.0.9"],
        not_before=NOW - dt.timedelta(days=3),
        not_after=NOW - dt.timedelta(days=1),
    )
    assert _init(tmp_path, ["10.0.0.1"])["node-n1.crt"].startswith("expired ")


def test_a_new_host_renews_the_controller_certificate_that_must_name_it(tmp_path: Path) -> None:
    _init(tmp_path, ["10.0.0.1"])
    serial = _serial(tmp_path / "store-10.0.0.1.crt")
    renewed = _init(tmp_path, ["10.0.0.1", "10.0.0.2"])
    assert list(renewed) == ["controller.crt"]
    assert "10.0.0.2" in renewed["controller.crt"]
    assert (tmp_path / "store-10.0.0.2.crt").exists()  # new: issued, not "renewed"
    assert _serial(tmp_path / "store-10.0.0.1.crt") == serial


def test_a_certificate_of_another_ca_is_replaced(tmp_path: Path) -> None:
    ours, other = tmp_path / "ours", tmp_path / "other"
    _init(ours, ["10.0.0.1"])
    _init(other, ["10.0.0.1"])
    for name in ("admin.crt", "admin.key"):
        shutil.copy(other / name, ours / name)
    assert _init(ours, ["10.0.0.1"]) == {"admin.crt": "not signed by this CA"}
    ca = x509.load_pem_x509_certificate((ours / "ca.crt").read_bytes())
    x509.load_pem_x509_certificate((ours / "admin.crt").read_bytes()).verify_directly_issued_by(ca)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"server": False}, "may serve TLS"),
        ({"sans": ("localhost",)}, "names"),
        ({"common_name": "someone-else"}, "issued for another identity"),
        ({"role": "viewer"}, "issued for another identity"),
    ],
)
def test_what_no_longer_fits(tmp_path: Path, change: dict[str, Any], reason: str) -> None:
    _init(tmp_path, ["10.0.0.1"])
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    prof = pki.profile("controller", "controller", ["10.0.0.1"])
    crt = tmp_path / "controller.crt"
    assert reissue_reason(crt, prof, ca, RENEW_WITHIN, NOW) is None
    why = reissue_reason(crt, dataclasses.replace(prof, **change), ca, RENEW_WITHIN, NOW)
    assert why is not None and why.startswith(reason)


def test_an_unreadable_certificate_is_replaced(tmp_path: Path) -> None:
    _init(tmp_path, ["10.0.0.1"])
    (tmp_path / "admin.crt").write_text("not a certificate\n")
    assert _init(tmp_path, ["10.0.0.1"])["admin.crt"].startswith("unreadable")


def test_cli_renew_within(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "pki")
    assert main(["pki", "init", "--dir", d, "--hosts", "10.0.0.1"]) == 0
    pki.issue(d, "admin", "admin", not_after=NOW + dt.timedelta(days=20))
    capsys.readouterr()
    assert main(["pki", "init", "--dir", d, "--hosts", "10.0.0.1", "--renew-within", "10"]) == 0
    assert "nothing to do" in capsys.readouterr().out  # 20 days left: not within 10
    assert main(["pki", "init", "--dir", d, "--hosts", "10.0.0.1", "--renew-within", "30"]) == 0
    out = capsys.readouterr().out
    assert "admin.crt (renewed: expires " in out and "admin.key" in out
    assert main(["pki", "init", "--dir", d, "--hosts", "10.0.0.1", "--renew-within", "-1"]) == 1
    assert capsys.readouterr().err == "mizzen: --renew-within: -1 is negative\n"


def test_a_client_only_certificate_where_a_server_one_is_needed(tmp_path: Path) -> None:
    # what an old `mizzen up` data dir holds: a controller certificate from before
    # the controllers served HTTPS metrics (no serverAuth)
    _init(tmp_path, ["10.0.0.1"])
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    server_admin = dataclasses.replace(pki.profile("admin", "admin"), server=True)
    why = reissue_reason(tmp_path / "admin.crt", server_admin, ca, RENEW_WITHIN, NOW)
    assert why == "cannot serve TLS"


def _issue_store_certificate_without_the_store_name(
    d: Path, host: str, monkeypatch: pytest.MonkeyPatch
) -> int:
    """A store certificate as pki issued it before STORE_SERVER_NAME; returns its serial."""
    current = pki.profile

    def old_profile(name: str, role: str, hosts: Any = ()) -> pki.Profile:
        prof = current(name, role, hosts)
        sans = tuple(s for s in prof.sans if s != pki.STORE_SERVER_NAME)
        return dataclasses.replace(prof, sans=sans)

    with monkeypatch.context() as m:
        m.setattr(pki, "profile", old_profile)
        pki.issue(d, host, "store")
    cert = x509.load_pem_x509_certificate((d / f"store-{host}.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert pki.STORE_SERVER_NAME not in {str(n.value) for n in san}
    return cert.serial_number


def test_a_store_certificate_without_the_store_name_is_renewed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _init(tmp_path, ["10.0.0.1"])
    serial = _issue_store_certificate_without_the_store_name(tmp_path, "10.0.0.1", monkeypatch)
    renewed = _init(tmp_path, ["10.0.0.1"])
    assert list(renewed) == ["store-10.0.0.1.crt"]
    assert pki.STORE_SERVER_NAME in renewed["store-10.0.0.1.crt"]
    assert _serial(tmp_path / "store-10.0.0.1.crt") != serial
    assert _init(tmp_path, ["10.0.0.1"]) == {}


def test_pki_init_renew_within_and_up_add_the_store_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Existing PKIs pick the name up: `pki init --renew-within` and `mizzen up` (at start)."""
    from mizzen.cli.up_cmd import add_up_parser, prepare_security

    d = tmp_path / "pki"
    assert main(["pki", "init", "--dir", str(d), "--hosts", "10.0.0.1"]) == 0
    _issue_store_certificate_without_the_store_name(d, "10.0.0.1", monkeypatch)
    capsys.readouterr()
    assert main(["pki", "init", "--dir", str(d), "--hosts", "10.0.0.1", "--renew-within", "0"]) == 0
    assert "store-10.0.0.1.crt (renewed: names" in capsys.readouterr().out

    data = tmp_path / "up"
    parser = argparse.ArgumentParser()
    add_up_parser(parser.add_subparsers())
    args = parser.parse_args(["up", "--data-dir", str(data), "--no-agent"])
    prepare_security(args)  # the first run makes the PKI
    _issue_store_certificate_without_the_store_name(data / "pki", "127.0.0.1", monkeypatch)
    capsys.readouterr()
    prepare_security(args)
    assert "mizzen up: renewed store-127.0.0.1.crt (names" in capsys.readouterr().err
    cert = x509.load_pem_x509_certificate((data / "pki" / "store-127.0.0.1.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert pki.STORE_SERVER_NAME in {str(n.value) for n in san}
