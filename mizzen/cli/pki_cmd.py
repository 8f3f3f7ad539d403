"""`mizzen pki init|issue|token|show|rotate-key|retire-keys`: the cluster CA, certificates,
the token file and the keys that encrypt Secrets at rest.

``init`` is idempotent: run it again with more hosts or nodes and it only adds
what is missing (with ``--renew-within DAYS``, it also renews what expires
soon or no longer fits). ``token`` prints only the token on stdout, so
``TOKEN=$(mizzen pki token ...)`` works; the file keeps just its hash.
``rotate-key`` puts a new key first in ``encryption.yaml`` (it encrypts once
the store members restart; the old keys still decrypt) and ``retire-keys``
drops every key but the first, after ``mizzen secrets reencrypt -A``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from mizzen.cli.errors import UsageError
from mizzen.security.encryption import KeyFileError, retire_keys, rotate_key
from mizzen.security.pki import ROLES, PkiError, describe, init_pki, issue
from mizzen.security.tokens import TOKEN_ROLES, add_token


def add_pki_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("pki", help="create the cluster CA, certificates and tokens")
    pki_sub = p.add_subparsers(dest="pki_command", required=True)

    s = pki_sub.add_parser(
        "init", help="create the CA and every certificate a cluster needs (idempotent)"
    )
    s.add_argument("--dir", required=True, help="directory for the CA, keys and certificates")
    s.add_argument(
        "--hosts", required=True, metavar="H[,H...]", help="store hosts (IPs or DNS names)"
    )
    s.add_argument("--nodes", default="", metavar="N[=ADDR][,...]", help="node names")
    s.add_argument("--days", type=int, default=365, help="validity of issued certificates")
    s.add_argument("--force", action="store_true", help="regenerate everything, including the CA")
    s.add_argument(
        "--renew-within",
        type=int,
        default=None,
        metavar="DAYS",
        help="also issue again certificates that expire within DAYS or no longer fit "
        "(another CA, other hosts, usages); keys change, the CA does not",
    )
    s.set_defaults(func=run_init, client_command=True)

    s = pki_sub.add_parser("issue", help="sign one more certificate with the CA in --dir")
    s.add_argument("--dir", required=True)
    s.add_argument("--name", required=True)
    s.add_argument("--role", required=True, metavar="|".join(ROLES))
    s.add_argument("--hosts", default="", metavar="H[,H...]", help="extra SANs")
    s.add_argument("--days", type=int, default=365)
    s.set_defaults(func=run_issue, client_command=True)

    s = pki_sub.add_parser("token", help="add a token to a token file; print it once")
    s.add_argument("--file", required=True)
    s.add_argument("--name", required=True)
    s.add_argument("--role", required=True, metavar="|".join(TOKEN_ROLES))
    s.set_defaults(func=run_token, client_command=True)

    s = pki_sub.add_parser("show", help="print a certificate's subject, role, SANs and validity")
    s.add_argument("file", metavar="FILE.crt")
    s.set_defaults(func=run_show, client_command=True)

    s = pki_sub.add_parser(
        "rotate-key", help="add a new first key to a Secrets encryption key file"
    )
    s.add_argument("--file", required=True, help="the key file, e.g. pki/encryption.yaml")
    s.set_defaults(func=run_rotate_key, client_command=True)

    s = pki_sub.add_parser(
        "retire-keys",
        help="keep only the first key of a key file (after mizzen secrets reencrypt -A)",
    )
    s.add_argument("--file", required=True, help="the key file, e.g. pki/encryption.yaml")
    s.set_defaults(func=run_retire_keys, client_command=True)


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _usage(err: Exception) -> UsageError:
    if isinstance(err, OSError):
        where = f"{err.filename}: " if err.filename else ""
        return UsageError(f"{where}{err.strerror or err}")
    return UsageError(str(err))


def run_init(args: argparse.Namespace) -> int:
    hosts = _split(args.hosts)
    if not hosts:
        raise UsageError("--hosts: give at least one store host")
    if args.renew_within is not None and args.renew_within < 0:
        raise UsageError(f"--renew-within: {args.renew_within} is negative")
    within = None if args.renew_within is None else dt.timedelta(days=args.renew_within)
    reasons: dict[Path, str] = {}
    try:
        written = init_pki(
            args.dir,
            hosts,
            _split(args.nodes),
            args.days,
            args.force,
            renew_within=within,
            renewed=reasons.__setitem__,
        )
    except (PkiError, OSError) as err:
        raise _usage(err) from None
    for path in written:
        why = f" (renewed: {reasons[path]})" if path in reasons else ""
        print(f"wrote {path}{why}")
    if not written:
        print(f"nothing to do: {args.dir} is complete")
    return 0


def run_issue(args: argparse.Namespace) -> int:
    try:
        paths = issue(args.dir, args.name, args.role, _split(args.hosts), args.days)
    except (PkiError, OSError) as err:
        raise _usage(err) from None
    for path in paths:
        print(path)
    return 0


def run_token(args: argparse.Namespace) -> int:
    try:
        token = add_token(args.file, args.name, args.role)
    except (PkiError, OSError) as err:
        raise _usage(err) from None
    print(token)
    print(
        f"mizzen: token for {args.name} ({args.role}) added to {args.file}; "
        "it is shown only this once",
        file=sys.stderr,
    )
    return 0


def run_show(args: argparse.Namespace) -> int:
    try:
        lines = describe(args.file)
    except (PkiError, OSError) as err:
        raise _usage(err) from None
    print("\n".join(lines))
    return 0


def run_rotate_key(args: argparse.Namespace) -> int:
    try:
        name = rotate_key(args.file)
    except (KeyFileError, OSError) as err:
        raise _usage(err) from None
    print(f"{args.file}: new first key {name}")
    print(
        "mizzen: copy the file to every store member and restart them one at a time, then "
        "run `mizzen secrets reencrypt -A`",
        file=sys.stderr,
    )
    return 0


def run_retire_keys(args: argparse.Namespace) -> int:
    try:
        dropped = retire_keys(args.file)
    except (KeyFileError, OSError) as err:
        raise _usage(err) from None
    print(f"{args.file}: dropped {', '.join(dropped) if dropped else 'nothing'}")
    if dropped:
        print(
            "mizzen: Secrets still sealed with a dropped key cannot be read once the members "
            "restart with this file: run `mizzen secrets reencrypt -A` first",
            file=sys.stderr,
        )
    return 0
