"""Mizzen identities in certificates: the roles, and what one issued certificate holds.

The role is the certificate's O (``mizzen:<role>``), the identity its CN
(``node:<name>`` for nodes). Shared by the PKI (issuing, renewal) and the
servers' authentication.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

ROLES = ("admin", "viewer", "controller", "node", "store")
ROLE_PREFIX = "mizzen:"


@dataclass(frozen=True)
class Profile:
    """What one issued certificate holds and where it is stored."""

    stem: str
    common_name: str
    role: str
    sans: tuple[str, ...]
    server: bool


def role_of(cert: x509.Certificate) -> str | None:
    """The Mizzen role in the certificate's O (``mizzen:<role>``), or None."""
    for attr in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME):
        value = attr.value if isinstance(attr.value, str) else attr.value.decode()
        if value.startswith(ROLE_PREFIX) and value[len(ROLE_PREFIX) :] in ROLES:
            return value[len(ROLE_PREFIX) :]
    return None
