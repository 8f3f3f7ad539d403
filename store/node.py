"""A store node: the Raft-replicated state plus everything the gRPC services need.

``StoreNode`` lives in the asyncio thread. It owns the pysyncobj instance (and
its tick thread), the batcher, the watch hub, lease deadlines, and one
periodic housekeeping task. Services call ``propose`` for writes,
``barrier`` before linearizable reads and ``read`` to look at the state.

One file because it is the hub the gRPC services talk to; what it holds (Raft
instance, batcher, watch hub, lease deadlines, housekeeping) is wiring of one
member, and each part with logic of its own already lives in its own module.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from protos import rpc_pb2

from .batcher import Batcher
from .errors import Code, StoreError
from .lease_clock import LeaseClock
from .membership import REMOVED, Membership, member_id
from .raft_node import RaftConfig, RaftFacts, ReplicatedState, make_syncobj
from .requests import put_cost, txn_cost
from .state_machine import (
    NO_SPACE,
    Event,
    KeepAliveResult,
    StateMachine,
)
from .watch_hub import WatchHub

log = structlog.get_logger("store.node")

T = TypeVar("T")
MIN_LEASE_TTL = 2  # seconds; like etcd, shorter TTLs are raised to this
DEFAULT_QUOTA_BYTES = 2 * 1024 * 1024 * 1024  # etcd's default --quota-backend-bytes
MAX_QUOTA_BYTES = 8 * 1024 * 1024 * 1024  # etcd warns above this
_QUOTA_COMMANDS = frozenset({"put", "txn", "lease_grant"})


def effective_quota(flag: int) -> int | None:
    """etcd's --quota-backend-bytes: 0 means the default (2 GiB), negative no quota."""
    if flag < 0:
        return None
    return flag or DEFAULT_QUOTA_BYTES


def command_cost(cmd: tuple[Any, ...]) -> int:
    """What a command adds to the store's size, as etcd's quota counts it."""
    op = cmd[0]
    if op == "put":
        req = rpc_pb2.PutRequest()
        req.ParseFromString(cmd[1])
        return put_cost(req)
    if op == "txn":
        txn = rpc_pb2.TxnRequest()
        txn.ParseFromString(cmd[1])
        return txn_cost(txn)
    return 0


def check_bindable(addr: str) -> None:
    """Fail fast if the Raft address is taken (pysyncobj would retry binding forever)."""
    host, _, port = addr.rpartition(":")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), int(port)))
        except OSError as err:
            raise StoreError(
                Code.UNAVAILABLE, f"cannot listen on raft address {addr}: {err}"
            ) from None


def _has_quorum(syncobj: Any) -> bool:
    """pysyncobj's hasQuorum, which can race with its tick thread on a (re)connect."""
    for _ in range(3):
        try:
            return bool(syncobj.hasQuorum)
        except RuntimeError:  # "Set changed size during iteration"
            continue
    return False


def _has_corrupt_alarm(sm: StateMachine) -> bool:
    return any(kind == rpc_pb2.CORRUPT for _, kind in sm.alarms)


@dataclass(frozen=True)
class NodeConfig:
    name: str
    data_dir: str
    client_urls: list[str]
    raft_addr: str
    initial_cluster: dict[str, str]  # member name -> raft address
    # "new": seed the replicated member set from initial_cluster on first boot;
    # "existing": join a running cluster and learn the member set from it
    initial_cluster_state: str = "new"
    fsync: bool = True
    history_limit: int = 100_000
    history_bytes: int = 256 * 1024 * 1024
    request_timeout: float = 5.0
    auth_token_ttl: int = 300  # seconds an etcd auth token is valid (store/etcd_auth.py)
    raft_password: str | None = None
    progress_interval: float = 5.0
    election_min: float = 0.5
    election_max: float = 1.0
    snapshot_entries: int = 20_000
    snapshot_interval: float = 60.0
    metrics_listen: str | None = None  # host:port for /metrics and /healthz; None = off
    client_http_listen: str | None = None  # host:port for etcd's HTTP/JSON gateway; None = off
    # the proposal pipeline (store/batcher.py): bytes per Raft entry, writes queued
    proposal_batch_bytes: int = 1024 * 1024
    proposal_queue_bytes: int = 8 * 1024 * 1024
    # etcd's --quota-backend-bytes on the state's size (StateMachine.size_bytes):
    # 0 = 2 GiB, negative = no quota
    quota_backend_bytes: int = 0


class StoreNode:
    def __init__(self, cfg: NodeConfig, clock: Callable[[], float] = time.monotonic) -> None:
        """clock: the monotonic clock of lease deadlines and membership's waits."""
        self.cfg = cfg
        self.clock = clock
        self.member_id = member_id(cfg.name)
        ring = ",".join(f"{n}={a}" for n, a in sorted(cfg.initial_cluster.items()))
        self._flag_cluster_id = int.from_bytes(hashlib.sha256(ring.encode()).digest()[:8], "big")
        self.membership = Membership(self, clock)
        self.replicated = ReplicatedState(cfg.history_limit)
        # before Raft starts; a snapshot loaded later brings the limit it was written with
        self.replicated.state.history_bytes_limit = cfg.history_bytes
        self._leases = LeaseClock(clock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._was_leader = False
        self.leader_changes_seen = 0
        self._last_leader: str | None = None
        self.hub = WatchHub(
            self._history,
            self.header,
            progress_interval=cfg.progress_interval,
            puts_at=self._puts_at,
        )
        self.batcher = Batcher(
            self._submit,
            max_batch_bytes=cfg.proposal_batch_bytes,
            max_queued_bytes=cfg.proposal_queue_bytes,
        )
        self.syncobj: Any = None
        self.quota = effective_quota(cfg.quota_backend_bytes)

    # ------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.replicated.on_applied = self._on_applied_threadsafe
        self.replicated.on_reset = self._on_reset_threadsafe
        peers = [a for n, a in self.cfg.initial_cluster.items() if n != self.cfg.name]
        raft = RaftConfig(
            self_addr=self.cfg.raft_addr,
            peers=peers,
            data_dir=self.cfg.data_dir,
            fsync=self.cfg.fsync,
            password=self.cfg.raft_password,
            election_min=self.cfg.election_min,
            election_max=self.cfg.election_max,
            compaction_min_entries=self.cfg.snapshot_entries,
            compaction_min_time=self.cfg.snapshot_interval,
        )
        check_bindable(self.cfg.raft_addr)
        # in this (the main) thread: pysyncobj's tick thread stops when its creator exits
        self.syncobj = make_syncobj(raft, self.replicated)
        with self.replicated.lock:
            self.hub.delivered = self.replicated.state.revision
        self.membership.start()
        self._spawn(self._housekeeping())
        if self.cfg.initial_cluster_state == "new":
            self._spawn(self.membership.seed(self._flag_cluster_id))
        self._spawn(self.membership.reconcile_forever())
        self._spawn(self._publish_member())
        log.info(
            "store_node_started",
            name=self.cfg.name,
            member_id=f"{self.member_id:x}",
            raft=self.cfg.raft_addr,
            peers=peers,
            initial_cluster_state=self.cfg.initial_cluster_state,
            fsync=self.cfg.fsync,
            quota_backend_bytes=self.quota,
        )
        if self.quota is not None and self.quota > MAX_QUOTA_BYTES:
            log.warning(
                "quota_exceeds_suggested_maximum",
                quota_backend_bytes=self.quota,
                maximum=MAX_QUOTA_BYTES,
                detail="the whole state is held in memory; a larger one may slow the store",
            )

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.batcher.fail_all(StoreError(Code.UNAVAILABLE, "etcdserver: server stopped"))
        if self.syncobj is not None:
            await asyncio.to_thread(self.syncobj.destroy_synchronous)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---------------------------------------------------------- raft bridges

    def _submit(self, batch: tuple[Any, ...], callback: Callable[[Any, Any], None]) -> None:
        self.replicated.apply(batch, callback=callback)

    def _on_applied_threadsafe(
        self, batch: tuple[Any, ...], results: list[Any], events: list[Event]
    ) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._on_applied, batch, results, events)

    def _on_reset_threadsafe(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._on_reset)

    def _on_applied(self, batch: tuple[Any, ...], results: list[Any], events: list[Event]) -> None:
        self.hub.on_events(events)
        leases = self._leases
        for cmd, res in zip(batch[3], results, strict=False):
            op = cmd[0]
            if op == "lease_grant" and isinstance(res, rpc_pb2.LeaseGrantResponse):
                leases.extend(res.ID, res.TTL)
            elif op == "lease_keepalive" and isinstance(res, KeepAliveResult) and res.ttl > 0:
                leases.extend(res.lease_id, res.ttl)
            elif op in ("lease_revoke", "lease_expire"):
                leases.forget(int(cmd[1]))

    def _on_reset(self) -> None:
        with self.replicated.lock:
            sm = self.replicated.state
            revision = sm.revision
            leases = {lid: lease.ttl for lid, lease in sm.leases.items()}
        self._leases.restart_all(leases)
        self.hub.resync(revision)
        log.info("state_restored_from_snapshot", revision=revision, leases=len(leases))

    def _history(self, after: int) -> tuple[list[Event], int]:
        with self.replicated.lock:
            sm = self.replicated.state
            return list(sm.events_after(after)), sm.compacted

    def _puts_at(self, rev: int, key: bytes, range_end: bytes) -> tuple[list[Event], int]:
        """(the puts of revision rev still visible, the compacted revision); no events
        when history no longer reaches back to rev (see StateMachine.puts_at)."""
        with self.replicated.lock:
            sm = self.replicated.state
            if rev < sm.compacted:
                return [], sm.compacted
            return sm.puts_at(rev, key, range_end), sm.compacted

    # ---------------------------------------------------------- service API

    async def propose(self, cmd: tuple[Any, ...], timeout: float | None = None) -> Any:
        """Replicate one command; return its result, raising a StoreError result."""
        if self.membership.removed:  # isolated for good: let the client try another member
            raise StoreError(Code.UNAVAILABLE, REMOVED)
        if self.quota is not None and cmd[0] in _QUOTA_COMMANDS:
            await self._check_quota(cmd, self.quota)
        result = await self.batcher.propose(cmd, timeout or self.cfg.request_timeout)
        if isinstance(result, StoreError):
            raise result
        return result

    async def _check_quota(self, cmd: tuple[Any, ...], quota: int) -> None:
        """etcd's quota check before proposing a Put, Txn or LeaseGrant: one that would
        take the store to the quota is refused and this member raises NOSPACE for
        itself through Raft (writes then stay refused, on every member, until the
        alarm is disarmed)."""
        size = self.read(lambda sm: sm.size_bytes())
        payload = len(cmd[1]) if len(cmd) > 1 and isinstance(cmd[1], bytes) else 0
        if size + payload < quota:  # the cost is at most the request's bytes: no parsing
            return
        if size + command_cost(cmd) < quota:
            return
        alarm = (self.member_id, rpc_pb2.NOSPACE)
        if alarm not in self.read(lambda sm: sm.alarms):
            log.warning("quota_exceeded", size=size, quota=quota, alarm="NOSPACE")
            await self.propose(("alarm", rpc_pb2.AlarmRequest.ACTIVATE, *alarm))
        raise StoreError(Code.RESOURCE_EXHAUSTED, NO_SPACE)

    async def barrier(self, timeout: float | None = None) -> None:
        """Wait until this member has applied every write acknowledged before the call."""
        await self.propose(("barrier",), timeout)

    def read(self, fn: Callable[[StateMachine], T]) -> T:
        with self.replicated.lock:
            return fn(self.replicated.state)

    def header(self, revision: int | None = None) -> rpc_pb2.ResponseHeader:
        if revision is None:
            revision = self.read(lambda sm: sm.revision)
        return rpc_pb2.ResponseHeader(
            cluster_id=self.cluster_id,
            member_id=self.member_id,
            revision=revision,
            raft_term=self.raft_term,
        )

    def fill_header(self, resp: Any) -> Any:
        h = resp.header
        h.cluster_id = self.cluster_id
        h.member_id = self.member_id
        h.raft_term = self.raft_term
        if not h.revision:
            h.revision = self.read(lambda sm: sm.revision)
        return resp

    # ------------------------------------------------------------ raft facts

    @property
    def cluster_id(self) -> int:
        """The id the seed recorded (one value on every member); before it, the flag's."""
        return int(self.replicated.state.cluster_id) or self._flag_cluster_id

    @property
    def raft_term(self) -> int:
        return int(self.syncobj.raftCurrentTerm) if self.syncobj is not None else 0

    @property
    def is_leader(self) -> bool:
        return bool(self.syncobj is not None and self.syncobj._isLeader())

    def has_leader(self) -> bool:
        return self.syncobj is not None and self.syncobj._getLeader() is not None

    def leader_name(self) -> str | None:
        leader = self.syncobj._getLeader() if self.syncobj is not None else None
        if leader is None:
            return None
        return self.membership.name_of(str(getattr(leader, "address", leader)))

    def leader_id(self) -> int:
        leader = self.syncobj._getLeader() if self.syncobj is not None else None
        if leader is None:
            return 0
        return self.membership.id_of(str(getattr(leader, "address", leader))) or 0

    def raft_status(self) -> dict[str, Any]:
        if self.syncobj is None:
            return {}
        return dict(self.syncobj.getStatus())

    def data_size(self) -> int:
        """Status's dbSize: the state's size as the quota counts it (the files are
        in the metrics)."""
        return self.read(lambda sm: sm.size_bytes())

    def file_sizes(self) -> tuple[int, int]:
        """Bytes of the journal and snapshot files (0 for a missing file)."""
        sizes = []
        for f in ("raft.journal", "raft.snapshot"):
            try:
                sizes.append(os.path.getsize(os.path.join(self.cfg.data_dir, f)))
            except OSError:
                sizes.append(0)
        return sizes[0], sizes[1]

    # ------------------------------------------------------ instrumentation

    def raft_facts(self) -> RaftFacts:
        """Raft state for metrics and health; safe from any thread (plain attribute reads)."""
        so = self.syncobj
        if so is None:
            return RaftFacts(0, False, False, False, 0, 0, None, 0)
        leader_commit = getattr(so, "_SyncObj__leaderCommitIndex", None)
        raft_log = getattr(so, "_SyncObj__raftLog", None)
        return RaftFacts(
            term=int(so.raftCurrentTerm),
            is_leader=bool(so._isLeader()),
            has_leader=so._getLeader() is not None,
            has_quorum=_has_quorum(so),
            commit_index=int(so.raftCommitIndex),
            applied_index=int(so.raftLastApplied),
            leader_commit_index=None if leader_commit is None else int(leader_commit),
            log_entries=len(raft_log) if raft_log is not None else 0,
        )

    def snapshot_in_progress(self) -> bool:
        """True while a forked child writes a snapshot (store/raft_dump.py ForkingDumper)."""
        dumper = getattr(self.syncobj, "_SyncObj__serializer", None)
        return int(getattr(dumper, "pid", 0) or 0) > 0

    def add_raft_tick_hook(self, hook: Callable[[], None]) -> None:
        """Call hook at the end of every Raft tick, in the tick thread; keep it tiny."""
        if self.syncobj is not None:
            self.syncobj.addOnTickCallback(hook)

    # ---------------------------------------------------------------- leases

    def new_lease_id(self) -> int:
        return secrets.randbits(62) | 1

    def lease_remaining(self, lease_id: int) -> int:
        return self._leases.remaining(lease_id)

    def _expire_leases(self) -> None:
        for lid in self._leases.due():
            self._spawn(self._expire(lid))

    async def _expire(self, lease_id: int) -> None:
        gone = False
        try:
            await self.propose(("lease_expire", lease_id))
            log.info("lease_expired", lease=f"{lease_id:x}")
        except StoreError as err:
            gone = err.code == Code.NOT_FOUND
        finally:
            self._leases.settled(lease_id, gone=gone)

    def _on_become_leader(self) -> None:
        """Like etcd's lessor promotion: every lease gets a full TTL from now."""
        leases = self.read(lambda sm: {lid: lease.ttl for lid, lease in sm.leases.items()})
        self._leases.restart_all(leases)

    # ---------------------------------------------------------- background

    async def _housekeeping(self) -> None:
        last_progress = self.clock()
        while True:
            await asyncio.sleep(0.1)
            try:
                seen = self.leader_name()
                if seen is not None and seen != self._last_leader:
                    self._last_leader = seen
                    self.leader_changes_seen += 1
                leader = self.is_leader
                if leader != self._was_leader:
                    self._was_leader = leader
                    log.info("leadership_changed", leader=leader, term=self.raft_term)
                    if leader:
                        self._on_become_leader()
                if leader and not self.read(_has_corrupt_alarm):
                    self._expire_leases()  # etcd's revokes fail under CORRUPT too
                self.batcher.check_stuck()
                now = self.clock()
                if now - last_progress >= min(1.0, self.hub.progress_interval):
                    last_progress = now
                    self.hub.progress_tick()
            except Exception:
                log.exception("housekeeping_failed")

    async def _publish_member(self) -> None:
        """Record this member's client URLs in its member record (for MemberList).

        Waits until the record exists: seeded, or (a new member) replicated to it.
        """
        urls = tuple(self.cfg.client_urls)
        while True:
            record = self.membership.own_record()
            if record is not None:
                self.member_id = record.id  # a member added unnamed got a random id
            if record is not None and record.name and record.client_urls == urls:
                return
            if record is not None:
                try:
                    cmd = ("member_attrs", self.cfg.name, list(urls), self.cfg.raft_addr)
                    await self.propose(cmd)
                    continue
                except StoreError:
                    await asyncio.sleep(0.5)  # no leader yet, or it is busy: retry
                    continue
            # Not seeded yet: poll closely, MemberList shows no URL for this member meanwhile.
            await asyncio.sleep(0.02)
