"""The Raft journal (store/raft_journal.py): durable, self-checking, Raft's log matching."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pysyncobj import journal as pj

from store.raft_journal import STATE_FILE, DurableJournal, JournalError, encode_record


def entries(journal: DurableJournal) -> list[tuple[int, int]]:
    return [(idx, term) for _, idx, term in journal[:]]


def follower_append(journal: DurableJournal, prev_idx: int, new: list[tuple[int, int]]) -> None:
    """What pysyncobj's follower does with an AppendEntries whose prevLogIdx matched."""
    first = journal[0][1]
    if prev_idx - first + 1 < len(journal):  # it holds entries after prevLogIdx
        journal.deleteEntriesFrom(prev_idx + 1 - first)
    for idx, term in new:
        journal.add(b"cmd%d" % idx, idx, term)


@pytest.fixture(params=[True, False], ids=["fsync", "no-fsync"])
def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DurableJournal]:
    j = DurableJournal(str(tmp_path / "raft.journal"), fsync=request.param)
    for idx in range(1, 6):
        j.add(b"cmd%d" % idx, idx, 1)
    yield j
    j._destroy()


def reopen(j: DurableJournal) -> DurableJournal:
    j._destroy()
    return DurableJournal(j.path, fsync=j.fsync)


def test_a_stale_retransmission_keeps_the_entries_after_it(journal: DurableJournal) -> None:
    follower_append(journal, 2, [(3, 1)])
    assert entries(journal) == [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)]
    follower_append(journal, 3, [])  # a heartbeat that is behind the follower
    follower_append(journal, 5, [(6, 1)])
    assert entries(journal)[-2:] == [(5, 1), (6, 1)]
    assert entries(reopen(journal)) == [(i, 1) for i in range(1, 7)]


def test_a_conflicting_entry_truncates_from_there(journal: DurableJournal) -> None:
    follower_append(journal, 2, [(3, 1), (4, 2)])
    assert entries(journal) == [(1, 1), (2, 1), (3, 1), (4, 2)]
    follower_append(journal, 1, [(2, 3)])
    assert entries(journal) == [(1, 1), (2, 3)]
    j = reopen(journal)
    assert entries(j) == [(1, 1), (2, 3)]
    j.add(b"x", 3, 3)
    assert entries(reopen(j)) == [(1, 1), (2, 3), (3, 3)]


def test_compaction_keeps_every_entry_after_the_cut(journal: DurableJournal) -> None:
    journal.deleteEntriesTo(3)  # positions 0-2 (indexes 1-3) go
    assert entries(journal) == [(4, 1), (5, 1)]
    journal.add(b"cmd6", 6, 2)
    assert entries(reopen(journal)) == [(4, 1), (5, 1), (6, 2)]


def test_a_compaction_that_crashed_before_its_rename_leaves_the_old_journal(
    tmp_path: Path,
) -> None:
    j = DurableJournal(str(tmp_path / "raft.journal"))
    for idx in range(1, 6):
        j.add(b"c", idx, 1)
    j._destroy()
    # what a crash between writing the new file and renaming it leaves behind
    (tmp_path / "raft.journal.tmp").write_bytes(b"partial")
    assert entries(DurableJournal(j.path)) == [(i, 1) for i in range(1, 6)]


def test_a_torn_last_record_is_cut_and_appends_continue(tmp_path: Path) -> None:
    j = DurableJournal(str(tmp_path / "raft.journal"))
    for idx in range(1, 4):
        j.add(b"command", idx, 1)
    j._destroy()
    whole = encode_record(b"command", 4, 1)
    with open(j.path, "ab") as f:
        f.write(whole[: len(whole) // 2])  # a power loss in the middle of a write
    size_before = os.path.getsize(j.path)
    k = DurableJournal(j.path)
    assert entries(k) == [(1, 1), (2, 1), (3, 1)]
    assert os.path.getsize(j.path) < size_before
    k.add(b"command", 4, 1)
    assert entries(reopen(k)) == [(i, 1) for i in range(1, 5)]


def test_a_corrupted_record_ends_the_log_there(tmp_path: Path) -> None:
    j = DurableJournal(str(tmp_path / "raft.journal"))
    for idx in range(1, 4):
        j.add(b"command", idx, 1)
    offset = j._offsets[1]
    j._destroy()
    with open(j.path, "r+b") as f:
        f.seek(offset + 12)
        f.write(b"X")
    assert entries(DurableJournal(j.path)) == [(1, 1)]


def test_term_vote_and_commit_index_are_plain_json(tmp_path: Path) -> None:
    j = DurableJournal(str(tmp_path / "raft.journal"))
    j.setCurrentTerm(7, "127.0.0.1:2380")
    j.setRaftCommitIndex(42)
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert state == {"term": 7, "voted_for": "127.0.0.1:2380"}  # commit index: lazily
    j.onOneSecondTimer()
    assert json.loads((tmp_path / STATE_FILE).read_text())["commit_index"] == 42
    k = reopen(j)
    assert (k.getCurrentTerm(), k.getVotedForNodeId(), k.getRaftCommitIndex()) == (
        7,
        "127.0.0.1:2380",
        42,
    )


def test_a_gap_is_refused(journal: DurableJournal) -> None:
    with pytest.raises(JournalError, match="gap"):
        journal.add(b"c", 9, 1)


def test_a_pysyncobj_journal_is_converted_with_its_metadata(tmp_path: Path) -> None:
    path = str(tmp_path / "raft.journal")
    old = pj.FileJournal(path)
    for idx in range(3, 8):
        old.add(b"cmd%d" % idx, idx, 2)
    old.setCurrentTerm(5, "127.0.0.1:1")
    old.setRaftCommitIndex(6)
    old.onOneSecondTimer()
    old._destroy()
    j = DurableJournal(path)
    assert entries(j) == [(i, 2) for i in range(3, 8)]
    assert j[0][0] == b"cmd3"
    assert (j.getCurrentTerm(), j.getVotedForNodeId(), j.getRaftCommitIndex()) == (
        5,
        "127.0.0.1:1",
        6,
    )
    assert not os.path.exists(path + ".meta")
    assert entries(reopen(j)) == [(i, 2) for i in range(3, 8)]
