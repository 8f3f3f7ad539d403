"""compute_status / status_differs: phases, conditions and transition times, purely."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from nodeagent.pod_status import (
    ProcessView,
    Running,
    Waiting,
    compute_status,
    phase_of,
    status_differs,
)
from nodeagent.state import Terminated
from protos import objects_pb2 as pb


def pod(*names: str) -> pb.Pod:
    p = pb.Pod(metadata=pb.ObjectMeta(name="web", namespace="default", uid="u1"))
    for n in names:
        p.spec.processes.add(name=n, command=["/bin/true"])
    return p


def term(code: int, reason: str = "", sig: int = 0) -> Terminated:
    reason = reason or ("Completed" if code == 0 else "Error")
    return Terminated(code, sig, reason, "", started_at=10.0, finished_at=20.0)


def running(name: str, ready: bool = True) -> ProcessView:
    return ProcessView(name, Running(10.0), ready=ready, started_once=True, pid=42)


def cond(status: pb.PodStatus, type_: str) -> pb.Condition:
    return next(c for c in status.conditions if c.type == type_)


def test_pending_until_every_process_started() -> None:
    views = [running("a"), ProcessView("b", Waiting("ProcessCreating"))]
    assert phase_of(views)[0] == "Pending"
    assert phase_of([running("a"), running("b")])[0] == "Running"


def test_terminal_phases_need_every_process_final() -> None:
    done_ok = ProcessView("a", term(0), started_once=True, final=True)
    done_bad = ProcessView("b", term(3), started_once=True, final=True)
    will_restart = ProcessView(
        "b", Waiting("CrashLoopBackOff"), last_terminated=term(3), started_once=True
    )
    assert phase_of([done_ok])[0] == "Succeeded"
    assert phase_of([done_ok, done_bad])[0] == "Failed"
    assert phase_of([done_ok, will_restart])[0] == "Running"


def test_start_error_that_will_not_be_retried_fails_the_pod_with_the_reason() -> None:
    failed = ProcessView(
        "b",
        term(128, "StartError"),
        started_once=True,
        final=True,
        start_error='executable "nope" not found in PATH',
    )
    phase, reason, message = phase_of([running("a"), failed])
    assert (phase, reason) == ("Failed", "StartError")
    assert message == 'process b: executable "nope" not found in PATH'
    retried = ProcessView("b", Waiting("CrashLoopBackOff"), started_once=True, start_error="x")
    assert phase_of([running("a"), retried])[0] == "Running"


def test_ready_only_when_every_process_is_ready_and_running() -> None:
    s = compute_status(pod("a", "b"), [running("a"), running("b", ready=False)], now=100.0)
    assert cond(s, "Ready").status == "False"
    assert cond(s, "ProcessesReady").reason == "ProcessesNotReady"
    s = compute_status(pod("a", "b"), [running("a"), running("b")], now=100.0)
    assert cond(s, "Ready").status == "True"
    assert s.process_statuses[0].pid == 42


def test_transition_time_changes_only_on_flips() -> None:
    p = pod("a")
    first = compute_status(p, [running("a", ready=False)], now=100.0)
    p.status.CopyFrom(first)
    same = compute_status(p, [running("a", ready=False)], now=200.0)
    assert not status_differs(first, same)
    assert cond(same, "Ready").last_transition_time.seconds == 100
    flipped = compute_status(p, [running("a")], now=300.0)
    assert status_differs(first, flipped)
    assert cond(flipped, "Ready").last_transition_time.seconds == 300
    assert cond(flipped, "Initialized").last_transition_time.seconds == 100
    assert flipped.start_time.seconds == 100


def test_pod_scheduled_set_by_the_scheduler_is_kept() -> None:
    p = pod("a")
    scheduled = p.status.conditions.add(type="PodScheduled", status="True", reason="Bound")
    scheduled.last_transition_time.FromSeconds(5)
    s = compute_status(p, [running("a")], now=100.0)
    assert cond(s, "PodScheduled") == scheduled


def test_process_states_are_rendered() -> None:
    backing_off = ProcessView(
        "a",
        Waiting("CrashLoopBackOff", "back-off 4s restarting failed process a"),
        last_terminated=term(137, "OOMKilled", sig=9),
        restart_count=3,
        started_once=True,
        pid=99,
    )
    s = compute_status(pod("a"), [backing_off], now=100.0)
    ps = s.process_statuses[0]
    assert ps.state.waiting.reason == "CrashLoopBackOff"
    assert ps.state.waiting.message == "back-off 4s restarting failed process a"
    assert ps.last_state.terminated.reason == "OOMKilled"
    assert ps.last_state.terminated.signal == 9
    assert ps.last_state.terminated.finished_at.seconds == 20
    assert ps.restart_count == 3
    assert ps.pid == 0  # not running
    assert not ps.ready


def test_status_differs_ignores_only_heartbeat_times() -> None:
    s = compute_status(pod("a"), [running("a")], now=100.0)
    other = pb.PodStatus()
    other.CopyFrom(s)
    other.conditions[0].last_heartbeat_time.CopyFrom(Timestamp(seconds=999))
    assert not status_differs(s, other)
    other.process_statuses[0].restart_count = 1
    assert status_differs(s, other)
