"""Followers truncate their Raft log only at a real conflict (store/raft_node.py patches)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pysyncobj import journal as pj

from store.raft_node import (
    clamp_commit,
    enable_journal_fsync,
    enable_log_matching,
    new_entries_end,
)

# the order make_syncobj uses with --fsync always
enable_journal_fsync()
enable_log_matching()


def entries(journal: Any) -> list[tuple[int, int]]:
    return [(idx, term) for _, idx, term in (journal[i] for i in range(len(journal)))]


def follower_append(journal: Any, prev_idx: int, new: list[tuple[int, int]]) -> None:
    """What pysyncobj's follower does with an AppendEntries whose prevLogIdx matched."""
    first = journal[0][1]
    if prev_idx - first + 1 < len(journal):  # it holds entries after prevLogIdx
        journal.deleteEntriesFrom(prev_idx + 1 - first)
    for idx, term in new:
        journal.add(b"cmd%d" % idx, idx, term)


@pytest.fixture(params=["memory", "file"])
def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    j = pj.MemoryJournal() if request.param == "memory" else pj.FileJournal(str(tmp_path / "j"))
    for idx in range(1, 6):
        j.add(b"cmd%d" % idx, idx, 1)
    yield j
    j._destroy()


def test_a_stale_retransmission_keeps_the_entries_after_it(journal: Any) -> None:
    follower_append(journal, 2, [(3, 1)])
    assert entries(journal) == [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)]
    follower_append(journal, 3, [])  # a heartbeat that is behind the follower
    follower_append(journal, 5, [(6, 1)])
    assert entries(journal)[-2:] == [(5, 1), (6, 1)]


def test_a_conflicting_entry_truncates_from_there(journal: Any) -> None:
    follower_append(journal, 2, [(3, 1), (4, 2)])
    assert entries(journal) == [(1, 1), (2, 1), (3, 1), (4, 2)]
    follower_append(journal, 1, [(2, 3)])
    assert entries(journal) == [(1, 1), (2, 3)]


def test_file_journal_survives_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "j")
    j = pj.FileJournal(path)
    for idx in range(1, 6):
        j.add(b"cmd%d" % idx, idx, 1)
    follower_append(j, 2, [(3, 1)])
    follower_append(j, 3, [(4, 2)])
    j._destroy()
    reopened = pj.FileJournal(path)
    try:
        assert entries(reopened) == [(1, 1), (2, 1), (3, 1), (4, 2)]
    finally:
        reopened._destroy()


def test_new_entries_end() -> None:
    base = {"type": "append_entries", "prevLogIdx": 7, "term": 2}
    assert new_entries_end({**base, "entries": [("c", 8, 2), ("c", 9, 2)]}) == 9
    assert new_entries_end(base) == 7
    assert new_entries_end({**base, "transmission": "finish"}) == 8
    assert new_entries_end({**base, "transmission": "process"}) is None
    assert new_entries_end({"type": "append_entries", "serialized": b""}) is None
    assert new_entries_end({"type": "request_vote"}) is None


@pytest.mark.parametrize(
    ("before", "after", "end", "expected"),
    [
        (5, 9, 7, 7),  # leader commit 9, only up to 7 received: stop at 7
        (5, 7, 7, None),
        (5, 6, 9, None),
        (8, 9, 7, 8),  # never lower what was already committed
        (5, 5, 3, None),
        (5, 9, None, None),
    ],
)
def test_clamp_commit(before: int, after: int, end: int | None, expected: int | None) -> None:
    assert clamp_commit(before, after, end) == expected
