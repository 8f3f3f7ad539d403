"""Lease deadlines and membership steps on a stepped clock: no sleeps, no real time."""

from __future__ import annotations

from store.lease_clock import LeaseClock
from store.membership import CHANGE_GIVE_UP, REMOVE_GRACE, RaftView, next_raft_change


class Stepped:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_lease_is_due_once_at_its_deadline_and_a_keepalive_moves_it() -> None:
    clock = Stepped()
    leases = LeaseClock(clock)
    leases.extend(7, 10)
    assert leases.remaining(7) == 10 and leases.remaining(8) == -1
    clock.now += 9.2
    assert list(leases.due()) == []
    assert leases.remaining(7) == 1  # rounded up, as etcd's TimeToLive
    leases.extend(7, 10)  # a keep-alive applied
    clock.now += 9.9
    assert list(leases.due()) == []
    clock.now += 0.1
    assert list(leases.due()) == [7]
    assert list(leases.due()) == [], "proposed once while its expiry is in flight"
    leases.settled(7)  # the proposal failed (no leader, say): due again on the next tick
    assert list(leases.due()) == [7]
    leases.forget(7)  # the expiry applied
    assert list(leases.due()) == [] and leases.remaining(7) == -1


def test_a_new_leader_gives_every_lease_a_full_ttl_and_an_unknown_one_is_dropped() -> None:
    clock = Stepped()
    leases = LeaseClock(clock)
    leases.extend(1, 5)
    leases.extend(2, 60)
    clock.now += 5
    assert list(leases.due()) == [1]
    leases.restart_all({1: 5, 2: 60})  # became leader: nothing expires early
    assert leases.expiring == set()
    assert leases.remaining(1) == 5 and leases.remaining(2) == 60
    clock.now += 5
    assert list(leases.due()) == [1]
    leases.settled(1, gone=True)  # NOT_FOUND: not in the state any more
    assert leases.remaining(1) == -1


def _view(*, others: set[str], connected: set[str] | None = None) -> RaftView:
    return RaftView(
        is_leader=True,
        self_addr="a:1",
        others=frozenset(others),
        connected=frozenset(others if connected is None else connected),
        settled=True,
    )


def test_membership_adds_then_removes_one_at_a_time() -> None:
    view = _view(others={"b:1"})
    seen: dict[str, float] = {}
    assert next_raft_change(view, {"a:1", "b:1", "c:1"}, None, seen, 0.0) == ("add", "c:1")
    # the add is in flight: nothing else until it is answered or CHANGE_GIVE_UP passed
    assert next_raft_change(view, {"a:1", "b:1", "c:1"}, 10.0, seen, 11.0) is None
    late = 10.0 + CHANGE_GIVE_UP
    assert next_raft_change(view, {"a:1", "b:1", "c:1"}, 10.0, seen, late) == ("add", "c:1")
    assert next_raft_change(view, {"a:1"}, None, seen, 0.0) is None  # b connected: grace
    assert seen == {"b:1": 0.0}
    assert next_raft_change(view, {"a:1"}, None, seen, REMOVE_GRACE / 2) is None
    assert next_raft_change(view, {"a:1"}, None, seen, REMOVE_GRACE) == ("remove", "b:1")


def test_membership_removes_an_unreachable_member_at_once_and_hands_off_its_own_removal() -> None:
    view = _view(others={"b:1"}, connected=set())
    assert next_raft_change(view, {"a:1"}, None, {}, 0.0) == ("remove", "b:1")
    assert next_raft_change(view, {"b:1"}, None, {}, 0.0) == ("transfer", "a:1")
    assert next_raft_change(view, set(), None, {}, 0.0) is None  # not seeded yet
    follower = RaftView(False, "a:1", frozenset({"b:1"}), frozenset(), True)
    assert next_raft_change(follower, {"a:1"}, None, {}, 0.0) is None
