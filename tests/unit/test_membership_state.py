"""Member records in the pure state machine: seed, add, remove, client URLs, snapshots.

Raft's own member set follows these records (store/membership.py); here only
the records and the answers a proposer gets are checked, without Raft.
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from store import snapshot
from store.errors import Code, StoreError
from store.membership import member_id, parse_peer_url, quorum
from store.state_machine import Member, StateMachine

SEED = tuple((n, member_id(n), f"127.0.0.1:{2380 + i}") for i, n in enumerate(("n1", "n2", "n3")))


def seeded() -> StateMachine:
    sm = StateMachine()
    assert sm.apply(("member_seed", 42, SEED)) is True
    return sm


def add(sm: StateMachine, name: str, addr: str, expected: Any = None) -> Any:
    names = tuple(sm.members) if expected is None else expected
    return sm.apply(("member_add", name, member_id(name), addr, names))


def remove(sm: StateMachine, name: str, expected: Any = None) -> Any:
    names = tuple(sm.members) if expected is None else expected
    return sm.apply(("member_remove", member_id(name), names))


def test_seed_records_every_member_once() -> None:
    sm = seeded()
    assert sorted(sm.members) == ["n1", "n2", "n3"]
    assert sm.members["n2"] == Member("n2", member_id("n2"), "127.0.0.1:2381")
    assert sm.cluster_id == 42
    # a second seed (another member's, or a restarted one's) changes nothing
    assert sm.apply(("member_seed", 7, (("x", 1, "127.0.0.1:9"),))) is False
    assert sorted(sm.members) == ["n1", "n2", "n3"]
    assert sm.cluster_id == 42


def test_add_returns_the_member_and_records_it() -> None:
    sm = seeded()
    added = add(sm, "n4", "127.0.0.1:2480")
    assert added == Member("n4", member_id("n4"), "127.0.0.1:2480")
    assert sm.members["n4"] == added


@pytest.mark.parametrize(
    ("name", "addr", "code", "needle"),
    [
        ("n2", "127.0.0.1:2480", Code.ALREADY_EXISTS, "member name 'n2' already exists"),
        # etcd 3.4's code and message
        ("n4", "127.0.0.1:2381", Code.FAILED_PRECONDITION, "etcdserver: Peer URLs already exists"),
    ],
)
def test_add_refuses_duplicates(name: str, addr: str, code: Code, needle: str) -> None:
    sm = seeded()
    err = add(sm, name, addr)
    assert isinstance(err, StoreError) and err.code == code and needle in err.message
    assert sorted(sm.members) == ["n1", "n2", "n3"]


def test_a_change_proposed_against_an_older_member_set_is_refused() -> None:
    sm = seeded()
    before = tuple(sm.members)
    assert isinstance(add(sm, "n4", "127.0.0.1:2480", before), Member)
    err = add(sm, "n5", "127.0.0.1:2481", before)  # proposed concurrently with n4's add
    assert isinstance(err, StoreError) and err.code == Code.FAILED_PRECONDITION
    err = remove(sm, "n1", before)
    assert isinstance(err, StoreError) and err.code == Code.FAILED_PRECONDITION
    assert sorted(sm.members) == ["n1", "n2", "n3", "n4"]


def test_changes_before_the_seed_are_refused() -> None:
    sm = StateMachine()
    err = add(sm, "n4", "127.0.0.1:2480", ())
    assert isinstance(err, StoreError) and err.code == Code.FAILED_PRECONDITION


def test_remove_unknown_id_is_etcds_member_not_found() -> None:
    sm = seeded()
    err = sm.apply(("member_remove", 12345, tuple(sm.members)))
    assert err == StoreError(Code.NOT_FOUND, "etcdserver: member not found")


def test_remove_returns_the_member_and_never_the_last_one() -> None:
    sm = seeded()
    assert remove(sm, "n2") == seed_member("n2")
    assert remove(sm, "n1") == seed_member("n1")
    err = remove(sm, "n3")
    assert isinstance(err, StoreError) and err.code == Code.FAILED_PRECONDITION
    assert list(sm.members) == ["n3"]


def seed_member(name: str) -> Member:
    n, i, a = next(s for s in SEED if s[0] == name)
    return Member(n, i, a)


def test_client_urls_attach_to_an_existing_record_only() -> None:
    sm = StateMachine()
    err = sm.apply(("member_attrs", "n1", ["http://127.0.0.1:2379"]))
    assert isinstance(err, StoreError) and err.code == Code.NOT_FOUND
    sm.apply(("member_seed", 1, SEED))
    rec = sm.apply(("member_attrs", "n1", ["http://127.0.0.1:2379"]))
    assert rec.client_urls == ("http://127.0.0.1:2379",)
    assert sm.members["n1"].peer_addr == "127.0.0.1:2380"


def test_malformed_member_commands_return_errors_never_raise() -> None:
    sm = seeded()
    for cmd in [
        ("member_add",),
        ("member_add", "n4", "not-an-int", "a:1", ()),
        ("member_remove", None, ()),
        ("member_frobnicate",),
    ]:
        assert isinstance(sm.apply(cmd), StoreError), cmd
    assert sorted(sm.members) == ["n1", "n2", "n3"]
    fresh = StateMachine()
    assert isinstance(fresh.apply(("member_seed", 1, 5)), StoreError)
    assert isinstance(fresh.apply(("member_seed", 1, (("n1", 1),))), StoreError)
    assert fresh.members == {}


def test_member_commands_do_not_bump_the_revision_or_the_kv_hash() -> None:
    sm = StateMachine()
    rev, h = sm.revision, sm.hash()
    sm.apply(("member_seed", 1, SEED))
    add(sm, "n4", "127.0.0.1:2480")
    remove(sm, "n4")
    assert (sm.revision, sm.hash()) == (rev, h)


def test_records_survive_pickling_and_old_states_load_without_them() -> None:
    sm = seeded()
    add(sm, "n4", "127.0.0.1:2480")
    copy = pickle.loads(pickle.dumps(sm))
    assert copy.members == sm.members and copy.cluster_id == 42
    old = sm.__getstate__()
    del old["cluster_id"]
    old["members"] = {"n1": ["http://127.0.0.1:2379"]}  # the format before member records
    legacy = StateMachine.__new__(StateMachine)
    legacy.__setstate__(old)
    assert legacy.members == {} and legacy.cluster_id == 0
    assert legacy.apply(("member_seed", 3, SEED)) is True


def test_snapshot_restore_drops_the_old_clusters_members() -> None:
    sm = seeded()
    data = snapshot.encode(sm)
    assert sm.members
    # the file holds no members (they belong to the old cluster) ...
    assert snapshot.decode(data).members == {} and snapshot.decode(data).cluster_id == 0
    # ... and for_new_cluster drops them from a live state too
    fresh = snapshot.for_new_cluster(sm)
    assert fresh.members == {} and fresh.cluster_id == 0 and fresh.hash() == sm.hash()


@pytest.mark.parametrize(
    ("url", "want"),
    [
        ("127.0.0.1:2480", (None, "127.0.0.1:2480")),
        ("http://127.0.0.1:2480", (None, "127.0.0.1:2480")),
        ("http://n4@127.0.0.1:2480/", ("n4", "127.0.0.1:2480")),
        ("https://n4@host.example:1", ("n4", "host.example:1")),
    ],
)
def test_parse_peer_url(url: str, want: tuple[str | None, str]) -> None:
    assert parse_peer_url(url) == want


@pytest.mark.parametrize("url", ["", "127.0.0.1", "http://h:port", "http://h:1/path"])
def test_parse_peer_url_rejects(url: str) -> None:
    with pytest.raises(StoreError) as exc:
        parse_peer_url(url)
    assert exc.value.code == Code.INVALID_ARGUMENT and "peerURLs" in exc.value.message


def test_quorum() -> None:
    assert [quorum(n) for n in range(1, 6)] == [1, 2, 2, 3, 3]


def test_an_unnamed_member_is_claimed_by_its_first_publish() -> None:
    """etcdctl's member add sends no name: the record is unnamed (listed `unstarted`)
    until the member starts and publishes its name with its Raft address."""
    sm = seeded()
    added = sm.apply(("member_add", "", 77, "127.0.0.1:2480", ("n1", "n2", "n3")))
    assert added == Member("", 77, "127.0.0.1:2480")
    assert sorted(sm.members) == ["@127.0.0.1:2480", "n1", "n2", "n3"]
    other = sm.apply(("member_add", "", 78, "127.0.0.1:2481", tuple(sorted(sm.members))))
    assert other.key == "@127.0.0.1:2481"
    err = sm.apply(("member_attrs", "n4", ["http://127.0.0.1:2379"]))  # no address: not found
    assert isinstance(err, StoreError) and err.code == Code.NOT_FOUND
    rec = sm.apply(("member_attrs", "n4", ["http://127.0.0.1:2379"], "127.0.0.1:2480"))
    assert rec == Member("n4", 77, "127.0.0.1:2480", ("http://127.0.0.1:2379",))
    assert sorted(sm.members) == ["@127.0.0.1:2481", "n1", "n2", "n3", "n4"]
    removed = sm.apply(("member_remove", 78, tuple(sorted(sm.members))))
    assert removed.id == 78 and "@127.0.0.1:2481" not in sm.members


def test_member_update_moves_the_raft_address() -> None:
    sm = seeded()
    sm.apply(("member_add", "", 77, "127.0.0.1:2480", ("n1", "n2", "n3")))
    keys = tuple(sorted(sm.members))
    moved = sm.apply(("member_update", 77, "127.0.0.1:2490", keys))
    assert moved == Member("", 77, "127.0.0.1:2490") and "@127.0.0.1:2490" in sm.members
    keys = tuple(sorted(sm.members))
    n2 = sm.members["n2"]
    taken = sm.apply(("member_update", 77, n2.peer_addr, keys))
    assert taken == StoreError(Code.FAILED_PRECONDITION, "etcdserver: Peer URLs already exists")
    unknown = sm.apply(("member_update", 5, "127.0.0.1:1", keys))
    assert unknown == StoreError(Code.NOT_FOUND, "etcdserver: member not found")
    stale = sm.apply(("member_update", 77, "127.0.0.1:2491", ("n1",)))
    assert isinstance(stale, StoreError) and stale.code == Code.FAILED_PRECONDITION
    renamed = sm.apply(("member_update", n2.id, "127.0.0.1:2492", keys))
    assert renamed == Member("n2", n2.id, "127.0.0.1:2492", n2.client_urls)
