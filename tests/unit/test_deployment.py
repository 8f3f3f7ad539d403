"""Deployment controller against FakeObjects: rollout math, writes, and whole rollouts."""

from __future__ import annotations

from typing import Any

import pytest

from controllers.base import owner_reference
from controllers.deployment import DeploymentController
from controllers.podutil import is_ready
from controllers.replicaset import ReplicaSetController
from controllers.rollout import (
    HASH_LABEL,
    REVISION_ANNOTATION,
    max_surge_unavailable,
    new_replicas_for_rollout,
    old_scale_downs,
    template_equal,
    template_hash,
)
from controllers.testing import FakeObjects, drain, fake_context
from protos import objects_pb2 as pb

NOW = 2_000_000.0


def clock() -> float:
    return NOW


def deployment(
    replicas: int = 3,
    *,
    command: str = "v1",
    surge: str = "",
    unavailable: str = "",
    strategy: str = "RollingUpdate",
    history: int | None = None,
    paused: bool = False,
) -> pb.Deployment:
    d = pb.Deployment(metadata=pb.ObjectMeta(name="web", namespace="default", uid="uid-web"))
    d.spec.replicas = replicas
    d.spec.selector.match_labels["app"] = "web"
    d.spec.template.metadata.labels["app"] = "web"
    d.spec.template.spec.processes.add(name="main", command=["/bin/server", command])
    d.spec.strategy.type = strategy
    if strategy == "RollingUpdate":
        d.spec.strategy.rolling_update.max_surge = surge
        d.spec.strategy.rolling_update.max_unavailable = unavailable
    if history is not None:
        d.spec.revision_history_limit = history
    d.spec.paused = paused
    return d


def rs_for(
    d: pb.Deployment, replicas: int, available: int, revision: int, age: float = 0
) -> pb.ReplicaSet:
    """The ReplicaSet the controller would have made for d's template, with a given status."""
    h = template_hash(d.spec.template)
    rs = pb.ReplicaSet(metadata=pb.ObjectMeta(name=f"web-{h}", namespace="default", uid=f"uid-{h}"))
    rs.metadata.labels.update({"app": "web", HASH_LABEL: h})
    rs.metadata.annotations[REVISION_ANNOTATION] = str(revision)
    rs.metadata.owner_references.append(owner_reference(d))
    rs.metadata.creation_timestamp.FromNanoseconds(int((NOW - 1000 + age) * 1e9))
    rs.spec.replicas = replicas
    rs.spec.selector.CopyFrom(d.spec.selector)
    rs.spec.selector.match_labels[HASH_LABEL] = h
    rs.spec.template.CopyFrom(d.spec.template)
    rs.spec.template.metadata.labels[HASH_LABEL] = h
    rs.status.replicas = replicas
    rs.status.ready_replicas = available
    rs.status.available_replicas = available
    rs.status.observed_generation = 1
    return rs


async def run(*objs: Any, once: bool = False) -> FakeObjects:
    objects = FakeObjects(clock=clock)
    objects.add(*objs)
    ctx = fake_context(objects, clock=clock)
    controller = DeploymentController()
    controller.setup(ctx)
    if once:
        await controller.reconcile("default/web")
    else:
        await drain(controller, ctx)
    return objects


def ops(objects: FakeObjects) -> list[tuple[str, str]]:
    return [(op, kind) for op, kind, _ in objects.writes]


# ------------------------------------------------------------------ pure math


@pytest.mark.parametrize(
    ("replicas", "surge", "unavailable", "want"),
    [
        (10, "25%", "25%", (3, 2)),
        (5, "25%", "25%", (2, 1)),
        (4, "50%", "1", (2, 1)),
        (3, "0", "0", (0, 1)),
        (3, "0%", "0%", (0, 1)),
        (1, "25%", "25%", (1, 0)),
        (4, "1", "100%", (1, 4)),
    ],
)
def test_max_surge_and_unavailable(
    replicas: int, surge: str, unavailable: str, want: tuple[int, int]
) -> None:
    d = deployment(replicas, surge=surge, unavailable=unavailable)
    assert max_surge_unavailable(d) == want


def test_new_replicas_stay_within_surge() -> None:
    d = deployment(4)
    old = [rs_for(deployment(4, command="v0"), 4, 4, 1)]
    assert new_replicas_for_rollout(4, 1, 0, old) == 1
    assert new_replicas_for_rollout(4, 1, 1, old) == 1  # total already 5
    assert new_replicas_for_rollout(4, 2, 1, old) == 2
    assert new_replicas_for_rollout(4, 1, 0, []) == 4
    assert new_replicas_for_rollout(4, 1, 6, []) == 4  # above target: down to replicas
    del d


def test_old_scale_down_keeps_min_available_and_cuts_unhealthy_first() -> None:
    new_d = deployment(4)
    new = rs_for(new_d, 1, 0, 2)
    healthy = rs_for(deployment(4, command="v0"), 4, 4, 1)
    assert [(rs.metadata.name, n) for rs, n in old_scale_downs(4, 1, new, [healthy])] == [
        (healthy.metadata.name, 3)
    ]
    sick = rs_for(deployment(4, command="v0"), 4, 1, 1)
    # 3 unhealthy may go (total 5, min available 3, new unavailable 1 → budget 1 only)
    assert [n for _, n in old_scale_downs(4, 1, new, [sick])] == [3]
    ready_new = rs_for(new_d, 4, 4, 2)
    assert [n for _, n in old_scale_downs(4, 1, ready_new, [sick])] == [0]


def test_template_hash_is_stable_and_ignores_its_own_label() -> None:
    d = deployment()
    h = template_hash(d.spec.template)
    labelled = pb.PodTemplateSpec()
    labelled.CopyFrom(d.spec.template)
    labelled.metadata.labels[HASH_LABEL] = h
    assert template_hash(labelled) == h
    assert template_equal(labelled, d.spec.template)
    assert template_hash(deployment(command="v2").spec.template) != h
    assert template_hash(d.spec.template, collision_count=1) != h


# ------------------------------------------------------------------ writes


async def test_new_deployment_creates_its_replicaset() -> None:
    d = deployment(3)
    objects = await run(d)
    assert ops(objects) == [
        ("create", "ReplicaSet"),
        ("update", "Deployment"),
        ("update_status", "Deployment"),
    ]
    [rs] = objects.objects("replicasets")
    h = template_hash(objects.peek("deployments", "web", "default").spec.template)
    assert rs.metadata.name == f"web-{h}"
    assert rs.spec.replicas == 3
    assert rs.metadata.labels[HASH_LABEL] == h
    assert rs.spec.selector.match_labels[HASH_LABEL] == h
    assert rs.spec.template.metadata.labels[HASH_LABEL] == h
    assert rs.metadata.annotations[REVISION_ANNOTATION] == "1"
    assert rs.metadata.owner_references[0].uid == "uid-web"
    stored = objects.peek("deployments", "web", "default")
    assert stored.metadata.annotations[REVISION_ANNOTATION] == "1"


async def test_steady_state_writes_nothing() -> None:
    d = deployment(3)
    d.metadata.annotations[REVISION_ANNOTATION] = "1"
    objects = await run(d, rs_for(d, 3, 3, 1))
    objects.clear_writes()
    d2 = objects.peek("deployments", "web", "default")
    objects2 = await run(d2, rs_for(d, 3, 3, 1))
    assert ops(objects2) == []
    conds = {c.type: (c.status, c.reason) for c in d2.status.conditions}
    assert conds == {
        "Available": ("True", "MinimumReplicasAvailable"),
        "Progressing": ("True", "NewReplicaSetAvailable"),
    }
    assert (d2.status.replicas, d2.status.updated_replicas, d2.status.available_replicas) == (
        3,
        3,
        3,
    )


async def test_template_change_starts_a_rolling_update() -> None:
    old_d = deployment(4, command="v0", surge="1", unavailable="1")
    old = rs_for(old_d, 4, 4, 1)
    d = deployment(4, command="v1", surge="1", unavailable="1")
    objects = await run(d, old, once=True)
    assert ops(objects) == [
        ("create", "ReplicaSet"),
        ("update", "ReplicaSet"),
        ("update", "Deployment"),
        ("update_status", "Deployment"),
    ]
    by_name = {rs.metadata.name: rs for rs in objects.objects("replicasets")}
    assert by_name[old.metadata.name].spec.replicas == 3
    stored = objects.peek("deployments", "web", "default")
    new = by_name[f"web-{template_hash(stored.spec.template)}"]
    assert new.spec.replicas == 1
    assert new.metadata.annotations[REVISION_ANNOTATION] == "2"


async def test_recreate_scales_old_down_and_waits_for_old_pods() -> None:
    old_d = deployment(2, command="v0", strategy="Recreate")
    old = rs_for(old_d, 2, 2, 1)
    old_pod = pb.Pod(metadata=pb.ObjectMeta(name="old-1", namespace="default"))
    old_pod.metadata.labels.update(old.spec.template.metadata.labels)
    old_pod.metadata.owner_references.append(owner_reference(old))
    old_pod.spec.processes.add(name="main", command=["/bin/server"])
    old_pod.status.phase = "Running"
    d = deployment(2, command="v1", strategy="Recreate")
    objects = FakeObjects(clock=clock)
    objects.add(d, old, old_pod)
    ctx = fake_context(objects, clock=clock)
    controller = DeploymentController()
    controller.setup(ctx)
    await drain(controller, ctx)
    assert ("create", "ReplicaSet") not in ops(objects)
    assert objects.peek("replicasets", old.metadata.name, "default").spec.replicas == 0
    await objects.delete("pods", "old-1", "default")
    await drain(controller, ctx)
    stored = objects.peek("deployments", "web", "default")
    name = f"web-{template_hash(stored.spec.template)}"
    new = objects.peek("replicasets", name, "default")
    assert new is not None and new.spec.replicas == 2


async def test_paused_deployment_does_not_roll_out() -> None:
    old_d = deployment(2, command="v0")
    old = rs_for(old_d, 2, 2, 1)
    objects = await run(deployment(2, command="v1", paused=True), old)
    assert ("create", "ReplicaSet") not in ops(objects)
    d = objects.peek("deployments", "web", "default")
    assert {c.type: c.reason for c in d.status.conditions}["Progressing"] == "DeploymentPaused"


async def test_revision_history_limit_deletes_oldest_idle_replicasets() -> None:
    d = deployment(1, history=1)
    current = rs_for(d, 1, 1, 4)
    idle = [rs_for(deployment(1, command=f"v0{i}"), 0, 0, i + 1) for i in range(3)]
    objects = await run(d, current, *idle)
    deleted = sorted(key for op, kind, key in objects.writes if op == "delete")
    assert deleted == sorted(f"default/{rs.metadata.name}" for rs in idle[:2])


async def test_rollback_reuses_the_old_replicaset_with_a_new_revision() -> None:
    v1 = deployment(2, command="v1")
    v2 = deployment(2, command="v2")
    old = rs_for(v1, 0, 0, 1)
    current = rs_for(v2, 2, 2, 2)
    objects = await run(v1, old, current)  # the Deployment's template is v1 again
    assert ("create", "ReplicaSet") not in ops(objects)
    back = objects.peek("replicasets", old.metadata.name, "default")
    assert back.metadata.annotations[REVISION_ANNOTATION] == "3"
    assert back.spec.replicas >= 1
    d = objects.peek("deployments", "web", "default")
    assert d.metadata.annotations[REVISION_ANNOTATION] == "3"


# ------------------------------------------------------------------ whole rollouts


class Cluster:
    """Both controllers and a fake agent that makes every live pod Running and Ready."""

    def __init__(self, d: pb.Deployment) -> None:
        self.objects = FakeObjects(clock=clock)
        self.objects.add(d)
        self.ctx = fake_context(self.objects, clock=clock)
        self.rs = ReplicaSetController()
        self.dc = DeploymentController()
        self.rs.setup(self.ctx)
        self.dc.setup(self.ctx)

    async def settle(self, check: Any, rounds: int = 100) -> None:
        for _ in range(rounds):
            n = await drain(self.rs, self.ctx) + await drain(self.dc, self.ctx)
            check(self)
            changed = await self.agent_step()
            check(self)
            if n == 0 and not changed:
                return
        raise AssertionError("did not settle")

    async def agent_step(self) -> bool:
        """Make one pending pod ready, or finish one terminating pod."""
        for p in self.objects.objects("pods"):
            if p.metadata.HasField("deletion_timestamp"):
                await self.objects.delete(
                    "pods", p.metadata.name, "default", grace_period_seconds=0
                )
                return True
        for p in self.objects.objects("pods"):
            if not is_ready(p):
                p.status.phase = "Running"
                cond = p.status.conditions.add(type="Ready", status="True")
                cond.last_transition_time.FromNanoseconds(int(NOW * 1e9))
                await self.objects.update_status(p)
                return True
        return False

    def live_pods(self) -> list[pb.Pod]:
        return [
            p for p in self.objects.objects("pods") if not p.metadata.HasField("deletion_timestamp")
        ]


async def test_rolling_update_never_exceeds_surge_or_unavailable() -> None:
    d = deployment(5, command="v1", surge="1", unavailable="1")
    for p in [d]:
        p.spec.template.spec.node_name = "n1"  # bound pods: deletion is graceful
    cluster = Cluster(d)
    seen: list[tuple[int, int]] = []

    def check(c: Cluster) -> None:
        live = c.live_pods()
        ready = sum(1 for p in live if is_ready(p))
        seen.append((len(live), ready))
        assert len(live) <= 5 + 1

    await cluster.settle(lambda c: None)
    assert len(cluster.live_pods()) == 5
    stored = cluster.objects.peek("deployments", "web", "default")
    stored.spec.template.spec.processes[0].command[:] = ["/bin/server", "v2"]
    await cluster.objects.update(stored)
    seen.clear()
    await cluster.settle(check)
    assert min(ready for _, ready in seen) >= 5 - 1
    pods = cluster.live_pods()
    assert len(pods) == 5
    assert all(p.spec.processes[0].command[1] == "v2" for p in pods)
    rss = cluster.objects.objects("replicasets")
    assert sorted(rs.spec.replicas for rs in rss) == [0, 5]
    final = cluster.objects.peek("deployments", "web", "default")
    st = final.status
    assert (st.replicas, st.updated_replicas, st.ready_replicas, st.available_replicas) == (
        5,
        5,
        5,
        5,
    )
    assert st.unavailable_replicas == 0
    assert final.metadata.annotations[REVISION_ANNOTATION] == "2"
    assert st.observed_generation == final.metadata.generation


async def test_scaling_a_deployment_scales_its_replicaset() -> None:
    cluster = Cluster(deployment(2))
    await cluster.settle(lambda c: None)
    d = cluster.objects.peek("deployments", "web", "default")
    d.spec.replicas = 6
    await cluster.objects.update(d)
    await cluster.settle(lambda c: None)
    assert len(cluster.live_pods()) == 6
    d = cluster.objects.peek("deployments", "web", "default")
    d.spec.replicas = 1
    await cluster.objects.update(d)
    await cluster.settle(lambda c: None)
    assert len(cluster.live_pods()) == 1
    assert len(cluster.objects.objects("replicasets")) == 1


# ------------------------------------------------------------------ rollout status (CLI)


def _status(d: pb.Deployment, **fields: int) -> pb.Deployment:
    out = pb.Deployment()
    out.CopyFrom(d)
    out.metadata.generation = 2
    out.status.observed_generation = fields.pop("observed", 2)
    for name, value in fields.items():
        setattr(out.status, name, value)
    return out


@pytest.mark.parametrize(
    ("fields", "done", "text"),
    [
        ({"observed": 1}, False, "spec update to be observed"),
        (
            {"updated_replicas": 1, "replicas": 3},
            False,
            "1 out of 3 new replicas have been updated",
        ),
        ({"updated_replicas": 3, "replicas": 4}, False, "1 old replicas are pending termination"),
        (
            {"updated_replicas": 3, "replicas": 3, "available_replicas": 2},
            False,
            "2 of 3 updated replicas are available",
        ),
        (
            {"updated_replicas": 3, "replicas": 3, "available_replicas": 3},
            True,
            'deployment "web" successfully rolled out',
        ),
    ],
)
def test_rollout_state(fields: dict[str, int], done: bool, text: str) -> None:
    from mizzen.cli.rollout_cmd import rollout_state

    got_done, message = rollout_state(_status(deployment(3), **fields))
    assert got_done is done
    assert text in message
