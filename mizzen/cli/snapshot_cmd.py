"""`mizzen snapshot save|status|restore`: back up the store and start a cluster from a backup.

``save`` asks one member for Maintenance.Snapshot (linearizable: it includes
every write acknowledged before the call), checks it and writes the file
atomically, mode 0600. Over TLS it accepts only a store member as the server:
the server's certificate must name ``pki.STORE_SERVER_NAME``, which only store
certificates carry (a node or controller certificate of the same CA is refused
in the handshake). Snapshot files are plain data (store/snapshot.py): reading
one, or a stream, never runs anything from it.
``restore`` is offline: it turns the file into a fresh data directory holding
a pysyncobj full dump of the saved state (see store/snapshot.py), from which
``mizzen store --data-dir DIR --name NAME --initial-cluster ...`` starts with
exactly that state: same keys, values, revisions, leases and compaction
point. Restore every member of the new cluster from the same file with the
same ``--initial-cluster``; the old cluster's member client URLs are dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os

from mizzen.cli.config import resolve_client
from mizzen.cli.errors import CommandError, UsageError
from mizzen.cli.runner import client_options, error_message
from mizzen.cli.store_cmd import parse_cluster
from mizzen.client.errors import StoreClientError
from mizzen.client.store_client import StoreClient
from mizzen.security.pki import STORE_SERVER_NAME
from mizzen.security.tls import ClientCredentials

RESTORE_HELP = (
    "build a fresh data directory from FILE (offline); then start the member with "
    "`mizzen store --data-dir DIR --name NAME --initial-cluster ...` using the same "
    "values. Restore every member of the new cluster from the same file."
)


def add_snapshot_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = client_options()
    p = sub.add_parser("snapshot", help="save, inspect and restore store snapshots")
    snap_sub = p.add_subparsers(dest="snapshot_command", required=True)

    s = snap_sub.add_parser("save", parents=[common], help="save a linearizable snapshot to FILE")
    s.add_argument("file", metavar="FILE")
    s.set_defaults(func=run_save, client_command=True)

    s = snap_sub.add_parser("status", help="verify FILE's checksum; print revision, keys, hash")
    s.add_argument("file", metavar="FILE")
    s.set_defaults(func=run_status, client_command=True)

    s = snap_sub.add_parser("restore", help=RESTORE_HELP, description=RESTORE_HELP)
    s.add_argument("file", metavar="FILE")
    s.add_argument("--data-dir", required=True, help="must not exist or be empty")
    s.add_argument("--name", required=True, help="this member's name")
    s.add_argument(
        "--initial-cluster",
        required=True,
        metavar="NAME=HOST:PORT,...",
        help="every member of the new cluster and its Raft address (incl. this one)",
    )
    s.set_defaults(func=run_restore, client_command=True)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise CommandError(f"cannot read {path}: {err.strerror}") from None


def _summary(path: str, data: bytes) -> str:
    from store.snapshot import SnapshotError, info

    try:
        i = info(data)
    except SnapshotError as err:
        raise CommandError(f"{path}: {err}") from None
    return (
        f"{path}: {i.size} bytes, revision {i.revision}, {i.keys} keys, {i.leases} leases, "
        f"compacted {i.compacted}, sha256 {i.sha256}"
    )


async def fetch_snapshot(
    endpoints: list[str], timeout: float, credentials: ClientCredentials | None = None
) -> bytes:
    async with StoreClient(endpoints, timeout=timeout, credentials=credentials) as store:
        return await store.snapshot()


def store_member_credentials(credentials: ClientCredentials | None) -> ClientCredentials | None:
    """``credentials`` that accept only a store member's certificate as the server's."""
    if credentials is None or not credentials.secure:
        return credentials
    return dataclasses.replace(credentials, server_name=STORE_SERVER_NAME)


def _not_a_store(err: StoreClientError) -> bool:
    """gRPC's words for a server certificate that does not name STORE_SERVER_NAME."""
    return "hostname verification check failed" in str(err).lower()


def run_save(args: argparse.Namespace) -> int:
    from store.snapshot import write_atomic

    cfg = resolve_client(args)
    endpoints = cfg.endpoints
    credentials = store_member_credentials(cfg.credentials)
    try:
        data = asyncio.run(fetch_snapshot(endpoints, args.request_timeout, credentials))
    except StoreClientError as err:
        if _not_a_store(err):
            raise CommandError(
                f"refusing the snapshot from {','.join(endpoints)}: the server is not a store "
                f"member (its certificate does not name {STORE_SERVER_NAME}, which only store "
                "certificates from mizzen pki carry; renew old ones with "
                "`mizzen pki init --renew-within 0`)"
            ) from None
        raise CommandError(error_message(err, endpoints)) from None
    summary = _summary(args.file, data)  # verify before replacing an existing file
    try:
        write_atomic(args.file, data)
    except OSError as err:
        raise CommandError(f"cannot write {args.file}: {err.strerror or err}") from None
    print(f"snapshot saved: {summary}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    print(_summary(args.file, _read(args.file)))
    return 0


def run_restore(args: argparse.Namespace) -> int:
    from store.snapshot import SnapshotError, restore

    own = [p for p in args.initial_cluster.split(",") if p.strip().startswith(f"{args.name}=")]
    if len(own) != 1:
        raise UsageError(f"--initial-cluster must list {args.name}=host:port exactly once")
    raft_addr = own[0].strip().partition("=")[2].removeprefix("http://")
    cluster = parse_cluster(args.initial_cluster, args.name, raft_addr)
    data = _read(args.file)
    try:
        i = restore(data, args.data_dir, cluster)
    except SnapshotError as err:
        raise CommandError(f"{args.file}: {err}") from None
    except FileExistsError as err:
        if not os.path.isdir(args.data_dir):
            raise CommandError(f"cannot create {args.data_dir}: {err.strerror}") from None
        raise UsageError(str(err)) from None
    except OSError as err:
        where = err.filename or args.data_dir
        raise CommandError(f"cannot write {where}: {err.strerror or err}") from None
    print(
        f"restored revision {i.revision} ({i.keys} keys, {i.leases} leases) into "
        f"{os.path.abspath(args.data_dir)} for member {args.name}"
    )
    return 0
