"""Node-agent metrics against a fake agent: restart accounting, events, health, scrape."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

from prometheus_client import CollectorRegistry

from nodeagent.metrics import AgentMetrics, CountingEvents, bound_at
from nodeagent.pod_status import Running, Waiting
from nodeagent.state import Terminated
from nodeagent.stats import NodeUsage, PodUsage
from protos import objects_pb2 as pb

NOW = 1_700_000_000.0


@dataclass
class FakeSupervisor:
    name: str
    state: Any
    restarts: int = 0

    @property
    def record(self) -> SimpleNamespace:
        return SimpleNamespace(restart_count=self.restarts)


@dataclass
class FakeWorker:
    uid: str
    phase: str = "Running"
    supervisors: list[FakeSupervisor] = field(default_factory=list)

    @property
    def pod(self) -> pb.Pod:
        p = pod(self.uid)
        p.status.phase = self.phase
        return p


class FakeSampler:
    def pods(self) -> list[PodUsage]:
        return [PodUsage("default", "web", "u1", 250, 1 << 20, ())]

    def node(self) -> NodeUsage:
        return NodeUsage(500, 2 << 20, 8 << 30, 2000)


class FakeAgent:
    def __init__(self) -> None:
        self.workers: dict[str, FakeWorker] = {}
        self.sampler = FakeSampler()
        self.config = SimpleNamespace(heartbeat_interval=1.0)
        self.renewed: float | None = None

    def lease_renewed_at(self) -> float | None:
        return self.renewed


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class Sink:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def record(self, obj: Any, type: str, reason: str, message: str) -> None:
        self.reasons.append(reason)


def pod(uid: str, bound: float | None = None, created: float = NOW - 10) -> pb.Pod:
    p = pb.Pod(metadata=pb.ObjectMeta(name=uid, namespace="default", uid=uid))
    p.metadata.creation_timestamp.seconds = int(created)
    if bound is not None:
        cond = p.status.conditions.add(type="PodScheduled", status="True")
        cond.last_transition_time.seconds = int(bound)
    return p


def setup() -> tuple[FakeAgent, AgentMetrics, Clock]:
    agent, clock = FakeAgent(), Clock()
    metrics = AgentMetrics(cast(Any, agent), CollectorRegistry(auto_describe=False), wall=clock)
    return agent, metrics, clock


def value(metrics: AgentMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def add(agent: FakeAgent, metrics: AgentMetrics, worker: FakeWorker, readopted: bool) -> None:
    agent.workers[worker.uid] = worker
    metrics.worker_added(cast(Any, worker), readopted)


def test_restarts_exclude_readopted_history_and_survive_the_pod() -> None:
    agent, metrics, _ = setup()
    fresh = FakeWorker("u1", supervisors=[FakeSupervisor("main", Running(NOW))])
    old = FakeWorker("u2", supervisors=[FakeSupervisor("main", Running(NOW), restarts=7)])
    add(agent, metrics, fresh, readopted=False)
    add(agent, metrics, old, readopted=True)
    assert value(metrics, "mizzen_agent_restarts_total") == 0
    fresh.supervisors[0].restarts = 2
    old.supervisors[0].restarts = 8
    assert value(metrics, "mizzen_agent_restarts_total") == 3
    del agent.workers["u1"]
    metrics.worker_removed(cast(Any, fresh))
    assert value(metrics, "mizzen_agent_restarts_total") == 3


def test_pods_by_phase_processes_by_state_and_usage() -> None:
    agent, metrics, _ = setup()
    exited = Terminated(0, 0, "Completed", "", NOW - 5, NOW)
    add(
        agent,
        metrics,
        FakeWorker(
            "u1",
            supervisors=[
                FakeSupervisor("a", Running(NOW)),
                FakeSupervisor("b", Waiting("CrashLoopBackOff")),
                FakeSupervisor("c", exited),
            ],
        ),
        readopted=False,
    )
    add(agent, metrics, FakeWorker("u2", phase="Succeeded"), readopted=False)
    assert value(metrics, "mizzen_agent_pods", phase="Running") == 1
    assert value(metrics, "mizzen_agent_pods", phase="Succeeded") == 1
    assert value(metrics, "mizzen_agent_pods", phase="Failed") == 0
    for state in ("running", "waiting", "terminated"):
        assert value(metrics, "mizzen_agent_processes", state=state) == 1
    assert value(metrics, "mizzen_agent_pod_cpu_millicores", namespace="default", pod="web") == 250
    assert (
        value(metrics, "mizzen_agent_pod_memory_bytes", namespace="default", pod="web") == 1 << 20
    )


def test_events_count_oom_kills_probe_failures_and_first_starts() -> None:
    agent, metrics, clock = setup()
    sink = Sink()
    events = CountingEvents(sink, metrics)
    add(agent, metrics, FakeWorker("u1"), readopted=False)
    add(agent, metrics, FakeWorker("u2"), readopted=True)
    fresh, readopted = pod("u1", bound=NOW - 3), pod("u2", bound=NOW - 100)
    events.record(fresh, "Normal", "Started", "Started process main")
    clock.now += 60
    events.record(fresh, "Normal", "Started", "Started process main")  # a restart: not timed
    events.record(readopted, "Normal", "Started", "Started process main")  # history: not timed
    events.record(fresh, "Warning", "OOMKilled", "Process main was killed: out of memory")
    events.record(fresh, "Warning", "Unhealthy", "Liveness probe failed: exit 1")
    events.record(fresh, "Warning", "Unhealthy", "Readiness probe failed: exit 1")
    events.record(fresh, "Warning", "Unhealthy", "Readiness probe failed: exit 1")
    assert sink.reasons == ["Started"] * 3 + ["OOMKilled"] + ["Unhealthy"] * 3
    assert value(metrics, "mizzen_agent_start_latency_seconds_count") == 1
    assert value(metrics, "mizzen_agent_start_latency_seconds_sum") == 3
    assert value(metrics, "mizzen_agent_oom_kills_total") == 1
    assert value(metrics, "mizzen_agent_probe_failures_total", probe="liveness") == 1
    assert value(metrics, "mizzen_agent_probe_failures_total", probe="readiness") == 2


def test_bound_at_prefers_the_scheduled_condition_over_creation() -> None:
    assert bound_at(pod("u", bound=NOW - 2)) == NOW - 2
    assert bound_at(pod("u")) == NOW - 10


def test_serving_needs_a_recent_lease_renewal() -> None:
    agent, metrics, clock = setup()
    assert not metrics.serving
    agent.renewed = NOW
    clock.now += 4
    assert metrics.serving and value(metrics, "mizzen_agent_serving") == 1
    clock.now += 2  # more than 5 heartbeat intervals without a renewal
    assert not metrics.serving
