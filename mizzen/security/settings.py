"""What a daemon's gRPC server needs to be secure, in one value built from its flags."""

from __future__ import annotations

from dataclasses import dataclass, field

from mizzen.security.server_auth import Limits
from mizzen.security.tls import ServerTLS, is_loopback


@dataclass(frozen=True)
class ServerSecurity:
    """TLS (None = plaintext), token users, and the per-identity limits."""

    tls: ServerTLS | None = None
    token_file: str | None = None
    token_listen: str | None = None
    limits: Limits = field(default_factory=Limits)

    @property
    def secure(self) -> bool:
        return self.tls is not None


PLAINTEXT = ServerSecurity()


def plaintext_exposure(addresses: dict[str, str | None]) -> list[str]:
    """The flags whose address is not loopback (a plaintext server must not listen there)."""
    return [flag for flag, addr in addresses.items() if addr and not is_loopback(addr)]


INSECURE_WARNING = (
    "INSECURE: serving plaintext without authentication on a non-loopback address "
    "(--insecure); anyone who can reach {addresses} can read and change everything"
)
