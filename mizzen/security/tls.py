"""TLS material for clients and servers, and the loopback rule for insecure mode.

A client (CLI, SDK, controllers, agents talking to the store) holds
``ClientCredentials``: a CA bundle to verify servers with, optionally a client
certificate and key (the identity: CN = name, O = ``mizzen:<role>``), and
optionally a bearer token (sent as ``authorization: Bearer <token>``, only over
TLS). Without a CA the channel is plaintext — allowed by servers only on
loopback or when started with ``--insecure``.

A server holds ``ServerTLS``: its certificate and key and the CA that client
certificates must chain to. gRPC Python can either require a verified client
certificate or not ask for one at all, so a store serves certificate clients on
its client port and, if asked, token clients on a second TLS port
(``--token-listen``) that does not request certificates.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

AUTHORIZATION = "authorization"
BEARER = "Bearer "


class CredentialsError(ValueError):
    """TLS material is missing, unreadable or inconsistent; the text names the file or flag."""


def _read(path: str, what: str) -> bytes:
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as err:
        raise CredentialsError(f"{what} {path}: {err.strerror or err}") from None
    if b"-----BEGIN" not in data:
        raise CredentialsError(f"{what} {path}: not a PEM file")
    return data


@dataclass(frozen=True)
class ClientCredentials:
    """How a client proves who it is and checks whom it talks to."""

    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    token: str | None = None
    server_name: str | None = None

    @property
    def secure(self) -> bool:
        return self.cacert is not None

    def check(self) -> ClientCredentials:
        """Raise CredentialsError unless the combination makes sense and the files read."""
        if (self.cert is None) != (self.key is None):
            raise CredentialsError("--cert and --key must be given together")
        if not self.secure and (self.cert or self.token):
            what = "a client certificate" if self.cert else "a token"
            raise CredentialsError(f"{what} needs TLS: give the CA with --cacert too")
        if self.token is not None and (not self.token.strip() or "\n" in self.token):
            raise CredentialsError("--token: empty or multi-line token")
        if self.secure:
            self.channel_credentials()
        return self

    def channel_credentials(self) -> grpc.ChannelCredentials:
        if self.cacert is None:
            raise CredentialsError("no CA certificate (--cacert) for TLS")
        root = _read(self.cacert, "CA certificate")
        key = _read(self.key, "client key") if self.key else None
        chain = _read(self.cert, "client certificate") if self.cert else None
        creds = grpc.ssl_channel_credentials(root, key, chain)
        if self.token:
            creds = grpc.composite_channel_credentials(
                creds, grpc.access_token_call_credentials(self.token.strip())
            )
        return creds

    def _options(self, options: Sequence[tuple[str, object]]) -> list[tuple[str, object]]:
        out = list(options)
        if self.server_name:
            out.append(("grpc.ssl_target_name_override", self.server_name))
        return out

    def aio_channel(
        self, address: str, options: Sequence[tuple[str, object]] = ()
    ) -> grpc.aio.Channel:
        if not self.secure:
            return grpc.aio.insecure_channel(address, options=list(options))
        return grpc.aio.secure_channel(
            address, self.channel_credentials(), options=self._options(options)
        )

    def channel(self, address: str, options: Sequence[tuple[str, object]] = ()) -> grpc.Channel:
        if not self.secure:
            return grpc.insecure_channel(address, options=list(options))
        return grpc.secure_channel(
            address, self.channel_credentials(), options=self._options(options)
        )


INSECURE = ClientCredentials()


@dataclass(frozen=True)
class ServerTLS:
    """A server's certificate and key, and the CA its clients' certificates must chain to."""

    cacert: str
    cert: str
    key: str

    def check(self) -> ServerTLS:
        self.credentials()
        return self

    def credentials(self, require_client_cert: bool = True) -> grpc.ServerCredentials:
        pair = (_read(self.key, "server key"), _read(self.cert, "server certificate"))
        return grpc.ssl_server_credentials(
            [pair],
            root_certificates=_read(self.cacert, "CA certificate"),
            require_client_auth=require_client_cert,
        )


def host_of(address: str) -> str:
    """The host part of ``host:port``, ``[v6]:port`` or ``unix:`` addresses."""
    if address.startswith("unix:"):
        return "unix"
    if address.startswith("["):
        return address[1:].partition("]")[0]
    host, sep, _ = address.rpartition(":")
    return host if sep else address


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1, ``localhost`` and unix sockets; wildcard and names are not."""
    host = host_of(address)
    if host in ("localhost", "unix"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def add_port(
    server: grpc.aio.Server,
    listen: str,
    tls: ServerTLS | None,
    *,
    require_client_cert: bool = True,
) -> int:
    """Bind ``listen`` plain or with TLS; 0 when the address cannot be bound."""
    try:
        if tls is None:
            return server.add_insecure_port(listen)
        return server.add_secure_port(listen, tls.credentials(require_client_cert))
    except RuntimeError:
        return 0
