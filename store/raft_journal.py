"""The Raft log on disk: Mizzen's own journal, in place of pysyncobj's ``FileJournal``.

pysyncobj keeps its log in an mmap'd file whose prefix it drops, after a
snapshot, by rewriting the file *in place*: a crash in the middle left only
part of the entries that came after the snapshot. It never syncs the file, it
deletes matching entries on a retransmission, and its term/vote file is a
pickle. This journal keeps pysyncobj's interface (``add``, ``clear``,
``deleteEntriesFrom``, ``deleteEntriesTo``, indexing, the term/vote/commit
metadata) with these guarantees:

* **Durable append.** ``add`` returns once the record is on disk (one write
  through an ``O_DSYNC`` descriptor) when ``fsync`` is on; pysyncobj
  acknowledges an entry (to the leader, or counts it towards commit) only
  after ``add``. With ``fsync`` off a record is in the page cache: it survives
  ``kill -9``, not a power loss.
* **Records that check themselves.** Each record carries its length and a
  CRC-32; opening the file keeps the records up to the first one that is
  incomplete or does not match (a write torn by a power loss — never an
  acknowledged one, since ``add`` had not returned) and cuts the rest.
* **Raft's log matching** (§5.3): ``deleteEntriesFrom`` only marks where the
  follower's handler wants to truncate; each following ``add`` skips an entry
  already held with the same index and term and truncates at the first one
  that differs. (pysyncobj's follower deleted every entry after ``prevLogIdx``
  on any AppendEntries, including ones the leader already counted as
  replicated here.)
* **Crash-safe compaction.** ``deleteEntriesTo`` and ``clear`` write the
  entries that stay into a new file, sync it and rename it over the journal:
  a crash leaves either the old journal or the new one, never a part.
* **Plain metadata.** Term, vote and commit index are a small JSON file
  (``raft.state``), replaced atomically; term and vote are synced before
  pysyncobj sends anything that depends on them.

File format, version 1 (integers little-endian)::

    header   b"MZJOURNL" | u32 version (1)
    record   u32 payload length | u32 crc32(payload) | payload
    payload  u64 index | u64 term | command bytes (pysyncobj's encoded command)

A journal written by pysyncobj (header ``PYSYNCOBJ``) is converted once on
open, with its term/vote/commit metadata.

One file because it is one class's on-disk format (records, metadata, the
crash-safe trim) and the conversion of pysyncobj's old journal into it; the
format and its readers must change together.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from typing import Any

import structlog

from .failpoints import failpoint

log = structlog.get_logger("store.raft.journal")

MAGIC = b"MZJOURNL"
VERSION = 1
_HEADER = struct.Struct("<8sI")
_RECORD = struct.Struct("<II")  # payload length, crc32
_PAYLOAD = struct.Struct("<QQ")  # index, term
STATE_FILE = "raft.state"
LEGACY_MAGIC = b"PYSYNCOBJ"
MAX_RECORD = 1 << 31

Entry = tuple[bytes, int, int]  # (command, index, term), pysyncobj's shape


class JournalError(RuntimeError):
    """The journal on disk cannot be used as it is (the message says why and what to do)."""


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(path: str, data: bytes, *, sync: bool = True) -> None:
    """Replace ``path`` with ``data``: a crash leaves the old file or the new one (mode 0600)."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync:
        _fsync_dir(path)


def encode_record(command: bytes, idx: int, term: int) -> bytes:
    payload = _PAYLOAD.pack(idx, term) + command
    return _RECORD.pack(len(payload), zlib.crc32(payload)) + payload


def read_record(f: Any, what: str) -> Entry:
    """One record from the binary file f (JournalError naming ``what`` when it is damaged)."""
    head = f.read(_RECORD.size)
    if len(head) < _RECORD.size:
        raise JournalError(f"{what}: truncated")
    length, crc = _RECORD.unpack(head)
    if length < _PAYLOAD.size or length > MAX_RECORD:
        raise JournalError(f"{what}: damaged (record length {length})")
    payload = f.read(length)
    if len(payload) < length or zlib.crc32(payload) != crc:
        raise JournalError(f"{what}: damaged (checksum)")
    idx, term = _PAYLOAD.unpack_from(payload)
    return (bytes(payload[_PAYLOAD.size :]), idx, term)


def decode_records(data: bytes, start: int) -> tuple[list[Entry], list[int], int]:
    """Entries from ``start``, their offsets, and where the valid records end."""
    entries: list[Entry] = []
    offsets: list[int] = []
    pos = start
    end = len(data)
    while pos + _RECORD.size <= end:
        length, crc = _RECORD.unpack_from(data, pos)
        body = pos + _RECORD.size
        if length < _PAYLOAD.size or body + length > end:
            break
        payload = data[body : body + length]
        if zlib.crc32(payload) != crc:
            break
        idx, term = _PAYLOAD.unpack_from(payload)
        if entries and idx != entries[-1][1] + 1:
            break  # not a continuation of the log: treat as garbage
        entries.append((bytes(payload[_PAYLOAD.size :]), idx, term))
        offsets.append(pos)
        pos = body + length
    return entries, offsets, pos


class DurableJournal:
    """pysyncobj's Journal interface over Mizzen's journal file (see the module docstring)."""

    def __init__(self, path: str, *, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync
        self.state_path = os.path.join(os.path.dirname(os.path.abspath(path)), STATE_FILE)
        self._entries: list[Entry] = []
        self._offsets: list[int] = []
        self._end = _HEADER.size
        self._truncate_from: int | None = None
        self._meta: dict[str, Any] = {}
        self._meta_dirty = False
        self._fd = -1
        self._load()

    # ------------------------------------------------------------ opening

    def _load(self) -> None:
        self._meta = self._read_state()
        if not os.path.exists(self.path):
            self._rewrite([])
            return
        with open(self.path, "rb") as f:
            data = f.read()
        if data.startswith(LEGACY_MAGIC):
            self._convert_legacy(data)
            return
        if len(data) < _HEADER.size:
            if data.strip(b"\0"):
                raise JournalError(f"{self.path}: not a Mizzen journal (too short)")
            self._rewrite([])  # created but never written (crash right after creation)
            return
        magic, version = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise JournalError(f"{self.path}: not a Mizzen journal (bad magic {magic!r})")
        if version != VERSION:
            raise JournalError(f"{self.path}: unsupported journal version {version}")
        entries, offsets, end = decode_records(data, _HEADER.size)
        if end != len(data):
            log.warning(
                "journal_tail_discarded",
                path=self.path,
                kept_entries=len(entries),
                discarded_bytes=len(data) - end,
            )
        self._entries, self._offsets, self._end = entries, offsets, end
        self._open_fd()
        if end != len(data):
            os.ftruncate(self._fd, end)
            self._sync()

    def _open_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        flags = os.O_WRONLY | (os.O_DSYNC if self.fsync else 0)
        self._fd = os.open(self.path, flags)

    def _read_state(self) -> dict[str, Any]:
        try:
            with open(self.state_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return {}
        try:
            meta = json.loads(raw)
        except ValueError as err:
            raise JournalError(f"{self.state_path}: not valid JSON ({err})") from None
        if not isinstance(meta, dict):
            raise JournalError(f"{self.state_path}: not a JSON object")
        return meta

    def _convert_legacy(self, data: bytes) -> None:
        """Rewrite a pysyncobj journal (and its pickled .meta) in this format, once."""
        entries = legacy_entries(data)
        if not self._meta:
            self._meta = legacy_meta(self.path + ".meta")
            self._store_state()
        self._rewrite(entries)
        legacy = self.path + ".meta"
        if os.path.exists(legacy):
            os.unlink(legacy)
        log.info("journal_converted_from_pysyncobj", path=self.path, entries=len(entries))

    # ------------------------------------------------------ the interface

    def add(self, command: bytes, idx: int, term: int) -> None:
        start = self._truncate_from
        self._truncate_from = None
        if start is not None and self._entries:
            pos = idx - self._entries[0][1]
            if pos < 0:  # already compacted into the snapshot: committed, so the same
                self._truncate_from = start
                return
            if pos < len(self._entries):
                if self._entries[pos][2] == term:
                    self._truncate_from = start  # the same entry is already here
                    return
                log.warning("raft_log_conflict_truncated", index=idx, term=term)
                self._truncate(pos)
        if self._entries and idx != self._entries[-1][1] + 1:
            raise JournalError(f"raft log gap: appending index {idx} after {self._entries[-1][1]}")
        record = encode_record(command, idx, term)
        os.pwrite(self._fd, record, self._end)  # O_DSYNC: on disk when this returns
        self._entries.append((command, idx, term))
        self._offsets.append(self._end)
        self._end += len(record)

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        self._truncate_from = entryFrom

    def deleteEntriesTo(self, entryTo: int) -> None:
        """Drop the entries before position ``entryTo`` (log compaction after a snapshot)."""
        self._truncate_from = None
        self._rewrite(self._entries[entryTo:], compaction=True)

    def clear(self) -> None:
        self._truncate_from = None
        self._rewrite([])

    def __getitem__(self, item: Any) -> Any:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def _destroy(self) -> None:
        self.onOneSecondTimer()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def flush(self) -> None:
        self._sync()

    # metadata: term and vote synchronously, the commit index once a second
    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        if self._meta.get("commit_index") != raftCommitIndex:
            self._meta["commit_index"] = raftCommitIndex
            self._meta_dirty = True

    def getRaftCommitIndex(self) -> int:
        return int(self._meta.get("commit_index", 1))

    def setCurrentTerm(self, term: int, votedForNodeId: Any) -> None:
        self._meta["term"] = term
        self._meta["voted_for"] = None if votedForNodeId is None else str(votedForNodeId)
        self._store_state()

    def getCurrentTerm(self) -> int:
        return int(self._meta.get("term", 0))

    def getVotedForNodeId(self) -> Any:
        return self._meta.get("voted_for")

    def onOneSecondTimer(self) -> None:
        if self._meta_dirty:
            self._store_state()

    # ------------------------------------------------------------ helpers

    def first_index(self) -> int | None:
        return self._entries[0][1] if self._entries else None

    def last_index(self) -> int | None:
        return self._entries[-1][1] if self._entries else None

    def _store_state(self) -> None:
        data = json.dumps(self._meta, sort_keys=True).encode()
        write_file_atomic(self.state_path, data, sync=self.fsync)
        self._meta_dirty = False

    def _sync(self) -> None:
        if self.fsync and self._fd >= 0:
            os.fsync(self._fd)

    def _truncate(self, pos: int) -> None:
        """Cut the log at position ``pos`` (a conflicting suffix)."""
        end = self._offsets[pos]
        os.ftruncate(self._fd, end)
        self._sync()
        del self._entries[pos:]
        del self._offsets[pos:]
        self._end = end

    def replace_all(self, entries: list[Entry]) -> None:
        """Make the journal hold exactly ``entries`` (crash-safe; used when opening a store)."""
        self._truncate_from = None
        self._rewrite(entries)

    def _rewrite(self, entries: list[Entry], *, compaction: bool = False) -> None:
        """Make the journal hold exactly ``entries``: new file, synced, renamed over the old."""
        parts = [_HEADER.pack(MAGIC, VERSION)]
        offsets = []
        end = _HEADER.size
        for command, idx, term in entries:
            record = encode_record(command, idx, term)
            offsets.append(end)
            parts.append(record)
            end += len(record)
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"".join(parts))
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if compaction:
            failpoint("journal_compaction_written")
        os.replace(tmp, self.path)
        if self.fsync:
            _fsync_dir(self.path)
        if compaction:
            failpoint("journal_compacted")
        self._entries = list(entries)
        self._offsets = offsets
        self._end = end
        self._open_fd()


def legacy_entries(data: bytes) -> list[Entry]:
    """The entries of a pysyncobj ``FileJournal`` file (its header's last-record offset wins)."""
    name_size, version_size = 24, 8
    first = name_size + version_size + 4 + 4
    if len(data) < first:
        return []
    (last,) = struct.unpack_from("<I", data, name_size + version_size + 4)
    entries: list[Entry] = []
    pos = first
    while pos < min(last, len(data)):
        (size,) = struct.unpack_from("<I", data, pos)
        record = data[pos + 4 : pos + 4 + size]
        if len(record) < 16:
            break
        idx, term = struct.unpack_from("<QQ", record)
        entries.append((bytes(record[16:]), idx, term))
        pos += size + 8
    return entries


def legacy_meta(path: str) -> dict[str, Any]:
    """Term, vote and commit index from pysyncobj's journal meta file (its own pickle).

    Read once, when a data directory written by an older Mizzen is opened: the
    file lies in the store's own data directory, which only the store's user
    can write (it is never a file a user hands us).
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return {}
    from pysyncobj.pickle import loads

    try:
        old = loads(raw)
    except Exception:
        return {}
    meta: dict[str, Any] = {}
    if "currentTerm" in old:
        meta["term"] = int(old["currentTerm"])
    if old.get("votedForNodeId") is not None:
        meta["voted_for"] = str(old["votedForNodeId"])
    if "raftCommitIndex" in old:
        meta["commit_index"] = int(old["raftCommitIndex"])
    return meta
