"""Mizzen's changes inside pysyncobj (store/pysyncobj_fixes.py), each against its failure."""

from __future__ import annotations

import pickle
import socket
from pathlib import Path
from typing import Any

import pytest

from store import pysyncobj_fixes
from store.pysyncobj_fixes import clamp_commit, is_early_finish, is_snapshot_part, new_entries_end
from store.raft_dump import prepare_data_dir

BATCH = 2**16  # pysyncobj's appendEntriesBatchSizeBytes


def leader_parts(entry: tuple[bytes, int, int]) -> list[dict]:
    """The messages pysyncobj 0.3.17's leader sends for one entry >= BATCH (its labelling)."""
    data = pickle.dumps(entry, protocol=2)
    out = []
    for pos in range(0, len(data), BATCH):
        if pos == 0:
            kind = "start"
        elif pos + BATCH >= len(entry[0]):  # the command's length, not the pickle's
            kind = "finish"
        else:
            kind = "process"
        out.append(
            {"type": "append_entries", "transmission": kind, "data": data[pos : pos + BATCH]}
        )
    return out


def follower_receives(parts: list[dict], fixed: bool) -> list[tuple[bytes, int, int]]:
    """What pysyncobj's follower does with them (``__recvTransmission``), with or without fix."""
    received: Any = ""
    entries = []
    for message in parts:
        if fixed and is_early_finish(received, message):
            message = {**message, "transmission": "process"}
        if message["transmission"] == "start":
            received = message["data"]
        elif message["transmission"] == "process":
            received += message["data"]
        else:
            received += message["data"]
            entries.append(pickle.loads(received))
            received = ""
    return entries


def window_entry() -> tuple[bytes, int, int]:
    """An entry whose pickle ends just past a chunk boundary its command ends before."""
    for size in range(2 * BATCH - 64, 2 * BATCH):
        entry = (b"x" * size, 12345, 7)
        if size <= 2 * BATCH < len(pickle.dumps(entry, protocol=2)):
            return entry
    raise AssertionError("no size in the window")


def test_an_entry_split_with_an_early_finish_fails_without_the_fix() -> None:
    entry = window_entry()
    parts = leader_parts(entry)
    assert [p["transmission"] for p in parts] == ["start", "finish", "finish"]
    with pytest.raises((EOFError, pickle.UnpicklingError)):
        follower_receives(parts, fixed=False)


def test_an_entry_split_with_an_early_finish_arrives_whole() -> None:
    entry = window_entry()
    assert follower_receives(leader_parts(entry), fixed=True) == [entry]


@pytest.mark.parametrize("size", [BATCH, BATCH + 1, 3 * BATCH - 10, 3 * BATCH + 100])
def test_entries_split_normally_still_arrive(size: int) -> None:
    entry = (b"y" * size, 9, 1)
    assert follower_receives(leader_parts(entry), fixed=True) == [entry]


def test_other_pysyncobj_versions_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pysyncobj_fixes, "_installed", False)
    monkeypatch.setattr(pysyncobj_fixes, "VERSION", "0.3.18")
    with pytest.raises(pysyncobj_fixes.UnsupportedPysyncobj, match=r"pysyncobj==0\.3\.17"):
        pysyncobj_fixes.install()


def test_a_syncobj_built_outside_construct_is_refused() -> None:
    pysyncobj_fixes.install()
    with pytest.raises(RuntimeError, match="construct"):
        pysyncobj_fixes._create_journal("/nonexistent/raft.journal")


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


def test_every_snapshot_part_but_the_last_is_answered() -> None:
    def msg(**kw: Any) -> dict[str, Any]:
        return {"type": "append_entries", "term": 3, "commit_index": 9, **kw}

    assert is_snapshot_part(msg(serialized=(b"x", True, False)))
    assert is_snapshot_part(msg(serialized=(b"x", False, False)))
    assert not is_snapshot_part(msg(serialized=(b"", False, True)))  # pysyncobj answers it
    assert not is_snapshot_part(msg(serialized=None))
    assert not is_snapshot_part(msg(entries=[], prevLogIdx=3, prevLogTerm=1))
    assert not is_snapshot_part({"type": "next_node_idx", "serialized": (b"x", True, False)})


def test_a_member_alone_wakes_itself_to_commit_what_it_appended(tmp_path: Path) -> None:
    """Fix 5: without it the next tick (the commit) waited for the 50 ms tick period."""
    from pysyncobj import SyncObj, SyncObjConf, SyncObjConsumer, replicated

    class Counter(SyncObjConsumer):
        def __init__(self) -> None:
            super().__init__()
            self.n = 0

        @replicated
        def incr(self) -> int:
            self.n += 1
            return self.n

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        addr = f"127.0.0.1:{s.getsockname()[1]}"
    journal = prepare_data_dir(
        str(tmp_path / "raft.journal"), str(tmp_path / "raft.snapshot"), fsync=False
    )
    conf = SyncObjConf(
        autoTick=False,
        appendEntriesUseBatch=False,
        journalFile=str(tmp_path / "raft.journal"),
        fullDumpFile=str(tmp_path / "raft.snapshot"),
        appendEntriesPeriod=0.01,
        raftMinTimeout=0.05,
        raftMaxTimeout=0.06,
    )
    counter = Counter()
    so = pysyncobj_fixes.construct(journal, False, lambda: SyncObj(addr, [], conf, [counter]))
    try:
        for _ in range(500):  # a member alone elects itself after its election timeout
            if so._isLeader():
                break
            so.doTick(0.01)
        assert so._isLeader()
        for _ in range(5):
            so.doTick(0)  # settle: the leader's no-op is committed and applied
        results: list[Any] = []
        counter.incr(callback=lambda res, err: results.append((res, err)))
        notifier = so._SyncObj__pipeNotifier
        wakeups: list[int] = []
        notify = notifier.notify

        def counted_notify() -> None:
            wakeups.append(1)
            notify()

        notifier.notify = counted_notify
        so.doTick(0)  # reads the command from the queue and appends it to the log...
        assert wakeups == [1]  # ...and wakes the poller: the next tick starts at once
        assert results == []
        so.doTick(0)  # commits and applies it
        assert results == [(1, 0)]
    finally:
        so.destroy()
        journal._destroy()


def test_only_a_follower_past_its_deadline_and_connected_to_nobody_forgets_its_leader() -> None:
    """Fix 8's decision (the integration test: tests/integration/test_no_leader.py)."""
    from store.pysyncobj_fixes import forgets_leader

    assert forgets_leader(True, True, True, False)
    assert not forgets_leader(True, True, True, True)  # pysyncobj's own election runs
    assert not forgets_leader(True, True, False, False)  # the leader spoke recently
    assert not forgets_leader(True, False, True, False)  # nothing to forget
    assert not forgets_leader(False, True, True, False)  # a leader
