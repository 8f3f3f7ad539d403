"""A pod's status as a pure function of what the agent observes about its processes.

``compute_status(pod, views, now)`` never reads a clock or the system: the pod
worker hands it one ``ProcessView`` per process and the time. Condition
``last_transition_time`` changes only when the condition's status flips (the
previous value comes from ``pod.status``), so recomputing an unchanged pod
yields an equal status and ``status_differs`` lets the worker skip the write.

Phase rules (Kubernetes' for containers): Pending until every process has
started once; Failed when the pod cannot start at all (``failure``: e.g.
``PortInUse``), when a process cannot be started and will not be retried,
or when every process has terminated for good with at least one failure;
Succeeded when every process has terminated for good with exit code 0;
Running otherwise (something runs or will be restarted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from mizzen.api.pods import TERMINAL_PHASES
from nodeagent.state import Terminated
from protos import objects_pb2 as pb


@dataclass(frozen=True)
class Waiting:
    reason: str
    message: str = ""


@dataclass(frozen=True)
class Running:
    started_at: float


State = Waiting | Running | Terminated


@dataclass(frozen=True)
class ProcessView:
    name: str
    state: State
    last_terminated: Terminated | None = None
    ready: bool = False
    restart_count: int = 0
    pid: int = 0
    # True once the process has been started (or an attempt failed) at least once.
    started_once: bool = False
    # Terminated and the restart policy will not run it again.
    final: bool = False
    # The last start attempt failed before the process ran (command not found, ...).
    start_error: str = ""


def _ts(seconds: float) -> Timestamp:
    out = Timestamp()
    out.FromNanoseconds(int(seconds * 1e9))
    return out


def _state(state: State) -> pb.ProcessState:
    out = pb.ProcessState()
    match state:
        case Waiting(reason=reason, message=message):
            out.waiting.reason = reason
            out.waiting.message = message
        case Running(started_at=started):
            out.running.started_at.CopyFrom(_ts(started))
        case Terminated() as t:
            out.terminated.CopyFrom(_terminated(t))
    return out


def _terminated(t: Terminated) -> pb.ProcessStateTerminated:
    return pb.ProcessStateTerminated(
        exit_code=t.exit_code,
        signal=t.signal,
        reason=t.reason,
        message=t.message,
        started_at=_ts(t.started_at),
        finished_at=_ts(t.finished_at),
    )


def process_status(view: ProcessView) -> pb.ProcessStatus:
    out = pb.ProcessStatus(
        name=view.name,
        state=_state(view.state),
        ready=view.ready,
        restart_count=view.restart_count,
        pid=view.pid if isinstance(view.state, Running) else 0,
    )
    if view.last_terminated is not None:
        out.last_state.terminated.CopyFrom(_terminated(view.last_terminated))
    return out


def phase_of(views: Sequence[ProcessView]) -> tuple[str, str, str]:
    """(phase, reason, message) per the module's rules."""
    failed_starts = [v for v in views if v.start_error and v.final]
    if failed_starts:
        message = "; ".join(f"process {v.name}: {v.start_error}" for v in failed_starts)
        return "Failed", "StartError", message
    if not views or not all(v.started_once for v in views):
        return "Pending", "", ""
    if all(v.final and isinstance(v.state, Terminated) for v in views):
        codes = [v.state.exit_code for v in views if isinstance(v.state, Terminated)]
        if all(code == 0 for code in codes):
            return "Succeeded", "", ""
        return "Failed", "", ""
    return "Running", "", ""


def _condition(
    old: Sequence[pb.Condition], type_: str, ok: bool, now: float, reason: str = ""
) -> pb.Condition:
    status = "True" if ok else "False"
    previous = next((c for c in old if c.type == type_), None)
    out = pb.Condition(type=type_, status=status, reason=reason)
    if previous is not None and previous.status == status:
        out.last_transition_time.CopyFrom(previous.last_transition_time)
    else:
        out.last_transition_time.CopyFrom(_ts(now))
    return out


AGENT_CONDITIONS = ("PodScheduled", "Initialized", "ProcessesReady", "Ready")
"""The conditions compute_status writes; any other (e.g. DependenciesReady, written by the
dependencies controller) is kept as the pod has it."""


def compute_status(
    pod: pb.Pod,
    views: Sequence[ProcessView],
    now: float,
    host_ip: str = "",
    failure: tuple[str, str] | None = None,
) -> pb.PodStatus:
    """The status the pod should have given views, keeping what others own (PodScheduled,
    and conditions other than AGENT_CONDITIONS).

    failure (reason, message): the pod was refused before any process started."""
    old = pod.status
    phase, reason, message = ("Failed", *failure) if failure else phase_of(views)
    out = pb.PodStatus(phase=phase, reason=reason, message=message, host_ip=host_ip)
    if old.HasField("start_time"):
        out.start_time.CopyFrom(old.start_time)
    else:
        out.start_time.CopyFrom(_ts(now))
    scheduled = next((c for c in old.conditions if c.type == "PodScheduled"), None)
    if scheduled is not None:
        out.conditions.append(scheduled)
    else:
        out.conditions.append(_condition(old.conditions, "PodScheduled", True, now))
    running = phase == "Running"
    all_ready = bool(views) and all(v.ready for v in views) and running
    not_ready = (
        "" if all_ready else ("PodCompleted" if phase in TERMINAL_PHASES else "ProcessesNotReady")
    )
    out.conditions.append(_condition(old.conditions, "Initialized", True, now))
    out.conditions.append(_condition(old.conditions, "ProcessesReady", all_ready, now, not_ready))
    out.conditions.append(_condition(old.conditions, "Ready", all_ready, now, not_ready))
    out.conditions.extend(c for c in old.conditions if c.type not in AGENT_CONDITIONS)
    out.process_statuses.extend(process_status(v) for v in views)
    return out


def status_differs(old: pb.PodStatus, new: pb.PodStatus) -> bool:
    """Whether writing new would change anything but heartbeat timestamps."""
    a, b = pb.PodStatus(), pb.PodStatus()
    a.CopyFrom(old)
    b.CopyFrom(new)
    for status in (a, b):
        for condition in status.conditions:
            condition.ClearField("last_heartbeat_time")
    return a != b
