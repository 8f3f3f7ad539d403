"""Job, DaemonSet, garbage collector and event TTL against a real 1-node store.

The controllers run in-process under ``ControllerManager`` (fenced writes, as
in production). ``SimAgent`` plays scheduler and node agents for one
namespace: it binds unbound pods to a fake node, reports bound pods Running
and Ready, finishes pods whose restart policy lets them end (Job pods) as
Succeeded (Failed when labelled ``sim.mizzen.io/fail=true``) after ``run_for``
seconds, and completes graceful deletions at once
(Delete with grace 0, as an agent does after stopping the processes).
Each test uses its own namespace; the DaemonSet test also owns its nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from manager_fixtures import leading_manager, until

from controllers.base import owner_reference
from controllers.daemonset import HASH_LABEL, daemonset_controller_from_config, template_hash
from controllers.deployment import DeploymentController
from controllers.event_ttl import event_ttl_from_config
from controllers.gc import garbage_collector_from_config
from controllers.job import job_controller_from_config
from controllers.manager import ManagerConfig
from controllers.replicaset import ReplicaSetController
from mizzen.api.pods import has_ended
from mizzen.client import ObjectsClient
from mizzen.client.errors import ConflictError, NotFoundError
from mizzen.testing.local_cluster import MizzenCluster
from protos import objects_pb2 as pb

pytestmark = pytest.mark.integration

FAIL_LABEL = "sim.mizzen.io/fail"
FACTORIES = [
    job_controller_from_config,
    daemonset_controller_from_config,
    garbage_collector_from_config,
    event_ttl_from_config,
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MizzenCluster]:
    base: Path = tmp_path_factory.mktemp("workloads")
    with MizzenCluster(1, base) as c:
        yield c


def _now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


class SimAgent:
    """Scheduler + agents for the pods of one namespace (see the module doc)."""

    def __init__(self, client: ObjectsClient, namespace: str, *, run_for: float = 0.3) -> None:
        self.client = client
        self.namespace = namespace
        self.run_for = run_for
        self.started: dict[str, float] = {}
        self.max_running = 0

    async def run(self) -> None:
        while True:
            pods = (await self.client.list("pods", self.namespace)).items
            running = 0
            for pod in pods:
                with contextlib.suppress(ConflictError, NotFoundError):
                    running += await self._step(pod)
            self.max_running = max(self.max_running, running)
            await asyncio.sleep(0.05)

    async def _step(self, pod: pb.Pod) -> int:
        meta = pod.metadata
        if meta.HasField("deletion_timestamp"):
            if not meta.finalizers:
                await self.client.delete("pods", meta.name, meta.namespace, grace_period_seconds=0)
            return 0
        if has_ended(pod):
            return 0
        if not pod.spec.node_name:
            pod.spec.node_name = "sim-node"
            pod = await self.client.update(pod)
        if pod.status.phase != "Running":
            pod.status.phase = "Running"
            ready = pod.status.conditions.add(type="Ready", status="True")
            ready.last_transition_time.CopyFrom(_now())
            pod.status.start_time.CopyFrom(_now())
            await self.client.update_status(pod)
            self.started[meta.uid] = time.monotonic()
            return 1
        began = self.started.setdefault(meta.uid, time.monotonic())
        if pod.spec.restart_policy != "Always" and time.monotonic() - began >= self.run_for:
            fail = pod.metadata.labels.get(FAIL_LABEL) == "true"
            pod.status.phase = "Failed" if fail else "Succeeded"
            del pod.status.conditions[:]
            proc = pod.status.process_statuses.add(name="main")
            proc.state.terminated.exit_code = 1 if fail else 0
            proc.state.terminated.finished_at.CopyFrom(_now())
            await self.client.update_status(pod)
            return 0
        return 1


@contextlib.asynccontextmanager
async def running(
    cluster: MizzenCluster, namespace: str, *, workloads: bool = False, **config: Any
) -> AsyncIterator[tuple[ObjectsClient, SimAgent]]:
    """A client, a SimAgent for namespace, and the controllers leading.

    workloads adds the ReplicaSet and Deployment controllers.
    """
    cfg = ManagerConfig(
        endpoints=cluster.endpoints,
        id=f"test-{namespace}",
        election_key=f"/mizzen/leader/test-{namespace}",
        resync=5.0,
        **config,
    )
    extra = [ReplicaSetController, DeploymentController] if workloads else []
    async with ObjectsClient(cluster.endpoints) as client:
        agent = SimAgent(client, namespace)
        async with leading_manager(cfg, [*FACTORIES, *extra], agent.run()) as manager:
            yield client, agent
        assert manager.fenced_writes == 0


def template(obj: Any, app: str, restart_policy: str = "Always") -> None:
    obj.spec.selector.match_labels["app"] = app
    obj.spec.template.metadata.labels["app"] = app
    obj.spec.template.spec.restart_policy = restart_policy
    obj.spec.template.spec.processes.add(name="main", command=["/bin/sleep", "1"])


async def names(client: ObjectsClient, kind: str, namespace: str) -> list[str]:
    return sorted(o.metadata.name for o in (await client.list(kind, namespace)).items)


# ------------------------------------------------------------------ Job


async def test_job_completes_with_bounded_parallelism(cluster: MizzenCluster) -> None:
    ns = "job-run"
    async with running(cluster, ns) as (client, agent):
        job = pb.Job(metadata=pb.ObjectMeta(name="calc", namespace=ns))
        job.spec.completions = 3
        job.spec.parallelism = 2
        template(job, "calc", "Never")
        await client.create(job)

        async def complete() -> pb.Job | None:
            got = await client.get("jobs", "calc", ns)
            done = [c for c in got.status.conditions if c.type == "Complete" and c.status == "True"]
            return got if done and got.status.succeeded == 3 else None

        done = await until(complete, 30, "the Job to complete")
        assert done.status.active == 0 and done.status.failed == 0
        assert done.status.HasField("completion_time") and done.status.HasField("start_time")
        pods = (await client.list("pods", ns)).items
        assert len(pods) == 3  # terminal pods stay until the Job is deleted
        assert all(p.status.phase == "Succeeded" for p in pods)
        assert all(p.metadata.labels["job-name"] == "calc" for p in pods)
        assert 1 <= agent.max_running <= 2

        await client.delete("jobs", "calc", ns)
        await until(
            lambda: _empty(client, "pods", ns), 20, "the garbage collector to remove the Job's pods"
        )


async def test_failing_job_hits_its_backoff_limit(cluster: MizzenCluster) -> None:
    ns = "job-fail"
    async with running(cluster, ns, options={"job.backoff_base": 0.2}) as (client, _agent):
        job = pb.Job(metadata=pb.ObjectMeta(name="flaky", namespace=ns))
        job.spec.backoff_limit = 1
        template(job, "flaky", "Never")
        job.spec.template.metadata.labels[FAIL_LABEL] = "true"
        await client.create(job)

        async def failed() -> pb.Job | None:
            got = await client.get("jobs", "flaky", ns)
            conds = [(c.type, c.status, c.reason) for c in got.status.conditions]
            return got if ("Failed", "True", "BackoffLimitExceeded") in conds else None

        done = await until(failed, 30, "the Job to fail")
        assert done.status.failed == 2 and done.status.succeeded == 0
        await asyncio.sleep(0.5)  # a failed Job starts nothing more
        pods = (await client.list("pods", ns)).items
        assert len(pods) == 2 and all(p.status.phase == "Failed" for p in pods)


async def _empty(client: ObjectsClient, kind: str, namespace: str) -> bool:
    return not (await client.list(kind, namespace)).items


# ------------------------------------------------------------------ DaemonSet


async def test_daemonset_follows_nodes(cluster: MizzenCluster) -> None:
    ns = "ds-run"
    async with running(cluster, ns) as (client, _agent):
        for name in ("ds-n1", "ds-n2"):
            await client.create(pb.Node(metadata=pb.ObjectMeta(name=name, labels={"pool": "ds"})))
        await client.create(pb.Node(metadata=pb.ObjectMeta(name="ds-other")))
        try:
            ds = pb.DaemonSet(metadata=pb.ObjectMeta(name="logd", namespace=ns))
            template(ds, "logd")
            ds.spec.template.spec.node_selector["pool"] = "ds"
            await client.create(ds)

            async def placement(expected: set[str]) -> bool:
                pods = (await client.list("pods", ns)).items
                live = [p for p in pods if not p.metadata.HasField("deletion_timestamp")]
                return sorted(p.spec.node_name for p in live) == sorted(expected)

            await until(lambda: placement({"ds-n1", "ds-n2"}), 20, "a pod on each pool node")
            await client.create(
                pb.Node(metadata=pb.ObjectMeta(name="ds-n3", labels={"pool": "ds"}))
            )
            await until(lambda: placement({"ds-n1", "ds-n2", "ds-n3"}), 20, "a pod on ds-n3")
            await client.delete("nodes", "ds-n1")
            await until(lambda: placement({"ds-n2", "ds-n3"}), 20, "ds-n1's pod removed")

            async def status_settled() -> bool:
                got = await client.get("daemonsets", "logd", ns)
                s = got.status
                return (s.desired_number_scheduled, s.current_number_scheduled, s.number_ready) == (
                    2,
                    2,
                    2,
                ) and s.observed_generation == got.metadata.generation

            await until(status_settled, 20, "DaemonSet status 2/2 ready")

            stored = await client.get("daemonsets", "logd", ns)
            stored.spec.template.spec.processes[0].args.append("--verbose")
            updated = await client.update(stored)
            revision = template_hash(updated.spec.template)

            async def rolled() -> bool:
                pods = (await client.list("pods", ns)).items
                hashes = sorted(
                    (p.spec.node_name, p.metadata.labels[HASH_LABEL], p.status.phase) for p in pods
                )
                return hashes == [
                    ("ds-n2", revision, "Running"),
                    ("ds-n3", revision, "Running"),
                ]

            await until(rolled, 30, "the new template on both nodes")
        finally:
            for name in ("ds-n1", "ds-n2", "ds-n3", "ds-other"):
                with contextlib.suppress(NotFoundError):
                    await client.delete("nodes", name)


async def test_daemonset_rolls_each_node_once_when_its_config_changes(
    cluster: MizzenCluster,
) -> None:
    ns = "ds-config"
    nodes = ("dsc-n1", "dsc-n2", "dsc-n3")
    async with running(cluster, ns) as (client, _agent):
        for name in nodes:
            await client.create(pb.Node(metadata=pb.ObjectMeta(name=name, labels={"pool": "dsc"})))
        try:
            cm = pb.ConfigMap(metadata=pb.ObjectMeta(name="logd-config", namespace=ns))
            cm.data["level"] = "debug"
            await client.create(cm)
            ds = pb.DaemonSet(metadata=pb.ObjectMeta(name="logd", namespace=ns))
            template(ds, "logd")
            ds.spec.template.spec.node_selector["pool"] = "dsc"
            ds.spec.template.spec.processes[0].env_from.add().config_map_ref.name = "logd-config"
            await client.create(ds)

            async def pods_with(config_hash: str | None) -> list[pb.Pod] | None:
                pods = (await client.list("pods", ns)).items
                live = [p for p in pods if not p.metadata.HasField("deletion_timestamp")]
                hashes = {p.metadata.annotations.get("mizzen.io/config-hash", "") for p in live}
                ok = (
                    sorted(p.spec.node_name for p in live) == sorted(nodes)
                    and all(p.status.phase == "Running" for p in live)
                    and len(hashes) == 1
                    and "" not in hashes
                    and (config_hash is None or hashes == {config_hash})
                )
                return live if ok else None

            first = await until(lambda: pods_with(None), 20, "a daemon pod on each node")
            h1 = first[0].metadata.annotations["mizzen.io/config-hash"]
            most_missing = 0

            async def rolled() -> list[pb.Pod] | None:
                nonlocal most_missing
                pods = (await client.list("pods", ns)).items
                running = {
                    p.spec.node_name
                    for p in pods
                    if p.status.phase == "Running" and not p.metadata.HasField("deletion_timestamp")
                }
                most_missing = max(most_missing, len(set(nodes) - running))
                live = await pods_with(None)
                if live and live[0].metadata.annotations["mizzen.io/config-hash"] != h1:
                    return live
                return None

            cm = await client.get("configmaps", "logd-config", ns)
            cm.data["level"] = "info"
            await client.update(cm)
            after = await until(rolled, 30, "every daemon pod on the new config", interval=0.02)
            assert not {p.metadata.uid for p in first} & {p.metadata.uid for p in after}
            assert most_missing <= 1  # maxUnavailable 1 (the default)
            events = (await client.list("events", ns)).items
            assert [e.spec.message for e in events if e.spec.reason == "ConfigChanged"] == [
                "ConfigMap logd-config changed: rolling out to 3 pod(s)"
            ]
            created = [e for e in events if e.spec.reason == "SuccessfulCreate"]
            assert sum(e.spec.count or 1 for e in created) == 6  # 3, then each node once more
        finally:
            for name in nodes:
                with contextlib.suppress(NotFoundError):
                    await client.delete("nodes", name)


# ------------------------------------------------------------------ garbage collection


async def _tree(client: ObjectsClient, ns: str) -> tuple[Any, Any, list[Any]]:
    """Deployment -> ReplicaSet -> 2 running pods, linked as the workload controllers link them."""
    deploy = pb.Deployment(metadata=pb.ObjectMeta(name="web", namespace=ns))
    template(deploy, "web")
    deploy.spec.replicas = 0  # no Deployment controller runs here: the tree is built by hand
    deploy = await client.create(deploy)
    rs = pb.ReplicaSet(metadata=pb.ObjectMeta(name="web-1a2b", namespace=ns))
    template(rs, "web")
    rs.spec.replicas = 0
    rs.metadata.owner_references.append(owner_reference(deploy))
    rs = await client.create(rs)
    pods = []
    for i in range(2):
        pod = pb.Pod(metadata=pb.ObjectMeta(name=f"web-1a2b-{i}", namespace=ns))
        pod.metadata.labels["app"] = "web"
        pod.metadata.owner_references.append(owner_reference(rs))
        pod.spec.processes.add(name="main", command=["/bin/sleep", "100"])
        pods.append(await client.create(pod))
    return deploy, rs, pods


async def _all_running(client: ObjectsClient, ns: str) -> bool:
    pods = (await client.list("pods", ns)).items
    return len(pods) == 2 and all(p.status.phase == "Running" for p in pods)


async def test_background_delete_removes_replicasets_and_pods(cluster: MizzenCluster) -> None:
    ns = "gc-background"
    async with running(cluster, ns, workloads=True) as (client, _agent):
        deploy = pb.Deployment(metadata=pb.ObjectMeta(name="web", namespace=ns))
        template(deploy, "web")
        deploy.spec.replicas = 3
        await client.create(deploy)

        async def three_running() -> bool:
            pods = (await client.list("pods", ns)).items
            return len(pods) == 3 and all(p.status.phase == "Running" for p in pods)

        await until(three_running, 30, "the Deployment's 3 pods running")
        assert len(await names(client, "replicasets", ns)) == 1
        _, gone = await client.delete("deployments", "web", ns, propagation_policy="Background")
        assert gone
        await until(lambda: _empty(client, "replicasets", ns), 20, "ReplicaSet collected")
        await until(lambda: _empty(client, "pods", ns), 20, "pods collected")


async def test_foreground_delete_waits_for_dependents(cluster: MizzenCluster) -> None:
    ns = "gc-foreground"
    async with running(cluster, ns) as (client, _agent):
        deploy, rs, pods = await _tree(client, ns)
        await until(lambda: _all_running(client, ns), 20, "pods running")
        gone_at: dict[str, float] = {}

        async def watch(kind: str) -> None:
            async for type_, obj in client.watch(
                kind, ns, resource_version=deploy.metadata.resource_version
            ):
                if type_ == "DELETED":
                    gone_at[obj.metadata.name] = time.monotonic()

        watchers = [asyncio.create_task(watch(k)) for k in ("deployments", "replicasets", "pods")]
        try:
            obj, gone = await client.delete(
                "deployments", "web", ns, propagation_policy="Foreground"
            )
            assert not gone and list(obj.metadata.finalizers) == ["foregroundDeletion"]
            await until(lambda: _empty(client, "deployments", ns), 20, "Deployment deleted")

            async def seen() -> bool:
                return "web" in gone_at

            await until(seen, 5, "the watch to see the Deployment go")
        finally:
            for w in watchers:
                w.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        assert set(gone_at) == {"web", "web-1a2b", "web-1a2b-0", "web-1a2b-1"}
        assert max(gone_at[p.metadata.name] for p in pods) <= gone_at["web-1a2b"]
        assert gone_at["web-1a2b"] <= gone_at["web"]
        assert rs.metadata.name == "web-1a2b"


async def test_orphan_delete_keeps_dependents(cluster: MizzenCluster) -> None:
    ns = "gc-orphan"
    async with running(cluster, ns) as (client, _agent):
        await _tree(client, ns)
        await until(lambda: _all_running(client, ns), 20, "pods running")
        _, gone = await client.delete("deployments", "web", ns, propagation_policy="Orphan")
        assert not gone
        await until(lambda: _empty(client, "deployments", ns), 20, "Deployment deleted")
        (rs,) = (await client.list("replicasets", ns)).items
        assert list(rs.metadata.owner_references) == []
        await asyncio.sleep(1.0)  # give the collector a chance to do the wrong thing
        assert await names(client, "replicasets", ns) == ["web-1a2b"]
        assert await names(client, "pods", ns) == ["web-1a2b-0", "web-1a2b-1"]


# ------------------------------------------------------------------ event TTL


async def test_old_events_expire(cluster: MizzenCluster) -> None:
    ns = "events-ttl"
    async with running(cluster, ns, event_ttl=1.0) as (client, _agent):
        ev = pb.Event(metadata=pb.ObjectMeta(name="ev1", namespace=ns))
        ev.spec.involved_object.kind = "Pod"
        ev.spec.involved_object.name = "x"
        ev.spec.reason = "Test"
        ev.spec.type = "Normal"
        ev.spec.count = 1
        ev.spec.last_timestamp.CopyFrom(_now())
        await client.create(ev)
        began = time.monotonic()
        await until(lambda: _empty(client, "events", ns), 10, "the event to expire")
        assert time.monotonic() - began >= 0.5
