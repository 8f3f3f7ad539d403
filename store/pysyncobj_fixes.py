"""Every change Mizzen makes to pysyncobj, in one place, for exactly one pysyncobj version.

pysyncobj gives us Raft elections, replication and its TCP transport; its
persistence and one follower rule are not safe enough for a store that
promises "nothing acknowledged is ever lost". Each fix below names the Raft
rule it restores and the pysyncobj code it replaces. They reach into
pysyncobj's module globals and one name-mangled method, so they are written
for ``PYSYNCOBJ_VERSION`` only: ``install`` refuses any other version.

1. **Journal** (replaces ``pysyncobj.journal.FileJournal`` via
   ``pysyncobj.syncobj.createJournal``): ``store.raft_journal.DurableJournal``
   — durable appends before pysyncobj acknowledges an entry (Raft §5.3/§5.4:
   an entry counted towards commit must survive a crash), Raft's log matching
   instead of deleting every entry after ``prevLogIdx`` (§5.3), compaction by
   writing a new file and renaming it instead of rewriting in place, and
   term/vote/commit metadata as JSON instead of a pickle.
2. **Snapshots** (replaces ``pysyncobj.serializer.Serializer`` via
   ``pysyncobj.syncobj.Serializer``): ``store.raft_dump.ForkingDumper`` — the
   forked writer dies with its member and never installs; the member installs
   the snapshot, and only then pysyncobj trims the journal (§7: a snapshot
   replaces only entries it covers). Before pysyncobj opens a data directory,
   ``store.raft_dump.prepare_data_dir`` lines the journal up with the snapshot
   so pysyncobj's load never discards newer entries, and refuses to start when
   committed entries are missing (pysyncobj "clamped" its commit index and ran
   on without them).
3. **Follower commit index** (wraps ``SyncObj.__onMessageReceived``): Raft's
   rule commitIndex = min(leaderCommit, index of the last *new* entry)
   (§5.3, Figure 2). pysyncobj used the end of the follower's log, which with
   fix 1's log matching may hold older-term entries not yet checked against
   the leader's.
4. **Entries sent in parts** (same wrapper as 3): a leader sends an entry
   bigger than ``appendEntriesBatchSizeBytes`` in chunks and marks the last
   one "finish" by comparing positions with the length of the *command*
   instead of the pickled entry, which is a few dozen bytes longer. When a
   chunk boundary falls in between, the second-to-last chunk says "finish";
   the follower unpickles a truncated entry, fails, and fails again on every
   resend: it never catches up (found by the snapshot crash test with 100 kB
   values). A "finish" whose data does not yet unpickle is treated as one more
   part; the leader always sends the rest, marked "finish" too.
5. **One member commits at once** (wraps ``SyncObj._checkCommandsToApply``):
   a leader commits an entry when a majority holds it (§5.3); pysyncobj
   recomputes that at the start of a tick, and the next tick starts when a
   socket has something to read or after ``autoTickPeriod``. With other
   members their acknowledgements wake it; a member alone waited the whole
   50 ms period for every write. When a leader without other members appended
   entries, it now wakes its own poller (pysyncobj's pipe notifier), so the
   next tick commits and applies them right away.
6. **Snapshot transmissions answered** (same wrapper as 3): a follower
   receiving a snapshot sends nothing back until the last part, and the
   leader closes a connection it has read nothing on for ``connectionTimeout``
   (2 s) and starts the transmission again on the next one. A snapshot that
   takes longer than that to send never arrived: a follower that needed one
   (behind the leader's log start after a pause or a crash) never caught up,
   and linearizable reads on it timed out (found by the snapshot crash test;
   a 60 MB state behind a 2 s timeout reproduces it every time). The follower
   now answers every part with a ``next_node_idx`` that changes nothing on the
   leader (neither ``success`` nor ``reset``) but keeps the connection alive.
   On the leader (``ForkingDumper``), a transmission goes on while a newer
   snapshot is written and installed, and a compaction keeps the entries after
   the snapshot being sent (wraps ``SyncObj.__deleteEntriesTo``): pysyncobj
   restarted every transmission at each local snapshot and then trimmed the
   entries the follower would need after it, so under steady writes a follower
   could need snapshot after snapshot.
7. **Log noise**: pysyncobj logs "truncating already-applied log entries" as
   critical before calling ``deleteEntriesFrom``, which (fix 1) no longer
   truncates matching entries; a real conflict is logged by the journal.
8. **A follower alone forgets its leader** (wraps ``SyncObj._onTick``): Raft
   has a follower that hears nothing from its leader for an election timeout
   stand as a candidate (§5.2), so it knows no leader. pysyncobj starts that
   election only while it is connected to some other member; a follower whose
   leader died and whose other peers are unreachable kept naming the dead
   leader forever, so it never answered "etcdserver: no leader", its health
   stayed "serving" and proposals waited for their timeouts (found by the HTTP
   gateway's /health test). Once the election deadline passed while it is
   connected to nobody, it now drops the leader (and fails the commands waiting
   on it, as any leader change does); the term and state stay as they are, and
   pysyncobj's own election starts as soon as a peer answers.
"""

from __future__ import annotations

import logging
import pickle
import threading
from typing import Any

import pysyncobj
from pysyncobj import syncobj as pysyncobj_syncobj
from pysyncobj.version import VERSION

from .raft_dump import ForkingDumper
from .raft_journal import DurableJournal

PYSYNCOBJ_VERSION = "0.3.17"


class UnsupportedPysyncobj(RuntimeError):
    pass


_installed = False
_pending = threading.local()


def install() -> None:
    """Apply every fix (idempotent); refuse a pysyncobj these fixes were not written for."""
    global _installed
    if _installed:
        return
    if VERSION != PYSYNCOBJ_VERSION:
        raise UnsupportedPysyncobj(
            f"pysyncobj {VERSION} is installed but Mizzen's Raft fixes (store/pysyncobj_fixes.py) "
            f"were written for {PYSYNCOBJ_VERSION}: install pysyncobj=={PYSYNCOBJ_VERSION}"
        )
    pysyncobj_syncobj.createJournal = _create_journal
    pysyncobj_syncobj.Serializer = _create_dumper
    _patch_follower_commit()
    _patch_single_member_commit()
    _patch_compaction_keeps_transmitted()
    _patch_lonely_follower()
    logging.getLogger("pysyncobj.syncobj").addFilter(_drop_truncation_warning)
    _installed = True


def construct(journal: DurableJournal, fsync: bool, build: Any) -> Any:
    """Run ``build()`` (which constructs a SyncObj) with ``journal`` as its Raft log.

    pysyncobj creates its journal and serializer inside ``SyncObj.__init__``;
    the factories installed above hand it the journal prepared by
    ``prepare_data_dir`` and a dumper with the same fsync policy.
    """
    install()
    _pending.journal, _pending.fsync = journal, fsync
    try:
        return build()
    finally:
        _pending.journal = None


def _create_journal(path: str | None) -> DurableJournal:
    journal = getattr(_pending, "journal", None)
    if journal is None or path is None or journal.path != path:
        raise RuntimeError("a SyncObj must be constructed through store.pysyncobj_fixes.construct")
    return journal


def _create_dumper(*args: Any) -> ForkingDumper:
    dumper = ForkingDumper(*args)
    dumper.fsync = bool(getattr(_pending, "fsync", True))
    return dumper


# ------------------------- 3. follower commit, 4. parted entries, 6. snapshot parts


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


def is_early_finish(received: Any, message: Any) -> bool:
    """Whether ``message`` says "finish" although the entry it ends is still incomplete."""
    if not isinstance(message, dict) or message.get("transmission") != "finish":
        return False
    data = received + message.get("data", b"") if isinstance(received, bytes) else None
    if not data:
        return False
    try:
        pickle.loads(data)
    except Exception:
        return True
    return False


def is_snapshot_part(message: Any) -> bool:
    """Whether ``message`` is a part of a snapshot transmission other than the last."""
    if not isinstance(message, dict) or message.get("type") != "append_entries":
        return False
    part = message.get("serialized")
    return isinstance(part, tuple) and len(part) == 3 and not part[2]


def _patch_follower_commit() -> None:
    handler_name = "_SyncObj__onMessageReceived"
    original = getattr(pysyncobj.SyncObj, handler_name)

    def on_message(self: Any, node: Any, message: Any) -> None:
        if is_early_finish(self._SyncObj__recvTransmission, message):
            message = {**message, "transmission": "process"}
        before = self._SyncObj__raftCommitIndex
        original(self, node, message)
        clamped = clamp_commit(before, self._SyncObj__raftCommitIndex, new_entries_end(message))
        if clamped is not None:
            self._SyncObj__raftCommitIndex = clamped
            self._SyncObj__raftLog.setRaftCommitIndex(clamped)
        if is_snapshot_part(message) and self._SyncObj__raftLeader == node:
            self._SyncObj__sendNextNodeIdx(node, reset=False, success=False)

    setattr(pysyncobj.SyncObj, handler_name, on_message)


# ------------------------------------------------------- 5. one member


def _patch_single_member_commit() -> None:
    original = pysyncobj.SyncObj._checkCommandsToApply

    def check_commands(self: Any) -> None:
        before = len(self._SyncObj__raftLog)
        original(self)
        if (
            len(self._SyncObj__raftLog) != before
            and not self._SyncObj__otherNodes
            and self._isLeader()
        ):
            notifier = getattr(self, "_SyncObj__pipeNotifier", None)
            if notifier is not None:
                notifier.notify()

    pysyncobj.SyncObj._checkCommandsToApply = check_commands


# ------------------------------------------------------- 8. a follower alone


def forgets_leader(
    follower: bool, has_leader: bool, deadline_passed: bool, connected: bool
) -> bool:
    """Whether a member should drop the leader it names (fix 8)."""
    return follower and has_leader and deadline_passed and not connected


def _patch_lonely_follower() -> None:
    original = pysyncobj.SyncObj._onTick
    waiting_states = (
        pysyncobj_syncobj._RAFT_STATE.FOLLOWER,
        pysyncobj_syncobj._RAFT_STATE.CANDIDATE,
    )

    def on_tick(self: Any, timeToWait: float = 0.0) -> Any:
        if forgets_leader(
            self._SyncObj__raftState in waiting_states and self._SyncObj__selfNode is not None,
            self._SyncObj__raftLeader is not None,
            self._SyncObj__raftElectionDeadline < pysyncobj_syncobj.monotonicTime(),
            self._SyncObj__connectedToAnyone(),
        ):
            self._SyncObj__raftLeader = None
            self._SyncObj__onLeaderChanged()
        return original(self, timeToWait)

    pysyncobj.SyncObj._onTick = on_tick


def _patch_compaction_keeps_transmitted() -> None:
    name = "_SyncObj__deleteEntriesTo"
    original = getattr(pysyncobj.SyncObj, name)

    def delete_entries_to(self: Any, to_index: int) -> None:
        serializer = self._SyncObj__serializer
        keep = serializer.retained_from() if isinstance(serializer, ForkingDumper) else None
        original(self, to_index if keep is None else min(to_index, keep))

    setattr(pysyncobj.SyncObj, name, delete_entries_to)


def _drop_truncation_warning(record: logging.LogRecord) -> bool:
    return "truncating already-applied log entries" not in str(record.msg)
