"""What the controller manager reports about itself: Prometheus metrics and health.

Counters the code keeps anyway are read when scraped (work-queue depth, adds
and retries of the running controllers; fenced writes; leadership), so the
hot path gains nothing but two histogram observes: one per settled reconcile
(``RunnerStats.observe``) and one per pod bound (``Scheduler.metrics``).

Queues belong to one leadership term: their ``workqueue_*`` series exist only
while this manager leads, and the adds/retries counters restart at 0 with each
term (Prometheus' ``rate`` treats that as a counter reset). Reconcile and
scheduling counters live here and are monotonic for the life of the process.

Healthy (``serving``, hence ``/healthz`` 200) once the shared caches have
listed everything once: a standby that is connected is healthy too, so
``is_leader`` is what tells the leader apart.

Everything is on a dedicated ``CollectorRegistry``; names start with
``mizzen_controller_``; docs/operations.md lists them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, Protocol

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controllers.base import Controller, SharedInformers
from controllers.runner import RunnerStats
from mizzen.metrics_http import MetricsHttpServer, TlsFiles, parse_listen

log = structlog.get_logger(__name__)

PREFIX = "mizzen_controller_"
RECONCILE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BINDING_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
SCHEDULING_RESULTS = ("scheduled", "unschedulable", "error")


class ControllerManager(Protocol):
    """What the metrics read of a ``controllers.manager.ControllerManager`` (and set:
    the two observers)."""

    stats: RunnerStats
    scheduling_observer: Any
    informers: SharedInformers | None
    leading: asyncio.Event
    fenced_writes: int
    terms: int
    controllers: list[Controller]


class MetricsListenError(Exception):
    """The metrics address is malformed or cannot be bound; the message says which."""


class ControllerMetrics:
    """The metrics of one controller manager; ``attach``es itself to the manager."""

    def __init__(
        self, manager: ControllerManager, registry: CollectorRegistry | None = None
    ) -> None:
        self.manager = manager
        self.registry = registry or CollectorRegistry(auto_describe=False)
        self.reconciles = Counter(
            PREFIX + "reconcile",
            "Reconciles settled, by controller and result (success, requeue = an expected "
            "retry, error = permanent, fenced or unexpected failure).",
            ["controller", "result"],
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            PREFIX + "reconcile_duration_seconds",
            "Time one reconcile took, by controller.",
            ["controller"],
            registry=self.registry,
            buckets=RECONCILE_BUCKETS,
        )
        self.scheduling_attempts = Counter(
            PREFIX + "scheduler_attempts",
            "Scheduling decisions, by result (scheduled, unschedulable, error).",
            ["result"],
            registry=self.registry,
        )
        self.binding_duration = Histogram(
            PREFIX + "scheduler_binding_duration_seconds",
            "Time the write binding a pod to its node took.",
            registry=self.registry,
            buckets=BINDING_BUCKETS,
        )
        for result in SCHEDULING_RESULTS:
            self.scheduling_attempts.labels(result)
        self.registry.register(ManagerCollector(manager))
        ProcessCollector(registry=self.registry)
        self.attach()

    def attach(self) -> None:
        """Hook into the manager: reconcile outcomes and every Scheduler it builds."""
        self.manager.stats.observe = self.observe_reconcile
        self.manager.scheduling_observer = self

    def observe_reconcile(self, controller: str, result: str, seconds: float) -> None:
        self.reconciles.labels(controller, result).inc()
        self.reconcile_duration.labels(controller).observe(seconds)

    def attempt(self, result: str) -> None:
        self.scheduling_attempts.labels(result).inc()

    def binding(self, seconds: float) -> None:
        self.binding_duration.observe(seconds)

    @property
    def serving(self) -> bool:
        return caches_synced(self.manager)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def caches_synced(manager: ControllerManager) -> bool:
    """Whether every shared informer has listed once; safe to call from another thread."""
    informers = manager.informers
    if informers is None:
        return False
    for _ in range(3):
        try:
            return informers.synced()
        except RuntimeError:  # the loop thread added an informer while we iterated
            continue
    return False


class ManagerCollector(Collector):
    """Reads the manager's own counters when scraped (from the HTTP thread: reads only)."""

    def __init__(self, manager: ControllerManager) -> None:
        self._manager = manager

    def describe(self) -> list[Metric]:
        return []  # a dedicated registry: no name clashes to detect up front

    def collect(self) -> Iterator[Metric]:
        manager = self._manager
        yield GaugeMetricFamily(
            PREFIX + "is_leader",
            "1 while this manager leads (runs the controllers).",
            value=manager.leading.is_set(),
        )
        yield CounterMetricFamily(
            PREFIX + "fenced_writes",
            "Writes the store refused because this manager was no longer the leader.",
            value=manager.fenced_writes,
        )
        yield CounterMetricFamily(
            PREFIX + "leadership_terms",
            "Times this manager became the leader.",
            value=manager.terms,
        )
        yield GaugeMetricFamily(
            PREFIX + "caches_synced",
            "1 once every shared informer has listed once (the /healthz verdict).",
            value=caches_synced(manager),
        )
        depth = GaugeMetricFamily(
            PREFIX + "workqueue_depth",
            "Keys ready to be reconciled now (delayed retries not counted), by controller.",
            labels=["controller"],
        )
        adds = CounterMetricFamily(
            PREFIX + "workqueue_adds",
            "Keys queued in this leadership term (deduplicated adds not counted).",
            labels=["controller"],
        )
        retries = CounterMetricFamily(
            PREFIX + "workqueue_retries",
            "Keys requeued with backoff after a failure in this leadership term.",
            labels=["controller"],
        )
        for controller in list(manager.controllers):
            queue = controller.queue
            depth.add_metric([controller.name], len(queue))
            adds.add_metric([controller.name], queue.adds)
            retries.add_metric([controller.name], queue.retries)
        yield depth
        yield adds
        yield retries


def serve_metrics(
    listen: str, manager: ControllerManager, tls: TlsFiles | None = None
) -> MetricsHttpServer:
    """Start ``/metrics`` and ``/healthz`` for manager on listen (host:port); HTTPS with tls."""
    try:
        parse_listen(listen)
        http = MetricsHttpServer(listen, ControllerMetrics(manager), tls)
    except (ValueError, OSError) as err:
        raise MetricsListenError(f"cannot serve metrics on {listen}: {err}") from None
    http.start()
    log.info("metrics_serving", listen=listen)
    return http
