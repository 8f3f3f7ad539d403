"""Expectations: uid-tracked creations and deletions checked against the cache, with a TTL."""

from __future__ import annotations

from controllers.expectations import Expectations
from controllers.podutil import set_timestamp
from protos import objects_pb2 as pb


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pod(uid: str, terminating: bool = False) -> pb.Pod:
    p = pb.Pod(metadata=pb.ObjectMeta(name=f"p-{uid}", namespace="default", uid=uid))
    if terminating:
        set_timestamp(p.metadata.deletion_timestamp, 99.0)
    return p


def test_unknown_key_is_satisfied() -> None:
    exp = Expectations(clock=Clock())
    assert exp.satisfied("ns/a", [])
    assert exp.pending("ns/a") == (0, 0)


def test_creation_is_met_once_the_cache_shows_the_uid() -> None:
    exp = Expectations(clock=Clock())
    exp.expect_creations("ns/a", ["u1", "u2"])
    assert not exp.satisfied("ns/a", [pod("u1")])
    assert exp.pending("ns/a") == (1, 0)
    assert exp.satisfied("ns/a", [pod("u1"), pod("u2")])
    assert exp.pending("ns/a") == (0, 0)


def test_deletion_is_met_when_the_pod_is_gone_or_terminating() -> None:
    exp = Expectations(clock=Clock())
    exp.expect_deletions("ns/a", ["u1", "u2"])
    assert not exp.satisfied("ns/a", [pod("u1"), pod("u2")])
    assert not exp.satisfied("ns/a", [pod("u1", terminating=True), pod("u2")])
    assert exp.satisfied("ns/a", [pod("u1", terminating=True)])


def test_observed_deletion_meets_a_creation_the_cache_never_listed() -> None:
    exp = Expectations(clock=Clock())
    exp.expect_create("ns/a", "u1")
    assert not exp.satisfied("ns/a", [])
    exp.observe_deleted("ns/a", "u1")
    assert exp.satisfied("ns/a", [])


def test_lower_withdraws_a_failed_write() -> None:
    exp = Expectations(clock=Clock())
    exp.expect_deletions("ns/a", ["u1", "u2"])
    exp.lower("ns/a", "u2")
    assert not exp.satisfied("ns/a", [pod("u1"), pod("u2")])
    exp.lower("ns/a", "u1")
    assert exp.satisfied("ns/a", [pod("u1"), pod("u2")])


def test_keys_are_independent_and_forget_drops_one() -> None:
    exp = Expectations(clock=Clock())
    exp.expect_create("ns/a", "u1")
    exp.expect_create("ns/b", "u2")
    exp.forget("ns/a")
    assert exp.satisfied("ns/a", [])
    assert not exp.satisfied("ns/b", [])


def test_unmet_expectations_expire_after_the_ttl_from_the_latest_expect() -> None:
    clock = Clock()
    exp = Expectations(clock=clock, ttl=60)
    exp.expect_create("ns/a", "u1")
    assert exp.recheck_in("ns/a") == 60
    clock.now += 40
    exp.expect_delete("ns/a", "u2")
    assert exp.recheck_in("ns/a") == 60
    clock.now += 59
    assert not exp.satisfied("ns/a", [pod("u2")])
    assert exp.recheck_in("ns/a") == 1
    clock.now += 1
    assert exp.satisfied("ns/a", [pod("u2")])
    assert exp.pending("ns/a") == (0, 0)
    assert exp.recheck_in("ns/a") == 60
