"""The controller machinery: FakeObjects' store semantics, the runner, events, shared informers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from controllers.base import (
    Controller,
    ControllerContext,
    PermanentError,
    Result,
    TemporaryError,
    queue_key,
    split_key,
)
from controllers.runner import RunnerStats, process_key
from controllers.testing import FakeObjects, RecordingEvents, drain, fake_context
from controllers.workqueue import RateLimitedQueue
from mizzen.client.errors import (
    AlreadyExistsError,
    ConflictError,
    FencedError,
    InvalidArgumentError,
    NotFoundError,
)
from mizzen.client.events import EventRecorder
from protos import objects_pb2 as pb


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def pod(name: str = "", node: str = "", generate: str = "") -> pb.Pod:
    p = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace="default", generate_name=generate))
    p.metadata.labels["app"] = "web"
    p.spec.processes.add(name="main", command=["/bin/true"])
    p.spec.node_name = node
    return p


# ------------------------------------------------------------------ FakeObjects


async def test_create_fills_server_fields_and_refuses_duplicates() -> None:
    objects = FakeObjects(clock=Clock())
    created = await objects.create(pod(generate="web-"))
    meta = created.metadata
    assert meta.name.startswith("web-") and meta.uid and meta.resource_version
    assert meta.generation == 1
    assert meta.creation_timestamp.seconds == 1_000
    assert created.spec.restart_policy == "Always"  # defaulted
    with pytest.raises(AlreadyExistsError):
        await objects.create(created)
    with pytest.raises(InvalidArgumentError, match="is invalid"):
        await objects.create(pb.Pod(metadata=pb.ObjectMeta(name="Bad_Name", namespace="default")))
    assert objects.writes == [("create", "Pod", f"default/{meta.name}")]


async def test_update_needs_the_version_read_and_keeps_status() -> None:
    objects = FakeObjects()
    created = await objects.create(pod("a"))
    created.status.phase = "Running"
    stored = await objects.update_status(created)
    stale = pb.Pod()
    stale.CopyFrom(created)
    stale.spec.node_name = "n1"
    with pytest.raises(ConflictError):
        await objects.update(stale)  # created's version is older than the status update's
    stored.spec.node_name = "n1"
    stored.status.phase = "Failed"  # ignored by update
    updated = await objects.update(stored)
    assert updated.status.phase == "Running"
    assert updated.metadata.generation == 2
    with pytest.raises(NotFoundError):
        await objects.get("pods", "missing", "default")
    with pytest.raises(InvalidArgumentError):
        await objects.get("pods", "a")  # namespace required


async def test_list_filters_by_label_and_field_selectors() -> None:
    objects = FakeObjects()
    await objects.create(pod("a", node="n1"))
    await objects.create(pod("b", node="n2"))
    other = pod("c")
    other.metadata.labels["app"] = "db"
    await objects.create(other)
    names = lambda r: [p.metadata.name for p in r.items]  # noqa: E731
    assert names(await objects.list("pods", label_selector="app=web")) == ["a", "b"]
    assert names(await objects.list("pods", field_selector="spec.nodeName=n2")) == ["b"]
    assert names(await objects.list("pods", "other")) == []


async def test_delete_is_graceful_for_bound_pods_and_waits_for_finalizers() -> None:
    objects = FakeObjects()
    await objects.create(pod("unbound"))
    _, gone = await objects.delete("pods", "unbound", "default")
    assert gone and objects.peek("pods", "unbound", "default") is None
    await objects.create(pod("bound", node="n1"))
    obj, gone = await objects.delete("pods", "bound", "default")
    assert not gone and obj.metadata.HasField("deletion_timestamp")
    assert obj.metadata.deletion_grace_period_seconds == 30
    _, gone = await objects.delete("pods", "bound", "default", grace_period_seconds=0)
    assert gone
    rs = pb.ReplicaSet(metadata=pb.ObjectMeta(name="rs", namespace="default"))
    rs.spec.selector.match_labels["app"] = "web"
    rs.spec.template.metadata.labels["app"] = "web"
    rs.spec.template.spec.processes.add(name="main", command=["/bin/true"])
    await objects.create(rs)
    obj, gone = await objects.delete("rs", "rs", "default", propagation_policy="Foreground")
    assert not gone and list(obj.metadata.finalizers) == ["foregroundDeletion"]
    del obj.metadata.finalizers[:]
    await objects.update(obj)  # the last finalizer removed: the object goes
    assert objects.peek("rs", "rs", "default") is None


async def test_fenced_view_refuses_writes_unless_the_fence_holds() -> None:
    objects = FakeObjects()
    fenced = objects.fenced(b"/leader", 3)
    with pytest.raises(FencedError, match=r"^fenced:"):
        await fenced.create(pod("a"))
    objects.fences[b"/leader"] = 3
    await fenced.create(pod("a"))
    assert (await fenced.get("pods", "a", "default")).metadata.name == "a"


# ------------------------------------------------------------------ runner


class Scripted(Controller):
    """Reconcile raises or returns what the test scripted for each call."""

    name = "scripted"
    primary_kind = "Pod"

    def __init__(self, outcomes: list[Any]) -> None:
        self.outcomes = outcomes
        self.calls: list[str] = []

    def setup(self, ctx: ControllerContext) -> None:
        ctx.informers.get("pods").on_add(self.enqueue)

    async def reconcile(self, key: str) -> Result:
        self.calls.append(key)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


async def scripted(outcome: Any) -> tuple[Scripted, ControllerContext, Clock, RunnerStats]:
    clock = Clock()
    objects = FakeObjects()
    objects.add(pod("a"))
    ctx = fake_context(objects)
    controller = Scripted([outcome])
    controller.queue = RateLimitedQueue(clock=clock)
    controller.setup(ctx)
    stats = RunnerStats()
    await drain(controller, ctx, stats=stats)
    return controller, ctx, clock, stats


async def test_success_forgets_and_requeue_after_delays() -> None:
    controller, _, _, stats = await scripted(Result(requeue_after=7))
    assert controller.queue.delayed() == {"default/a": 7}
    assert controller.queue.num_requeues("default/a") == 0
    assert stats.reconciles == 1 and stats.errors == 0


async def test_temporary_error_backs_off_or_uses_its_delay() -> None:
    controller, _, _, _ = await scripted(TemporaryError("later"))
    assert controller.queue.num_requeues("default/a") == 1
    assert controller.queue.delayed() == {"default/a": pytest.approx(0.005)}
    controller, _, _, _ = await scripted(TemporaryError("later", delay=3))
    assert controller.queue.delayed() == {"default/a": 3}


async def test_unexpected_exception_is_retried_with_backoff() -> None:
    controller, _, clock, stats = await scripted(RuntimeError("bug"))
    assert controller.queue.num_requeues("default/a") == 1
    assert stats.errors == 1
    controller.outcomes.append(Result())
    clock.now += 1
    controller.queue.get_nowait()  # due now
    await process_key(controller, "default/a", fake_context(FakeObjects()), stats)
    assert controller.queue.num_requeues("default/a") == 0


async def test_permanent_error_records_a_warning_and_is_not_requeued() -> None:
    controller, ctx, _, _ = await scripted(PermanentError("bad spec", reason="InvalidSpec"))
    assert controller.queue.delayed() == {} and len(controller.queue) == 0
    events = ctx.events
    assert isinstance(events, RecordingEvents)
    assert [(e.name, e.type, e.reason, e.message) for e in events.events] == [
        ("a", "Warning", "InvalidSpec", "bad spec")
    ]


async def test_fenced_error_is_counted() -> None:
    controller, _, _, stats = await scripted(FencedError("fenced: gone"))
    assert stats.fenced_writes == 1
    assert controller.queue.num_requeues("default/a") == 1


def test_keys() -> None:
    assert queue_key(pod("a")) == "default/a"
    assert queue_key(pb.Node(metadata=pb.ObjectMeta(name="n1"))) == "n1"
    assert split_key("default/a") == ("default", "a")
    assert split_key("n1") == ("", "n1")


# ------------------------------------------------------------------ shared informers


async def test_handlers_registered_late_see_every_cached_object_and_can_be_cleared() -> None:
    objects = FakeObjects()
    objects.add(pod("a"), pod("b"))
    ctx = fake_context(objects)
    informer = ctx.informers.get("pods")
    assert ctx.informers.get("Pod") is informer
    seen: list[str] = []
    informer.on_add(lambda p: seen.append(p.metadata.name))
    assert sorted(seen) == ["a", "b"]
    await objects.create(pod("c", node="n1"))
    assert seen[-1] == "c"
    assert [p.metadata.name for p in informer.by_index("by_node", "n1")] == ["c"]
    ctx.informers.clear_handlers()
    await objects.create(pod("d"))
    assert "d" not in seen
    assert informer.get("default", "d") is not None


# ------------------------------------------------------------------ events


async def test_events_are_written_in_the_background_and_repeats_aggregate() -> None:
    clock = Clock(5_000.0)
    objects = FakeObjects(clock=clock)
    [subject] = objects.add(pod("a"))
    recorder = EventRecorder(objects, "test-controller", "host1", clock)
    recorder.record(subject, "Warning", "FailedCreate", "boom")
    assert objects.objects("events") == []  # record() never writes itself
    await recorder.flush()
    [event] = objects.objects("events")
    assert event.metadata.namespace == "default"
    spec = event.spec
    assert (spec.involved_object.kind, spec.involved_object.name) == ("Pod", "a")
    assert (spec.type, spec.reason, spec.message, spec.count) == (
        "Warning",
        "FailedCreate",
        "boom",
        1,
    )
    assert (spec.source.component, spec.source.host) == ("test-controller", "host1")
    clock.now += 60
    recorder.record(subject, "Warning", "FailedCreate", "boom")
    recorder.record(subject, "Warning", "FailedCreate", "boom")
    await recorder.flush()
    [event] = objects.objects("events")
    assert event.spec.count == 3
    assert event.spec.last_timestamp.seconds == 5_060
    assert event.spec.first_timestamp.seconds == 5_000
    clock.now += 601
    recorder.record(subject, "Warning", "FailedCreate", "boom")
    recorder.record(subject, "Normal", "Other", "x")
    await recorder.flush()
    assert len(objects.objects("events")) == 3


async def test_event_messages_are_truncated_to_1_kib() -> None:
    objects = FakeObjects()
    [subject] = objects.add(pod("a"))
    recorder = EventRecorder(objects, "c")
    recorder.record(subject, "Warning", "Failed", "é" * 1000)  # 2,000 bytes
    recorder.record(subject, "Normal", "Short", "fine")
    await recorder.flush()
    long, short = sorted(objects.objects("events"), key=lambda e: e.spec.reason)
    assert long.spec.message == "é" * 510 + "..."  # 1,020 + 3 bytes: no split character
    assert len(long.spec.message.encode()) <= 1024
    assert short.spec.message == "fine"


class SlowEventWriter:
    """Each write yields to the loop a few times; records how many overlap."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.most = 0
        self.created: list[pb.Event] = []
        self.updated: list[pb.Event] = []

    async def _slow(self) -> None:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        for _ in range(3):
            await asyncio.sleep(0)
        self.in_flight -= 1

    async def create(self, obj: pb.Event) -> pb.Event:
        await self._slow()
        self.created.append(obj)
        return obj

    async def update(self, obj: pb.Event) -> pb.Event:
        await self._slow()
        self.updated.append(obj)
        return obj


async def test_events_are_written_concurrently_but_repeats_in_order() -> None:
    writer = SlowEventWriter()
    recorder = EventRecorder(writer, "c", concurrency=4)
    subjects = [
        pb.Pod(metadata=pb.ObjectMeta(name=f"p{i}", namespace="ns", uid=f"u{i}")) for i in range(10)
    ]
    for subject in subjects:
        recorder.record(subject, "Normal", "Scheduled", "placed")
    for _ in range(3):  # repeats of one event: aggregated, never written at once
        recorder.record(subjects[0], "Normal", "Scheduled", "placed")
    await recorder.flush()
    assert writer.most == 4  # the concurrency bound, reached
    assert len(writer.created) == 10
    assert [e.spec.count for e in writer.updated] == [2, 3, 4]
    assert recorder.pending() == 0 and recorder.failures == 0


async def test_event_write_failures_are_swallowed() -> None:
    objects = FakeObjects()
    [subject] = objects.add(pod("a"))
    recorder = EventRecorder(objects, "c")
    objects.fail("create", "Event", ConflictError("nope"))
    recorder.record(subject, "Normal", "R", "m")
    await recorder.flush()
    assert recorder.failures == 1
    node = pb.Node(metadata=pb.ObjectMeta(name="n1"))
    [node] = objects.add(node)
    recorder.record(node, "Normal", "R", "cluster-scoped subject")
    await recorder.flush()
    [event] = objects.objects("events")
    assert event.metadata.namespace == "default"
