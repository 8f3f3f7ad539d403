"""When an issued certificate must be issued again: it expires soon or no longer fits.

k3s renews its certificates at start when they expire within 90 days; ``mizzen
up`` does the same with ``RENEW_WITHIN``, and ``mizzen pki init --renew-within
DAYS`` offers it to operators. A certificate also "no longer fits" when the CA
in the directory did not sign it, or its identity, names or usages differ from
what ``pki.profile`` would issue now (e.g. a controller certificate made before
it also served HTTPS metrics).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mizzen.security.identities import Profile, role_of

RENEW_WITHIN = dt.timedelta(days=90)


def reissue_reason(
    cert_path: Path, prof: Profile, ca: x509.Certificate, within: dt.timedelta, now: dt.datetime
) -> str | None:
    """Why the certificate at cert_path should be issued again, or None when it is fine."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as err:
        return f"unreadable: {err}"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "not signed by this CA"
    expires = cert.not_valid_after_utc
    if expires - now < within:
        return f"expires {expires:%Y-%m-%d}" if expires > now else f"expired {expires:%Y-%m-%d}"
    cn = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if role_of(cert) != prof.role or cn != [prof.common_name]:
        return "issued for another identity"
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = {str(n.value) for n in san}
    except x509.ExtensionNotFound:
        names = set()
    if names != set(prof.sans):
        return f"names {sorted(names)}, now {sorted(prof.sans)}"
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        server = ExtendedKeyUsageOID.SERVER_AUTH in usages
    except x509.ExtensionNotFound:
        server = False
    if server != prof.server:
        return "cannot serve TLS" if prof.server else "may serve TLS"
    return None
