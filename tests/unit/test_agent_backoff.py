"""Restart decisions: RestartBackoff (doubling, cap, reset after a healthy run) and policies."""

from __future__ import annotations

import pytest

from nodeagent.backoff import RestartBackoff
from nodeagent.cgroups.base import Limits
from nodeagent.state import Terminated
from nodeagent.supervisor import limits_of, should_restart
from protos import objects_pb2 as pb


def test_delays_double_from_initial_up_to_the_cap() -> None:
    b = RestartBackoff(initial=1.0, cap=10.0, reset_after=120.0)
    t = 0.0
    delays = []
    for _ in range(6):
        delays.append(b.delay_after_exit(started_at=t, finished_at=t + 1.0))
        t += 5.0
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_a_run_longer_than_reset_after_starts_over() -> None:
    b = RestartBackoff(initial=1.0, cap=60.0, reset_after=120.0)
    assert b.delay_after_exit(0.0, 1.0) == 1.0
    assert b.delay_after_exit(2.0, 3.0) == 2.0
    assert b.delay_after_exit(5.0, 5.0 + 119.9) == 4.0  # just short of healthy
    assert b.delay_after_exit(200.0, 320.0) == 1.0  # ran 120 s: healthy, reset
    assert b.next_delay == 2.0


def test_reset() -> None:
    b = RestartBackoff(initial=0.5, cap=4.0)
    b.delay_after_exit(0, 0)
    b.delay_after_exit(0, 0)
    b.reset()
    assert b.delay_after_exit(0, 0) == 0.5


@pytest.mark.parametrize(("initial", "cap"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_rejects_bad_bounds(initial: float, cap: float) -> None:
    with pytest.raises(ValueError):
        RestartBackoff(initial=initial, cap=cap)


def _exit(code: int, reason: str = "") -> Terminated:
    return Terminated(code, 0, reason or ("Completed" if code == 0 else "Error"), "", 0.0, 1.0)


@pytest.mark.parametrize(
    ("policy", "exited", "restart"),
    [
        ("Always", _exit(0), True),
        ("Always", _exit(1), True),
        ("Always", _exit(128, "StartError"), True),
        ("OnFailure", _exit(0), False),
        ("OnFailure", _exit(1), True),
        ("OnFailure", _exit(-1, "Unknown"), True),
        ("OnFailure", _exit(128, "StartError"), False),
        ("Never", _exit(1), False),
        ("Never", _exit(0), False),
    ],
)
def test_restart_policy_decisions(policy: str, exited: Terminated, restart: bool) -> None:
    assert should_restart(policy, exited) is restart


def test_limits_come_from_limits_and_the_cpu_request() -> None:
    p = pb.Process(name="web")
    p.resources.limits.memory_bytes = 32 << 20
    p.resources.limits.cpu_millis = 500
    p.resources.requests.cpu_millis = 250
    assert limits_of(p) == Limits(
        cpu_limit_millis=500, cpu_request_millis=250, memory_limit_bytes=32 << 20
    )
    assert limits_of(pb.Process(name="bare")) == Limits()
