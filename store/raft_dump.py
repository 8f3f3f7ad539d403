"""Raft snapshots on disk (``raft.snapshot``), and one protocol for them and the journal.

pysyncobj calls its snapshot a "full dump": a tuple ``(data, last, prev,
cluster)`` where ``last`` and ``prev`` are the log entries at the last
applied index ``S`` and at ``S - 1``. Its ``Serializer`` forked a child that
wrote and *renamed* the dump, and that child outlived a killed member: it
installed a snapshot the journal had not been trimmed to match, and on the
next start pysyncobj threw the whole journal away because its first entries
were not the dump's — every write acknowledged after the snapshot point was
lost. The rules here:

1. **The member installs, not the child.** ``ForkingDumper`` forks a child
   that only writes ``raft.snapshot.tmp`` and syncs it. The child dies with
   the thread that forked it (``PR_SET_PDEATHSIG``), closes every inherited
   socket first (a lingering child never holds the Raft or client ports),
   and never renames. The member, in its Raft thread, renames the file into
   place (synced, directory synced) when the child has exited with success.
2. **The journal is trimmed only after the snapshot is durable.** pysyncobj
   calls ``deleteEntriesTo`` right after ``checkSerializing`` reports success,
   which is after the rename; the trim itself is crash-safe
   (``DurableJournal``).
3. **A start never drops an entry after the snapshot.** ``reconcile`` lines
   the journal up with the snapshot before pysyncobj opens either: it keeps
   every entry after ``S`` and puts the snapshot's own ``prev`` and ``last``
   entries in front (exactly what pysyncobj checks), so pysyncobj's "clear the
   journal" branch never runs on a journal that still holds newer entries.
   A journal that no longer reaches back to the snapshot, or a commit index
   beyond the end of the log, means acknowledged entries are gone: the member
   refuses to start and says so, instead of clamping and running on.
4. **A snapshot received from the leader wins over a local one in progress**:
   the local child is killed and its file discarded, so an older snapshot can
   never be renamed over a newer one.

5. **Nothing damaged is ever used.** The header carries the SHA-256 of the
   body; a snapshot received from the leader is checked before it is
   installed (parts of a transmission carry its token and offset, so parts of
   two transmissions are never spliced), and a member whose own snapshot does
   not check refuses to start. (The crash test once installed a damaged
   received snapshot; at its next start that member had an empty state.)

6. **A transmission always gets through.** It goes on from the file it opened
   while this member writes and installs newer snapshots, and compaction
   keeps the entries after the snapshot being sent (``retained_from``), so a
   follower never needs snapshot after snapshot (see pysyncobj_fixes, fix 6,
   for the follower's side).

File format, version 1::

    b"MZRSNAP1" | u32 version (1) | sha256 of the body (32 bytes)
    | journal record of ``prev`` | journal record of ``last``   (see raft_journal)
    | body: gzip of pysyncobj's pickled ``(data, last, prev, cluster)``

The records repeat the two entries so ``reconcile`` reads them without
decompressing the state. The body is a pickle because pysyncobj's state is
pickled (and snapshots travel to followers over its authenticated Raft
channel); it is only ever read from the store's own data directory (0700) or
from that channel. A dump without the header (pysyncobj's own format, written
by older Mizzen versions) is still read.

One file because the dumper, ``reconcile`` and the transmission of snapshots
to followers are one protocol between the snapshot file and the journal; the
rules above only hold together, and splitting them would spread one crash-
safety argument over several files.
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import hashlib
import os
import pickle
import secrets
import signal
import stat
import struct
import time
from dataclasses import dataclass
from typing import Any

import structlog
from pysyncobj.config import SERIALIZER_STATE

from mizzen.parent_death import set_death_signal

from .failpoints import failpoint
from .raft_journal import (
    DurableJournal,
    Entry,
    JournalError,
    _fsync_dir,
    encode_record,
    read_record,
)

log = structlog.get_logger("store.raft.dump")

MAGIC = b"MZRSNAP1"
VERSION = 1
_HEADER = struct.Struct("<8sI32s")  # magic, version, sha256 of the body
_DIGEST_AT = 12
GZIP_LEVEL = 1  # level 9 (pysyncobj's) took seconds per 100 MB for a few % of size
_BLOCK = 1 << 20
STALE_TRANSMISSION = 10.0  # seconds; a leader sends a part every heartbeat (0.1 s)
_FRAME = struct.Struct("<8sQ")  # a snapshot transmission's token, the part's offset


@dataclass(frozen=True)
class DumpHead:
    """The two log entries a dump ends at: ``prev`` (index S-1) and ``last`` (index S)."""

    prev: Entry
    last: Entry

    @property
    def index(self) -> int:
        return self.last[1]


def _records(data: tuple[Any, ...]) -> bytes:
    last, prev = data[1], data[2]
    return encode_record(bytes(prev[0]), prev[1], prev[2]) + encode_record(
        bytes(last[0]), last[1], last[2]
    )


def encode_dump(data: tuple[Any, ...]) -> bytes:
    """A whole dump file for pysyncobj's ``(data, last, prev, cluster)``."""
    body = gzip.compress(pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL), GZIP_LEVEL)
    digest = hashlib.sha256(body).digest()
    return _HEADER.pack(MAGIC, VERSION, digest) + _records(data) + body


def _open_head(f: Any, what: str) -> tuple[DumpHead, bytes] | None:
    """The head and body digest of the dump open in f (None: pysyncobj's own format); f is
    left at the start of the body."""
    fixed = f.read(_HEADER.size)
    if not fixed.startswith(MAGIC):
        f.seek(0)
        return None
    if len(fixed) < _HEADER.size:
        raise JournalError(f"{what}: truncated header")
    _, version, digest = _HEADER.unpack(fixed)
    if version != VERSION:
        raise JournalError(f"{what}: unsupported version {version}")
    prev = read_record(f, what)
    last = read_record(f, what)
    return DumpHead(prev=prev, last=last), digest


def _body_digest(f: Any) -> bytes:
    h = hashlib.sha256()
    while block := f.read(_BLOCK):
        h.update(block)
    return h.digest()


def verify_dump(path: str) -> bool:
    """Whether the dump at path is whole: its body matches the digest in its header
    (pysyncobj's own format, which has none, counts as whole)."""
    try:
        with open(path, "rb") as f:
            opened = _open_head(f, path)
            return opened is None or _body_digest(f) == opened[1]
    except (OSError, JournalError):
        return False


def read_head(path: str) -> DumpHead | None:
    """The entries a dump file ends at, or None when there is no dump at ``path``."""
    try:
        with open(path, "rb") as f:
            opened = _open_head(f, path)
            if opened is not None:
                return opened[0]
    except FileNotFoundError:
        return None
    data = load_dump(path)  # pysyncobj's format: the entries are inside the pickle
    return DumpHead(prev=tuple(data[2]), last=tuple(data[1]))


def load_dump(path: str) -> tuple[Any, ...]:
    """pysyncobj's dump tuple from a file in either format (JournalError when damaged)."""
    with open(path, "rb") as f:
        opened = _open_head(f, path)
        body = f.read()
    if opened is not None and hashlib.sha256(body).digest() != opened[1]:
        raise JournalError(f"{path}: damaged (the body does not match its checksum)")
    data = pickle.loads(gzip.decompress(body))
    if not isinstance(data, tuple) or len(data) != 4:
        raise JournalError(f"{path}: not a Raft snapshot")
    return data


class _HashingWriter:
    """A binary file that also hashes what is written through it."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return int(self.f.write(data))

    def flush(self) -> None:
        self.f.flush()


# ----------------------------------------------------------------- reconcile


def reconcile(journal: DurableJournal, head: DumpHead | None) -> str:
    """Line the journal up with the snapshot (rule 3); return what was done, raise to refuse.

    Refusals are ``JournalError`` with a message for the operator.
    """
    commit = journal.getRaftCommitIndex()
    entries = list(journal[:])
    if head is None:
        if entries and entries[0][1] != 1:
            raise JournalError(
                f"the Raft journal starts at index {entries[0][1]} but there is no snapshot: "
                f"entries 1..{entries[0][1] - 1} are missing from this data directory"
            )
        end = entries[-1][1] if entries else 0
        _check_commit(commit, end)
        return "no snapshot"
    s = head.index
    after = [e for e in entries if e[1] > s]
    at_s = next((e for e in entries if e[1] == s), None)
    action = "kept"
    if at_s is not None and at_s[2] != head.last[2]:
        log.warning(
            "journal_diverges_from_snapshot",
            index=s,
            journal_term=at_s[2],
            snapshot_term=head.last[2],
            dropped=len(after),
        )
        after, action = [], "dropped a suffix that diverges from the snapshot"
    if after and after[0][1] != s + 1:
        raise JournalError(
            f"the Raft journal resumes at index {after[0][1]} but the snapshot ends at {s}: "
            f"entries {s + 1}..{after[0][1] - 1} are missing from this data directory"
        )
    wanted = [head.prev, head.last, *after]
    if [e[1:] for e in entries[: len(wanted)]] != [e[1:] for e in wanted] or len(entries) != len(
        wanted
    ):
        journal.replace_all(wanted)
        if action == "kept":
            action = f"trimmed to the snapshot at {s}, kept {len(after)} newer entries"
    end = wanted[-1][1]
    _check_commit(commit, end)
    return action


def _check_commit(commit: int, end: int) -> None:
    if commit > max(end, 1):
        raise JournalError(
            f"the commit index recorded in this data directory is {commit} but its Raft log "
            f"ends at {end}: {commit - end} committed entries are missing (journal lost or "
            "truncated). Refusing to start: remove this member's data directory and add it "
            "back to the cluster (mizzen cluster member remove/add), or restore a snapshot"
        )


def prepare_data_dir(journal_path: str, dump_path: str, *, fsync: bool) -> DurableJournal:
    """Open the journal, drop leftover temporary files, reconcile with the snapshot."""
    for leftover in (dump_path + ".tmp", dump_path + ".1.tmp", journal_path + ".tmp"):
        if os.path.exists(leftover):
            os.unlink(leftover)
            log.info("leftover_removed", path=leftover)
    if os.path.exists(dump_path) and not verify_dump(dump_path):
        raise JournalError(
            f"{dump_path} is damaged (its body does not match its checksum): this member "
            "cannot rebuild its state from it. Remove this member's data directory and add "
            "it back to the cluster (mizzen cluster member remove/add), or restore a snapshot"
        )
    journal = DurableJournal(journal_path, fsync=fsync)
    action = reconcile(journal, read_head(dump_path))
    log.info(
        "raft_log_opened",
        first=journal.first_index(),
        last=journal.last_index(),
        commit=journal.getRaftCommitIndex(),
        snapshot=action,
    )
    return journal


# --------------------------------------------------------- the serializer


class ForkingDumper:
    """pysyncobj's ``Serializer`` interface with rules 1 and 4 (see the module docstring)."""

    def __init__(
        self,
        fileName: str,
        transmissionBatchSize: int,
        tryUseFork: bool = True,
        serializer: Any = None,
        deserializer: Any = None,
        serializeChecker: Any = None,
    ) -> None:
        if fileName is None or serializer is not None or deserializer is not None:
            raise ValueError("ForkingDumper needs fullDumpFile and no custom serializer")
        self.path = fileName
        self.tmp = fileName + ".tmp"
        self.incoming_tmp = fileName + ".1.tmp"
        self.fsync = True
        self.batch = transmissionBatchSize
        self.pid = 0
        self.current_id: int | None = None
        self.pending_index = 0
        self.installed_index = 0
        self._transmissions: dict[Any, dict[str, Any]] = {}
        self._incoming: dict[str, Any] | None = None

    # ------------------------------------------------------------ writing

    def serialize(self, data: tuple[Any, ...], id: int) -> None:
        if self.pid:
            return
        self.current_id = id
        self.pending_index = int(data[1][1])
        parent = os.getpid()
        pid = os.fork()
        if pid:
            self.pid = pid
            return
        code = 1
        try:
            gc.disable()  # no finalizers of the parent's objects run in this child
            set_death_signal(signal.SIGKILL)
            if os.getppid() != parent:
                os._exit(1)
            _close_inherited_sockets()
            failpoint("snapshot_child_started")
            self._write(data)
            failpoint("snapshot_child_written")
            code = 0
        finally:
            os._exit(code)

    def _write(self, data: tuple[Any, ...]) -> None:
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(_HEADER.pack(MAGIC, VERSION, bytes(32)) + _records(data))
            body = _HashingWriter(f)
            with gzip.GzipFile(fileobj=body, mode="wb", compresslevel=GZIP_LEVEL) as g:
                pickle.dump(data, g, protocol=pickle.HIGHEST_PROTOCOL)
            f.seek(_DIGEST_AT)
            f.write(body.sha.digest())
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())

    def checkSerializing(self) -> tuple[int, int | None]:
        if not self.pid:
            return SERIALIZER_STATE.NOT_SERIALIZING, None
        try:
            rpid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            rpid, status = self.pid, -1
        if rpid == 0:
            return SERIALIZER_STATE.SERIALIZING, self.current_id
        self.pid = 0
        if status != 0 or self.pending_index <= self.installed_index:
            if status != 0:
                log.warning("snapshot_child_failed", status=status, index=self.pending_index)
            _unlink(self.tmp)
            return SERIALIZER_STATE.FAILED, self.current_id
        try:
            failpoint("snapshot_before_install")
            self._install(self.tmp)
            failpoint("snapshot_installed")
        except OSError:
            log.exception("snapshot_install_failed")
            return SERIALIZER_STATE.FAILED, self.current_id
        self.installed_index = self.pending_index
        return SERIALIZER_STATE.SUCCESS, self.current_id

    def _install(self, tmp: str) -> None:
        os.rename(tmp, self.path)
        if self.fsync:
            _fsync_dir(self.path)

    def cancel_local(self) -> None:
        """Kill a local snapshot in progress and forget it (rule 4)."""
        if not self.pid:
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        self.pid = 0
        _unlink(self.tmp)
        log.info("local_snapshot_cancelled", index=self.pending_index)

    # ------------------------------------------------------------ reading

    def deserialize(self) -> tuple[Any, ...]:
        data = load_dump(self.path)
        self.installed_index = max(self.installed_index, int(data[1][1]))
        return data

    # ------------------------------------------- transmission to followers

    def getTransmissionData(self, transmissionID: Any) -> Any:
        """The next part of the snapshot for one follower: ``(framed chunk, first, last)``.

        Every part carries the transmission's random token and its offset (``_FRAME``),
        so a follower never splices parts of two transmissions (a leader that lost and
        regained leadership would otherwise continue an old one where it left off).

        A transmission goes on while this member writes a newer snapshot and after it
        installs one (it reads the file it opened): restarting it at every local
        snapshot meant a state that takes longer to send than the time between two
        snapshots never reached a follower. ``retained_from`` keeps the entries after
        the snapshot being sent in the log until it has arrived.
        """
        t = self._transmissions.get(transmissionID)
        if t is None:
            try:
                f = open(self.path, "rb")  # noqa: SIM115 (closed by _drop_transmission)
            except OSError:
                log.exception("snapshot_open_for_transmission_failed")
                return None
            try:
                opened = _open_head(f, self.path)
                f.seek(0)
            except (OSError, JournalError):
                log.exception("snapshot_open_for_transmission_failed")
                f.close()
                return None
            prev = int(opened[0].prev[1]) if opened is not None else None
            t = {"file": f, "sent": 0, "token": secrets.token_bytes(8), "prev": prev}
            self._transmissions[transmissionID] = t
        t["touched"] = time.monotonic()
        first = t["sent"] == 0
        try:
            chunk = t["file"].read(self.batch)
        except OSError:
            log.exception("snapshot_read_for_transmission_failed")
            self._drop_transmission(transmissionID)
            return False
        framed = _FRAME.pack(t["token"], t["sent"]) + chunk
        t["sent"] += len(chunk)
        last = not chunk
        if last:
            self._drop_transmission(transmissionID)
        return framed, first, last

    def retained_from(self) -> int | None:
        """The lowest log index a compaction may keep while snapshots are being sent:
        the ``prev`` entry of the oldest snapshot in transmission (None: no limit).

        When a follower has received a snapshot, pysyncobj sends it the entries after
        the *log's* first two; trimming past the snapshot in transmission would make
        the follower need yet another snapshot, for ever under steady writes.
        A transmission no part of which was sent for ``STALE_TRANSMISSION`` seconds
        (this member stopped leading; pysyncobj forgets only those of disconnected
        followers) is dropped here, so it never holds compaction back for good.
        """
        now = time.monotonic()
        for tid, t in list(self._transmissions.items()):
            if now - t["touched"] > STALE_TRANSMISSION:
                self._drop_transmission(tid)
        prevs = [t["prev"] for t in self._transmissions.values() if t["prev"] is not None]
        return min(prevs) if prevs else None

    def setTransmissionData(self, data: Any) -> bool:
        """Take one part from the leader; True once a whole snapshot was received, checked
        (its body against the digest in its header) and installed.

        A part of another transmission than the one in progress, or out of order, ends
        the one in progress; a damaged result is discarded. Either way nothing is
        installed, the follower keeps its state, and the leader sends a snapshot again
        once AppendEntries show the follower still lacks it.
        """
        if data is None:
            return False
        framed, first, last = data
        if len(framed) < _FRAME.size:
            return False
        token, offset = _FRAME.unpack_from(framed)
        chunk = framed[_FRAME.size :]
        incoming = self._incoming
        if first:
            self._abandon_incoming()
            if offset != 0:
                return False
            fd = os.open(self.incoming_tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            self._incoming = incoming = {"file": os.fdopen(fd, "wb"), "token": token, "got": 0}
        elif incoming is None or incoming["token"] != token or incoming["got"] != offset:
            if incoming is not None:
                log.warning("snapshot_transmission_mixed_up", expected_offset=incoming["got"])
                self._abandon_incoming()
            return False
        try:
            incoming["file"].write(chunk)
        except OSError:
            log.exception("snapshot_receive_failed")
            self._abandon_incoming()
            return False
        incoming["got"] += len(chunk)
        if not last:
            return False
        f = incoming["file"]
        self._incoming = None
        f.flush()
        if self.fsync:
            os.fsync(f.fileno())
        f.close()
        if not verify_dump(self.incoming_tmp):
            log.warning("received_snapshot_damaged", size=incoming["got"])
            _unlink(self.incoming_tmp)
            return False
        self.cancel_local()
        try:
            self._install(self.incoming_tmp)
        except OSError:
            log.exception("snapshot_install_failed")
            return False
        return True

    def _abandon_incoming(self) -> None:
        if self._incoming is not None:
            self._incoming["file"].close()
            self._incoming = None
            _unlink(self.incoming_tmp)

    def cancelTransmisstion(self, id: Any) -> None:
        self._drop_transmission(id)

    def _drop_transmission(self, tid: Any) -> None:
        t = self._transmissions.pop(tid, None)
        if t is not None:
            t["file"].close()


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _close_inherited_sockets() -> None:
    """Close every socket this (forked) process inherited: the member's Raft, client and
    metrics ports must never be held by its snapshot writer. Other descriptors stay
    (gRPC's pollers, if any run in the child, keep their epoll and event fds)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                os.close(fd)
        except OSError:
            pass
