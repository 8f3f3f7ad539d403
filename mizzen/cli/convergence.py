"""Whether an applied object has converged, and what blocks it: pure judgements for `apply --wait`.

``judge(obj, pods, replicasets, endpoints)`` looks at one object (as a watch
delivered it) and the pods that carry it out, and says:

* ``done``: observed state matches what was declared (and every pod of a
  workload is ready now: the counts lag the pods' own status) —
  Deployment: observedGeneration caught up, updated = ready = available =
  replicas and no old replica left; DaemonSet: observedGeneration caught up,
  every eligible node runs an updated, ready and available pod and none runs
  one it should not; ReplicaSet: ready = available = replicas; Job: condition
  Complete; Pod: Ready or Succeeded; Service: at least one ready endpoint;
  every other kind (ConfigMap, Secret, ...): once applied (apply --wait also
  follows the consumers of a changed ConfigMap or Secret: config_rolled);
* ``failed``: it cannot converge by itself — a Deployment's Progressing is
  ``ProgressDeadlineExceeded``, a Job's ``Failed``, a Pod's phase Failed;
* else ``waiting``, with counts (``2/3 updated, 1/3 ready, 1/3 available``) and
  the first blocker in words, taken from the pods' status:
  ``web-7c9f: CrashLoopBackOff: exit code 1``, the scheduler's message
  (``web-7c9f: 0/1 nodes are available: ...``), ``ConfigError``,
  ``OOMKilled``, ``PortInUse``, a process waiting, a pod not ready.

A blocker is *fatal* when it will not go away by itself: CrashLoopBackOff
(also while the restarted process runs again unready after a failed run),
ConfigError, OOMKilled, PortInUse, Unschedulable (a Job's crashes are not: it
retries them up to its backoffLimit, and its Failed condition says when it
gave up). The caller fails the wait
once a fatal blocker lasted longer than its grace (a pod may be unschedulable
for a moment while a node joins, a ConfigMap may be applied just after).

``config_rolled`` judges a workload that consumes a ConfigMap or Secret apply
--wait changed: done only once what it runs carries a digest of that object
other than the ones it carried before the apply (``mizzen.io/config-sources``,
written by the rollout controllers on a Deployment's ReplicaSets and a
DaemonSet's pods), on as many ready pods as it wants.

One file because it is one judgement: what "converged" means for each kind,
read from the objects and their pods, with no I/O and no clock.

``pods_of`` picks the pods that matter: those of a Deployment's current
ReplicaSet (a crashing old revision being replaced does not block), of a
DaemonSet, ReplicaSet or Job (controller reference), or a Service's selector.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from controllers.confighash import CONFIG_SOURCES, parse_sources
from mizzen.api.conditions import find_condition
from mizzen.api.kinds import kind_of
from mizzen.api.pods import has_ended
from protos import objects_pb2 as pb

REVISION_ANNOTATION = "deployment.mizzen.io/revision"
FATAL_REASONS = ("CrashLoopBackOff", "ConfigError", "OOMKilled", "PortInUse", "Unschedulable")

State = Literal["waiting", "done", "failed"]


@dataclass(frozen=True)
class Blocker:
    """What keeps a pod from being ready: reason (CamelCase) and the words to show."""

    pod: str
    reason: str
    text: str

    @property
    def fatal(self) -> bool:
        return self.reason in FATAL_REASONS


@dataclass(frozen=True)
class Verdict:
    state: State
    counts: str = ""
    # the failure (state failed), else the first blocker's text or ""
    message: str = ""
    # the fatal blockers seen now (the caller times their grace)
    fatal: tuple[Blocker, ...] = ()


# ------------------------------------------------------------------ pods


def _exit_words(term: pb.ProcessStateTerminated) -> str:
    if term.reason == "OOMKilled":
        return "OOMKilled"
    if term.signal:
        return f"killed by signal {term.signal}"
    return f"exit code {term.exit_code}"


def pod_blocker(pod: pb.Pod) -> Blocker | None:
    """Why pod is not ready (None when it is ready or succeeded)."""
    name = pod.metadata.name
    st = pod.status
    if st.phase == "Succeeded":
        return None
    if st.reason == "PortInUse":
        return Blocker(name, "PortInUse", f"{name}: PortInUse: {st.message}".rstrip(": "))
    scheduled = find_condition(st.conditions, "PodScheduled")
    if scheduled is not None and scheduled.status == "False":
        reason = scheduled.reason or "Unschedulable"
        return Blocker(name, reason, f"{name}: {scheduled.message or reason}")
    if st.phase == "Failed":
        words = st.message or st.reason or "failed"
        return Blocker(name, "Failed", f"{name}: Failed: {words}")
    ready = find_condition(st.conditions, "Ready")
    if ready is not None and ready.status == "True":
        return None
    if not pod.spec.node_name:
        return Blocker(name, "Pending", f"{name}: waiting to be scheduled")
    for proc in st.process_statuses:
        blocker = _process_blocker(name, proc)
        if blocker is not None:
            return blocker
    return Blocker(name, "NotReady", f"{name}: not ready")


def _process_blocker(pod: str, proc: pb.ProcessStatus) -> Blocker | None:
    state, last = proc.state, proc.last_state
    crashed = last.HasField("terminated") and (
        last.terminated.exit_code != 0 or last.terminated.signal != 0
    )
    if state.HasField("waiting"):
        reason = state.waiting.reason
        if reason == "CrashLoopBackOff" and crashed:
            if last.terminated.reason == "OOMKilled":
                return Blocker(pod, "OOMKilled", f"{pod}: OOMKilled: process {proc.name}")
            return Blocker(pod, reason, f"{pod}: {reason}: {_exit_words(last.terminated)}")
        if reason == "ConfigError":
            return Blocker(pod, reason, f"{pod}: ConfigError: {state.waiting.message}")
        words = state.waiting.message or reason or "waiting"
        return Blocker(pod, reason or "Waiting", f"{pod}: {words}")
    if state.HasField("terminated"):
        term = state.terminated
        if term.reason == "OOMKilled":
            return Blocker(pod, "OOMKilled", f"{pod}: OOMKilled: process {proc.name}")
        if term.exit_code != 0 or term.signal != 0:
            return Blocker(pod, "Error", f"{pod}: process {proc.name}: {_exit_words(term)}")
        return None
    if state.HasField("running") and not proc.ready and proc.restart_count > 0 and crashed:
        # restarted after a failed run and not ready yet: still the crash loop
        return Blocker(
            pod, "CrashLoopBackOff", f"{pod}: CrashLoopBackOff: {_exit_words(last.terminated)}"
        )
    if not proc.ready:
        return Blocker(pod, "NotReady", f"{pod}: process {proc.name} not ready")
    return None


def settles_at(pod: pb.Pod, settle: float) -> float | None:
    """When a ready pod without readiness probes has been ready for settle seconds
    (Unix time, from its Ready condition's transition), None for a pod that is
    not ready or where every process has a readiness probe (its readiness means
    something at once). A process that exits at once makes its pod ready for a
    moment; this is how long a pod has to stay ready to show it did not."""
    if settle <= 0 or not pod.spec.processes:
        return None
    if all(p.HasField("readiness_probe") for p in pod.spec.processes):
        return None
    ready = find_condition(pod.status.conditions, "Ready")
    if ready is None or ready.status != "True":
        return None
    since = float(ready.last_transition_time.ToNanoseconds()) / 1e9
    return since + settle


def _owned_by(obj: Any, uid: str) -> bool:
    return any(r.controller and r.uid == uid for r in obj.metadata.owner_references)


def _revision(obj: Any) -> int:
    value = obj.metadata.annotations.get(REVISION_ANNOTATION, "")
    return int(value) if value.isdigit() else 0


def current_replicaset(
    d: pb.Deployment, replicasets: Iterable[pb.ReplicaSet]
) -> pb.ReplicaSet | None:
    """The ReplicaSet of d's current revision (the newest it owns when unsure)."""
    owned = [rs for rs in replicasets if _owned_by(rs, d.metadata.uid)]
    want = _revision(d)
    same = [rs for rs in owned if want and _revision(rs) == want]
    pool = same or owned
    return max(pool, key=lambda rs: (_revision(rs), rs.metadata.name), default=None)


def pods_of(obj: Any, pods: Iterable[pb.Pod], replicasets: Iterable[pb.ReplicaSet]) -> list[pb.Pod]:
    """The pods that carry obj out (see the module doc), not terminating, by name."""
    kind = kind_of(obj).kind
    live = [
        p
        for p in pods
        if p.metadata.namespace == obj.metadata.namespace
        and not p.metadata.HasField("deletion_timestamp")
    ]
    if kind == "Deployment":
        rs = current_replicaset(obj, replicasets)
        uid = rs.metadata.uid if rs is not None else None
        chosen = [p for p in live if uid is not None and _owned_by(p, uid)]
    elif kind in ("DaemonSet", "ReplicaSet", "Job"):
        chosen = [p for p in live if _owned_by(p, obj.metadata.uid)]
    elif kind == "Service":
        selector = dict(obj.spec.selector)
        chosen = [
            p
            for p in live
            if selector and all(p.metadata.labels.get(k) == v for k, v in selector.items())
        ]
    else:
        chosen = []
    return sorted(chosen, key=lambda p: p.metadata.name)


# ------------------------------------------------------------------ objects


def _blocked(state: State, counts: str, pods: list[pb.Pod]) -> Verdict:
    blockers = [b for b in (pod_blocker(p) for p in pods) if b is not None]
    # a fatal blocker first: it is the one that explains a stuck rollout
    blockers.sort(key=lambda b: not b.fatal)
    message = blockers[0].text if blockers else ""
    return Verdict(state, counts, message, tuple(b for b in blockers if b.fatal))


def _done_if_pods_ready(counts: str, pods: list[pb.Pod]) -> Verdict:
    """Done when the counts said so and every running pod is ready now.

    The counts are the controllers' summary of pod status and lag it: a process
    that exits at once makes its pod ready for a moment, the counts say
    converged, and the pod itself already shows CrashLoopBackOff.
    """
    unready = [p for p in pods if not has_ended(p) and pod_blocker(p) is not None]
    if unready:
        return _blocked("waiting", counts, unready)
    return Verdict("done", counts)


def _of(have: int, want: int, what: str) -> str:
    return f"{have}/{want} {what}"


def judge(obj: Any, pods: list[pb.Pod], endpoints: pb.Endpoints | None = None) -> Verdict:
    """obj's verdict given pods_of(obj, ...) and, for a Service, its Endpoints."""
    kind = kind_of(obj).kind
    if kind == "Deployment":
        return _deployment(obj, pods)
    if kind == "DaemonSet":
        return _daemonset(obj, pods)
    if kind == "ReplicaSet":
        return _replicaset(obj, pods)
    if kind == "Job":
        return _job(obj, pods)
    if kind == "Pod":
        return _pod(obj)
    if kind == "Service":
        return _service(endpoints, pods)
    return Verdict("done", "applied")


def deadline_exceeded(d: pb.Deployment) -> pb.Condition | None:
    """d's Progressing condition when it says the rollout exceeded its
    progressDeadlineSeconds (False, ProgressDeadlineExceeded), else None."""
    cond = find_condition(d.status.conditions, "Progressing")
    if cond is not None and cond.status == "False" and cond.reason == "ProgressDeadlineExceeded":
        return cond
    return None


def _caught_up(obj: Any) -> bool:
    return bool(obj.status.observed_generation >= obj.metadata.generation)


def _deployment(d: pb.Deployment, pods: list[pb.Pod]) -> Verdict:
    want, st = d.spec.replicas, d.status
    counts = ", ".join(
        [
            _of(st.updated_replicas, want, "updated"),
            _of(st.ready_replicas, want, "ready"),
            _of(st.available_replicas, want, "available"),
        ]
    )
    old = st.replicas - st.updated_replicas
    if old > 0:
        counts += f", {old} old"
    if not _caught_up(d):
        return Verdict("waiting", counts, "spec change not observed yet")
    progressing = deadline_exceeded(d)
    if progressing is not None:
        why = _blocked("failed", counts, pods).message
        text = f"ProgressDeadlineExceeded: {progressing.message}"
        return Verdict("failed", counts, f"{text} ({why})" if why else text)
    if (
        st.updated_replicas == want
        and st.ready_replicas >= want
        and st.available_replicas == want
        and st.replicas == want
    ):
        return _done_if_pods_ready(counts, pods)
    if d.spec.paused:
        return Verdict("waiting", counts, "paused")
    return _blocked("waiting", counts, pods)


def _daemonset(ds: pb.DaemonSet, pods: list[pb.Pod]) -> Verdict:
    st = ds.status
    want = st.desired_number_scheduled
    counts = ", ".join(
        [
            _of(st.updated_number_scheduled, want, "updated"),
            _of(st.number_ready, want, "ready"),
            _of(st.number_available, want, "available"),
        ]
    )
    if st.number_misscheduled:
        counts += f", {st.number_misscheduled} misscheduled"
    if not _caught_up(ds):
        return Verdict("waiting", counts, "spec change not observed yet")
    if (
        st.updated_number_scheduled == want
        and st.current_number_scheduled == want
        and st.number_ready == want
        and st.number_available == want
        and st.number_misscheduled == 0
    ):
        return _done_if_pods_ready(counts, pods)
    return _blocked("waiting", counts, pods)


def _replicaset(rs: pb.ReplicaSet, pods: list[pb.Pod]) -> Verdict:
    want, st = rs.spec.replicas, rs.status
    counts = (
        f"{_of(st.ready_replicas, want, 'ready')}, {_of(st.available_replicas, want, 'available')}"
    )
    if not _caught_up(rs):
        return Verdict("waiting", counts, "spec change not observed yet")
    if st.replicas == want and st.ready_replicas == want and st.available_replicas == want:
        return _done_if_pods_ready(counts, pods)
    return _blocked("waiting", counts, pods)


def _job(job: pb.Job, pods: list[pb.Pod]) -> Verdict:
    st = job.status
    counts = f"{_of(st.succeeded, job.spec.completions, 'succeeded')}, {st.active} active"
    if st.failed:
        counts += f", {st.failed} failed"
    for cond in st.conditions:
        if cond.status != "True":
            continue
        if cond.type == "Complete":
            return Verdict("done", counts)
        if cond.type == "Failed":
            return Verdict("failed", counts, f"Failed: {cond.reason}: {cond.message}")
    active = [p for p in pods if not has_ended(p)]
    # a Job retries failed runs up to its backoffLimit: only its Failed condition
    # ends it, a crash is not fatal there (not being scheduled or configured is)
    v = _blocked("waiting", counts, active)
    fatal = tuple(b for b in v.fatal if b.reason not in ("CrashLoopBackOff", "OOMKilled"))
    return Verdict(v.state, v.counts, v.message, fatal)


def _pod(pod: pb.Pod) -> Verdict:
    st = pod.status
    counts = st.phase or "Pending"
    if st.phase == "Succeeded":
        return Verdict("done", counts)
    ready = find_condition(st.conditions, "Ready")
    if ready is not None and ready.status == "True":
        return Verdict("done", "Ready")
    if st.phase == "Failed":
        blocker = pod_blocker(pod)
        return Verdict("failed", counts, blocker.text if blocker else "Failed")
    return _blocked("waiting", counts, [pod])


def _service(endpoints: pb.Endpoints | None, pods: list[pb.Pod]) -> Verdict:
    ready = 0 if endpoints is None else sum(len(s.addresses) for s in endpoints.subsets)
    not_ready = (
        0 if endpoints is None else sum(len(s.not_ready_addresses) for s in endpoints.subsets)
    )
    counts = f"{ready} ready endpoint{'s' if ready != 1 else ''}"
    if not_ready:
        counts += f", {not_ready} not ready"
    if ready > 0:
        return Verdict("done", counts)
    if not pods:
        return Verdict("waiting", counts, "no pod matches the selector")
    return _blocked("waiting", counts, pods)


# ------------------------------------------------------------------ config consumers


def source_digest(obj: Any, source: str) -> str | None:
    """The digest of source (``Kind/name``) in obj's config-sources annotation, if any."""
    return parse_sources(obj.metadata.annotations.get(CONFIG_SOURCES, "")).get(source)


def config_rolled(
    workload: Any,
    pods: list[pb.Pod],
    replicasets: Iterable[pb.ReplicaSet],
    source: str,
    before: frozenset[str],
) -> str | None:
    """None once workload (a Deployment or DaemonSet) runs a new version of source on
    every pod it wants, else what it still waits for.

    ``pods`` is pods_of(workload); ``before`` the digests of source the workload's
    ReplicaSets (Deployment) or pods (DaemonSet) carried before the apply.
    """
    waiting = f"waiting for the rollout of the {source} change"
    if kind_of(workload).kind == "Deployment":
        rs = current_replicaset(workload, replicasets)
        if rs is None or source_digest(rs, source) in (None, *before):
            return waiting
        want = workload.spec.replicas
        carriers = pods
    else:
        want = workload.status.desired_number_scheduled
        carriers = [p for p in pods if source_digest(p, source) not in (None, *before)]
        if len(carriers) < len(pods):
            return f"{waiting}: {len(carriers)}/{len(pods)} pods updated"
    ready = [
        p
        for p in carriers
        if not has_ended(p)
        and (c := find_condition(p.status.conditions, "Ready"))
        and c.status == "True"
    ]
    if len(ready) < want:
        return f"{waiting}: {len(ready)}/{want} pods ready"
    return None


__all__ = [
    "FATAL_REASONS",
    "Blocker",
    "Verdict",
    "config_rolled",
    "current_replicaset",
    "deadline_exceeded",
    "judge",
    "pod_blocker",
    "pods_of",
    "settles_at",
    "source_digest",
]
