"""The Job controller: run pods until ``completions`` of them succeed.

``plan_job`` is the pure decision (what status the Job should show, how many
pods to create, which to delete, whether the Job itself must go); the
``JobController`` reads the shared caches, calls it and carries the plan out.

What is guaranteed, as in Kubernetes' (non-indexed) Job controller:

* at most ``min(parallelism, completions - succeeded)`` pods are active;
  pods are created with ``generate_name = "<job>-"``, the template's labels
  plus ``job-name``, and a controller reference to the Job;
* the counts are taken from the Job's pods, which stay (terminal) until the
  Job is deleted, so succeeded and failed never double-count a pod (as in
  Kubernetes before pod-tracking finalizers, a terminal pod deleted by hand
  is no longer counted, and an evicted active pod is replaced, not counted
  as failed);
* a Job has been retried too often once failed pods (plus, for
  ``restartPolicy: OnFailure``, process restarts of its active pods) exceed
  ``backoff_limit``: it gets condition ``Failed`` / ``BackoffLimitExceeded``
  and its active pods are deleted; replacements for failed pods are created
  after an exponential delay (10 s, 20 s, ... capped at 6 min);
* ``active_deadline_seconds`` after ``start_time`` the Job fails with
  ``DeadlineExceeded`` and its active pods are deleted;
* a finished Job (``Complete`` or ``Failed``) is never restarted; with
  ``ttl_seconds_after_finished`` it is deleted (Foreground) that long after
  it finished, and the garbage collector removes its pods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from controllers.base import (
    Controller,
    ControllerContext,
    Result,
    TemporaryError,
    is_terminating,
    owner_key,
    queue_key,
    split_key,
)
from controllers.expectations import Expectations
from controllers.podutil import (
    creation_seconds,
    is_active,
    is_ready,
    mark_condition,
    pod_from_template,
    seconds_of,
    set_timestamp,
)
from controllers.status import write_status
from mizzen.client.errors import ConflictError, NotFoundError
from protos import objects_pb2 as pb

if TYPE_CHECKING:
    from controllers.config import ManagerConfig

log = structlog.get_logger(__name__)

JOB_NAME_LABEL = "job-name"
BACKOFF_BASE = 10.0
BACKOFF_CAP = 360.0
CREATE_BURST = 500
EXPECTATIONS_TTL = 30.0


@dataclass(frozen=True)
class JobPlan:
    """One reconcile step of a Job: apply in the order delete, create, status, delete_job."""

    status: pb.JobStatus
    create: int = 0
    delete: tuple[pb.Pod, ...] = ()
    delete_job: bool = False
    requeue_after: float | None = None
    events: tuple[tuple[str, str, str], ...] = field(default=())


def finished_condition(job: pb.Job) -> pb.Condition | None:
    """The Job's true Complete or Failed condition, if it has finished."""
    for cond in job.status.conditions:
        if cond.type in ("Complete", "Failed") and cond.status == "True":
            return cond
    return None


def restarts(pods: list[pb.Pod]) -> int:
    return sum(p.restart_count for pod in pods for p in pod.status.process_statuses)


def last_failure(pods: list[pb.Pod]) -> float:
    """When the latest failed pod stopped (its processes' finish, else its creation)."""
    latest = 0.0
    for pod in pods:
        finished = [
            seconds_of(p.state.terminated.finished_at)
            for p in pod.status.process_statuses
            if p.state.HasField("terminated") and p.state.terminated.HasField("finished_at")
        ]
        latest = max(latest, max(finished) if finished else creation_seconds(pod))
    return latest


def deletion_order(pod: pb.Pod) -> tuple[bool, bool, float]:
    """Sort key: unbound first, then not ready, then newest."""
    return (bool(pod.spec.node_name), is_ready(pod), -creation_seconds(pod))


def plan_job(
    job: pb.Job,
    pods: list[pb.Pod],
    now: float,
    *,
    backoff_base: float = BACKOFF_BASE,
    backoff_cap: float = BACKOFF_CAP,
) -> JobPlan:
    """The next step for job given its pods (those it controls) at wall time now."""
    spec = job.spec
    status = pb.JobStatus()
    status.CopyFrom(job.status)
    active = [p for p in pods if is_active(p)]
    succeeded = sum(1 for p in pods if p.status.phase == "Succeeded")
    failed_pods = [p for p in pods if p.status.phase == "Failed"]
    status.active = len(active)
    status.succeeded = succeeded
    status.failed = len(failed_pods)
    status.ready = sum(1 for p in active if is_ready(p))

    done = finished_condition(job)
    if done is not None:
        return _plan_finished(job, status, done, active, now)

    if not status.HasField("start_time"):
        set_timestamp(status.start_time, now)
    started = seconds_of(status.start_time)
    retries = len(failed_pods)
    if spec.template.spec.restart_policy == "OnFailure":
        retries += restarts(active)
    deadline = started + spec.active_deadline_seconds
    if retries > spec.backoff_limit:
        return _fail(
            job,
            status,
            active,
            now,
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        )
    if spec.HasField("active_deadline_seconds") and now >= deadline:
        return _fail(
            job,
            status,
            active,
            now,
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
        )
    if succeeded >= spec.completions:
        mark_condition(
            status.conditions,
            "Complete",
            "True",
            "CompletionsReached",
            f"Job completed: {succeeded} pod(s) succeeded",
            now,
        )
        set_timestamp(status.completion_time, now)
        status.active = 0
        ttl = _ttl_wait(job, now, now)
        event = ("Normal", "Completed", "Job completed")
        return JobPlan(status, delete=tuple(active), requeue_after=ttl, events=(event,))

    waits: list[float] = []
    if spec.HasField("active_deadline_seconds"):
        waits.append(deadline - now)
    wanted = max(0, min(spec.parallelism, spec.completions - succeeded))
    create = 0
    delete: tuple[pb.Pod, ...] = ()
    if len(active) > wanted:
        delete = tuple(sorted(active, key=deletion_order)[: len(active) - wanted])
    elif len(active) < wanted:
        ready_at = 0.0
        if failed_pods:
            delay = min(backoff_base * 2 ** (len(failed_pods) - 1), backoff_cap)
            ready_at = last_failure(failed_pods) + delay
        if now >= ready_at:
            create = min(wanted - len(active), CREATE_BURST)
        else:
            waits.append(ready_at - now)
    status.active = len(active) - len(delete) + create
    return JobPlan(status, create=create, delete=delete, requeue_after=min(waits, default=None))


def _fail(
    job: pb.Job, status: pb.JobStatus, active: list[pb.Pod], now: float, reason: str, message: str
) -> JobPlan:
    mark_condition(status.conditions, "Failed", "True", reason, message, now)
    status.active = 0
    return JobPlan(
        status,
        delete=tuple(active),
        requeue_after=_ttl_wait(job, now, now),
        events=(("Warning", reason, message),),
    )


def _plan_finished(
    job: pb.Job, status: pb.JobStatus, done: pb.Condition, active: list[pb.Pod], now: float
) -> JobPlan:
    status.active = 0
    if job.status.HasField("completion_time"):
        finished = seconds_of(job.status.completion_time)
    else:
        finished = seconds_of(done.last_transition_time)
    wait = _ttl_wait(job, finished, now)
    expired = wait is not None and wait <= 0
    return JobPlan(
        status,
        delete=tuple(active),
        delete_job=expired,
        requeue_after=None if expired else wait,
    )


def _ttl_wait(job: pb.Job, finished: float, now: float) -> float | None:
    """Seconds until a finished Job's TTL runs out (<= 0: now), None without a TTL."""
    if not job.spec.HasField("ttl_seconds_after_finished"):
        return None
    return finished + job.spec.ttl_seconds_after_finished - now


def new_pod(job: pb.Job) -> pb.Pod:
    """A pod of job's template and dependsOn, owned by it (the name comes from generate_name)."""
    pod = pod_from_template(job, job.spec.template)
    pod.spec.depends_on.extend(job.spec.depends_on)
    pod.metadata.labels[JOB_NAME_LABEL] = job.metadata.name
    return pod


class JobController(Controller):
    """Drives Jobs with ``plan_job``; see the module doc."""

    name = "job"
    primary_kind = "Job"

    def __init__(
        self,
        *,
        workers: int = 2,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
    ) -> None:
        self.workers = workers
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.expectations = Expectations(ttl=EXPECTATIONS_TTL)

    def setup(self, ctx: ControllerContext) -> None:
        self._ctx = ctx
        self.jobs = ctx.informers.get("Job")
        self.pods = ctx.informers.get("Pod")
        self.expectations.clock = ctx.clock
        self.enqueue_changes(self.jobs, on_delete=self._job_deleted)
        self.pods.on_add(self._pod_changed)
        self.pods.on_update(lambda old, new: self._pod_changed(new))
        self.pods.on_delete(self._pod_deleted)

    def _job_deleted(self, job: Any) -> None:
        self.expectations.forget(queue_key(job))

    def _pod_changed(self, pod: Any) -> None:
        self.enqueue_owner(pod, "Job")

    def _pod_deleted(self, pod: Any) -> None:
        key = owner_key(pod, "Job")
        if key is not None:
            self.expectations.observe_deleted(key, pod.metadata.uid)
            self.queue.add(key)

    async def reconcile(self, key: str) -> Result:
        job: pb.Job | None = self.jobs.get_key(key)
        if job is None or is_terminating(job):
            return Result()
        pods = self.pods.owned_by(job)
        if not self.expectations.satisfied(key, pods):
            return Result(requeue_after=self.expectations.recheck_in(key))
        plan = plan_job(
            job,
            pods,
            self.ctx.clock(),
            backoff_base=self.backoff_base,
            backoff_cap=self.backoff_cap,
        )
        await self._delete_pods(key, job, plan.delete)
        await self._create_pods(key, job, plan.create)
        await write_status(self.ctx.client, job, plan.status)
        for event_type, reason, message in plan.events:
            self.ctx.events.record(job, event_type, reason, message)
        if plan.delete_job:
            await self._delete_job(job)
            return Result()
        return Result(requeue_after=plan.requeue_after)

    async def _create_pods(self, key: str, job: pb.Job, count: int) -> None:
        for _ in range(count):
            try:
                pod = await self.ctx.client.create(new_pod(job))
            except Exception:
                self.expectations.forget(key)
                raise
            self.expectations.expect_create(key, pod.metadata.uid)
            self.ctx.events.record(
                job, "Normal", "SuccessfulCreate", f"Created pod: {pod.metadata.name}"
            )

    async def _delete_pods(self, key: str, job: pb.Job, pods: tuple[pb.Pod, ...]) -> None:
        for pod in pods:
            self.expectations.expect_delete(key, pod.metadata.uid)
            try:
                await self.ctx.client.delete("Pod", pod.metadata.name, pod.metadata.namespace)
            except NotFoundError:
                pass
            except Exception:
                self.expectations.forget(key)
                raise
            self.ctx.events.record(
                job, "Normal", "SuccessfulDelete", f"Deleted pod: {pod.metadata.name}"
            )

    async def _delete_job(self, job: pb.Job) -> None:
        namespace, name = split_key(queue_key(job))
        log.info("job_ttl_expired", job=queue_key(job))
        try:
            await self.ctx.client.delete(
                "Job",
                name,
                namespace,
                resource_version=job.metadata.resource_version,
                propagation_policy="Foreground",
            )
        except NotFoundError:
            return
        except ConflictError as err:
            raise TemporaryError(f"job changed before its TTL deletion: {err}") from None


def job_controller_from_config(config: ManagerConfig) -> JobController:
    """The manager's factory: ``options["job.backoff_base"]`` overrides the retry delay base."""
    return JobController(backoff_base=float(config.options.get("job.backoff_base", BACKOFF_BASE)))
