"""Security flags of the daemons (store, agent, controllers) and the insecure-mode rule.

A daemon serves TLS with client certificates when given ``--cacert``,
``--cert`` and ``--key``. Without them it serves plaintext with no
authentication, which is allowed only when every address it listens on is
loopback — or with ``--insecure``, which logs and prints a loud warning.
"""

from __future__ import annotations

import argparse
import sys

import structlog

from mizzen.cli.errors import UsageError
from mizzen.security.pki import PkiError
from mizzen.security.server_auth import QUOTA_BURST_SECONDS, Limits
from mizzen.security.settings import INSECURE_WARNING, ServerSecurity, plaintext_exposure
from mizzen.security.tls import CredentialsError, ServerTLS
from mizzen.security.tokens import load_tokens

log = structlog.get_logger("mizzen.security")


def add_server_security_flags(
    p: argparse.ArgumentParser, *, tokens: bool, writes: bool = False
) -> None:
    """--insecure and the limits; tokens=True adds --token-file/--token-listen and
    writes=True the write quotas (the store)."""
    p.add_argument(
        "--insecure",
        action="store_true",
        help="serve plaintext without authentication even on non-loopback addresses (unsafe)",
    )
    defaults = Limits()
    p.add_argument(
        "--rate-limit",
        type=float,
        default=defaults.rate,
        help=f"requests/s per identity in secure mode, 0 = off (default {defaults.rate:g})",
    )
    p.add_argument("--rate-burst", type=int, default=defaults.burst, help="token bucket size")
    p.add_argument(
        "--max-watches",
        type=int,
        default=defaults.max_watches,
        help=f"open watches per identity, 0 = off (default {defaults.max_watches})",
    )
    p.add_argument(
        "--max-streams",
        type=int,
        default=defaults.max_concurrent_streams,
        help="concurrent streams per client connection",
    )
    if writes:
        add_write_quota_flags(p, defaults)
    if tokens:
        p.add_argument(
            "--token-file",
            default=None,
            help="static bearer tokens, hashed (mizzen pki token); needs --token-listen",
        )
        p.add_argument(
            "--token-listen",
            default=None,
            metavar="HOST:PORT",
            help="TLS port for bearer-token clients (no client certificate asked)",
        )


WRITE_QUOTA_FIELDS = ("write_rate", "write_bytes_rate", "node_write_rate", "node_write_bytes_rate")


def add_write_quota_flags(p: argparse.ArgumentParser, defaults: Limits) -> None:
    what = {
        "write_rate": "writes/s per identity (Objects and KV writes)",
        "write_bytes_rate": "request bytes/s of writes per identity",
        "node_write_rate": "writes/s per node identity (node:<name>)",
        "node_write_bytes_rate": "request bytes/s of writes per node identity",
    }
    for name in WRITE_QUOTA_FIELDS:
        value = getattr(defaults, name)
        p.add_argument(
            f"--{name.replace('_', '-')}",
            type=float,
            default=value,
            help=f"{what[name]} in secure mode, 0 = off (default {value:.0f}; "
            f"the bucket holds {QUOTA_BURST_SECONDS:g} s of it)",
        )


def server_security(args: argparse.Namespace, listeners: dict[str, str | None]) -> ServerSecurity:
    """The server's security from its flags; UsageError for unsafe or inconsistent ones.

    ``listeners`` maps each flag (``--listen-client``) to the address it binds.
    """
    given = [f for f in ("cacert", "cert", "key") if getattr(args, f, None)]
    token_file = getattr(args, "token_file", None)
    token_listen = getattr(args, "token_listen", None)
    quotas = {f: getattr(args, f) for f in WRITE_QUOTA_FIELDS if hasattr(args, f)}
    for name, value in quotas.items():
        if value < 0:
            raise UsageError(f"--{name.replace('_', '-')}: must be >= 0 (0 turns it off)")
    limits = Limits(
        rate=args.rate_limit,
        burst=args.rate_burst,
        max_watches=args.max_watches,
        max_concurrent_streams=args.max_streams,
        **quotas,
    )
    if given and len(given) < 3:
        raise UsageError("TLS needs --cacert, --cert and --key together")
    if bool(token_file) != bool(token_listen):
        raise UsageError("--token-file and --token-listen must be given together")
    if not given:
        if token_file:
            raise UsageError("bearer tokens need TLS: give --cacert, --cert and --key")
        exposed = plaintext_exposure({**listeners, "--token-listen": token_listen})
        if exposed and not args.insecure:
            where = ", ".join(f"{flag} {listeners.get(flag)}" for flag in exposed)
            raise UsageError(
                f"refusing to serve plaintext on {where}: give --cacert/--cert/--key "
                "(mizzen pki init makes them) or --insecure"
            )
        if exposed:
            where = ", ".join(str(listeners.get(flag)) for flag in exposed)
            warning = INSECURE_WARNING.format(addresses=where)
            print(f"mizzen: WARNING: {warning}", file=sys.stderr)
            log.warning("insecure_mode", addresses=where)
        return ServerSecurity(limits=limits)
    tls = ServerTLS(args.cacert, args.cert, args.key)
    try:
        tls.check()
        if token_file:
            load_tokens(token_file)
    except (CredentialsError, PkiError) as err:
        raise UsageError(str(err)) from None
    return ServerSecurity(tls=tls, token_file=token_file, token_listen=token_listen, limits=limits)
