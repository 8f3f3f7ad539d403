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

import logging
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
    enable_log_matching()  # after the fsync patch: it must wrap the durable add
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
_log_matching_enabled = False


def enable_log_matching() -> None:
    """Make followers truncate their Raft log only where an entry really conflicts.

    pysyncobj's follower deletes every entry after ``prevLogIdx`` whenever an
    AppendEntries carries one, even when the entries it holds are the same
    ones (a retransmission, or a delayed older message). Raft only allows
    deleting from the first entry whose term differs (§5.3). Deleting matching
    entries is unsafe: the leader may already count this follower for them, so
    a committed write could vanish from a majority if the leader then died.
    (pysyncobj logs "truncating already-applied log entries ... may have
    diverged" when it happens; under write load it happened tens of times
    per minute here.)

    Here ``deleteEntriesFrom`` only marks where the follower's handler wants to
    start; each following ``add`` skips an entry that is already there with the
    same index and term, and truncates at the first one that differs. Entries
    after the last one received stay. pysyncobj calls ``deleteEntriesFrom``
    only from that follower path, so nothing else changes.
    """
    global _log_matching_enabled
    if _log_matching_enabled:
        return
    _log_matching_enabled = True
    for journal_class in (pysyncobj_journal.FileJournal, pysyncobj_journal.MemoryJournal):
        _patch_log_matching(journal_class)
    _patch_follower_commit()
    logging.getLogger("pysyncobj.syncobj").addFilter(_drop_truncation_warning)


def new_entries_end(message: Any) -> int | None:
    """Index of the last entry an AppendEntries message carries (prevLogIdx if none).

    None for messages that are not (complete) AppendEntries or are part of a
    multi-part transmission still being received.
    """
    if not isinstance(message, dict) or message.get("type") != "append_entries":
        return None
    if "prevLogIdx" not in message:
        return None
    transmission = message.get("transmission")
    if transmission is None:
        return int(message["prevLogIdx"]) + len(message.get("entries", []))
    return int(message["prevLogIdx"]) + 1 if transmission == "finish" else None


def clamp_commit(before: int, after: int, new_end: int | None) -> int | None:
    """The commit index a message may set (None: leave ``after`` as it is).

    It may raise the commit index up to the last entry it carried, never lower
    it below where it was.
    """
    if new_end is None or after <= before or after <= new_end:
        return None
    return max(before, new_end)


def _patch_follower_commit() -> None:
    """Raft's follower rule: commitIndex = min(leaderCommit, index of last *new* entry).

    pysyncobj uses the end of the follower's log instead, which was the same
    thing while it truncated everything after prevLogIdx. With matching
    entries kept, entries past the ones just received may be from an older
    term and not yet checked against the leader's log, so they must not be
    marked committed by this message.
    """
    handler_name = "_SyncObj__onMessageReceived"
    original = getattr(SyncObj, handler_name)

    def on_message(self: Any, node: Any, message: Any) -> None:
        before = self._SyncObj__raftCommitIndex
        original(self, node, message)
        clamped = clamp_commit(before, self._SyncObj__raftCommitIndex, new_entries_end(message))
        if clamped is not None:
            self._SyncObj__raftCommitIndex = clamped
            self._SyncObj__raftLog.setRaftCommitIndex(clamped)

    setattr(SyncObj, handler_name, on_message)


def _drop_truncation_warning(record: logging.LogRecord) -> bool:
    # pysyncobj logs it before calling deleteEntriesFrom, which no longer truncates
    # matching entries; a real conflict is logged by the patched add instead.
    return "truncating already-applied log entries" not in str(record.msg)


def _patch_log_matching(journal_class: Any) -> None:
    orig_add = journal_class.add
    orig_delete_from = journal_class.deleteEntriesFrom

    def delete_entries_from(self: Any, entry_from: int) -> None:
        self._mizzen_truncate_from = entry_from

    def add(self: Any, command: bytes, idx: int, term: int) -> None:
        start = getattr(self, "_mizzen_truncate_from", None)
        if start is not None and len(self) > 0:
            pos = idx - self[0][1]
            if 0 <= pos < len(self):
                if self[pos][2] == term:
                    return  # the same entry is already here (Raft's log matching)
                log.warning("raft_log_conflict_truncated", index=idx, term=term)
                orig_delete_from(self, pos)
        self._mizzen_truncate_from = None
        orig_add(self, command, idx, term)

    def clear(self: Any) -> None:
        self._mizzen_truncate_from = None
        orig_clear(self)

    orig_clear = journal_class.clear
    journal_class.add = add
    journal_class.deleteEntriesFrom = delete_entries_from
    journal_class.clear = clear


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
        orig_add(self, command, idx, term)
        if getattr(self, "_mizzen_rewriting", False):
            return
        if not len(self) or self[len(self) - 1][1] != idx:
            return  # not appended (the same entry was already there: log matching)
        end = self._FileJournal__currentOffset
        # a record is: length (4) + idx, term (16) + command + length (4)
        start = end - (24 + len(pysyncobj_journal.to_bytes(command)))
        rf = self._FileJournal__journalFile
        fd = getattr(self, "_mizzen_dsync_fd", None)
        if fd is None:
            fd = self._mizzen_dsync_fd = os.open(
                rf._ResizableFile__fileName, os.O_WRONLY | os.O_DSYNC
            )
        mm = rf._ResizableFile__mm
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
