"""Deployment controller against FakeObjects: rollout math, writes, and whole rollouts."""

from __future__ import annotations

from typing import Any

import pytest

from controllers.base import owner_reference
from controllers.confighash import (
    CHANGE_CAUSE,
    CONFIG_HASH,
    CONFIG_RELOAD,
    CONFIG_ROLLOUT,
    CONFIG_SOURCES,
    without_config,
)
from controllers.deployment import DeploymentController
from controllers.podutil import is_ready
from controllers.replicaset import ReplicaSetController
from controllers.rollout import (
    HASH_LABEL,
    REVISION_ANNOTATION,
    max_surge_unavailable,
    new_replicas_for_rollout,
    old_scale_downs,
    revision_of,
    template_equal,
    template_hash,
)
from controllers.testing import FakeObjects, RecordingEvents, drain, fake_context
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

    def __init__(self, d: pb.Deployment, *objs: Any) -> None:
        from controllers.manager import ManagerConfig

        self.objects = FakeObjects(clock=clock)
        self.objects.add(d, *objs)
        config = ManagerConfig(options={"config.debounce": 0})
        self.ctx = fake_context(self.objects, clock=clock, config=config)
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


# ------------------------------------------------------------------ config rollouts


def configured(
    replicas: int = 4,
    *,
    surge: str = "1",
    unavailable: str = "1",
    env_from: tuple[str, ...] = ("web-config",),
    env_key: tuple[str, str] | None = None,
    secret_env: tuple[str, str] | None = None,
    volume: str = "",
    reload: str = "",
    optional: bool = False,
    opt_out: bool = False,
    paused: bool = False,
) -> pb.Deployment:
    """A Deployment whose template uses ConfigMaps / Secrets."""
    d = deployment(replicas, surge=surge, unavailable=unavailable, paused=paused)
    proc = d.spec.template.spec.processes[0]
    for name in env_from:
        ref = proc.env_from.add().config_map_ref
        ref.name = name
        if optional:
            ref.optional = True
    if env_key is not None:
        var = proc.env.add(name="LEVEL")
        var.value_from.config_map_key_ref.name, var.value_from.config_map_key_ref.key = env_key
    if secret_env is not None:
        var = proc.env.add(name="PASSWORD")
        var.value_from.secret_key_ref.name, var.value_from.secret_key_ref.key = secret_env
    if volume:
        d.spec.template.spec.volumes.add(name="conf").config_map.name = volume
        proc.volume_mounts.add(name="conf", mount_path="conf")
    if reload:
        d.spec.template.metadata.annotations[CONFIG_RELOAD] = reload
    if opt_out:
        d.metadata.annotations[CONFIG_ROLLOUT] = "false"
    return d


def config_map(name: str = "web-config", **data: str) -> pb.ConfigMap:
    out = pb.ConfigMap(metadata=pb.ObjectMeta(name=name, namespace="default"))
    out.data.update(data)
    return out


def recorded(ctx: Any) -> RecordingEvents:
    events = ctx.events
    assert isinstance(events, RecordingEvents)
    return events


def no_debounce() -> Any:
    from controllers.manager import ManagerConfig

    return ManagerConfig(options={"config.debounce": 0})


async def edit(objects: FakeObjects, kind: str, name: str, change: Any) -> None:
    obj = await objects.get(kind, name, "default")
    change(obj)
    await objects.update(obj)


def by_revision(objects: FakeObjects) -> list[pb.ReplicaSet]:
    return sorted(objects.objects("replicasets"), key=revision_of)


def set_data(**data: str) -> Any:
    def change(obj: Any) -> None:
        obj.data.clear()
        obj.data.update(data)

    return change


def relabel(obj: Any) -> None:
    obj.metadata.labels["team"] = "web"


def set_secret(obj: Any) -> None:
    obj.data["pw"] = b"new-password"


async def delete_cm(objects: FakeObjects) -> None:
    await objects.delete("configmaps", "web-config", "default")


async def create_cm(objects: FakeObjects) -> None:
    await objects.create(config_map("unrelated", level="debug"))


async def create_other(objects: FakeObjects) -> None:
    await objects.create(config_map("other", level="debug"))


@pytest.mark.parametrize(
    ("d", "change", "cause"),
    [
        (configured(), set_data(level="info"), "config: ConfigMap web-config changed"),
        (configured(), relabel, None),
        (configured(opt_out=True), set_data(level="info"), None),
        (configured(env_from=(), volume="web-config", reload="signal:SIGHUP"), set_data(), None),
        (
            configured(env_from=(), volume="web-config"),
            set_data(),
            "config: ConfigMap web-config changed",
        ),
        (
            configured(volume="web-config", reload="signal:SIGHUP"),
            set_data(level="info"),
            "config: ConfigMap web-config changed",
        ),
        (
            configured(env_from=(), env_key=("web-config", "level")),
            set_data(level="debug", x="1"),
            None,
        ),
        (
            configured(env_from=(), env_key=("web-config", "level")),
            set_data(level="warn"),
            "config: ConfigMap web-config changed",
        ),
        (configured(env_from=(), secret_env=("db", "pw")), set_secret, "config: Secret db changed"),
        (configured(), delete_cm, "config: ConfigMap web-config deleted"),
        (configured(), create_cm, None),
        (
            configured(env_from=("other",), optional=True),
            create_other,
            "config: ConfigMap other created",
        ),
    ],
    ids=[
        "content",
        "metadata only",
        "opted out",
        "reload volume only",
        "volume without reload",
        "reload but also envFrom",
        "other key than env's",
        "env's key",
        "secret",
        "deleted",
        "unrelated created",
        "optional created",
    ],
)
async def test_config_change_rolls_out_a_new_revision_or_not(
    d: pb.Deployment, change: Any, cause: str | None
) -> None:
    objects = FakeObjects(clock=clock)
    secret = pb.Secret(metadata=pb.ObjectMeta(name="db", namespace="default"))
    secret.data["pw"] = b"old-password"
    objects.add(d, config_map(level="debug"), secret)
    ctx = fake_context(objects, clock=clock, config=no_debounce())
    controller = DeploymentController()
    controller.setup(ctx)
    await drain(controller, ctx)
    [first] = objects.objects("replicasets")
    before = objects.peek("deployments", "web", "default")
    if callable(change) and change.__name__ in ("delete_cm", "create_cm", "create_other"):
        await change(objects)
    else:
        await edit(
            objects,
            "secrets" if change is set_secret else "configmaps",
            "db" if change is set_secret else "web-config",
            change,
        )
    await drain(controller, ctx)
    rss = by_revision(objects)
    if cause is None:
        assert [rs.metadata.name for rs in rss] == [first.metadata.name]
        assert "ConfigChanged" not in recorded(ctx).reasons()
        return
    assert len(rss) == 2 and rss[0].metadata.name == first.metadata.name
    new = rss[1]
    assert new.metadata.annotations[REVISION_ANNOTATION] == "2"
    assert new.metadata.annotations[CHANGE_CAUSE] == cause
    old_hash = first.spec.template.metadata.annotations[CONFIG_HASH]
    assert new.spec.template.metadata.annotations[CONFIG_HASH] != old_hash
    assert template_equal(without_config(new.spec.template), before.spec.template)
    stored = objects.peek("deployments", "web", "default")
    assert stored.spec == before.spec and stored.metadata.generation == 1  # user's spec untouched
    assert stored.metadata.annotations[REVISION_ANNOTATION] == "2"
    [event] = [e for e in recorded(ctx).events if e.reason == "ConfigChanged"]
    assert event.message.startswith(cause.removeprefix("config: ") + ": rolling out revision 2")


async def test_paused_deployment_waits_with_its_config_rollout() -> None:
    objects = FakeObjects(clock=clock)
    objects.add(configured(), config_map(level="debug"))
    ctx = fake_context(objects, clock=clock, config=no_debounce())
    controller = DeploymentController()
    controller.setup(ctx)
    await drain(controller, ctx)
    await edit(objects, "deployments", "web", lambda d: setattr(d.spec, "paused", True))
    await edit(objects, "configmaps", "web-config", set_data(level="info"))
    await drain(controller, ctx)
    assert len(objects.objects("replicasets")) == 1
    await edit(objects, "deployments", "web", lambda d: setattr(d.spec, "paused", False))
    await drain(controller, ctx)
    assert by_revision(objects)[-1].metadata.annotations[CHANGE_CAUSE] == (
        "config: ConfigMap web-config changed"
    )


async def test_plain_deployment_needs_no_hash_key() -> None:
    objects = await run(deployment(3))
    assert not objects.objects("secrets")
    [rs] = objects.objects("replicasets")
    assert CONFIG_HASH not in rs.spec.template.metadata.annotations
    assert CONFIG_SOURCES not in rs.metadata.annotations


async def test_first_replicaset_records_hash_and_sources_once_key_exists() -> None:
    objects = FakeObjects(clock=clock)
    objects.add(configured(), config_map(level="debug"))
    ctx = fake_context(objects, clock=clock, config=no_debounce())
    controller = DeploymentController()
    controller.setup(ctx)
    await drain(controller, ctx)
    [rs] = objects.objects("replicasets")
    [key] = objects.objects("secrets", "mizzen-system")
    assert len(key.data["key"]) == 32
    sources = rs.metadata.annotations[CONFIG_SOURCES]
    assert sources.startswith("ConfigMap/web-config=") and "absent" not in sources
    assert len(rs.spec.template.metadata.annotations[CONFIG_HASH]) == 32
    assert CHANGE_CAUSE not in rs.metadata.annotations
    # a second controller (a new leadership term) reads the same key: same hash, no rollout
    objects.clear_writes()
    ctx2 = fake_context(objects, clock=clock, config=no_debounce())
    again = DeploymentController()
    again.setup(ctx2)
    await drain(again, ctx2)
    assert [w for w in objects.writes if w[1] in ("ReplicaSet", "Secret")] == []


async def test_unusable_hash_key_is_a_warning_not_a_rollout() -> None:
    objects = FakeObjects(clock=clock)
    bad = pb.Secret(metadata=pb.ObjectMeta(name="config-hash-key", namespace="mizzen-system"))
    bad.data["key"] = b"short"
    objects.add(configured(), config_map(level="debug"), bad)
    ctx = fake_context(objects, clock=clock, config=no_debounce())
    controller = DeploymentController()
    controller.setup(ctx)
    await drain(controller, ctx)
    assert objects.objects("replicasets") == []
    [event] = recorded(ctx).events
    assert (event.type, event.reason) == ("Warning", "ConfigHashKeyInvalid")
    assert "at least 16 bytes" in event.message


async def test_content_going_back_reuses_the_old_replicaset() -> None:
    objects = FakeObjects(clock=clock)
    objects.add(configured(), config_map(level="debug"))
    ctx = fake_context(objects, clock=clock, config=no_debounce())
    controller = DeploymentController()
    controller.setup(ctx)
    await drain(controller, ctx)
    await edit(objects, "configmaps", "web-config", set_data(level="info"))
    await drain(controller, ctx)
    await edit(objects, "configmaps", "web-config", set_data(level="debug"))
    await drain(controller, ctx)
    rss = by_revision(objects)
    assert len(rss) == 2  # no third ReplicaSet: the first one is current again
    first = rss[1]
    assert first.metadata.annotations[REVISION_ANNOTATION] == "3"
    assert first.metadata.annotations[CHANGE_CAUSE] == "config: ConfigMap web-config changed"
    assert first.spec.replicas >= 1


async def test_opted_out_template_change_still_rolls_and_records_current_hash() -> None:
    objects = FakeObjects(clock=clock)
    objects.add(configured(opt_out=True), config_map(level="debug"))
    ctx = fake_context(objects, clock=clock, config=no_debounce())
    controller = DeploymentController()
    controller.setup(ctx)
    await drain(controller, ctx)
    await edit(objects, "configmaps", "web-config", set_data(level="info"))
    await drain(controller, ctx)
    assert len(objects.objects("replicasets")) == 1

    def v2(d: Any) -> None:
        d.spec.template.spec.processes[0].command[:] = ["/bin/server", "v2"]
        d.metadata.annotations[CHANGE_CAUSE] = "server v2"

    await edit(objects, "deployments", "web", v2)
    await drain(controller, ctx)
    first, second = by_revision(objects)
    assert second.metadata.annotations[CHANGE_CAUSE] == "server v2"
    assert (
        second.spec.template.metadata.annotations[CONFIG_HASH]
        != first.spec.template.metadata.annotations[CONFIG_HASH]
    )  # the content edited while opted out is what the new revision runs
    # opting back in: the current revision already has the current content, nothing rolls
    await edit(objects, "deployments", "web", lambda d: d.metadata.annotations.pop(CONFIG_ROLLOUT))
    await drain(controller, ctx)
    assert len(objects.objects("replicasets")) == 2


async def test_config_edits_in_a_row_make_one_revision() -> None:
    from controllers.workqueue import RateLimitedQueue

    now = [100.0]
    objects = FakeObjects(clock=clock)
    objects.add(configured(env_from=("a", "b")), config_map("a", x="1"), config_map("b", x="1"))
    ctx = fake_context(objects, clock=clock)  # the default debounce
    controller = DeploymentController()
    controller.queue = RateLimitedQueue(clock=lambda: now[0])
    controller.setup(ctx)
    now[0] += 1
    await drain(controller, ctx)
    assert len(objects.objects("replicasets")) == 1
    await edit(objects, "configmaps", "a", set_data(x="2"))
    await edit(objects, "configmaps", "b", set_data(x="2"))
    assert await drain(controller, ctx) == 0  # not yet: debounced
    now[0] += 1
    await drain(controller, ctx)
    _, second = by_revision(objects)
    assert second.metadata.annotations[CHANGE_CAUSE] == (
        "config: ConfigMap a changed, ConfigMap b changed"
    )


async def test_config_change_rolls_every_pod_once_within_budgets() -> None:
    d = configured(5, surge="1", unavailable="1")
    d.spec.template.spec.node_name = "n1"  # bound pods: deletion is graceful
    cluster = Cluster(d, config_map(level="debug"))
    await cluster.settle(lambda c: None)
    before = {p.metadata.name for p in cluster.live_pods()}
    assert len(before) == 5
    [rs1] = cluster.objects.objects("replicasets")
    seen: list[tuple[int, int]] = []

    def check(c: Cluster) -> None:
        live = c.live_pods()
        seen.append((len(live), sum(1 for p in live if is_ready(p))))

    await edit(cluster.objects, "configmaps", "web-config", set_data(level="info"))
    await cluster.settle(check)
    assert max(total for total, _ in seen) <= 5 + 1
    assert min(ready for _, ready in seen) >= 5 - 1
    after = cluster.live_pods()
    new_hash = after[0].metadata.annotations[CONFIG_HASH]
    assert new_hash != rs1.spec.template.metadata.annotations[CONFIG_HASH]
    assert all(p.metadata.annotations[CONFIG_HASH] == new_hash for p in after)
    assert len(after) == 5 and not before & {p.metadata.name for p in after}
    created = [k for op, kind, k in cluster.objects.writes if (op, kind) == ("create", "Pod")]
    assert len(created) == 10  # 5 at first, then each pod replaced exactly once
    rss = by_revision(cluster.objects)
    assert [rs.spec.replicas for rs in rss] == [0, 5]
    final = cluster.objects.peek("deployments", "web", "default")
    assert final.status.updated_replicas == 5 and final.status.available_replicas == 5
    assert final.status.observed_generation == final.metadata.generation == 1


# ------------------------------------------------------------------ progress deadline


class SteppedClock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def _progressing_of(d: pb.Deployment) -> pb.Condition:
    return next(c for c in d.status.conditions if c.type == "Progressing")


async def _rollout_harness(
    d: pb.Deployment, rs: pb.ReplicaSet
) -> tuple[SteppedClock, FakeObjects, DeploymentController]:
    clk = SteppedClock()
    objects = FakeObjects(clock=clk)
    objects.add(d, rs)
    ctx = fake_context(objects, clock=clk)
    controller = DeploymentController()
    controller.setup(ctx)
    return clk, objects, controller


def _set_rs_status(objects: FakeObjects, name: str, ready: int) -> pb.ReplicaSet:
    rs: pb.ReplicaSet = objects.peek("replicasets", name, "default")
    changed = pb.ReplicaSet()
    changed.CopyFrom(rs)
    changed.status.ready_replicas = ready
    changed.status.available_replicas = ready
    objects.add(changed)
    return changed


async def test_stuck_rollout_turns_progress_deadline_exceeded_after_the_deadline() -> None:
    d = deployment(3)
    d.spec.progress_deadline_seconds = 60
    d.metadata.annotations[REVISION_ANNOTATION] = "1"
    rs = rs_for(d, 3, 0, 1)
    clk, objects, controller = await _rollout_harness(d, rs)

    result = await controller.reconcile("default/web")
    stored = objects.peek("deployments", "web", "default")
    cond = _progressing_of(stored)
    assert (cond.status, cond.reason) == ("True", "ReplicaSetUpdated")
    assert cond.last_update_time.ToSeconds() == int(NOW)
    assert result.requeue_after == pytest.approx(60)

    # one pod becomes ready: progress, the deadline starts again
    clk.now += 40
    _set_rs_status(objects, rs.metadata.name, 1)
    result = await controller.reconcile("default/web")
    stored = objects.peek("deployments", "web", "default")
    cond = _progressing_of(stored)
    assert (cond.status, cond.reason) == ("True", "ReplicaSetUpdated")
    assert cond.last_update_time.ToSeconds() == int(NOW + 40)
    assert result.requeue_after == pytest.approx(60)

    # no progress: nothing changes before the deadline; a requeue is due at it
    clk.now += 59
    result = await controller.reconcile("default/web")
    assert _progressing_of(objects.peek("deployments", "web", "default")).status == "True"
    assert result.requeue_after == pytest.approx(1)
    clk.now += 1
    result = await controller.reconcile("default/web")
    stored = objects.peek("deployments", "web", "default")
    cond = _progressing_of(stored)
    assert (cond.status, cond.reason) == ("False", "ProgressDeadlineExceeded")
    assert cond.message == f'ReplicaSet "{rs.metadata.name}" has timed out progressing.'
    assert result.requeue_after is None

    # progress after the deadline makes it True again; completion is NewReplicaSetAvailable
    clk.now += 5
    _set_rs_status(objects, rs.metadata.name, 3)
    result = await controller.reconcile("default/web")
    cond = _progressing_of(objects.peek("deployments", "web", "default"))
    assert (cond.status, cond.reason) == ("True", "NewReplicaSetAvailable")
    assert cond.last_update_time.ToSeconds() == int(clk.now)
    assert result.requeue_after is None


async def test_completed_rollout_never_times_out_and_paused_has_no_deadline() -> None:
    d = deployment(3)
    d.spec.progress_deadline_seconds = 10
    d.metadata.annotations[REVISION_ANNOTATION] = "1"
    rs = rs_for(d, 3, 3, 1)
    clk, objects, controller = await _rollout_harness(d, rs)
    assert (await controller.reconcile("default/web")).requeue_after is None
    _set_rs_status(objects, rs.metadata.name, 2)  # a pod died after the rollout
    clk.now += 1000
    await controller.reconcile("default/web")
    cond = _progressing_of(objects.peek("deployments", "web", "default"))
    assert (cond.status, cond.reason) == ("True", "NewReplicaSetAvailable")

    paused = deployment(3, paused=True)
    paused.spec.progress_deadline_seconds = 10
    clk2, objects2, controller2 = await _rollout_harness(paused, rs_for(paused, 3, 0, 1))
    assert (await controller2.reconcile("default/web")).requeue_after is None
    clk2.now += 1000
    await controller2.reconcile("default/web")
    cond = _progressing_of(objects2.peek("deployments", "web", "default"))
    assert (cond.status, cond.reason) == ("Unknown", "DeploymentPaused")


async def test_new_revision_restarts_the_progress_clock() -> None:
    d = deployment(2, command="v1")
    d.spec.progress_deadline_seconds = 30
    d.metadata.annotations[REVISION_ANNOTATION] = "1"
    rs = rs_for(d, 2, 0, 1)
    clk, objects, controller = await _rollout_harness(d, rs)
    await controller.reconcile("default/web")
    clk.now += 30
    await controller.reconcile("default/web")
    stuck = objects.peek("deployments", "web", "default")
    assert _progressing_of(stuck).reason == "ProgressDeadlineExceeded"
    fixed = pb.Deployment()
    fixed.CopyFrom(stuck)
    fixed.spec.template.spec.processes[0].command[:] = ["/bin/server", "v2"]
    fixed.metadata.generation = stuck.metadata.generation + 1
    objects.add(fixed)
    clk.now += 1
    result = await controller.reconcile("default/web")
    cond = _progressing_of(objects.peek("deployments", "web", "default"))
    assert (cond.status, cond.reason) == ("True", "ReplicaSetUpdated")
    assert cond.last_update_time.ToSeconds() == int(clk.now)
    assert result.requeue_after == pytest.approx(30)
