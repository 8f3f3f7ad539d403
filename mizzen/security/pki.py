"""A small certificate authority for a Mizzen cluster: ``mizzen pki init|issue``.

Identity comes from the certificate: CN is the identity name, O is
``mizzen:<role>``. One directory holds the CA (``ca.crt``/``ca.key``), every
issued pair (``<stem>.crt``/``<stem>.key``), ``raft.secret`` and
``encryption.yaml`` (the keys that encrypt Secrets at rest,
mizzen/security/encryption.py). Keys are ECDSA P-256 in unencrypted PKCS#8
PEM, mode 0600; certificates are PEM, mode 0644.
Every file is written to a temporary name and renamed, so a crash leaves
either the old file or the new one.

``init_pki`` is idempotent: with an existing CA it only creates missing files
and a second run writes nothing; ``force`` regenerates every file it names
(other files in the directory are left alone) except ``encryption.yaml``,
which is never replaced: the stored Secrets need its keys (rotate them with
``mizzen pki rotate-key``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mizzen.security.encryption import KEY_FILE_NAME, ensure_key_file
from mizzen.security.identities import ROLE_PREFIX, ROLES, Profile, role_of
from mizzen.security.renewal import reissue_reason

CA_NAME = "mizzen-ca"
CA_DAYS = 3650
BACKDATE = dt.timedelta(minutes=5)
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")
_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_CN_MAX = 64  # X.520 upper bound for commonName
STORE_SERVER_NAME = "store.mizzen.internal"
"""A DNS name only store certificates carry (``.internal`` is reserved for private use).

Clients that must talk to a store member and nothing else (``mizzen snapshot
save``) verify the server's certificate against this name instead of the
address they dial (gRPC's ``ssl_target_name_override``), so a node or
controller certificate of the same CA, which can serve TLS too, is refused in
the handshake."""


class PkiError(Exception):
    """A PKI operation cannot be done; the text names the file or value at fault."""


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_dns_name(value: str) -> bool:
    return all(_DNS_LABEL_RE.match(label) for label in value.split("."))


def check_name(value: str, what: str = "name") -> str:
    """Return ``value`` if it is a valid identity name, else raise PkiError naming it."""
    if not NAME_RE.match(value):
        raise PkiError(
            f"invalid {what} {value!r}: use lowercase letters, digits, '.' and '-' "
            "(1-63 characters, starting and ending with a letter or digit)"
        )
    return value


def check_host(value: str) -> str:
    """Return ``value`` if it is an IP address or a valid name, else raise PkiError."""
    if is_ip(value):
        return value
    return check_name(value, "host")


def _dedup(values: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def profile(name: str, role: str, hosts: Sequence[str] = ()) -> Profile:
    """The file stem, subject and SANs for ``name`` in ``role`` (validates everything)."""
    if role not in ROLES:
        raise PkiError(f"unknown role {role!r} (one of: {', '.join(ROLES)})")
    extra = tuple(check_host(h) for h in hosts)
    loopback = ("localhost", "127.0.0.1")
    if role == "store":
        check_host(name)
        sans = _dedup((name, STORE_SERVER_NAME, *loopback, *extra))
        prof = Profile(f"store-{name}", f"store:{name}", role, sans, True)
    elif role == "node":
        check_name(name, "node name")
        own = (name,) if is_ip(name) or _is_dns_name(name) else ()
        prof = Profile(
            f"node-{name}", f"node:{name}", role, _dedup((*own, *extra, *loopback)), True
        )
    elif role == "controller":  # also serves its /metrics over HTTPS
        check_name(name)
        prof = Profile(name, name, role, _dedup((*extra, *loopback)), True)
    else:
        check_name(name)
        if name == "ca":
            raise PkiError("invalid name 'ca': reserved for the certificate authority")
        prof = Profile(name, name, role, _dedup(extra), False)
    if role != "store" and STORE_SERVER_NAME in prof.sans:
        raise PkiError(
            f"invalid name {STORE_SERVER_NAME!r} for a {role} certificate: "
            "reserved for store members"
        )
    if len(prof.common_name) > _CN_MAX:
        raise PkiError(f"name too long: common name {prof.common_name!r} exceeds {_CN_MAX} chars")
    return prof


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # os.open's mode is filtered by the umask
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(path, pem, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    _write(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _general_name(value: str) -> x509.GeneralName:
    if is_ip(value):
        return x509.IPAddress(ipaddress.ip_address(value))
    return x509.DNSName(value)


def create_ca(directory: str | os.PathLike[str]) -> list[Path]:
    """Write a new ``ca.key`` and ``ca.crt`` (10 years), replacing any existing ones."""
    d = Path(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(d / "ca.key", key)
    _write_cert(d / "ca.crt", cert)
    return [d / "ca.key", d / "ca.crt"]


def load_ca(
    directory: str | os.PathLike[str],
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    d = Path(directory)
    crt, keyfile = d / "ca.crt", d / "ca.key"
    if not crt.exists():
        raise PkiError(f"{crt}: no CA here; run mizzen pki init first")
    try:
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        key = serialization.load_pem_private_key(keyfile.read_bytes(), password=None)
    except FileNotFoundError:
        raise PkiError(f"{keyfile}: missing (the CA key is needed to sign)") from None
    except ValueError as err:
        raise PkiError(f"{d}: cannot load the CA: {err}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{keyfile}: not an ECDSA key")
    return cert, key


def issue(
    directory: str | os.PathLike[str],
    name: str,
    role: str,
    hosts: Sequence[str] = (),
    days: int = 365,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> tuple[Path, Path]:
    """Sign a new key pair for ``name`` in ``role`` with the CA in ``directory``.

    Returns (certificate path, key path). ``not_before``/``not_after`` replace
    the default validity (now - 5 min .. now + ``days``).
    """
    prof = profile(name, role, hosts)
    if days < 1:
        raise PkiError(f"invalid days {days}: must be at least 1")
    ca_cert, ca_key = load_ca(directory)
    now = _now()
    start = not_before or now - BACKDATE
    end = not_after or now + dt.timedelta(days=days)
    if end <= start:
        raise PkiError(f"not_after {end.isoformat()} is not after not_before {start.isoformat()}")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ROLE_PREFIX + prof.role),
            x509.NameAttribute(NameOID.COMMON_NAME, prof.common_name),
        ]
    )
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if prof.server else []
    usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    if prof.sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(s) for s in prof.sans]), critical=False
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    d = Path(directory)
    crt_path, key_path = d / f"{prof.stem}.crt", d / f"{prof.stem}.key"
    _write_key(key_path, key)
    _write_cert(crt_path, cert)
    return crt_path, key_path


def parse_node(entry: str) -> tuple[str, tuple[str, ...]]:
    """``NAME`` or ``NAME=ADDR`` → (name, extra SANs), both validated."""
    name, sep, addr = entry.partition("=")
    check_name(name, "node name")
    if sep and not addr:
        raise PkiError(f"invalid node {entry!r}: empty address after '='")
    return name, (check_host(addr),) if addr else ()


def init_pki(
    directory: str | os.PathLike[str],
    hosts: Sequence[str],
    nodes: Sequence[str],
    days: int = 365,
    force: bool = False,
    renew_within: dt.timedelta | None = None,
    renewed: Callable[[Path, str], None] | None = None,
) -> list[Path]:
    """Create the CA and every certificate a cluster needs; return the paths written.

    Issues a store certificate per host, one ``controller`` (valid on every
    host, as the managers run there and serve their metrics) and one ``admin``
    certificate, a node certificate per node, ``raft.secret`` and ``encryption.yaml``
    (created once, never replaced, not even with ``force``). Without
    ``force`` an existing CA is kept and only missing files are created — and,
    with ``renew_within``, certificates that expire within it or no longer fit
    (``renewal.reissue_reason``) are issued again, each reported to ``renewed``.
    """
    plan: list[tuple[str, str, tuple[str, ...]]] = [(h, "store", ()) for h in hosts]
    plan += [("controller", "controller", tuple(hosts)), ("admin", "admin", ())]
    plan += [(name, "node", extra) for name, extra in map(parse_node, nodes)]
    stems = [profile(name, role, extra).stem for name, role, extra in plan]  # validate first
    if days < 1:
        raise PkiError(f"invalid days {days}: must be at least 1")
    d = Path(directory)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    written: list[Path] = []
    if force or not (d / "ca.crt").exists():
        written += create_ca(d)
        force = True  # a new CA invalidates every certificate signed by the old one
    ca = load_ca(d)[0] if renew_within is not None and not force else None
    for (name, role, extra), stem in zip(plan, stems, strict=True):
        if force or not ((d / f"{stem}.crt").exists() and (d / f"{stem}.key").exists()):
            written += issue(d, name, role, extra, days)
        elif ca is not None and renew_within is not None:
            prof = profile(name, role, extra)
            why = reissue_reason(d / f"{stem}.crt", prof, ca, renew_within, _now())
            if why is not None:
                written += issue(d, name, role, extra, days)
                if renewed is not None:
                    renewed(d / f"{stem}.crt", why)
    secret = d / "raft.secret"
    if force or not secret.exists():
        _write(secret, (secrets.token_urlsafe(32) + "\n").encode(), 0o600)
        written.append(secret)
    if ensure_key_file(d / KEY_FILE_NAME):
        written.append(d / KEY_FILE_NAME)
    return written


def describe(path: str | os.PathLike[str]) -> list[str]:
    """Human-readable lines for ``mizzen pki show``: subject, role, SANs, validity, issuer."""
    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except ValueError as err:
        raise PkiError(f"{path}: not a PEM certificate: {err}") from None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [str(name.value) for name in san]
    except x509.ExtensionNotFound:
        sans = []
    return [
        f"subject: {cert.subject.rfc4514_string()}",
        f"role: {role_of(cert) or '-'}",
        f"sans: {', '.join(sans) or '-'}",
        f"not-before: {cert.not_valid_before_utc.isoformat()}",
        f"not-after: {cert.not_valid_after_utc.isoformat()}",
        f"issuer: {cert.issuer.rfc4514_string()}",
    ]
