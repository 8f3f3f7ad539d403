"""Raft snapshots and the journal as one protocol (store/raft_dump.py)."""

from __future__ import annotations

import gzip
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from pysyncobj.config import SERIALIZER_STATE

from mizzen.testing.waits import pid_alive
from store import raft_dump
from store.raft_dump import (
    DumpHead,
    ForkingDumper,
    encode_dump,
    load_dump,
    prepare_data_dir,
    read_head,
    reconcile,
)
from store.raft_journal import DurableJournal, JournalError

REPO = Path(__file__).resolve().parents[2]


def entry(idx: int, term: int = 1) -> tuple[bytes, int, int]:
    return (b"cmd%d" % idx, idx, term)


def head(s: int, term: int = 1) -> DumpHead:
    return DumpHead(prev=entry(s - 1, term), last=entry(s, term))


def journal_with(
    tmp_path: Path, idxs: range, term: int = 1, commit: int | None = None
) -> DurableJournal:
    j = DurableJournal(str(tmp_path / "raft.journal"))
    for i in idxs:
        j.add(*entry(i, term))
    if commit is not None:
        j.setRaftCommitIndex(commit)
    return j


def indexes(j: DurableJournal) -> list[int]:
    return [e[1] for e in j[:]]


# ------------------------------------------------------------------ reconcile


def test_no_snapshot_and_a_journal_from_the_start(tmp_path: Path) -> None:
    j = journal_with(tmp_path, range(1, 6), commit=5)
    assert reconcile(j, None) == "no snapshot"
    assert indexes(j) == [1, 2, 3, 4, 5]


def test_no_snapshot_but_a_compacted_journal_is_refused(tmp_path: Path) -> None:
    j = journal_with(tmp_path, range(5, 9))
    with pytest.raises(JournalError, match=r"entries 1\.\.4 are missing"):
        reconcile(j, None)


def test_a_snapshot_the_journal_was_not_trimmed_for_keeps_every_newer_entry(
    tmp_path: Path,
) -> None:
    # the adversarial run's case: the snapshot (at 10) was installed, the journal
    # (1..20) not trimmed yet, and pysyncobj then threw away 11..20
    j = journal_with(tmp_path, range(1, 21), commit=20)
    reconcile(j, head(10))
    assert indexes(j) == list(range(9, 21))
    assert indexes(DurableJournal(j.path)) == list(range(9, 21))  # on disk too


def test_a_journal_already_trimmed_is_left_as_it_is(tmp_path: Path) -> None:
    j = journal_with(tmp_path, range(9, 21), commit=20)
    before = os.stat(j.path).st_ino
    reconcile(j, head(10))
    assert indexes(j) == list(range(9, 21))
    assert os.stat(j.path).st_ino == before  # not rewritten


@pytest.mark.parametrize("idxs", [range(1, 8), range(0)], ids=["older", "empty"])
def test_a_journal_older_than_the_snapshot_becomes_the_snapshot_s_entries(
    tmp_path: Path, idxs: range
) -> None:
    j = journal_with(tmp_path, idxs, commit=7 if idxs else None)
    reconcile(j, head(10))
    assert j[:] == [entry(9), entry(10)]


def test_a_journal_that_diverges_from_the_snapshot_is_dropped_after_it(tmp_path: Path) -> None:
    # a snapshot received from the leader, a crash before the journal was cleared;
    # this member's entries from 10 on were never committed (another term)
    j = journal_with(tmp_path, range(1, 15), term=1, commit=9)
    reconcile(j, head(10, term=2))
    assert [(e[1], e[2]) for e in j[:]] == [(9, 2), (10, 2)]


def test_a_gap_after_the_snapshot_is_refused(tmp_path: Path) -> None:
    j = journal_with(tmp_path, range(13, 21), commit=20)
    with pytest.raises(JournalError, match=r"entries 11\.\.12 are missing"):
        reconcile(j, head(10))


def test_a_commit_index_beyond_the_log_is_refused_not_clamped(tmp_path: Path) -> None:
    j = journal_with(tmp_path, range(9, 15), commit=20)
    with pytest.raises(JournalError, match=r"commit index .* is 20 but its Raft log ends at 14"):
        reconcile(j, head(10))


def test_without_a_snapshot_too_a_commit_index_beyond_the_log_is_refused(
    tmp_path: Path,
) -> None:
    j = journal_with(tmp_path, range(1, 4), commit=7)
    with pytest.raises(JournalError, match="4 committed entries are missing"):
        reconcile(j, None)


# ------------------------------------------------------------------ dump file


def dump_tuple(s: int) -> tuple:
    return ([{"x": 1}, {"state": {"k": b"v" * 100}}], entry(s), entry(s - 1), {"n1"})


def test_a_dump_names_its_entries_in_a_header(tmp_path: Path) -> None:
    path = tmp_path / "raft.snapshot"
    path.write_bytes(encode_dump(dump_tuple(10)))
    assert read_head(str(path)) == head(10)
    assert load_dump(str(path)) == dump_tuple(10)
    assert read_head(str(tmp_path / "missing")) is None


def test_pysyncobj_s_own_dump_format_is_still_read(tmp_path: Path) -> None:
    path = tmp_path / "raft.snapshot"
    path.write_bytes(gzip.compress(pickle.dumps(dump_tuple(7), protocol=2)))
    assert read_head(str(path)) == head(7)
    assert load_dump(str(path))[1] == entry(7)


def test_prepare_removes_leftovers_and_reconciles(tmp_path: Path) -> None:
    (tmp_path / "raft.snapshot").write_bytes(encode_dump(dump_tuple(10)))
    for leftover in ("raft.snapshot.tmp", "raft.snapshot.1.tmp", "raft.journal.tmp"):
        (tmp_path / leftover).write_bytes(b"half")
    j = journal_with(tmp_path, range(1, 13), commit=12)
    j._destroy()
    k = prepare_data_dir(
        str(tmp_path / "raft.journal"), str(tmp_path / "raft.snapshot"), fsync=True
    )
    assert indexes(k) == [9, 10, 11, 12]
    assert sorted(os.listdir(tmp_path)) == ["raft.journal", "raft.snapshot", "raft.state"]


# ------------------------------------------------------------------ dumper


def wait_state(d: ForkingDumper, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state, _ = d.checkSerializing()
        if state != SERIALIZER_STATE.SERIALIZING:
            return state
        time.sleep(0.01)
    raise AssertionError("the snapshot child did not finish")


def test_the_member_installs_the_snapshot_the_child_wrote(tmp_path: Path) -> None:
    d = ForkingDumper(str(tmp_path / "raft.snapshot"), 1024)
    d.serialize(dump_tuple(10), 9)
    assert wait_state(d) == SERIALIZER_STATE.SUCCESS
    assert load_dump(str(tmp_path / "raft.snapshot")) == dump_tuple(10)
    assert oct(os.stat(tmp_path / "raft.snapshot").st_mode & 0o777) == "0o600"
    assert not (tmp_path / "raft.snapshot.tmp").exists()


def test_an_older_local_snapshot_never_replaces_a_newer_one(tmp_path: Path) -> None:
    d = ForkingDumper(str(tmp_path / "raft.snapshot"), 1024)
    d.serialize(dump_tuple(20), 19)
    assert wait_state(d) == SERIALIZER_STATE.SUCCESS
    d.serialize(dump_tuple(10), 9)
    assert wait_state(d) == SERIALIZER_STATE.FAILED
    assert read_head(str(tmp_path / "raft.snapshot")) == head(20)


def leader_parts(tmp_path: Path, s: int, batch: int = 64, name: str = "leader") -> list[Any]:
    """Every part a leader holding a snapshot at s sends one follower, in order."""
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    (folder / "raft.snapshot").write_bytes(encode_dump(dump_tuple(s)))
    leader = ForkingDumper(str(folder / "raft.snapshot"), batch)
    parts = []
    while True:
        part = leader.getTransmissionData("follower")
        parts.append(part)
        if part[2]:
            return parts


def receive(follower: ForkingDumper, parts: list[Any]) -> list[bool]:
    return [follower.setTransmissionData(part) for part in parts]


def test_a_snapshot_received_from_the_leader_cancels_a_local_one(tmp_path: Path) -> None:
    d = ForkingDumper(str(tmp_path / "raft.snapshot"), 1024)
    d.serialize(dump_tuple(5), 4)
    child = d.pid
    assert receive(d, leader_parts(tmp_path, 30))[-1] is True
    assert not pid_alive(child)
    assert d.checkSerializing()[0] == SERIALIZER_STATE.NOT_SERIALIZING
    assert read_head(str(tmp_path / "raft.snapshot")) == head(30)


def test_transmission_sends_the_file_in_parts_with_token_and_offset(tmp_path: Path) -> None:
    parts = leader_parts(tmp_path, 10)
    assert [p[1] for p in parts] == [True] + [False] * (len(parts) - 1)
    tokens = {p[0][:8] for p in parts}
    assert len(tokens) == 1
    offsets = [int.from_bytes(p[0][8:16], "little") for p in parts]
    whole = (tmp_path / "leader" / "raft.snapshot").read_bytes()
    assert offsets == [64 * i for i in range(len(parts) - 1)] + [len(whole)]
    assert parts[-1][0][16:] == b""  # the last part only says "done"
    assert b"".join(p[0][16:] for p in parts) == whole


def test_parts_of_two_transmissions_are_never_spliced(tmp_path: Path) -> None:
    # a leader regaining leadership continues an old transmission where it left off,
    # while the follower has started another one since
    old, new = leader_parts(tmp_path, 10, name="a"), leader_parts(tmp_path, 20, name="b")
    follower = ForkingDumper(str(tmp_path / "raft.snapshot"), 64)
    assert receive(follower, [new[0], *old[1:]]) == [False] * len(old)
    assert not (tmp_path / "raft.snapshot").exists()  # nothing installed
    assert receive(follower, new)[-1] is True  # a whole transmission then goes through
    assert read_head(str(tmp_path / "raft.snapshot")) == head(20)


def test_a_transmission_goes_on_across_local_snapshots_and_holds_back_compaction(
    tmp_path: Path,
) -> None:
    # restarting it at every local snapshot meant a big state never reached a follower
    path = tmp_path / "raft.snapshot"
    path.write_bytes(encode_dump(dump_tuple(10)))
    leader = ForkingDumper(str(path), 64)
    assert leader.retained_from() is None
    parts = [leader.getTransmissionData("follower")]
    assert leader.retained_from() == 9  # the entries after snapshot 10 stay in the log
    leader.serialize(dump_tuple(20), 19)
    parts.append(leader.getTransmissionData("follower"))  # while the child writes
    assert wait_state(leader) == SERIALIZER_STATE.SUCCESS
    assert read_head(str(path)) == head(20)
    while not parts[-1][2]:
        parts.append(leader.getTransmissionData("follower"))
    assert leader.retained_from() is None
    follower = ForkingDumper(str(tmp_path / "f.snapshot"), 64)
    assert receive(follower, parts)[-1] is True
    assert read_head(str(tmp_path / "f.snapshot")) == head(10)  # whole, not spliced with 20


def test_a_transmission_nobody_continues_stops_holding_back_compaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a member that stopped leading never calls getTransmissionData again
    path = tmp_path / "raft.snapshot"
    path.write_bytes(encode_dump(dump_tuple(10)))
    d = ForkingDumper(str(path), 64)
    d.getTransmissionData("follower")
    assert d.retained_from() == 9
    later = time.monotonic() + raft_dump.STALE_TRANSMISSION + 1
    monkeypatch.setattr(raft_dump.time, "monotonic", lambda: later)
    assert d.retained_from() is None
    assert d.getTransmissionData("follower")[1] is True  # a new one, from the start


def test_a_damaged_snapshot_is_never_installed(tmp_path: Path) -> None:
    follower = ForkingDumper(str(tmp_path / "raft.snapshot"), 64)
    assert receive(follower, leader_parts(tmp_path, 10, name="a"))[-1] is True
    parts = leader_parts(tmp_path, 20, name="b")
    framed, first, last = parts[len(parts) // 2]
    parts[len(parts) // 2] = (framed[:-1] + bytes([framed[-1] ^ 1]), first, last)
    assert receive(follower, parts)[-1] is False
    assert read_head(str(tmp_path / "raft.snapshot")) == head(10)  # the old one stays
    assert load_dump(str(tmp_path / "raft.snapshot")) == dump_tuple(10)


def test_a_member_with_a_damaged_snapshot_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "raft.snapshot"
    data = bytearray(encode_dump(dump_tuple(10)))
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(JournalError, match="damaged"):
        prepare_data_dir(str(tmp_path / "raft.journal"), str(path), fsync=False)
    with pytest.raises(JournalError, match="damaged"):
        load_dump(str(path))


_MEMBER = textwrap.dedent(
    """
    import os, socket, sys, threading, time
    from store.raft_dump import ForkingDumper
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(sys.argv[2])))
    listener.listen()
    d = ForkingDumper(sys.argv[1], 1024)
    def tick():  # pysyncobj forks from its tick thread
        d.serialize(([{}, {}], (b"c", 10, 1), (b"c", 9, 1), set()), 9)
        print(d.pid, flush=True)
        time.sleep(600)
    threading.Thread(target=tick, daemon=True).start()
    time.sleep(600)
    """
)


def test_the_snapshot_child_dies_with_its_member_and_holds_no_port(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "arm.snapshot_child_started").write_text("60")
    env = {**os.environ, "MIZZEN_FAILPOINT_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    member = subprocess.Popen(
        [sys.executable, "-c", _MEMBER, str(tmp_path / "raft.snapshot"), str(port)],
        stdout=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    child = 0
    try:
        assert member.stdout is not None
        child = int(member.stdout.readline())
        deadline = time.monotonic() + 10
        while not list(tmp_path.glob("failpoint.snapshot_child_started.*")):
            assert time.monotonic() < deadline, "the child never reached its failpoint"
            time.sleep(0.02)
        fds = os.listdir(f"/proc/{child}/fd")
        sockets = [f for f in fds if os.readlink(f"/proc/{child}/fd/{f}").startswith("socket:")]
        assert sockets == []  # inherited descriptors closed: the Raft port is not held
        os.kill(member.pid, signal.SIGKILL)
        member.wait(10)
        deadline = time.monotonic() + 5
        while pid_alive(child):
            assert time.monotonic() < deadline, "the snapshot child outlived its member"
            time.sleep(0.02)
        assert not (tmp_path / "raft.snapshot").exists()  # it never installs
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
    finally:
        for pid in (member.pid, child):
            if pid and pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        member.wait(10)
