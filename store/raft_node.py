"""Raft glue: pysyncobj replicates batches of commands into the StateMachine.

pysyncobj runs its own tick thread (network, elections, apply). The state
machine is mutated only there, inside ``ReplicatedState.apply``, under a lock
that readers in the asyncio thread take too. After each applied batch the
``on_applied`` hook hands the results and new events to the asyncio side.

Tuning (see ../shared/notes/pysyncobj.md): ``appendEntriesUseBatch=False`` so an
entry is sent as soon as it is proposed (milliseconds instead of a 100 ms
tick), our own batching on top, a short ``leaderFallbackTimeout`` so a
partitioned leader steps down within seconds, and both ``journalFile`` and
``fullDumpFile`` so a restart recovers everything.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from pysyncobj import SyncObj, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj import journal as pysyncobj_journal
from pysyncobj import serializer as pysyncobj_serializer

from .state_machine import Event, StateMachine

log = structlog.get_logger("store.raft")

AppliedHook = Callable[[tuple[Any, ...], list[Any], list[Event]], None]
ResetHook = Callable[[], None]


class ReplicatedState(SyncObjConsumer):
    """The one replicated method. Its name is part of the log format: never rename it."""

    def __init__(self, history_limit: int) -> None:
        # set before SyncObjConsumer.__init__ so they are not part of the snapshot
        self.lock = threading.RLock()
        self.on_applied: AppliedHook | None = None
        self.on_reset: ResetHook | None = None
        super().__init__()
        self.state = StateMachine(history_limit=history_limit)

    @replicated
    def apply(self, batch: tuple[Any, ...]) -> list[Any]:
        proposer, seq, floor, commands = batch
        with self.lock:
            before = self.state.revision
            results = self.state.apply_batch(proposer, seq, floor, commands)
            events = self.state.events_after(before) if self.state.revision != before else []
        hook = self.on_applied
        if hook is not None:
            try:
                hook(batch, results, events)
            except Exception:  # never let a hook wedge the Raft loop
                log.exception("on_applied_failed")
        return results

    def _deserialize(self, data: dict[str, Any]) -> None:
        with self.lock:
            super()._deserialize(data)
        if self.on_reset is not None:
            self.on_reset()


@dataclass(frozen=True)
class RaftConfig:
    self_addr: str
    peers: list[str]
    data_dir: str
    fsync: bool = True
    password: str | None = None
    election_min: float = 0.5
    election_max: float = 1.0
    heartbeat: float = 0.1
    leader_fallback: float = 2.0
    compaction_min_entries: int = 20_000
    compaction_min_time: float = 60.0


def make_syncobj(cfg: RaftConfig, consumer: ReplicatedState) -> SyncObj:
    os.makedirs(cfg.data_dir, exist_ok=True)
    if cfg.fsync:
        enable_journal_fsync()
    conf = SyncObjConf(
        appendEntriesUseBatch=False,
        autoTick=True,
        autoTickPeriod=0.05,
        raftMinTimeout=cfg.election_min,
        raftMaxTimeout=cfg.election_max,
        appendEntriesPeriod=cfg.heartbeat,
        leaderFallbackTimeout=cfg.leader_fallback,
        connectionRetryTime=0.5,
        connectionTimeout=2.0,
        journalFile=os.path.join(cfg.data_dir, "raft.journal"),
        fullDumpFile=os.path.join(cfg.data_dir, "raft.snapshot"),
        logCompactionMinEntries=cfg.compaction_min_entries,
        logCompactionMinTime=cfg.compaction_min_time,
        dynamicMembershipChange=True,
        commandsQueueSize=100_000,
        password=cfg.password,
        bindAddress=cfg.self_addr,
    )
    return SyncObj(cfg.self_addr, cfg.peers, conf=conf, consumers=[consumer])


_fsync_enabled = False


def enable_journal_fsync() -> None:
    """Make pysyncobj's journal durable: each appended entry is on disk before ``add`` returns.

    pysyncobj writes its journal into an mmap and never flushes it, which
    survives ``kill -9`` but not a power loss. Raft needs an entry on disk
    before it is acknowledged; pysyncobj acknowledges right after ``add``, so
    making ``add`` durable gives exactly that. The new record and then the
    header's last-record offset are written again through an ``O_DSYNC``
    descriptor of the same file (same page cache as the mmap): on this
    machine's disk that costs ~0.2 ms per write against ~2 ms for an msync or
    fdatasync (see docs/BENCHMARKS.md). Record first, header second: a crash in
    between leaves the header at the previous record, a consistent journal.
    """
    global _fsync_enabled
    if _fsync_enabled:
        return
    _fsync_enabled = True
    file_journal: Any = pysyncobj_journal.FileJournal
    orig_add = file_journal.add
    orig_delete_to = file_journal.deleteEntriesTo
    header = pysyncobj_journal.LAST_RECORD_OFFSET_OFFSET

    def add(self: Any, command: bytes, idx: int, term: int) -> None:
        start = self._FileJournal__currentOffset
        orig_add(self, command, idx, term)
        if getattr(self, "_mizzen_rewriting", False):
            return
        rf = self._FileJournal__journalFile
        fd = getattr(self, "_mizzen_dsync_fd", None)
        if fd is None:
            fd = self._mizzen_dsync_fd = os.open(
                rf._ResizableFile__fileName, os.O_WRONLY | os.O_DSYNC
            )
        mm = rf._ResizableFile__mm
        end = self._FileJournal__currentOffset
        os.pwrite(fd, mm[start:end], start)
        os.pwrite(fd, mm[header : header + 4], header)

    def delete_entries_to(self: Any, entry_to: int) -> None:
        # log compaction rewrites the journal entry by entry: flush once at the end
        self._mizzen_rewriting = True
        try:
            orig_delete_to(self, entry_to)
        finally:
            self._mizzen_rewriting = False
        self.flush()
        os.fsync(self._FileJournal__journalFile._ResizableFile__f.fileno())

    file_journal.add = add
    file_journal.deleteEntriesTo = delete_entries_to
    # a snapshot must be on disk before the journal entries it replaces are dropped
    pysyncobj_serializer.atomicReplace = durable_replace

    meta_storer: Any = pysyncobj_journal.MetaStorer
    orig_store = meta_storer.storeMeta

    def store_meta(self: Any, meta: Any) -> None:
        orig_store(self, meta)
        path = self.getPath()
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    meta_storer.storeMeta = store_meta


def durable_replace(tmp_path: str, path: str) -> None:
    """Rename tmp_path over path with its data and the rename both on disk.

    pysyncobj writes snapshots (its own, and ones received from the leader) to
    a temporary file and renames it; it compacts the journal once that
    returned. Without these fsyncs a power loss after compaction could leave
    neither the snapshot nor the journal entries it replaced.
    """
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp_path, path)
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
