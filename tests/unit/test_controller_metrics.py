"""Controller-manager metrics: reconcile outcomes, scheduling attempts, scrape-time counters."""

from __future__ import annotations

from typing import Any, cast

from prometheus_client import CollectorRegistry

from controllers.base import Controller, ControllerContext, Result, TemporaryError
from controllers.manager import ControllerManager, ManagerConfig
from controllers.metrics import ControllerMetrics
from controllers.runner import process_key
from controllers.scheduler import Scheduler
from controllers.testing.fake_objects import FakeInformers, FakeObjects
from controllers.workqueue import RateLimitedQueue
from mizzen.client.errors import ConflictError
from protos import objects_pb2 as pb

NOW = 1_700_000_000.0


class Events:
    def record(self, obj: Any, type: str, reason: str, message: str) -> None:
        pass


def node(name: str, cpu: int) -> pb.Node:
    n = pb.Node(metadata=pb.ObjectMeta(name=name))
    n.status.capacity.cpu_millis = cpu
    n.status.capacity.memory_bytes = 1 << 30
    n.status.conditions.add(type="Ready", status="True", reason="AgentReady")
    return n


def pod(name: str, cpu: int) -> pb.Pod:
    p = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace="default"))
    proc = p.spec.processes.add(name="main", command=["/bin/sleep", "1000"])
    proc.resources.requests.cpu_millis = cpu
    return p


def value(metrics: ControllerMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def manager_with_metrics() -> tuple[ControllerManager, ControllerMetrics]:
    manager = ControllerManager(ManagerConfig(), factories=[lambda _cfg: Scheduler(workers=1)])
    return manager, ControllerMetrics(manager, CollectorRegistry(auto_describe=False))


async def drain(controller: Controller, ctx: ControllerContext, manager: ControllerManager) -> None:
    while (key := controller.queue.get_nowait()) is not None:
        await process_key(controller, key, ctx, manager.stats)


async def test_scheduling_attempts_binding_latency_and_reconcile_results() -> None:
    manager, metrics = manager_with_metrics()
    objects = FakeObjects(clock=lambda: NOW)
    objects.add(node("n1", cpu=1000), pod("fits", cpu=100), pod("huge", cpu=5000))
    ctx = ControllerContext(
        client=objects,
        informers=FakeInformers(objects),
        events=Events(),
        clock=lambda: NOW,
        config=cast(Any, None),
    )
    (scheduler,) = manager.build_controllers()
    assert isinstance(scheduler, Scheduler) and scheduler.metrics is metrics
    scheduler.setup(ctx)
    await drain(scheduler, ctx, manager)

    attempts = "mizzen_controller_scheduler_attempts_total"
    assert value(metrics, attempts, result="scheduled") == 1
    assert value(metrics, attempts, result="unschedulable") == 1
    assert value(metrics, attempts, result="error") == 0
    assert value(metrics, "mizzen_controller_scheduler_binding_duration_seconds_count") == 1
    reconciles = "mizzen_controller_reconcile_total"
    assert value(metrics, reconciles, controller="scheduler", result="success") == 1
    assert value(metrics, reconciles, controller="scheduler", result="requeue") == 1
    duration = "mizzen_controller_reconcile_duration_seconds_count"
    assert value(metrics, duration, controller="scheduler") == 2

    objects.add(pod("conflicted", cpu=100))
    objects.fail("update", "Pod", ConflictError("modified"))
    await drain(scheduler, ctx, manager)
    assert value(metrics, attempts, result="error") == 1
    assert value(metrics, attempts, result="scheduled") == 1
    # the conflict is an expected retry (TemporaryError), not an error
    assert value(metrics, reconciles, controller="scheduler", result="requeue") == 2
    assert value(metrics, reconciles, controller="scheduler", result="error") is None


class Failing(Controller):
    name = "failing"
    primary_kind = None

    def __init__(self, outcomes: list[Any]) -> None:
        self.outcomes = outcomes

    def setup(self, ctx: ControllerContext) -> None:
        pass

    async def reconcile(self, key: str) -> Result:
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return cast(Result, outcome)


async def test_errors_and_retries_are_counted_per_controller() -> None:
    manager, metrics = manager_with_metrics()
    clock = [0.0]
    controller = Failing([RuntimeError("bug"), TemporaryError("later"), Result()])
    controller.queue = RateLimitedQueue(clock=lambda: clock[0])
    manager.controllers = [controller]
    ctx = cast(ControllerContext, None)
    for _ in range(3):
        controller.queue.add("k")
        clock[0] += 100
        key = controller.queue.get_nowait()
        assert key == "k"
        await process_key(controller, key, ctx, manager.stats)
    reconciles = "mizzen_controller_reconcile_total"
    assert value(metrics, reconciles, controller="failing", result="error") == 1
    assert value(metrics, reconciles, controller="failing", result="requeue") == 1
    assert value(metrics, reconciles, controller="failing", result="success") == 1
    assert value(metrics, "mizzen_controller_workqueue_retries_total", controller="failing") == 2


def test_scrape_reads_leadership_fencing_and_queues() -> None:
    manager, metrics = manager_with_metrics()
    assert value(metrics, "mizzen_controller_is_leader") == 0
    assert not metrics.serving
    assert value(metrics, "mizzen_controller_workqueue_depth", controller="scheduler") is None

    (scheduler,) = manager.build_controllers()
    manager.controllers = [scheduler]
    manager.leading.set()
    manager.fenced_writes = 3
    for key in ("a", "b", "a"):
        scheduler.queue.add(key)
    assert value(metrics, "mizzen_controller_is_leader") == 1
    assert value(metrics, "mizzen_controller_fenced_writes_total") == 3
    assert value(metrics, "mizzen_controller_workqueue_depth", controller="scheduler") == 2
    assert value(metrics, "mizzen_controller_workqueue_adds_total", controller="scheduler") == 2
    body = metrics.exposition().decode()
    assert 'mizzen_controller_workqueue_depth{controller="scheduler"} 2.0' in body


def test_workqueue_counts_adds_once_per_queued_key_and_every_retry() -> None:
    queue = RateLimitedQueue(clock=lambda: 0.0)
    queue.add("a")
    queue.add("a")  # deduplicated
    key = queue.get_nowait()
    assert key == "a"
    queue.add("a")  # while processing: queued again after done()
    queue.add("a")
    assert queue.adds == 2
    queue.add_rate_limited("b")
    queue.add_rate_limited("b")
    assert queue.retries == 2
