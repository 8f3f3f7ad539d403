"""Workloads copy spec.dependsOn into every pod they make, and a change of it rolls nothing.

Deployment → its ReplicaSet's template (kept equal in place) → pods; DaemonSet
and Job → their pods. ``rollout undo`` never writes dependsOn into a template.
"""

from __future__ import annotations

from typing import Any

from controllers.daemonset import DaemonSetController
from controllers.daemonset import new_pod as daemon_pod
from controllers.deployment import DeploymentController
from controllers.job import JobController
from controllers.replicaset import ReplicaSetController
from controllers.rollout import REVISION_ANNOTATION
from controllers.testing import FakeObjects, drain, fake_context
from mizzen.cli.rollout_cmd import plan_undo
from protos import objects_pb2 as pb

NOW = 2_000_000.0


def clock() -> float:
    return NOW


def deps(*services: str) -> list[pb.Dependency]:
    return [pb.Dependency(service=s) for s in services]


def services_of(spec: pb.PodSpec) -> list[str]:
    return [d.service for d in spec.depends_on]


def deployment(replicas: int = 2, *needs: str) -> pb.Deployment:
    d = pb.Deployment(metadata=pb.ObjectMeta(name="api", namespace="default", uid="uid-api"))
    d.spec.replicas = replicas
    d.spec.selector.match_labels["app"] = "api"
    d.spec.template.metadata.labels["app"] = "api"
    d.spec.template.spec.processes.add(name="main", command=["/bin/api"])
    d.spec.depends_on.extend(deps(*needs))
    return d


async def settle(objects: FakeObjects, *controllers: Any) -> None:
    ctx = fake_context(objects, clock=clock)
    for c in controllers:
        c.setup(ctx)
    for _ in range(5):
        for c in controllers:
            await drain(c, ctx)


async def test_deployment_pods_carry_its_dependencies() -> None:
    objects = FakeObjects(clock=clock)
    objects.add(deployment(2, "db", "cache"))
    await settle(objects, DeploymentController(), ReplicaSetController())
    [rs] = objects.objects("replicasets")
    assert services_of(rs.spec.template.spec) == ["db", "cache"]
    pods = objects.objects("pods")
    assert len(pods) == 2
    assert all(services_of(p.spec) == ["db", "cache"] for p in pods)
    # the Deployment's own template stays the user's
    stored = objects.peek("deployments", "api", "default")
    assert not stored.spec.template.spec.depends_on


async def test_changing_dependencies_updates_the_replicaset_in_place_without_a_rollout() -> None:
    objects = FakeObjects(clock=clock)
    objects.add(deployment(2, "db"))
    await settle(objects, DeploymentController(), ReplicaSetController())
    [rs] = objects.objects("replicasets")
    before = {p.metadata.uid for p in objects.objects("pods")}

    d = objects.peek("deployments", "api", "default")
    del d.spec.depends_on[:]
    d.spec.depends_on.extend(deps("db", "queue"))
    d.spec.replicas = 3
    await objects.update(d)
    await settle(objects, DeploymentController(), ReplicaSetController())

    [same] = objects.objects("replicasets")
    assert same.metadata.name == rs.metadata.name
    assert same.metadata.annotations[REVISION_ANNOTATION] == "1"
    assert services_of(same.spec.template.spec) == ["db", "queue"]
    pods = {p.metadata.uid: p for p in objects.objects("pods")}
    assert before <= set(pods)  # nothing replaced
    (new_uid,) = set(pods) - before
    assert services_of(pods[new_uid].spec) == ["db", "queue"]
    # pods are immutable: the old ones keep what they were made with
    assert all(services_of(pods[u].spec) == ["db"] for u in before)


async def test_a_template_change_still_rolls_and_the_new_replicaset_has_the_dependencies() -> None:
    objects = FakeObjects(clock=clock)
    objects.add(deployment(1, "db"))
    await settle(objects, DeploymentController())
    d = objects.peek("deployments", "api", "default")
    d.spec.template.spec.processes[0].command.append("--v2")
    await objects.update(d)
    await settle(objects, DeploymentController())
    replicasets = objects.objects("replicasets")
    assert len(replicasets) == 2
    assert all(services_of(rs.spec.template.spec) == ["db"] for rs in replicasets)


def test_undo_never_writes_dependencies_into_the_deployment_template() -> None:
    d = deployment(1, "db")
    old = pb.ReplicaSet(metadata=pb.ObjectMeta(name="api-old", namespace="default"))
    old.metadata.annotations[REVISION_ANNOTATION] = "1"
    old.spec.template.CopyFrom(d.spec.template)
    old.spec.template.spec.processes[0].command.append("--v1")
    old.spec.template.spec.depends_on.extend(deps("db"))
    cur = pb.ReplicaSet(metadata=pb.ObjectMeta(name="api-cur", namespace="default"))
    cur.metadata.annotations[REVISION_ANNOTATION] = "2"
    cur.spec.template.CopyFrom(d.spec.template)
    cur.spec.template.spec.depends_on.extend(deps("db"))
    d.metadata.annotations[REVISION_ANNOTATION] = "2"
    _, template, _ = plan_undo(d, [old, cur], 0)
    assert template is not None
    assert not template.spec.depends_on
    assert list(template.spec.processes[0].command) == ["/bin/api", "--v1"]


def daemonset(*needs: str) -> pb.DaemonSet:
    ds = pb.DaemonSet(metadata=pb.ObjectMeta(name="agent", namespace="default", uid="uid-ds"))
    ds.spec.selector.match_labels["app"] = "agent"
    ds.spec.template.metadata.labels["app"] = "agent"
    ds.spec.template.spec.processes.add(name="main", command=["/bin/agent"])
    ds.spec.depends_on.extend(deps(*needs))
    return ds


async def test_daemon_pods_carry_dependencies_and_a_change_replaces_none() -> None:
    assert services_of(daemon_pod(daemonset("db"), "n1", "rev").spec) == ["db"]
    objects = FakeObjects(clock=clock)
    objects.add(daemonset("db"), pb.Node(metadata=pb.ObjectMeta(name="n1")))
    await settle(objects, DaemonSetController())
    [pod] = objects.objects("pods")
    assert services_of(pod.spec) == ["db"]
    ds = objects.peek("daemonsets", "agent", "default")
    ds.spec.depends_on.add(service="queue")
    await objects.update(ds)
    objects.clear_writes()
    await settle(objects, DaemonSetController())
    assert [w for w in objects.writes if w[1] == "Pod"] == []


async def test_job_pods_carry_dependencies() -> None:
    job = pb.Job(metadata=pb.ObjectMeta(name="migrate", namespace="default", uid="uid-job"))
    job.spec.template.metadata.labels["app"] = "migrate"
    job.spec.template.spec.processes.add(name="main", command=["/bin/migrate"])
    job.spec.depends_on.append(pb.Dependency(kind="Deployment", name="db"))
    objects = FakeObjects(clock=clock)
    objects.add(job)
    await settle(objects, JobController())
    [pod] = objects.objects("pods")
    assert [(d.kind, d.name, d.condition) for d in pod.spec.depends_on] == [
        ("Deployment", "db", "Available")
    ]
