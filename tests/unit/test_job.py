"""Job controller: plan_job tables, and the controller against FakeObjects with a stepped clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from controllers.base import ControllerContext
from controllers.job import JobController, plan_job
from controllers.manager import ManagerConfig
from controllers.podutil import set_timestamp
from controllers.testing.fake_objects import FakeInformers, FakeObjects
from protos import objects_pb2 as pb

T0 = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Events:
    items: list[tuple[str, str, str]] = field(default_factory=list)

    def record(self, obj: Any, type: str, reason: str, message: str) -> None:
        self.items.append((obj.metadata.name, type, reason))

    def reasons(self) -> list[str]:
        return [reason for _, _, reason in self.items]


def make_job(
    name: str = "calc",
    *,
    completions: int = 3,
    parallelism: int = 2,
    backoff_limit: int = 6,
    deadline: int | None = None,
    ttl: int | None = None,
    restart_policy: str = "Never",
) -> pb.Job:
    job = pb.Job(metadata=pb.ObjectMeta(name=name, namespace="default", uid=f"uid-{name}"))
    job.spec.completions = completions
    job.spec.parallelism = parallelism
    job.spec.backoff_limit = backoff_limit
    if deadline is not None:
        job.spec.active_deadline_seconds = deadline
    if ttl is not None:
        job.spec.ttl_seconds_after_finished = ttl
    job.spec.selector.match_labels["app"] = name
    job.spec.template.metadata.labels["app"] = name
    job.spec.template.spec.restart_policy = restart_policy
    job.spec.template.spec.processes.add(name="main", command=["/bin/true"])
    return job


def make_pod(
    name: str,
    phase: str = "Running",
    *,
    created: float = T0,
    ready: bool = False,
    terminating: bool = False,
    restarts: int = 0,
    finished: float | None = None,
) -> pb.Pod:
    pod = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace="default", uid=f"uid-{name}"))
    set_timestamp(pod.metadata.creation_timestamp, created)
    pod.spec.node_name = "n1"
    pod.status.phase = phase
    if ready:
        pod.status.conditions.add(type="Ready", status="True")
    if terminating:
        set_timestamp(pod.metadata.deletion_timestamp, created + 1)
    proc = pod.status.process_statuses.add(name="main", restart_count=restarts)
    if finished is not None:
        set_timestamp(proc.state.terminated.finished_at, finished)
    return pod


def started(job: pb.Job, at: float = T0) -> pb.Job:
    set_timestamp(job.status.start_time, at)
    return job


# ------------------------------------------------------------------ plan_job tables

PLAN_CASES = [
    # (id, job, pods, now, create, deleted pod names, condition (type, reason) or None)
    ("fresh job starts parallelism pods", make_job(), [], T0, 2, [], None),
    (
        "parallelism capped by remaining completions",
        started(make_job()),
        [make_pod("a", "Succeeded"), make_pod("b", "Succeeded"), make_pod("c")],
        T0 + 5,
        0,
        [],
        None,
    ),
    (
        "one more pod when a pod succeeded",
        started(make_job(completions=5)),
        [make_pod("a", "Succeeded"), make_pod("b")],
        T0 + 5,
        1,
        [],
        None,
    ),
    (
        "too many active: the not-ready newest goes",
        started(make_job()),
        [
            make_pod("a", "Succeeded"),
            make_pod("b", "Succeeded"),
            make_pod("old", ready=True, created=T0),
            make_pod("new", ready=True, created=T0 + 2),
            make_pod("unready", created=T0),
        ],
        T0 + 5,
        0,
        ["unready", "new"],
        None,
    ),
    (
        "terminating pods are not active",
        started(make_job()),
        [make_pod("a", terminating=True), make_pod("b")],
        T0 + 5,
        1,
        [],
        None,
    ),
    (
        "completions reached: Complete and leftovers deleted",
        started(make_job(completions=2, parallelism=3)),
        [make_pod("a", "Succeeded"), make_pod("b", "Succeeded"), make_pod("c")],
        T0 + 5,
        0,
        ["c"],
        ("Complete", "CompletionsReached"),
    ),
    (
        "backoff limit exceeded",
        started(make_job(backoff_limit=1)),
        [make_pod("a", "Failed"), make_pod("b", "Failed"), make_pod("c")],
        T0 + 500,
        0,
        ["c"],
        ("Failed", "BackoffLimitExceeded"),
    ),
    (
        "failures within the backoff limit are replaced",
        started(make_job(backoff_limit=2, completions=1, parallelism=1)),
        [make_pod("a", "Failed", finished=T0 + 1)],
        T0 + 20,
        1,
        [],
        None,
    ),
    (
        "OnFailure restarts count against the limit",
        started(make_job(backoff_limit=2, restart_policy="OnFailure")),
        [make_pod("a", restarts=2), make_pod("b", restarts=1)],
        T0 + 5,
        0,
        ["a", "b"],
        ("Failed", "BackoffLimitExceeded"),
    ),
    (
        "active deadline passed",
        started(make_job(deadline=30)),
        [make_pod("a"), make_pod("b", "Succeeded")],
        T0 + 30,
        0,
        ["a"],
        ("Failed", "DeadlineExceeded"),
    ),
]


@pytest.mark.parametrize(
    ("job", "pods", "now", "create", "deleted", "condition"),
    [case[1:] for case in PLAN_CASES],
    ids=[case[0] for case in PLAN_CASES],
)
def test_plan_job(
    job: pb.Job,
    pods: list[pb.Pod],
    now: float,
    create: int,
    deleted: list[str],
    condition: tuple[str, str] | None,
) -> None:
    plan = plan_job(job, pods, now)
    assert plan.create == create
    assert [p.metadata.name for p in plan.delete] == deleted
    conditions = [(c.type, c.reason) for c in plan.status.conditions if c.status == "True"]
    assert conditions == ([condition] if condition else [])
    assert plan.status.HasField("start_time")
    running = [p for p in pods if p.status.phase == "Running"]
    live = [p for p in running if not p.metadata.HasField("deletion_timestamp")]
    assert plan.status.active == len(live) - len(deleted) + create
    if condition and condition[0] == "Complete":
        assert plan.status.completion_time.ToSeconds() == int(now)


def test_plan_counts_succeeded_failed_and_ready() -> None:
    pods = [
        make_pod("a", "Succeeded"),
        make_pod("b", "Failed", finished=T0),
        make_pod("c", ready=True),
        make_pod("d"),
    ]
    plan = plan_job(started(make_job(completions=10, parallelism=2)), pods, T0 + 100)
    status = plan.status
    assert (status.active, status.succeeded, status.failed, status.ready) == (2, 1, 1, 1)


def test_failed_pods_are_replaced_after_an_exponential_delay() -> None:
    job = started(make_job(completions=1, parallelism=1))
    pods = [make_pod("a", "Failed", finished=T0 + 10), make_pod("b", "Failed", finished=T0 + 40)]
    early = plan_job(job, pods, T0 + 50, backoff_base=10)  # 2 failures: 20 s after the last
    assert early.create == 0
    assert early.requeue_after == pytest.approx(10)
    assert plan_job(job, pods, T0 + 60, backoff_base=10).create == 1
    capped = plan_job(job, pods, T0 + 45, backoff_base=10, backoff_cap=4)
    assert capped.create == 1


def test_deadline_requeues_for_the_remaining_time() -> None:
    plan = plan_job(started(make_job(deadline=30)), [make_pod("a"), make_pod("b")], T0 + 12)
    assert plan.requeue_after == pytest.approx(18)
    assert not plan.status.conditions


def test_finished_job_waits_for_its_ttl_then_goes() -> None:
    job = started(make_job(ttl=60))
    job.status.conditions.add(type="Complete", status="True")
    set_timestamp(job.status.completion_time, T0 + 100)
    waiting = plan_job(job, [make_pod("a", "Succeeded")], T0 + 150)
    assert not waiting.delete_job and waiting.requeue_after == pytest.approx(10)
    assert waiting.create == 0
    assert plan_job(job, [], T0 + 160).delete_job


def test_finished_job_is_never_restarted_and_kills_leftovers() -> None:
    job = started(make_job())
    job.status.conditions.add(type="Failed", status="True", reason="DeadlineExceeded")
    plan = plan_job(job, [make_pod("a")], T0 + 1000)
    assert plan.create == 0 and [p.metadata.name for p in plan.delete] == ["a"]
    assert not plan.delete_job and plan.requeue_after is None


# ------------------------------------------------------------------ the controller


def _must(obj: Any) -> Any:
    assert obj is not None
    return obj


class Harness:
    def __init__(self, *, auto_sync: bool = True) -> None:
        self.clock = Clock()
        self.objects = FakeObjects(clock=self.clock)
        self.informers = FakeInformers(self.objects, auto_sync=auto_sync)
        self.events = Events()
        self.controller = JobController(backoff_base=10)
        self.controller.setup(
            ControllerContext(
                client=self.objects,
                informers=self.informers,
                events=self.events,
                clock=self.clock,
                config=ManagerConfig(),
            )
        )

    def get(self, kind: str, name: str, namespace: str = "default") -> Any:
        return _must(self.objects.peek(kind, name, namespace if kind != "Node" else ""))

    async def reconcile(self, key: str = "default/calc") -> Any:
        self.objects.clear_writes()
        return await self.controller.reconcile(key)

    def pods(self) -> list[pb.Pod]:
        return self.objects.objects("Pod", "default")

    async def finish(self, pod: pb.Pod, phase: str) -> None:
        pod.status.phase = phase
        proc = pod.status.process_statuses.add(name="main")
        set_timestamp(proc.state.terminated.finished_at, self.clock())
        await self.objects.update_status(pod)


async def test_controller_runs_a_job_to_completion() -> None:
    h = Harness()
    h.objects.add(make_job())
    await h.reconcile()
    creates = [w for w in h.objects.writes if w[0] == "create"]
    assert len(creates) == 2
    assert h.objects.writes[-1] == ("update_status", "Job", "default/calc")
    for pod in h.pods():
        assert pod.metadata.name.startswith("calc-")
        assert pod.metadata.labels["job-name"] == "calc"
        assert pod.metadata.labels["app"] == "calc"
        ref = pod.metadata.owner_references[0]
        assert (ref.kind, ref.name, ref.controller, ref.block_owner_deletion) == (
            "Job",
            "calc",
            True,
            True,
        )
        assert pod.spec.restart_policy == "Never"
    job = h.get("Job", "calc", "default")
    assert job.status.active == 2 and job.status.HasField("start_time")

    h.clock.now += 5
    await h.finish(h.pods()[0], "Succeeded")
    await h.reconcile()
    assert len(h.pods()) == 3
    for pod in h.pods():
        if pod.status.phase != "Succeeded":
            h.clock.now += 1
            await h.finish(pod, "Succeeded")
    await h.reconcile()
    job = h.get("Job", "calc", "default")
    assert [(c.type, c.status) for c in job.status.conditions] == [("Complete", "True")]
    assert (job.status.succeeded, job.status.active) == (3, 0)
    assert job.status.completion_time.ToSeconds() == int(h.clock.now)
    assert h.events.reasons().count("SuccessfulCreate") == 3
    assert "Completed" in h.events.reasons()
    # finished: nothing more happens, terminal pods stay
    await h.reconcile()
    assert h.objects.writes == []
    assert len(h.pods()) == 3


async def test_lagging_cache_does_not_create_duplicates() -> None:
    h = Harness(auto_sync=False)
    h.objects.add(make_job())
    h.informers.sync()
    await h.reconcile()
    assert len(h.pods()) == 2
    result = await h.reconcile()  # the cache has not seen the two pods yet
    assert h.objects.writes == []
    assert result.requeue_after is not None and result.requeue_after > 0
    h.informers.sync()
    await h.reconcile()
    assert len(h.pods()) == 2


async def test_backoff_limit_fails_the_job_and_deletes_active_pods() -> None:
    h = Harness()
    h.objects.add(make_job(backoff_limit=0, completions=2))
    await h.reconcile()
    first, second = h.pods()
    await h.finish(first, "Failed")
    await h.reconcile()
    job = h.get("Job", "calc", "default")
    assert [(c.type, c.reason) for c in job.status.conditions] == [
        ("Failed", "BackoffLimitExceeded")
    ]
    assert ("delete", "Pod", f"default/{second.metadata.name}") in h.objects.writes
    assert h.objects.peek("Pod", second.metadata.name, "default") is None  # unbound: gone at once
    assert ("calc", "Warning", "BackoffLimitExceeded") in h.events.items


async def test_ttl_after_finished_deletes_the_job_in_the_foreground() -> None:
    h = Harness()
    h.objects.add(make_job(completions=1, parallelism=1, ttl=30))
    await h.reconcile()
    await h.finish(h.pods()[0], "Succeeded")
    result = await h.reconcile()
    assert result.requeue_after == pytest.approx(30)
    h.clock.now += 29
    assert (await h.reconcile()).requeue_after == pytest.approx(1)
    h.clock.now += 1
    await h.reconcile()
    job = h.get("Job", "calc", "default")
    assert job is not None and list(job.metadata.finalizers) == ["foregroundDeletion"]
    assert h.objects.writes == [("delete", "Job", "default/calc")]


async def test_deleted_job_is_left_alone() -> None:
    h = Harness()
    assert (await h.reconcile("default/missing")).requeue_after is None
    assert h.objects.writes == []
