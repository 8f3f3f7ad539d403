"""Raft glue: pysyncobj replicates batches of commands into the StateMachine.

pysyncobj runs its own tick thread (network, elections, apply). The state
machine is mutated only there, inside ``ReplicatedState.apply``, under a lock
that readers in the asyncio thread take too. After each applied batch the
``on_applied`` hook hands the results and new events to the asyncio side.

Tuning: ``appendEntriesUseBatch=False`` so an entry is sent as soon as it is
proposed (milliseconds instead of a 100 ms tick), our own batching on top, a
short ``leaderFallbackTimeout`` (pysyncobj's default is 30 s) so a partitioned
leader steps down within seconds, and both ``journalFile`` and
``fullDumpFile`` so a restart recovers everything. What Mizzen changes inside
pysyncobj (journal, snapshots, one follower rule) is in
``store/pysyncobj_fixes.py``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from pysyncobj import SyncObj, SyncObjConf, SyncObjConsumer, replicated

from . import pysyncobj_fixes
from .raft_dump import prepare_data_dir
from .state_machine import Event, StateMachine

log = structlog.get_logger("store.raft")

JOURNAL_FILE = "raft.journal"
SNAPSHOT_FILE = "raft.snapshot"

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
class RaftFacts:
    """One member's view of Raft, read without locks from pysyncobj's tick thread state."""

    term: int
    is_leader: bool
    has_leader: bool
    has_quorum: bool
    commit_index: int
    applied_index: int
    leader_commit_index: int | None  # the leader's commit index as last heard; None before
    log_entries: int  # entries in the journal since the last snapshot


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
    """A started SyncObj over ``cfg.data_dir``; raises JournalError when the directory
    has lost committed entries (see store/raft_dump.py)."""
    os.makedirs(cfg.data_dir, exist_ok=True)
    journal_file = os.path.join(cfg.data_dir, JOURNAL_FILE)
    dump_file = os.path.join(cfg.data_dir, SNAPSHOT_FILE)
    pysyncobj_fixes.install()
    journal = prepare_data_dir(journal_file, dump_file, fsync=cfg.fsync)
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
        journalFile=journal_file,
        fullDumpFile=dump_file,
        logCompactionMinEntries=cfg.compaction_min_entries,
        logCompactionMinTime=cfg.compaction_min_time,
        dynamicMembershipChange=True,
        commandsQueueSize=100_000,
        password=cfg.password,
        bindAddress=cfg.self_addr,
    )
    return pysyncobj_fixes.construct(
        journal,
        cfg.fsync,
        lambda: SyncObj(cfg.self_addr, cfg.peers, conf=conf, consumers=[consumer]),
    )
