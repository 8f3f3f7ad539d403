"""Garbage collector against FakeObjects: background, foreground and orphan propagation."""

from __future__ import annotations

from typing import Any

from controllers.base import ControllerContext, owner_reference
from controllers.gc import GarbageCollector, gc_key, parse_gc_key
from controllers.manager import ManagerConfig
from controllers.runner import process_key
from controllers.testing.fake_objects import FakeInformers, FakeObjects
from protos import objects_pb2 as pb


class Events:
    def record(self, obj: Any, type: str, reason: str, message: str) -> None:
        pass


def deployment(name: str = "web") -> pb.Deployment:
    obj = pb.Deployment(metadata=pb.ObjectMeta(name=name, namespace="default"))
    obj.spec.replicas = 2
    obj.spec.selector.match_labels["app"] = name
    obj.spec.template.metadata.labels["app"] = name
    obj.spec.template.spec.processes.add(name="main", command=["/bin/web"])
    return obj


def replicaset(owner: Any, name: str = "web-abc") -> pb.ReplicaSet:
    obj = pb.ReplicaSet(metadata=pb.ObjectMeta(name=name, namespace="default"))
    obj.metadata.owner_references.append(owner_reference(owner))
    obj.spec.replicas = 2
    obj.spec.selector.match_labels["app"] = "web"
    obj.spec.template.metadata.labels["app"] = "web"
    obj.spec.template.spec.processes.add(name="main", command=["/bin/web"])
    return obj


def pod(name: str, *owners: Any, bound: bool = False) -> pb.Pod:
    obj = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace="default"))
    obj.metadata.labels["app"] = "web"
    for owner in owners:
        ref = owner_reference(owner)
        ref.controller = owner is owners[0]
        obj.metadata.owner_references.append(ref)
    obj.spec.processes.add(name="main", command=["/bin/web"])
    if bound:
        obj.spec.node_name = "n1"
        obj.status.phase = "Running"
    return obj


def _must(obj: Any) -> Any:
    assert obj is not None
    return obj


class Harness:
    def __init__(self, *, auto_sync: bool = True) -> None:
        self.objects = FakeObjects()
        self.informers = FakeInformers(self.objects, auto_sync=auto_sync)
        self.gc = GarbageCollector()
        self.ctx = ControllerContext(
            client=self.objects,
            informers=self.informers,
            events=Events(),
            clock=lambda: 0.0,
            config=ManagerConfig(),
        )
        self.gc.setup(self.ctx)
        self.drain_queue_only()

    def get(self, kind: str, name: str, namespace: str = "default") -> Any:
        return _must(self.objects.peek(kind, name, namespace if kind != "Node" else ""))

    def drain_queue_only(self) -> None:
        while (key := self.gc.queue.get_nowait()) is not None:
            self.gc.queue.done(key)

    async def run(self, limit: int = 100) -> list[str]:
        """Reconcile queued keys until the queue is empty; the keys, in order."""
        seen: list[str] = []
        for _ in range(limit):
            key = self.gc.queue.get_nowait()
            if key is None:
                return seen
            seen.append(key)
            await process_key(self.gc, key, self.ctx)
        raise AssertionError(f"queue not empty after {limit} reconciles: {seen[-5:]}")

    def names(self, kind: str) -> list[str]:
        return [o.metadata.name for o in self.objects.objects(kind, "default")]

    async def finish_pods(self) -> None:
        """What agents do: finish the graceful deletion of terminating pods."""
        for obj in self.objects.objects("Pod", "default"):
            if obj.metadata.HasField("deletion_timestamp") and not obj.metadata.finalizers:
                await self.objects.delete(
                    "Pod", obj.metadata.name, "default", grace_period_seconds=0
                )


def test_gc_keys_round_trip() -> None:
    assert parse_gc_key(gc_key("Pod", "default", "web-1")) == ("Pod", "default", "web-1")
    assert parse_gc_key(gc_key("Node", "", "n1")) == ("Node", "", "n1")


async def test_background_delete_removes_the_whole_tree() -> None:
    h = Harness()
    (d,) = h.objects.add(deployment())
    (rs,) = h.objects.add(replicaset(d))
    h.objects.add(pod("web-abc-1", rs), pod("web-abc-2", rs), pod("other"))
    await h.run()
    assert h.objects.writes == []  # every owner is alive: nothing to do
    await h.objects.delete("Deployment", "web", "default")
    await h.run()
    assert h.names("ReplicaSet") == []
    assert h.names("Pod") == ["other"]
    assert ("delete", "ReplicaSet", "default/web-abc") in h.objects.writes


async def test_owner_missing_from_a_lagging_cache_is_checked_live() -> None:
    h = Harness(auto_sync=False)
    (rs,) = h.objects.add(replicaset(deployment()))  # its Deployment never existed
    (d,) = h.objects.add(deployment())
    h.objects.add(pod("p1", rs))
    # only the pod informer has caught up: the ReplicaSet is unknown to the cache
    h.informers.get("Pod").replace(h.objects.objects("Pod"), "1")
    h.gc.queue.add(gc_key("Pod", "default", "p1"))
    await h.run()
    assert h.names("Pod") == ["p1"]
    assert h.objects.writes == []
    h.informers.sync()
    h.drain_queue_only()
    h.gc.queue.add(gc_key("ReplicaSet", "default", "web-abc"))
    await h.run()
    assert h.names("ReplicaSet") == []  # its owner uid never existed
    assert d.metadata.name == "web"


async def test_owner_recreated_with_the_same_name_does_not_keep_old_dependents() -> None:
    h = Harness()
    (old,) = h.objects.add(deployment())
    (rs,) = h.objects.add(replicaset(old))
    await h.objects.delete("Deployment", "web", "default")
    h.objects.add(deployment())  # same name, new uid
    await h.run()
    assert h.names("ReplicaSet") == []
    assert h.names("Deployment") == ["web"]
    assert rs.metadata.owner_references[0].uid == old.metadata.uid


async def test_dangling_reference_is_removed_when_another_owner_lives() -> None:
    h = Harness()
    (a,) = h.objects.add(deployment("a"))
    (b,) = h.objects.add(deployment("b"))
    h.objects.add(pod("shared", a, b))
    await h.objects.delete("Deployment", "b", "default")
    await h.run()
    (shared,) = h.objects.objects("Pod", "default")
    assert [r.name for r in shared.metadata.owner_references] == ["a"]
    assert ("update", "Pod", "default/shared") in h.objects.writes


async def test_foreground_deletes_grandchildren_first() -> None:
    h = Harness()
    (d,) = h.objects.add(deployment())
    (rs,) = h.objects.add(replicaset(d))
    h.objects.add(pod("web-abc-1", rs, bound=True), pod("web-abc-2", rs, bound=True))
    await h.run()
    _, gone = await h.objects.delete(
        "Deployment", "web", "default", propagation_policy="Foreground"
    )
    assert not gone
    await h.run()
    # the pods are terminating (their agents stop them); owners wait for them
    assert h.names("Deployment") == ["web"] and h.names("ReplicaSet") == ["web-abc"]
    assert all(p.metadata.HasField("deletion_timestamp") for p in h.objects.objects("Pod"))
    assert list(h.get("ReplicaSet", "web-abc", "default").metadata.finalizers) == [
        "foregroundDeletion"
    ]
    h.objects.clear_writes()
    await h.finish_pods()
    await h.run()
    assert h.names("Pod") == [] and h.names("ReplicaSet") == [] and h.names("Deployment") == []
    order = [w[1] for w in h.objects.writes if w[0] in ("delete", "update")]
    assert order.index("ReplicaSet") < order.index("Deployment")


async def test_foreground_owner_without_dependents_goes_at_once() -> None:
    h = Harness()
    h.objects.add(deployment())
    await h.objects.delete("Deployment", "web", "default", propagation_policy="Foreground")
    await h.run()
    assert h.names("Deployment") == []


async def test_orphan_keeps_dependents_and_drops_their_reference() -> None:
    h = Harness()
    (d,) = h.objects.add(deployment())
    (rs,) = h.objects.add(replicaset(d))
    h.objects.add(pod("web-abc-1", rs))
    await h.objects.delete("Deployment", "web", "default", propagation_policy="Orphan")
    await h.run()
    assert h.names("Deployment") == []
    (kept,) = h.objects.objects("ReplicaSet", "default")
    assert list(kept.metadata.owner_references) == []
    assert h.names("Pod") == ["web-abc-1"]  # still owned by the surviving ReplicaSet
    # running the collector again changes nothing
    h.objects.clear_writes()
    h.gc.queue.add(gc_key("ReplicaSet", "default", "web-abc"))
    h.gc.queue.add(gc_key("Pod", "default", "web-abc-1"))
    await h.run()
    assert h.objects.writes == []


async def test_owner_of_an_unknown_kind_is_never_presumed_gone() -> None:
    h = Harness()
    (d,) = h.objects.add(deployment())
    stray = pod("stray", d)
    stray.metadata.owner_references[0].kind = "StatefulSet"
    h.objects.add(stray)
    await h.run()
    assert h.names("Pod") == ["stray"]
    assert h.objects.writes == []


async def test_nothing_is_decided_before_every_cache_has_listed() -> None:
    h = Harness()
    h.objects.add(deployment())
    await h.objects.delete("Deployment", "web", "default", propagation_policy="Foreground")
    h.informers.get("Pod").has_synced.clear()
    h.objects.clear_writes()
    key = gc_key("Deployment", "default", "web")
    assert (await h.gc.reconcile(key)).requeue_after is not None
    assert h.objects.writes == []
    h.informers.get("Pod").has_synced.set()
    await h.gc.reconcile(key)
    assert h.names("Deployment") == []


async def test_status_updates_do_not_wake_the_collector() -> None:
    h = Harness()
    (d,) = h.objects.add(deployment())
    (p,) = h.objects.add(pod("p1", d, bound=True))
    await h.run()
    p.status.phase = "Succeeded"
    await h.objects.update_status(p)
    assert len(h.gc.queue) == 0
    (other,) = h.objects.add(deployment("other"))
    p = h.get("Pod", "p1")
    ref = owner_reference(other)
    ref.controller = False
    p.metadata.owner_references.append(ref)
    await h.objects.update(p)
    assert h.gc.queue.get_nowait() == gc_key("Pod", "default", "p1")
