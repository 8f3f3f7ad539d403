"""security/pki.py, security/tokens.py and `mizzen pki`: what the files hold; TLS takes them."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from mizzen.cli.main import main
from mizzen.security import pki, tokens
from mizzen.security.pki import PkiError

LEAVES = ["store-10.0.0.1", "store-db.example", "controller", "admin", "node-n1", "node-n2"]


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _subject(cert: x509.Certificate) -> tuple[str, str]:
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    org = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    return str(cn), str(org)


def _sans(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(name.value) for name in san]


def _eku(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _init(d: Path, force: bool = False) -> list[Path]:
    return pki.init_pki(d, ["10.0.0.1", "db.example"], ["n1", "n2=10.0.0.5"], force=force)


def test_init_creates_ca_and_every_profile(tmp_path: Path) -> None:
    written = _init(tmp_path)
    expected = {"ca.crt", "ca.key", "raft.secret", "encryption.yaml"}
    expected |= {f"{leaf}.{ext}" for leaf in LEAVES for ext in ("crt", "key")}
    assert {p.name for p in written} == expected
    assert {p.name for p in tmp_path.iterdir()} == expected

    ca = _cert(tmp_path / "ca.crt")
    assert ca.subject.rfc4514_string() == "CN=mizzen-ca"
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert ca.not_valid_after_utc - ca.not_valid_before_utc > dt.timedelta(days=3649)

    both = {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    client = {ExtendedKeyUsageOID.CLIENT_AUTH}
    want = {
        "store-10.0.0.1": (("store:10.0.0.1", "mizzen:store"), both),
        "store-db.example": (("store:db.example", "mizzen:store"), both),
        "controller": (("controller", "mizzen:controller"), both),
        "admin": (("admin", "mizzen:admin"), client),
        "node-n1": (("node:n1", "mizzen:node"), both),
        "node-n2": (("node:n2", "mizzen:node"), both),
    }
    for leaf, (subject, eku) in want.items():
        cert = _cert(tmp_path / f"{leaf}.crt")
        assert _subject(cert) == subject, leaf
        assert _eku(cert) == eku, leaf
        assert cert.issuer == ca.subject
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        assert cert.signature_hash_algorithm is not None
        assert cert.signature_hash_algorithm.name == "sha256"
        assert cert.not_valid_before_utc < dt.datetime.now(dt.UTC) - dt.timedelta(minutes=4)
        assert _mode(tmp_path / f"{leaf}.key") == 0o600
        assert _mode(tmp_path / f"{leaf}.crt") == 0o644

    assert _sans(_cert(tmp_path / "store-10.0.0.1.crt")) == [
        "10.0.0.1",
        pki.STORE_SERVER_NAME,
        "localhost",
        "127.0.0.1",
    ]
    san = _cert(tmp_path / "store-10.0.0.1.crt").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert san.value.get_values_for_type(x509.IPAddress)[0] == ipaddress.ip_address("10.0.0.1")
    assert _sans(_cert(tmp_path / "store-db.example.crt")) == [
        "db.example",
        pki.STORE_SERVER_NAME,
        "localhost",
        "127.0.0.1",
    ]
    assert _sans(_cert(tmp_path / "node-n2.crt")) == ["n2", "10.0.0.5", "localhost", "127.0.0.1"]
    assert _sans(_cert(tmp_path / "admin.crt")) == []
    assert _mode(tmp_path / "ca.key") == 0o600
    assert _mode(tmp_path / "raft.secret") == 0o600
    assert len((tmp_path / "raft.secret").read_text().strip()) >= 40


@pytest.mark.parametrize(
    ("name", "role", "hosts"),
    [
        (pki.STORE_SERVER_NAME, "node", ()),
        ("n1", "node", (pki.STORE_SERVER_NAME,)),
        ("ops", "controller", (pki.STORE_SERVER_NAME,)),
        ("root", "admin", (pki.STORE_SERVER_NAME,)),
        ("vera", "viewer", (pki.STORE_SERVER_NAME,)),
    ],
)
def test_only_store_certificates_carry_the_store_name(
    tmp_path: Path, name: str, role: str, hosts: tuple[str, ...]
) -> None:
    """snapshot save trusts a server only if its certificate names STORE_SERVER_NAME."""
    pki.init_pki(tmp_path, ["127.0.0.1"], [])
    with pytest.raises(PkiError, match="reserved for store members"):
        pki.issue(tmp_path, name, role, hosts)
    assert pki.STORE_SERVER_NAME in pki.profile("10.0.0.1", "store").sans


def test_second_init_changes_nothing_and_keeps_the_ca(tmp_path: Path) -> None:
    _init(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert _init(tmp_path) == []
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

    (tmp_path / "admin.key").unlink()
    added = pki.init_pki(tmp_path, ["10.0.0.1"], ["n3"])
    assert sorted(p.name for p in added) == ["admin.crt", "admin.key", "node-n3.crt", "node-n3.key"]
    assert (tmp_path / "ca.crt").read_bytes() == before["ca.crt"]
    _cert(tmp_path / "node-n3.crt").verify_directly_issued_by(_cert(tmp_path / "ca.crt"))


def test_force_regenerates_everything(tmp_path: Path) -> None:
    _init(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    written = _init(tmp_path, force=True)
    # every file but the Secrets' encryption keys, which the stored Secrets need
    assert {p.name for p in written} == set(before) - {"encryption.yaml"}
    for name, data in before.items():
        if name == "encryption.yaml":
            assert (tmp_path / name).read_bytes() == data
        else:
            assert (tmp_path / name).read_bytes() != data, name
    ca = _cert(tmp_path / "ca.crt")
    _cert(tmp_path / "admin.crt").verify_directly_issued_by(ca)


def test_issue_with_explicit_validity_makes_an_expired_certificate(tmp_path: Path) -> None:
    pki.init_pki(tmp_path, ["127.0.0.1"], [])
    start = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    end = dt.datetime(2020, 1, 2, tzinfo=dt.UTC)
    crt, key = pki.issue(tmp_path, "old", "viewer", not_before=start, not_after=end)
    assert (crt.name, key.name) == ("old.crt", "old.key")
    cert = _cert(crt)
    assert cert.not_valid_before_utc == start
    assert cert.not_valid_after_utc == end < dt.datetime.now(dt.UTC)
    assert _subject(cert) == ("old", "mizzen:viewer")
    with pytest.raises(PkiError, match="not after"):
        pki.issue(tmp_path, "bad", "viewer", not_before=end, not_after=start)


def test_issue_days_and_extra_hosts(tmp_path: Path) -> None:
    pki.init_pki(tmp_path, ["127.0.0.1"], [])
    crt, _ = pki.issue(tmp_path, "ops", "controller", hosts=["ops.example"], days=7)
    cert = _cert(crt)
    assert crt.name == "ops.crt"
    assert _subject(cert) == ("ops", "mizzen:controller")
    assert _sans(cert) == ["ops.example", "localhost", "127.0.0.1"]  # it serves /metrics too
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=7) <= life <= dt.timedelta(days=7, minutes=6)
    crt, _ = pki.issue(tmp_path, "10.1.1.1", "store", hosts=["::1"])
    assert crt.name == "store-10.1.1.1.crt"
    assert _sans(_cert(crt)) == [
        "10.1.1.1",
        pki.STORE_SERVER_NAME,
        "localhost",
        "127.0.0.1",
        "::1",
    ]


def test_certificate_verifies_against_its_ca_only(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    pki.init_pki(a, ["127.0.0.1"], [])
    pki.init_pki(b, ["127.0.0.1"], [])
    admin = _cert(a / "admin.crt")
    admin.verify_directly_issued_by(_cert(a / "ca.crt"))
    with pytest.raises(InvalidSignature):  # same issuer name, different key
        admin.verify_directly_issued_by(_cert(b / "ca.crt"))


@pytest.mark.parametrize(
    ("name", "role", "hosts"),
    [
        ("Admin", "admin", ()),
        ("a_b", "viewer", ()),
        ("-x", "node", ()),
        ("x" * 64, "admin", ()),
        ("ok", "root", ()),
        ("ca", "admin", ()),
        ("ok", "admin", ("bad host",)),
        ("bad/host", "store", ()),
        ("x" * 60, "node", ()),  # CN node:<60 chars> exceeds 64
    ],
)
def test_bad_names_and_roles_are_rejected(
    tmp_path: Path, name: str, role: str, hosts: tuple[str, ...]
) -> None:
    pki.init_pki(tmp_path, ["127.0.0.1"], [])
    with pytest.raises(PkiError):
        pki.issue(tmp_path, name, role, hosts)


def test_init_validates_before_writing(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="'Bad'"):
        pki.init_pki(tmp_path / "d", ["127.0.0.1"], ["n1", "Bad"])
    with pytest.raises(PkiError, match="'no way'"):
        pki.init_pki(tmp_path / "d", ["127.0.0.1"], ["n1=no way"])
    assert not (tmp_path / "d").exists()


def test_issue_without_ca_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match=r"ca\.crt: no CA here; run mizzen pki init first"):
        pki.issue(tmp_path, "admin", "admin")


def test_token_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "tokens.csv"
    alice = tokens.add_token(path, "alice", "admin")
    bob = tokens.add_token(path, "bob", "viewer")
    assert _mode(path) == 0o600
    assert alice not in path.read_text()
    assert tokens.hash_token(alice) in path.read_text()
    assert tokens.hash_token("x").startswith("sha256:") and len(tokens.hash_token("x")) == 71
    loaded = tokens.load_tokens(path)
    assert tokens.lookup(loaded, alice) == ("alice", "admin")
    assert tokens.lookup(loaded, bob) == ("bob", "viewer")
    assert tokens.lookup(loaded, alice + "x") is None
    assert tokens.lookup(loaded, "") is None


def test_token_file_ignores_comments_and_reports_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "tokens.csv"
    good = tokens.hash_token("t")
    path.write_text(f"# header\n\n{good},ci,controller\n")
    assert tokens.load_tokens(path) == {good: ("ci", "controller")}
    cases = {
        "sha256:zz,ci,admin": "bad hash",
        f"{good},ci": "expected",
        f"{good},ci,node": "unknown role 'node'",
        f"{good},Bad Name,admin": "invalid name",
    }
    for line, message in cases.items():
        path.write_text(f"# header\n\n{line}\n")
        with pytest.raises(PkiError, match=rf"tokens\.csv:3: {message}"):
            tokens.load_tokens(path)
    with pytest.raises(PkiError, match="unknown role"):
        tokens.add_token(tmp_path / "other.csv", "n1", "node")


def test_cli_init_issue_show_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "pki"
    assert main(["pki", "init", "--dir", str(d), "--hosts", "127.0.0.1", "--nodes", "n1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"wrote {d / 'ca.crt'}" in out and f"wrote {d / 'node-n1.key'}" in out
    assert main(["pki", "init", "--dir", str(d), "--hosts", "127.0.0.1", "--nodes", "n1"]) == 0
    assert capsys.readouterr().out == f"nothing to do: {d} is complete\n"

    argv = ["pki", "issue", "--dir", str(d), "--name", "carol", "--role", "viewer"]
    assert main([*argv, "--hosts", "carol.example", "--days", "30"]) == 0
    assert capsys.readouterr().out.split() == [str(d / "carol.crt"), str(d / "carol.key")]

    assert main(["pki", "show", str(d / "carol.crt")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == ["subject: CN=carol,O=mizzen:viewer", "role: viewer", "sans: carol.example"]
    assert lines[3].startswith("not-before: ") and lines[4].startswith("not-after: ")
    assert lines[5] == "issuer: CN=mizzen-ca"

    tfile = tmp_path / "tokens.csv"
    argv = ["pki", "token", "--file", str(tfile), "--name", "ci", "--role", "controller"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    token = captured.out.strip()
    assert captured.out == token + "\n" and "shown only" in captured.err
    assert tokens.lookup(tokens.load_tokens(tfile), token) == ("ci", "controller")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["issue", "--dir", "{d}", "--name", "a", "--role", "admin"], "no CA here"),
        (["issue", "--dir", "{d}", "--name", "a", "--role", "root"], "unknown role 'root'"),
        (["init", "--dir", "{d}", "--hosts", "Bad_Host"], "invalid host 'Bad_Host'"),
        (["show", "{d}/missing.crt"], "No such file"),
    ],
)
def test_cli_errors_are_one_line_exit_1(tmp_path: Path, argv: list[str], message: str) -> None:
    args = [a.replace("{d}", str(tmp_path)) for a in argv]
    proc = subprocess.run(
        [sys.executable, "-m", "mizzen", "pki", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("mizzen: ") and message in proc.stderr


_AioHealth: Any = health.aio.HealthServicer  # type: ignore[attr-defined]


class _RecordingHealth(_AioHealth):
    def __init__(self) -> None:
        super().__init__()
        self.auth: dict[str, list[bytes]] = {}

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        self.auth = {k: list(v) for k, v in context.auth_context().items()}
        return await super().Check(request, context)


async def test_grpc_mutual_tls_sees_the_identity(tmp_path: Path) -> None:
    pki.init_pki(tmp_path, ["127.0.0.1"], [])
    ca = (tmp_path / "ca.crt").read_bytes()
    server_creds = grpc.ssl_server_credentials(
        [
            (
                (tmp_path / "store-127.0.0.1.key").read_bytes(),
                (tmp_path / "store-127.0.0.1.crt").read_bytes(),
            )
        ],
        root_certificates=ca,
        require_client_auth=True,
    )
    servicer = _RecordingHealth()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", server_creds)
    await server.start()
    try:
        creds = grpc.ssl_channel_credentials(
            ca, (tmp_path / "admin.key").read_bytes(), (tmp_path / "admin.crt").read_bytes()
        )
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert servicer.auth["x509_common_name"] == [b"admin"]
        subject = b"".join(servicer.auth["x509_subject"]).decode()
        assert "O=mizzen:admin" in subject, subject

        other = tmp_path / "other"
        pki.init_pki(other, ["127.0.0.1"], [])
        stranger = grpc.ssl_channel_credentials(
            ca, (other / "admin.key").read_bytes(), (other / "admin.crt").read_bytes()
        )
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", stranger) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(None)
