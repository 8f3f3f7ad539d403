"""What a node agent reports about itself: Prometheus metrics and its health verdict.

Most series are read from the agent's own state when scraped: pods by phase,
processes by state, per-pod usage from the last ``UsageSampler`` sample. The
rest need no new code on the pod path either; they are taken from what the
agent already does:

* restarts: each process's ``restart_count`` is compared with its value when
  this agent first saw the pod (re-adopted pods keep their history out), and
  a finished pod's restarts are folded into the total, so the counter is
  exact and monotonic for the life of the agent;
* OOM kills, probe failures and start latency: from the Events the pod
  workers emit (``CountingEvents`` sits in front of the recorder):
  ``OOMKilled``; ``Unhealthy`` (a probe crossed its failure threshold, not
  every failed run of it); the first ``Started`` of each process of a pod this
  agent created, timed from when the pod was bound (its ``PodScheduled``
  condition, else its creation).

Healthy (``serving``) when the Node is registered and its lease was renewed
within ``HEALTH_HEARTBEATS`` heartbeat intervals. Names start with
``mizzen_agent_``; docs/operations.md lists them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nodeagent.pod_status import Running, Waiting
from protos import objects_pb2 as pb

if TYPE_CHECKING:
    from nodeagent.config import AgentConfig
    from nodeagent.pod_worker import EventSink, PodWorker
    from nodeagent.stats import UsageSampler

PREFIX = "mizzen_agent_"
HEALTH_HEARTBEATS = 5
START_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")
PROCESS_STATES = ("running", "waiting", "terminated")
PROBES = ("liveness", "readiness")


def bound_at(pod: pb.Pod) -> float:
    """When the pod was bound to a node: PodScheduled=True's transition, else its creation."""
    for cond in pod.status.conditions:
        if cond.type == "PodScheduled" and cond.status == "True":
            ts = cond.last_transition_time
            if ts.seconds or ts.nanos:
                return ts.seconds + ts.nanos / 1e9
    ts = pod.metadata.creation_timestamp
    return ts.seconds + ts.nanos / 1e9


def state_name(state: object) -> str:
    if isinstance(state, Running):
        return "running"
    if isinstance(state, Waiting):
        return "waiting"
    return "terminated"


class MeteredAgent(Protocol):
    """What the metrics read of the agent (``nodeagent.agent.Agent``)."""

    config: AgentConfig
    workers: dict[str, PodWorker]
    sampler: UsageSampler

    def lease_renewed_at(self) -> float | None: ...


class AgentMetrics:
    """The metrics of one agent. Called from the event loop (workers, events) and read
    from the HTTP thread (scrapes); the restart bookkeeping is under a lock."""

    def __init__(
        self,
        agent: MeteredAgent,
        registry: CollectorRegistry | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.agent = agent
        self.registry = registry or CollectorRegistry(auto_describe=False)
        self._wall = wall
        self._lock = threading.Lock()
        self._baselines: dict[str, dict[str, int]] = {}  # uid -> process -> restart_count
        self._fresh: set[str] = set()  # uids of pods this agent started from scratch
        self._started: set[tuple[str, str]] = set()  # (uid, Started message) seen
        self._retired_restarts = 0
        self.oom_kills = Counter(
            PREFIX + "oom_kills",
            "Processes killed by the kernel for running out of memory.",
            registry=self.registry,
        )
        self.probe_failures = Counter(
            PREFIX + "probe_failures",
            "Times a probe crossed its failure threshold (readiness lost, liveness restart).",
            ["probe"],
            registry=self.registry,
        )
        for probe in PROBES:
            self.probe_failures.labels(probe)
        self.start_latency = Histogram(
            PREFIX + "start_latency_seconds",
            "From a pod's binding to its node until each process first started.",
            registry=self.registry,
            buckets=START_BUCKETS,
        )
        self.registry.register(AgentCollector(self))
        ProcessCollector(registry=self.registry)

    # -- the agent's hooks (event loop) -----------------------------------------------

    def worker_added(self, worker: PodWorker, readopted: bool) -> None:
        """A pod worker was created; readopted: it had a local record (older history)."""
        with self._lock:
            self._baselines[worker.uid] = {
                s.name: s.record.restart_count for s in worker.supervisors
            }
            if not readopted:
                self._fresh.add(worker.uid)

    def worker_removed(self, worker: PodWorker) -> None:
        """The worker finished: keep its restarts in the total, forget the pod."""
        with self._lock:
            self._retired_restarts += self._restarts_of(worker)
            self._baselines.pop(worker.uid, None)
            self._fresh.discard(worker.uid)
            self._started = {k for k in self._started if k[0] != worker.uid}

    def on_event(self, obj: Any, type: str, reason: str, message: str) -> None:
        if reason == "OOMKilled":
            self.oom_kills.inc()
        elif reason == "Unhealthy":
            probe = "liveness" if message.startswith("Liveness") else "readiness"
            self.probe_failures.labels(probe).inc()
        elif reason == "Started" and isinstance(obj, pb.Pod):
            uid = obj.metadata.uid
            with self._lock:
                first = uid in self._fresh and (uid, message) not in self._started
                self._started.add((uid, message))
            since = bound_at(obj)
            if first and since > 0:
                self.start_latency.observe(max(self._wall() - since, 0.0))

    # -- scrape (HTTP thread) ---------------------------------------------------------

    def _restarts_of(self, worker: PodWorker) -> int:
        base = self._baselines.get(worker.uid, {})
        return sum(max(s.record.restart_count - base.get(s.name, 0), 0) for s in worker.supervisors)

    def restarts_total(self) -> int:
        with self._lock:
            live = sum(self._restarts_of(w) for w in list(self.agent.workers.values()))
            return self._retired_restarts + live

    @property
    def serving(self) -> bool:
        lease_renewed = self.agent.lease_renewed_at()
        if lease_renewed is None:
            return False
        window = HEALTH_HEARTBEATS * self.agent.config.heartbeat_interval
        return self._wall() - lease_renewed <= window

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class CountingEvents:
    """An EventSink that tells ``AgentMetrics`` about each Event, then records it."""

    def __init__(self, inner: EventSink, metrics: AgentMetrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def record(self, obj: Any, type: str, reason: str, message: str) -> None:
        self._metrics.on_event(obj, type, reason, message)
        self._inner.record(obj, type, reason, message)


class AgentCollector(Collector):
    def __init__(self, metrics: AgentMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # a dedicated registry: no name clashes to detect up front

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        agent = metrics.agent
        workers = list(agent.workers.values())
        yield GaugeMetricFamily(
            PREFIX + "serving",
            "1 if the Node is registered and its lease was renewed recently (/healthz).",
            value=metrics.serving,
        )
        phases = dict.fromkeys(PHASES, 0)
        states = dict.fromkeys(PROCESS_STATES, 0)
        for w in workers:
            phase = w.pod.status.phase or "Pending"
            phases[phase] = phases.get(phase, 0) + 1
            for s in w.supervisors:
                states[state_name(s.state)] += 1
        pods = GaugeMetricFamily(
            PREFIX + "pods", "Pods on this node, by phase (as last written).", labels=["phase"]
        )
        for phase, n in phases.items():
            pods.add_metric([phase], n)
        yield pods
        procs = GaugeMetricFamily(
            PREFIX + "processes",
            "Processes of this node's pods, by state (running, waiting, terminated).",
            labels=["state"],
        )
        for state, n in states.items():
            procs.add_metric([state], n)
        yield procs
        yield CounterMetricFamily(
            PREFIX + "restarts",
            "Process restarts since this agent started (re-adopted history excluded).",
            value=metrics.restarts_total(),
        )
        cpu = GaugeMetricFamily(
            PREFIX + "pod_cpu_millicores",
            "CPU a pod used over the last sample interval.",
            labels=["namespace", "pod"],
        )
        memory = GaugeMetricFamily(
            PREFIX + "pod_memory_bytes",
            "Memory a pod's cgroup uses (last sample).",
            labels=["namespace", "pod"],
        )
        for usage in agent.sampler.pods():
            cpu.add_metric([usage.namespace, usage.name], usage.cpu_millis)
            memory.add_metric([usage.namespace, usage.name], usage.memory_bytes)
        yield cpu
        yield memory
        node = agent.sampler.node()
        yield GaugeMetricFamily(
            PREFIX + "node_cpu_millicores",
            "CPU the whole node used (last sample).",
            node.cpu_millis,
        )
        yield GaugeMetricFamily(
            PREFIX + "node_memory_bytes",
            "Memory in use on the node (last sample).",
            node.memory_bytes,
        )
