"""apply --wait's pure parts: convergence per kind, blockers in words, grace, plain lines."""

from __future__ import annotations

import pytest

from mizzen.cli.apply_cmd import ConfigChange, Consumers, Grace, followed
from mizzen.cli.convergence import (
    Verdict,
    config_rolled,
    current_replicaset,
    judge,
    pod_blocker,
    pods_of,
    settles_at,
)
from mizzen.cli.durations import parse_duration
from mizzen.cli.progress_display import PlainDisplay, plain_line
from protos import objects_pb2 as pb


def _pod(name: str = "web-7c9f", node: str = "n1", owner: str = "uid-rs") -> pb.Pod:
    pod = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace="default", uid=f"uid-{name}"))
    pod.metadata.owner_references.add(kind="ReplicaSet", name="rs", uid=owner, controller=True)
    pod.metadata.labels["app"] = "web"
    pod.spec.node_name = node
    pod.spec.processes.add(name="main", command=["/bin/server"])
    pod.status.phase = "Running" if node else "Pending"
    return pod


def _ready(pod: pb.Pod, at: float = 100.0) -> pb.Pod:
    cond = pod.status.conditions.add(type="Ready", status="True")
    cond.last_transition_time.FromNanoseconds(int(at * 1e9))
    pod.status.process_statuses.add(name="main", ready=True).state.running.SetInParent()
    return pod


def _crashing(pod: pb.Pod, code: int = 1) -> pb.Pod:
    proc = pod.status.process_statuses.add(name="main", restart_count=2)
    proc.state.waiting.reason = "CrashLoopBackOff"
    proc.state.waiting.message = "back-off 2s restarting failed process main"
    proc.last_state.terminated.exit_code = code
    proc.last_state.terminated.reason = "Error"
    return pod


def _deployment(want: int = 3, **status: int) -> pb.Deployment:
    d = pb.Deployment(metadata=pb.ObjectMeta(name="web", namespace="default", uid="uid-web"))
    d.metadata.generation = 2
    d.spec.replicas = want
    d.status.observed_generation = status.pop("observed", 2)
    for field, value in status.items():
        setattr(d.status, field, value)
    return d


# ------------------------------------------------------------------ blockers


def test_crash_loop_blocker_names_the_pod_and_exit_code() -> None:
    b = pod_blocker(_crashing(_pod()))
    assert b is not None and b.fatal
    assert b.text == "web-7c9f: CrashLoopBackOff: exit code 1"


def test_running_again_unready_after_a_crash_is_still_the_crash_loop() -> None:
    pod = _pod()
    proc = pod.status.process_statuses.add(name="main", restart_count=1, ready=False)
    proc.state.running.SetInParent()
    proc.last_state.terminated.signal = 9
    b = pod_blocker(pod)
    assert b is not None and (b.reason, b.text) == (
        "CrashLoopBackOff",
        "web-7c9f: CrashLoopBackOff: killed by signal 9",
    )


def test_oom_killed_and_config_error_are_fatal() -> None:
    pod = _crashing(_pod(), code=137)
    pod.status.process_statuses[0].last_state.terminated.reason = "OOMKilled"
    b = pod_blocker(pod)
    assert b is not None and b.fatal and b.text == "web-7c9f: OOMKilled: process main"

    pod = _pod()
    proc = pod.status.process_statuses.add(name="main")
    proc.state.waiting.reason = "ConfigError"
    proc.state.waiting.message = 'ConfigMap "web" not found (envFrom[0])'
    b = pod_blocker(pod)
    assert b is not None and b.fatal
    assert b.text == 'web-7c9f: ConfigError: ConfigMap "web" not found (envFrom[0])'


def test_unschedulable_blocker_is_the_schedulers_message() -> None:
    pod = _pod(node="")
    pod.status.conditions.add(
        type="PodScheduled",
        status="False",
        reason="Unschedulable",
        message="0/3 nodes are available: 3 Insufficient memory.",
    )
    b = pod_blocker(pod)
    assert b is not None and b.fatal
    assert b.text == "web-7c9f: 0/3 nodes are available: 3 Insufficient memory."


def test_port_in_use_and_plain_waiting_states() -> None:
    pod = _pod()
    pod.status.phase = "Failed"
    pod.status.reason = "PortInUse"
    pod.status.message = "port 8080/TCP is in use on the node"
    b = pod_blocker(pod)
    assert b is not None and b.fatal
    assert b.text == "web-7c9f: PortInUse: port 8080/TCP is in use on the node"

    waiting = _pod()
    proc = waiting.status.process_statuses.add(name="main")
    proc.state.waiting.reason = "DependenciesNotReady"
    proc.state.waiting.message = "waiting for Service db"
    b = pod_blocker(waiting)
    assert b is not None and not b.fatal and b.text == "web-7c9f: waiting for Service db"
    assert pod_blocker(_ready(_pod())) is None
    unbound = pod_blocker(_pod(node=""))
    assert unbound is not None and unbound.text == "web-7c9f: waiting to be scheduled"


# ------------------------------------------------------------------ judgements


@pytest.mark.parametrize(
    ("status", "state", "counts"),
    [
        ({}, "waiting", "0/3 updated, 0/3 ready, 0/3 available"),
        (
            {"replicas": 3, "updated_replicas": 3, "ready_replicas": 3, "available_replicas": 3},
            "done",
            "3/3 updated, 3/3 ready, 3/3 available",
        ),
        (  # an old pod still running
            {"replicas": 4, "updated_replicas": 3, "ready_replicas": 4, "available_replicas": 4},
            "waiting",
            "3/3 updated, 4/3 ready, 4/3 available, 1 old",
        ),
        (  # status of the previous generation
            {
                "observed": 1,
                "replicas": 3,
                "updated_replicas": 3,
                "ready_replicas": 3,
                "available_replicas": 3,
            },
            "waiting",
            "3/3 updated, 3/3 ready, 3/3 available",
        ),
    ],
)
def test_deployment_converges_when_every_replica_is_new_and_available(
    status: dict[str, int], state: str, counts: str
) -> None:
    v = judge(_deployment(3, **status), [])
    assert (v.state, v.counts) == (state, counts)


def test_deployment_past_its_progress_deadline_fails_with_the_blocker() -> None:
    d = _deployment(1, replicas=1, updated_replicas=1)
    d.status.conditions.add(
        type="Progressing",
        status="False",
        reason="ProgressDeadlineExceeded",
        message='ReplicaSet "web-5d9c" has timed out progressing.',
    )
    v = judge(d, [_crashing(_pod())])
    assert v.state == "failed"
    assert v.message == (
        'ProgressDeadlineExceeded: ReplicaSet "web-5d9c" has timed out progressing. '
        "(web-7c9f: CrashLoopBackOff: exit code 1)"
    )


def test_waiting_deployment_shows_a_fatal_blocker_first() -> None:
    slow = _pod("web-aaaa")
    slow.status.process_statuses.add(name="main").state.waiting.reason = "Starting"
    v = judge(_deployment(2), [slow, _crashing(_pod("web-bbbb"))])
    assert v.state == "waiting"
    assert v.message == "web-bbbb: CrashLoopBackOff: exit code 1"
    assert [b.pod for b in v.fatal] == ["web-bbbb"]


def test_job_pod_service_daemonset_and_other_kinds() -> None:
    job = pb.Job(metadata=pb.ObjectMeta(name="once", namespace="default"))
    job.spec.completions = 1
    assert judge(job, []).state == "waiting"
    job.status.conditions.add(type="Failed", status="True", reason="BackoffLimitExceeded",
                              message="Job has reached the specified backoff limit")  # fmt: skip
    failed = judge(job, [])
    assert failed.state == "failed"
    assert failed.message == (
        "Failed: BackoffLimitExceeded: Job has reached the specified backoff limit"
    )
    job.status.conditions[0].type = "Complete"
    assert judge(job, []).state == "done"

    assert judge(_ready(_pod()), []).state == "done"
    done_pod = _pod()
    done_pod.status.phase = "Succeeded"
    assert judge(done_pod, []).state == "done"

    svc = pb.Service(metadata=pb.ObjectMeta(name="web", namespace="default"))
    svc.spec.selector["app"] = "web"
    assert judge(svc, [], None).message == "no pod matches the selector"
    ep = pb.Endpoints(metadata=pb.ObjectMeta(name="web", namespace="default"))
    ep.subsets.add().not_ready_addresses.add(ip="10.0.0.1")
    assert judge(svc, [_pod()], ep).counts == "0 ready endpoints, 1 not ready"
    ep.subsets[0].addresses.add(ip="10.0.0.2")
    assert judge(svc, [_pod()], ep) == Verdict("done", "1 ready endpoint, 1 not ready")

    ds = pb.DaemonSet(metadata=pb.ObjectMeta(name="agent", namespace="default", generation=1))
    ds.status.observed_generation = 1
    ds.status.desired_number_scheduled = 2
    ds.status.current_number_scheduled = 2
    ds.status.updated_number_scheduled = 2
    ds.status.number_ready = 1
    ds.status.number_available = 1
    assert judge(ds, []).state == "waiting"
    ds.status.number_ready = ds.status.number_available = 2
    assert judge(ds, []) == Verdict("done", "2/2 updated, 2/2 ready, 2/2 available")

    assert judge(pb.ConfigMap(metadata=pb.ObjectMeta(name="c")), []) == Verdict("done", "applied")


def test_pods_of_a_deployment_are_its_current_revisions() -> None:
    d = _deployment(2)
    d.metadata.annotations["deployment.mizzen.io/revision"] = "2"
    replicasets = []
    for rev in ("1", "2"):
        rs = pb.ReplicaSet(metadata=pb.ObjectMeta(name=f"web-r{rev}", namespace="default"))
        rs.metadata.uid = f"uid-r{rev}"
        rs.metadata.annotations["deployment.mizzen.io/revision"] = rev
        rs.metadata.owner_references.add(kind="Deployment", uid="uid-web", controller=True)
        replicasets.append(rs)
    old, new = _pod("web-old", owner="uid-r1"), _pod("web-new", owner="uid-r2")
    gone = _pod("web-gone", owner="uid-r2")
    gone.metadata.deletion_timestamp.FromSeconds(1)
    current = current_replicaset(d, replicasets)
    assert current is not None and current.metadata.name == "web-r2"
    assert [p.metadata.name for p in pods_of(d, [old, new, gone], replicasets)] == ["web-new"]

    svc = pb.Service(metadata=pb.ObjectMeta(name="web", namespace="default"))
    svc.spec.selector["app"] = "web"
    other = _pod("db-1")
    other.metadata.labels["app"] = "db"
    assert [p.metadata.name for p in pods_of(svc, [other, new], [])] == ["web-new"]


def test_settle_applies_to_ready_pods_without_a_readiness_probe() -> None:
    pod = _ready(_pod(), at=100.0)
    assert settles_at(pod, 1.0) == pytest.approx(101.0)
    assert settles_at(pod, 0.0) is None
    assert settles_at(_pod(), 1.0) is None  # not ready
    probed = _ready(_pod(), at=100.0)
    probed.spec.processes[0].readiness_probe.exec.command.append("true")
    assert settles_at(probed, 1.0) is None


# ------------------------------------------------------------------ grace


def test_grace_fails_a_fatal_blocker_present_after_the_grace_and_keeps_it_across_gaps() -> None:
    grace = Grace(10.0)
    crashing = judge(_deployment(1), [_crashing(_pod())])
    assert grace.observe("deployment/web", crashing, 100.0) == (None, 110.0)
    # running for a moment between two back-offs: not fatal now, time kept
    assert grace.observe("deployment/web", Verdict("waiting", "x"), 105.0) == (None, None)
    blocker, _ = grace.observe("deployment/web", crashing, 110.0)
    assert blocker is not None and blocker.text == "web-7c9f: CrashLoopBackOff: exit code 1"


def test_grace_keeps_a_crashed_workload_unsettled_until_it_stayed_clear() -> None:
    grace = Grace(10.0)
    grace.observe("deployment/web", judge(_deployment(1), [_crashing(_pod())]), 100.0)
    assert grace.unsettled("deployment/web", 105.0) == (
        "web-7c9f: CrashLoopBackOff: exit code 1",
        110.0,
    )
    assert grace.unsettled("deployment/web", 110.0) is None
    # an unschedulable pod that got a node is settled at once
    unbound = _pod(node="")
    unbound.status.conditions.add(type="PodScheduled", status="False", reason="Unschedulable")
    grace.observe("deployment/api", judge(_deployment(1), [unbound]), 100.0)
    assert grace.unsettled("deployment/api", 100.5) is None
    grace.forget_except(set())
    assert grace.observe("deployment/web", judge(_deployment(1), [_crashing(_pod())]), 200.0)[
        1
    ] == pytest.approx(210.0)


# ------------------------------------------------------------------ display, durations


def test_plain_display_prints_a_line_per_change() -> None:
    lines: list[str] = []
    display = PlainDisplay(lines.append)
    waiting = Verdict("waiting", "0/1 updated", "web-7c9f: not ready")
    display.update([("deployment/web", waiting)])
    display.update([("deployment/web", waiting)])
    display.update([("deployment/web", Verdict("done", "1/1 updated"))])
    assert lines == [
        "deployment/web: 0/1 updated; web-7c9f: not ready",
        "deployment/web: converged (1/1 updated)",
    ]
    assert plain_line("job/x", Verdict("failed", "0/1 succeeded", "Failed: X: y")) == (
        "job/x: 0/1 succeeded; failed: Failed: X: y"
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("250ms", 0.25), ("90", 90.0), ("0", 0.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5x", "m5", "1.5.3s", "-3", "5m junk"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_counts_that_lag_a_crashed_pod_are_not_converged() -> None:
    done = {"replicas": 1, "updated_replicas": 1, "ready_replicas": 1, "available_replicas": 1}
    v = judge(_deployment(1, **done), [_crashing(_pod())])
    assert v.state == "waiting"
    assert v.message == "web-7c9f: CrashLoopBackOff: exit code 1"
    assert [b.reason for b in v.fatal] == ["CrashLoopBackOff"]
    assert judge(_deployment(1, **done), [_ready(_pod())]).state == "done"


def test_a_jobs_crashes_are_not_fatal_its_failed_condition_is() -> None:
    job = pb.Job(metadata=pb.ObjectMeta(name="once", namespace="default"))
    job.spec.completions = 1
    job.status.active = 1
    v = judge(job, [_crashing(_pod("once-1"))])
    assert (v.state, v.message, v.fatal) == (
        "waiting",
        "once-1: CrashLoopBackOff: exit code 1",
        (),
    )
    unbound = _pod("once-2", node="")
    unbound.status.conditions.add(type="PodScheduled", status="False", reason="Unschedulable")
    assert [b.reason for b in judge(job, [unbound]).fatal] == ["Unschedulable"]


# ------------------------------------------------------------------ config consumers

SOURCES = "mizzen.io/config-sources"


def _rs(rev: str, sources: str) -> pb.ReplicaSet:
    rs = pb.ReplicaSet(metadata=pb.ObjectMeta(name=f"web-r{rev}", namespace="default"))
    rs.metadata.uid = f"uid-r{rev}"
    rs.metadata.annotations["deployment.mizzen.io/revision"] = rev
    rs.metadata.annotations[SOURCES] = sources
    rs.metadata.owner_references.add(kind="Deployment", uid="uid-web", controller=True)
    return rs


def test_a_config_consumer_deployment_rolled_once_its_current_replicaset_is_new_and_ready() -> None:
    d = _deployment(2)
    d.metadata.annotations["deployment.mizzen.io/revision"] = "1"
    old = _rs("1", "ConfigMap/app=aaaa,Secret/db=bbbb")
    before = frozenset({"aaaa"})
    ready_old = [_ready(_pod(f"web-o{i}", owner="uid-r1")) for i in range(2)]
    # the controller has not rolled yet: the current ReplicaSet carries the old digest
    waiting = config_rolled(d, ready_old, [old], "ConfigMap/app", before)
    assert waiting == "waiting for the rollout of the ConfigMap/app change"
    # a new revision with another digest, one of two pods ready
    d.metadata.annotations["deployment.mizzen.io/revision"] = "2"
    new = _rs("2", "ConfigMap/app=cccc,Secret/db=bbbb")
    pods = [_ready(_pod("web-n0", owner="uid-r2")), _pod("web-n1", owner="uid-r2")]
    assert config_rolled(d, pods, [old, new], "ConfigMap/app", before) == (
        "waiting for the rollout of the ConfigMap/app change: 1/2 pods ready"
    )
    pods[1] = _ready(pods[1])
    assert config_rolled(d, pods, [old, new], "ConfigMap/app", before) is None
    # a source the ReplicaSet does not name (not counted any more) is never "rolled"
    assert config_rolled(d, pods, [old, new], "Secret/other", frozenset()) is not None


def test_a_config_consumer_daemonset_rolled_once_every_pod_carries_a_new_digest() -> None:
    ds = pb.DaemonSet(metadata=pb.ObjectMeta(name="agent", namespace="default", uid="uid-ds"))
    ds.status.desired_number_scheduled = 2
    pods = []
    for i, digest in enumerate(("aaaa", "cccc")):
        pod = _ready(_pod(f"agent-{i}", owner="uid-ds"))
        pod.metadata.annotations[SOURCES] = f"ConfigMap/app={digest}"
        pods.append(pod)
    before = frozenset({"aaaa"})
    assert config_rolled(ds, pods, [], "ConfigMap/app", before) == (
        "waiting for the rollout of the ConfigMap/app change: 1/2 pods updated"
    )
    pods[0].metadata.annotations[SOURCES] = "ConfigMap/app=cccc"
    assert config_rolled(ds, pods, [], "ConfigMap/app", before) is None


def test_followed_adds_config_consumers_after_the_applied_objects() -> None:
    from mizzen.api.manifest import load_manifests

    [cm, dep] = load_manifests(
        "apiVersion: mizzen/v1\nkind: ConfigMap\nmetadata: {name: app, namespace: default}\n"
        "---\napiVersion: mizzen/v1\nkind: Deployment\nmetadata: {name: web, namespace: default}\n"
        "spec:\n  selector: {matchLabels: {app: web}}\n  template:\n"
        "    metadata: {labels: {app: web}}\n"
        "    spec: {processes: [{name: main, command: [x]}]}\n",
        "-",
    )
    change = ConfigChange("ConfigMap/app", frozenset({"aaaa"}))
    consumers: Consumers = {
        ("Deployment", "default", "web"): (change,),
        ("DaemonSet", "default", "agent"): (change,),
    }
    targets = followed([cm, dep], consumers)
    assert [(t.kind, t.name, t.config) for t in targets] == [
        ("ConfigMap", "app", ()),
        ("Deployment", "web", (change,)),  # applied itself, and a consumer
        ("DaemonSet", "agent", (change,)),
    ]
