"""The watch history is bounded in bytes as well as in events (a replicated, pure rule)."""

from __future__ import annotations

import pickle
from typing import Any

from protos import rpc_pb2
from store.state_machine import DEFAULT_HISTORY_BYTES, StateMachine, event_bytes


def put(key: bytes, value: bytes) -> tuple[str, bytes]:
    return ("put", rpc_pb2.PutRequest(key=key, value=value).SerializeToString())


def txn_puts(*pairs: tuple[bytes, bytes]) -> tuple[str, bytes]:
    ops = [rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=k, value=v)) for k, v in pairs]
    return ("txn", rpc_pb2.TxnRequest(success=ops).SerializeToString())


def apply(sm: StateMachine, *cmds: tuple[Any, ...]) -> None:
    for cmd in cmds:
        assert not isinstance(sm.apply(cmd), Exception)


def revisions(sm: StateMachine) -> list[int]:
    return [e.revision for e in sm.events_after(0)]


def test_old_revisions_go_once_the_history_holds_too_many_bytes() -> None:
    sm = StateMachine(history_bytes_limit=100)
    apply(sm, put(b"a", b"x" * 39), put(b"b", b"x" * 39))  # revs 2, 3: 40 bytes each
    assert (sm.history_bytes, sm.compacted) == (80, -1)
    apply(sm, put(b"c", b"x" * 39))  # 120 > 100: revision 2 goes
    assert (revisions(sm), sm.compacted, sm.history_bytes) == ([3, 4], 2, 80)


def test_whole_revisions_only() -> None:
    sm = StateMachine(history_bytes_limit=100)
    apply(sm, txn_puts((b"a", b"x" * 29), (b"b", b"x" * 29)))  # rev 2: 60 bytes in 2 events
    apply(sm, put(b"c", b"x" * 49))  # 110: the first event of rev 2 would do, all of it goes
    assert (revisions(sm), sm.compacted, sm.history_bytes) == ([3], 2, 50)


def test_the_newest_revision_stays_however_large() -> None:
    sm = StateMachine(history_bytes_limit=10)
    apply(sm, put(b"a", b"x" * 1000))
    assert (revisions(sm), sm.compacted) == ([2], -1)  # watchers still get it
    apply(sm, put(b"b", b"y"))
    assert (revisions(sm), sm.compacted, sm.history_bytes) == ([3], 2, 2)


def test_an_update_counts_its_previous_value_too() -> None:
    sm = StateMachine(history_bytes_limit=0)  # off: nothing is trimmed
    apply(sm, put(b"k", b"x" * 10), put(b"k", b"y" * 20), ("delete", _delete(b"k")))
    sizes = [event_bytes(e) for e in sm.events_after(0)]
    assert sizes == [1 + 10, 1 + 20 + 10, 1 + 20]
    assert sm.history_bytes == sum(sizes) and sm.compacted == -1


def test_compaction_and_the_event_limit_keep_the_count_right() -> None:
    sm = StateMachine(history_limit=3, history_bytes_limit=10_000)
    for i in range(6):
        apply(sm, put(b"k%d" % i, b"x" * 10))  # revs 2..7, 12 bytes each
    assert (revisions(sm), sm.history_bytes) == ([5, 6, 7], 36)
    apply(sm, ("compact", 6))
    assert (revisions(sm), sm.history_bytes) == ([7], 12)


def test_members_applying_the_same_log_trim_alike() -> None:
    log = [put(b"k%d" % (i % 7), bytes([i % 256]) * (i * 13 % 200)) for i in range(300)]
    a, b = (StateMachine(history_bytes_limit=2_000) for _ in range(2))
    apply(a, *log)
    apply(b, *log)
    assert a.compacted == b.compacted > 0
    assert a.events_after(0) == b.events_after(0)
    assert a.history_bytes == b.history_bytes <= 2_000 + 200 * 2 + 2


def test_snapshots_keep_the_limit_and_recount_the_bytes() -> None:
    sm = StateMachine(history_bytes_limit=500)
    apply(sm, *(put(b"k%d" % i, b"x" * 30) for i in range(30)))
    loaded = pickle.loads(pickle.dumps(sm))
    assert (loaded.history_bytes_limit, loaded.history_bytes) == (500, sm.history_bytes)
    state = sm.__getstate__()
    del state["history_bytes_limit"]  # a snapshot written before the limit existed
    old = StateMachine.__new__(StateMachine)
    old.__setstate__(state)
    assert old.history_bytes_limit == DEFAULT_HISTORY_BYTES
    assert old.history_bytes == sm.history_bytes


def _delete(key: bytes) -> bytes:
    return rpc_pb2.DeleteRangeRequest(key=key).SerializeToString()


def test_the_cli_default_is_the_state_machine_default() -> None:
    from mizzen.cli import store_cmd

    assert store_cmd.DEFAULT_HISTORY_BYTES == DEFAULT_HISTORY_BYTES
