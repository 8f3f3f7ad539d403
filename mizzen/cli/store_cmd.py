"""`mizzen store`: run a store node in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import os

import structlog

from mizzen.cli.errors import CommandError, UsageError
from mizzen.cli.security_flags import add_server_security_flags, server_security
from mizzen.security import raft_secret
from mizzen.security.encryption import KeyFileError, Keyring, load_keyring, loose_mode

log = structlog.get_logger("mizzen.store")

DEFAULT_HISTORY_BYTES = 256 * 1024 * 1024  # store.state_machine's (not imported: slow)
MIN_HISTORY_BYTES = 16 * 1024 * 1024


def add_store_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("store", help="run a store node (Raft + etcd-compatible gRPC API)")
    p.add_argument("--name", default="n1", help="member name (default n1)")
    p.add_argument("--data-dir", default="./.mizzen/store", help="journal and snapshots")
    p.add_argument("--listen-client", default="127.0.0.1:2379", help="gRPC address host:port")
    p.add_argument(
        "--advertise-client",
        default=None,
        help="client address other members and clients should use",
    )
    p.add_argument("--listen-raft", default="127.0.0.1:2380", help="Raft peer address host:port")
    p.add_argument(
        "--initial-cluster",
        default=None,
        help="name=raft_addr,... of every member (default: this member alone)",
    )
    p.add_argument(
        "--initial-cluster-state",
        choices=["new", "existing"],
        default="new",
        help="new: first boot of a new cluster, seed the member list from --initial-cluster; "
        "existing: join a running cluster after `mizzen cluster member add` (default new)",
    )
    p.add_argument(
        "--fsync",
        choices=["always", "never"],
        default="always",
        help="flush the Raft journal to disk before acknowledging (default always)",
    )
    p.add_argument(
        "--auth-token-ttl",
        type=int,
        default=300,
        help="seconds a token from the etcd Auth service's Authenticate stays valid "
        "(etcd's flag; default 300)",
    )
    p.add_argument(
        "--history-limit",
        type=int,
        default=100_000,
        help="watch history kept, in events (older revisions are compacted)",
    )
    p.add_argument(
        "--history-bytes",
        type=int,
        default=DEFAULT_HISTORY_BYTES,
        help="...and in bytes of keys, values and previous values; 0 = no limit, else at "
        f"least {MIN_HISTORY_BYTES} (default {DEFAULT_HISTORY_BYTES}; the same on every member)",
    )
    p.add_argument(
        "--quota-backend-bytes",
        type=int,
        default=0,
        help="raise the NOSPACE alarm and refuse Put, Txn with puts and LeaseGrant when the "
        "store's size (keys and values of every version kept, as `etcdctl endpoint status` "
        "shows it) would reach this many bytes; 0 = 2 GiB (etcd's default), negative = no "
        "quota; above 8 GiB a warning is logged",
    )
    p.add_argument(
        "--proposal-batch-bytes",
        type=int,
        default=1024 * 1024,
        help="bytes of commands per Raft entry; a larger command goes alone (default 1 MiB)",
    )
    p.add_argument(
        "--proposal-queue-bytes",
        type=int,
        default=8 * 1024 * 1024,
        help="bytes of writes queued on this member before writers wait, then are refused "
        "with RESOURCE_EXHAUSTED (default 8 MiB)",
    )
    p.add_argument("--request-timeout", type=float, default=5.0)
    p.add_argument(
        "--election-timeout",
        type=float,
        default=0.5,
        help="minimum Raft election timeout in seconds (max is twice this)",
    )
    p.add_argument(
        "--progress-interval",
        type=float,
        default=5.0,
        help="seconds between watch progress notifications to idle watchers",
    )
    p.add_argument(
        "--snapshot-entries",
        type=int,
        default=20_000,
        help="compact the Raft log into a snapshot after this many entries",
    )
    p.add_argument(
        "--snapshot-interval",
        type=float,
        default=60.0,
        help="...but at most once per this many seconds",
    )
    p.add_argument(
        "--metrics-listen",
        default=None,
        metavar="HOST:PORT",
        help="serve Prometheus /metrics and /healthz over HTTP here (default off)",
    )
    p.add_argument(
        "--listen-client-http",
        default=None,
        metavar="HOST:PORT",
        help="serve etcd's HTTP/JSON gateway (POST /v3/kv/range, ...), /version, /health "
        "and /metrics over HTTP/1.1 here, with the client port's TLS and authorization "
        "(default off; docs/store.md, HTTP gateway)",
    )
    p.add_argument("--cacert", default=None, help="CA that client certificates must chain to")
    p.add_argument("--cert", default=None, help="this member's server certificate (TLS)")
    p.add_argument("--key", default=None, help="the certificate's key")
    p.add_argument(
        "--peer-secret-file",
        default=None,
        help="shared secret that encrypts and authenticates Raft traffic, 16+ characters "
        "(mizzen pki init writes raft.secret; default: $MIZZEN_RAFT_PASSWORD). Required "
        "unless the store is plaintext with every address on loopback",
    )
    p.add_argument(
        "--encryption-key-file",
        default=None,
        metavar="FILE",
        help="keys that encrypt Secrets at rest (mizzen pki init writes encryption.yaml; the "
        "same file on every member). Without it a TLS store refuses to store Secrets and a "
        "plaintext loopback store stores them unencrypted (with a warning)",
    )
    add_server_security_flags(p, tokens=True, writes=True)
    p.set_defaults(func=run_store)


def parse_cluster(spec: str | None, name: str, raft: str) -> dict[str, str]:
    if not spec:
        return {name: raft}
    out: dict[str, str] = {}
    for part in spec.split(","):
        member, sep, addr = part.strip().partition("=")
        if not sep or not member or ":" not in addr:
            raise UsageError(f"--initial-cluster: expected name=host:port, got {part!r}")
        out[member] = addr.removeprefix("http://")
    if out.get(name) != raft:
        raise UsageError(
            f"--initial-cluster must list this member as {name}={raft}, got {out.get(name)!r}"
        )
    return out


def check_listen(flag: str, addr: str) -> None:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{flag}: expected host:port, got {addr!r}")


def check_sizes(args: argparse.Namespace) -> None:
    if args.history_bytes != 0 and args.history_bytes < MIN_HISTORY_BYTES:
        raise UsageError(
            f"--history-bytes: must be 0 (no limit) or at least {MIN_HISTORY_BYTES} "
            "(several Raft entries of history)"
        )
    if args.auth_token_ttl < 1:
        raise UsageError("--auth-token-ttl: must be at least 1 (seconds)")
    for flag in ("proposal_batch_bytes", "proposal_queue_bytes"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')}: must be at least 1")


def load_encryption(path: str | None, secure: bool) -> Keyring | None:
    """The keyring of --encryption-key-file (a usage error if unusable); warnings when
    there is none, or when the file is readable by others."""
    if path is None:
        if secure:
            log.warning(
                "secret_encryption_off",
                message="no --encryption-key-file: this TLS store refuses to store Secrets "
                "(mizzen pki init writes encryption.yaml)",
            )
        else:
            log.warning(
                "secret_encryption_off",
                message="no --encryption-key-file: Secrets are stored unencrypted in the data "
                "directory, its snapshots and backups (allowed only on a plaintext store)",
            )
        return None
    try:
        keyring = load_keyring(path)
        mode = loose_mode(path)
    except (KeyFileError, OSError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else err
        raise UsageError(f"--encryption-key-file: {reason}") from None
    if mode is not None:
        log.warning("encryption_key_file_mode_loose", path=path, mode=f"{mode:04o}")
    log.info(
        "secret_encryption_on", key_file=path, primary=keyring.primary, keys=len(keyring.names)
    )
    return keyring


def run_store(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    from store.node import NodeConfig
    from store.server import serve

    check_sizes(args)
    cluster = parse_cluster(args.initial_cluster, args.name, args.listen_raft)
    listeners = {
        "--listen-client": args.listen_client,
        "--listen-raft": args.listen_raft,
        "--metrics-listen": args.metrics_listen,
        "--listen-client-http": args.listen_client_http,
    }
    if args.listen_client_http:
        check_listen("--listen-client-http", args.listen_client_http)
    security = server_security(args, listeners)
    try:
        raft_password = raft_secret.resolve(args.peer_secret_file, security.secure, listeners)
    except raft_secret.RaftSecretError as err:
        raise UsageError(str(err)) from None
    if raft_password is None:  # plaintext, everything on loopback: a throwaway store
        log.warning(
            "raft_secret_missing",
            raft=args.listen_raft,
            message=raft_secret.NO_SECRET_WARNING.format(raft=args.listen_raft),
        )
    keyring = load_encryption(args.encryption_key_file, security.secure)
    scheme = "https" if security.secure else "http"
    if args.initial_cluster_state == "existing" and len(cluster) < 2:
        raise UsageError(
            "--initial-cluster-state existing needs --initial-cluster to list the running "
            "members too (as printed by `mizzen cluster member add`)"
        )
    from store.data_dir import prepare

    try:
        prepare(args.data_dir)
    except OSError as err:
        raise UsageError(f"--data-dir {args.data_dir}: {err.strerror or err}") from None
    cfg = NodeConfig(
        name=args.name,
        data_dir=args.data_dir,
        client_urls=[f"{scheme}://{args.advertise_client or args.listen_client}"],
        raft_addr=args.listen_raft,
        initial_cluster=cluster,
        initial_cluster_state=args.initial_cluster_state,
        fsync=args.fsync == "always",
        history_limit=args.history_limit,
        history_bytes=args.history_bytes,
        proposal_batch_bytes=args.proposal_batch_bytes,
        proposal_queue_bytes=args.proposal_queue_bytes,
        quota_backend_bytes=args.quota_backend_bytes,
        request_timeout=args.request_timeout,
        auth_token_ttl=args.auth_token_ttl,
        raft_password=raft_password,
        progress_interval=args.progress_interval,
        election_min=args.election_timeout,
        election_max=2 * args.election_timeout,
        snapshot_entries=args.snapshot_entries,
        snapshot_interval=args.snapshot_interval,
        metrics_listen=args.metrics_listen,
        client_http_listen=args.listen_client_http,
    )
    from store.errors import StoreError
    from store.pysyncobj_fixes import UnsupportedPysyncobj
    from store.raft_journal import JournalError
    from store.server import AddressInUse

    try:
        asyncio.run(serve(cfg, args.listen_client, security=security, keyring=keyring))
    except (StoreError, AddressInUse) as err:
        raise UsageError(str(err)) from None
    except (JournalError, UnsupportedPysyncobj) as err:
        raise CommandError(f"{args.data_dir}: {err}") from None
    return 0
