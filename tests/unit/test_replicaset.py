"""ReplicaSet controller against FakeObjects: given these objects, these writes."""

from __future__ import annotations

from typing import Any

import pytest

from controllers.base import owner_reference
from controllers.replicaset import (
    ReplicaSetController,
    compute_status,
    deletion_rank,
    slow_start_batches,
)
from controllers.runner import RunnerStats
from controllers.testing import FakeInformers, FakeObjects, RecordingEvents, drain, fake_context
from mizzen.client.errors import UnavailableError
from protos import objects_pb2 as pb

NOW = 1_000_000.0


def clock() -> float:
    return NOW


def replicaset(name: str = "web", replicas: int = 3, min_ready: int = 0) -> pb.ReplicaSet:
    rs = pb.ReplicaSet(metadata=pb.ObjectMeta(name=name, namespace="default", uid=f"uid-{name}"))
    rs.spec.replicas = replicas
    rs.spec.min_ready_seconds = min_ready
    rs.spec.selector.match_labels["app"] = name
    rs.spec.template.metadata.labels["app"] = name
    rs.spec.template.spec.processes.add(name="main", command=["/bin/sleep", "1000"])
    return rs


def pod(
    name: str,
    owner: pb.ReplicaSet | None = None,
    *,
    labels: dict[str, str] | None = None,
    node: str = "n1",
    phase: str = "Running",
    ready_since: float | None = None,
    created: float = NOW - 100,
    terminating: bool = False,
) -> pb.Pod:
    p = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace="default"))
    p.metadata.labels.update(labels if labels is not None else {"app": "web"})
    if owner is not None:
        p.metadata.owner_references.append(owner_reference(owner))
    p.metadata.creation_timestamp.FromNanoseconds(int(created * 1e9))
    p.spec.processes.add(name="main", command=["/bin/sleep", "1000"])
    p.spec.node_name = node
    p.status.phase = phase
    if ready_since is not None:
        cond = p.status.conditions.add(type="Ready", status="True")
        cond.last_transition_time.FromNanoseconds(int(ready_since * 1e9))
    if terminating:
        p.metadata.deletion_timestamp.FromNanoseconds(int((NOW - 1) * 1e9))
        p.metadata.finalizers.append("test/keep")
    return p


async def run(*objs: Any, burst: int = 500) -> tuple[FakeObjects, ReplicaSetController, Any]:
    objects = FakeObjects(clock=clock)
    objects.add(*objs)
    ctx = fake_context(objects, clock=clock)
    controller = ReplicaSetController(burst=burst)
    controller.setup(ctx)
    await drain(controller, ctx)
    return objects, controller, ctx


def ops(objects: FakeObjects) -> list[tuple[str, str]]:
    return [(op, kind) for op, kind, _ in objects.writes]


RS = replicaset()
RS_STATUS_OK = replicaset()
RS_STATUS_OK.status.replicas = 2
RS_STATUS_OK.status.fully_labeled_replicas = 2
RS_STATUS_OK.status.observed_generation = 1
RS_STATUS_OK.spec.replicas = 2

CASES = [
    pytest.param([RS], [("create", "Pod")] * 3 + [("update_status", "ReplicaSet")], id="creates"),
    pytest.param(
        [RS_STATUS_OK, pod("a", RS_STATUS_OK), pod("b", RS_STATUS_OK)], [], id="steady-no-writes"
    ),
    pytest.param(
        [replicaset(replicas=2), pod("a", RS), pod("t", RS, terminating=True)],
        [("create", "Pod"), ("update_status", "ReplicaSet")],
        id="terminating-not-counted",
    ),
    pytest.param(
        [replicaset(replicas=2), pod("a", RS), pod("done", RS, phase="Succeeded")],
        [("create", "Pod"), ("update_status", "ReplicaSet")],
        id="finished-not-counted",
    ),
    pytest.param(
        [replicaset(replicas=2), pod("orphan")],
        [("update", "Pod"), ("create", "Pod"), ("update_status", "ReplicaSet")],
        id="adopts-orphan",
    ),
    pytest.param(
        [replicaset(replicas=1), pod("other", RS, labels={"app": "db"})],
        [("update", "Pod"), ("create", "Pod"), ("update_status", "ReplicaSet")],
        id="releases-non-matching",
    ),
    pytest.param(
        [replicaset(replicas=1), pod("foreign", replicaset("db"))],
        [("create", "Pod"), ("update_status", "ReplicaSet")],
        id="ignores-pods-of-other-controllers",
    ),
    pytest.param(
        [replicaset(replicas=0), pod("orphan", terminating=True)],
        [("update_status", "ReplicaSet")],
        id="does-not-adopt-terminating",
    ),
]


@pytest.mark.parametrize(("given", "want"), CASES)
async def test_writes(given: list[Any], want: list[tuple[str, str]]) -> None:
    objects, _, _ = await run(*given)
    assert ops(objects) == want


async def test_created_pods_follow_the_template_with_owner_and_generate_name() -> None:
    objects, _, _ = await run(replicaset(replicas=1))
    [created] = objects.objects("pods")
    assert created.metadata.name.startswith("web-")
    assert dict(created.metadata.labels) == {"app": "web"}
    [ref] = created.metadata.owner_references
    assert (ref.kind, ref.name, ref.uid, ref.controller, ref.block_owner_deletion) == (
        "ReplicaSet",
        "web",
        "uid-web",
        True,
        True,
    )
    assert ref.api_version == "mizzen/v1"
    assert created.spec.processes[0].command == ["/bin/sleep", "1000"]


async def test_scale_down_deletes_unscheduled_then_not_ready_then_newest() -> None:
    rs = replicaset(replicas=2)
    pods = [
        pod("old-ready", rs, ready_since=NOW - 50, created=NOW - 100),
        pod("new-ready", rs, ready_since=NOW - 10, created=NOW - 20),
        pod("not-ready", rs, created=NOW - 200),
        pod("unscheduled", rs, node="", phase="Pending", created=NOW - 300),
        pod("pending", rs, phase="Pending", created=NOW - 250),
    ]
    objects, _, _ = await run(rs, *pods)
    deleted = [key for op, kind, key in objects.writes if op == "delete"]
    assert deleted == ["default/unscheduled", "default/pending", "default/not-ready"]
    remaining = {
        p.metadata.name
        for p in objects.objects("pods")
        if not p.metadata.deletion_timestamp.seconds
    }
    assert remaining == {"old-ready", "new-ready"}


def test_deletion_rank_prefers_newest_among_ready() -> None:
    rs = replicaset()
    older = pod("older", rs, ready_since=NOW - 100, created=NOW - 200)
    newer = pod("newer", rs, ready_since=NOW - 5, created=NOW - 10)
    assert sorted([older, newer], key=deletion_rank)[0] is newer


async def test_status_counts_ready_and_available_after_min_ready_seconds() -> None:
    rs = replicaset(replicas=3, min_ready=10)
    objects, controller, _ = await run(
        rs,
        pod("a", rs, ready_since=NOW - 30),
        pod("b", rs, ready_since=NOW - 4),
        pod("c", rs),
    )
    stored = objects.peek("replicasets", "web", "default")
    assert stored is not None
    st = stored.status
    assert (st.replicas, st.ready_replicas, st.available_replicas) == (3, 2, 1)
    assert st.fully_labeled_replicas == 3
    assert st.observed_generation == 1
    # b becomes available in 6 s: reconcile asks to be called back then
    assert controller.queue.delayed() == {"default/web": pytest.approx(6.0, abs=0.5)}
    status, wait = compute_status(stored, objects.objects("pods"), NOW)
    assert wait == pytest.approx(6.0)
    assert status == st


async def test_burst_limits_creates_per_reconcile() -> None:
    objects = FakeObjects(clock=clock)
    objects.add(replicaset(replicas=10))
    ctx = fake_context(objects, clock=clock)
    controller = ReplicaSetController(burst=4)
    controller.setup(ctx)
    key = controller.queue.get_nowait()
    assert key == "default/web"
    await controller.reconcile(key)
    assert ops(objects).count(("create", "Pod")) == 4


def test_slow_start_batches() -> None:
    assert slow_start_batches(0) == []
    assert slow_start_batches(1) == [1]
    assert slow_start_batches(10) == [1, 2, 4, 3]
    assert sum(slow_start_batches(500)) == 500


async def test_a_lagging_cache_does_not_cause_double_creation() -> None:
    objects = FakeObjects(clock=clock)
    objects.add(replicaset(replicas=3))
    ctx = fake_context(objects, clock=clock, auto_sync=False)
    controller = ReplicaSetController()
    controller.setup(ctx)
    await controller.reconcile("default/web")
    await controller.reconcile("default/web")  # the cache has not seen the 3 pods yet
    assert ops(objects).count(("create", "Pod")) == 3
    assert isinstance(ctx.informers, FakeInformers)
    ctx.informers.sync()
    await drain(controller, ctx)
    assert ops(objects).count(("create", "Pod")) == 3
    assert len(objects.objects("pods")) == 3


async def test_a_lagging_cache_does_not_cause_double_deletion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    objects = FakeObjects(clock=clock)
    objects.add(replicaset(replicas=1), *(pod(n, RS, created=NOW - i) for i, n in enumerate("abc")))
    sent: list[str] = []
    real_delete = objects.delete

    async def counting_delete(kind: Any, name: str, namespace: str = "", **kw: Any) -> Any:
        sent.append(name)
        return await real_delete(kind, name, namespace, **kw)

    monkeypatch.setattr(objects, "delete", counting_delete)
    ctx = fake_context(objects, clock=clock, auto_sync=False)
    controller = ReplicaSetController()
    controller.setup(ctx)
    await controller.reconcile("default/web")
    await controller.reconcile("default/web")  # the cache still shows all three running
    assert sorted(sent) == ["a", "b"]
    assert isinstance(ctx.informers, FakeInformers)
    ctx.informers.sync()
    await drain(controller, ctx)
    assert sorted(sent) == ["a", "b"]


async def test_unmet_expectations_expire_and_the_cache_wins() -> None:
    now = [NOW]
    objects = FakeObjects(clock=lambda: now[0])
    objects.add(replicaset(replicas=2))
    ctx = fake_context(objects, clock=lambda: now[0], auto_sync=False)
    controller = ReplicaSetController()
    controller.setup(ctx)
    await controller.reconcile("default/web")
    now[0] += controller.expectations.ttl - 1
    await controller.reconcile("default/web")
    assert ops(objects).count(("create", "Pod")) == 2
    now[0] += 1
    await controller.reconcile("default/web")  # the creations never showed: trust the cache
    assert ops(objects).count(("create", "Pod")) == 4


async def test_failed_create_is_retried_with_a_warning_event() -> None:
    objects = FakeObjects(clock=clock)
    objects.add(replicaset(replicas=1))
    objects.fail("create", "Pod", UnavailableError("store down"))
    ctx = fake_context(objects, clock=clock)
    controller = ReplicaSetController()
    controller.setup(ctx)
    await drain(controller, ctx)
    assert ops(objects) == []
    assert controller.queue.num_requeues("default/web") == 1
    events = ctx.events
    assert isinstance(events, RecordingEvents)
    assert events.reasons() == ["FailedCreate"]
    controller.queue.forget("default/web")
    controller.queue.add("default/web")
    await drain(controller, ctx)
    assert ops(objects) == [("create", "Pod"), ("update_status", "ReplicaSet")]


async def test_fenced_writes_are_refused_and_counted() -> None:
    objects = FakeObjects(clock=clock)
    objects.add(replicaset(replicas=2))
    objects.fences[b"/leader"] = 7
    ctx = fake_context(objects, clock=clock)
    ctx.client = objects.fenced(b"/leader", 5)
    controller = ReplicaSetController()
    controller.setup(ctx)
    stats = RunnerStats()
    await drain(controller, ctx, stats=stats)
    assert objects.writes == []
    assert stats.fenced_writes == 1
    objects.fences[b"/leader"] = 5
    controller.queue.forget("default/web")
    controller.queue.add("default/web")
    await drain(controller, ctx, stats=stats)
    assert ops(objects).count(("create", "Pod")) == 2


async def test_deleted_replicaset_is_a_no_op() -> None:
    objects = FakeObjects(clock=clock)
    ctx = fake_context(objects, clock=clock)
    controller = ReplicaSetController()
    controller.setup(ctx)
    controller.queue.add("default/gone")
    assert await drain(controller, ctx) == 1
    assert objects.writes == []


async def test_orphan_pod_created_later_is_adopted() -> None:
    objects, controller, ctx = await run(replicaset(replicas=1), pod("a", RS))
    objects.clear_writes()
    await objects.create(pod("stray"))
    await drain(controller, ctx)
    assert ("update", "Pod", "default/stray") in objects.writes
    assert ("delete", "Pod", "default/stray") in objects.writes or (
        "delete",
        "Pod",
        "default/a",
    ) in objects.writes
