"""The controller manager for real: a 1-node store, `mizzen controllers` processes, a sim agent.

Covers: a Deployment converging; a rolling update that never drops below
replicas - maxUnavailable ready pods nor above replicas + maxSurge live pods;
`rollout undo|history|status` and `scale`; leader failover after SIGKILL
(measured); a clean stop handing over at once; and a paused (SIGSTOP) leader
whose writes the store refuses as fenced after it resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sim_agent import SimAgent

from controllers.leader import current_leader
from mizzen.client import Informer, ObjectsClient, StoreClient
from mizzen.testing.local_cluster import REPO_ROOT, MizzenCluster
from mizzen.testing.processes import dies_with_parent
from mizzen.testing.waits import modify
from protos import objects_pb2 as pb

pytestmark = pytest.mark.integration

LEASE_TTL = 2
ELECTION_KEY = "/mizzen/leader/controllers"


# `mizzen` with the rollout/scale/controllers commands registered even before main.py does it.
def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Manager:
    """One `mizzen controllers` process (its own process group), logging JSON to a file."""

    def __init__(self, endpoint: str, name: str, log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        argv = [
            sys.executable, "-m", "mizzen", "--log-format", "json", "--log-level", "info",
            "controllers", "--endpoints", endpoint, "--id", name,
            "--lease-ttl", str(LEASE_TTL), "--renew-interval", "0.5",
            "--controllers", "replicaset,deployment",
        ]  # fmt: skip
        argv = dies_with_parent(argv)  # dies with the test runner even if that is SIGKILLed
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=_env(),
            start_new_session=True,
        )  # fmt: skip

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MizzenCluster]:
    base = tmp_path_factory.mktemp("controllers")
    with MizzenCluster(1, base, extra_args=["--progress-interval", "0.5"]) as c:
        yield c


@pytest.fixture
def managers(cluster: MizzenCluster, tmp_path: Path) -> Iterator[Callable[[str], Manager]]:
    started: list[Manager] = []

    def start(name: str) -> Manager:
        m = Manager(cluster.endpoints[0], name, tmp_path)
        started.append(m)
        return m

    yield start
    for m in started:
        m.stop()
    for m in started:
        print(f"--- {m.name} log tail ---\n{m.tail(15)}")


@pytest.fixture
async def client(cluster: MizzenCluster) -> AsyncIterator[ObjectsClient]:
    async with ObjectsClient(cluster.endpoints, timeout=10) as c:
        yield c


@pytest.fixture
async def store(cluster: MizzenCluster) -> AsyncIterator[StoreClient]:
    async with StoreClient(cluster.endpoints, timeout=10) as c:
        yield c


async def cli(cluster: MizzenCluster, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mizzen", *args, "--endpoints", cluster.endpoints[0],
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=_env(),
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def eventually(
    what: str, check: Callable[[], Awaitable[bool]], timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


async def wait_leader(store: StoreClient, among: set[str], timeout: float = 15) -> str:
    found: list[str] = []

    async def check() -> bool:
        leader = await current_leader(store, ELECTION_KEY)
        if leader is not None and leader[0] in among:
            found.append(leader[0])
            return True
        return False

    await eventually(f"a leader among {sorted(among)}", check, timeout)
    return found[-1]


def deployment(ns: str, replicas: int, version: str) -> pb.Deployment:
    d = pb.Deployment(metadata=pb.ObjectMeta(name="web", namespace=ns))
    d.spec.replicas = replicas
    d.spec.selector.match_labels["app"] = "web"
    d.spec.template.metadata.labels["app"] = "web"
    d.spec.template.spec.processes.add(name="main", command=["/bin/server", version])
    d.spec.strategy.type = "RollingUpdate"
    d.spec.strategy.rolling_update.max_surge = "1"
    d.spec.strategy.rolling_update.max_unavailable = "1"
    return d


def is_ready(p: pb.Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in p.status.conditions)


def live(pods: list[pb.Pod]) -> list[pb.Pod]:
    return [p for p in pods if not p.metadata.HasField("deletion_timestamp")]


async def pods_of(client: ObjectsClient, ns: str) -> list[pb.Pod]:
    return (await client.list("pods", ns)).items


async def rolled_out(client: ObjectsClient, ns: str, replicas: int, version: str) -> bool:
    d = await client.get("deployments", "web", ns)
    pods = live(await pods_of(client, ns))
    st = d.status
    return (
        st.observed_generation == d.metadata.generation
        and st.updated_replicas == replicas
        and st.available_replicas == replicas
        and st.replicas == replicas
        and len(pods) == replicas
        and all(is_ready(p) and p.spec.processes[0].command[1] == version for p in pods)
    )


# ------------------------------------------------------------------ tests


async def test_rollout_status_fails_at_once_past_the_progress_deadline(
    cluster: MizzenCluster, client: ObjectsClient, store: StoreClient, managers: Any
) -> None:
    """A Deployment whose pods can never run (a nodeSelector no node matches, and no
    node at all) with progressDeadlineSeconds 2: `rollout status` ends with kubectl's
    error as soon as the controller marks ProgressDeadlineExceeded, not at --timeout."""
    ns = "deadline"
    managers("solo")
    await wait_leader(store, {"solo"})
    d = deployment(ns, 2, "v1")
    d.metadata.name = "stuck"
    d.spec.progress_deadline_seconds = 2
    d.spec.template.spec.node_selector["mizzen.io/nowhere"] = "true"
    await client.create(d)
    code, out = await cli(cluster, "rollout", "status", "deploy/stuck", "-n", ns, "--timeout", "50")
    assert code == 1, out
    assert 'Waiting for deployment "stuck" rollout to finish' in out, out
    assert 'deployment "stuck" exceeded its progress deadline' in out.splitlines()[-1], out
    d = await client.get("deployments", "stuck", ns)
    progressing = next(c for c in d.status.conditions if c.type == "Progressing")
    assert (progressing.status, progressing.reason) == ("False", "ProgressDeadlineExceeded")


async def test_deployment_rollout_undo_and_scale(
    cluster: MizzenCluster, client: ObjectsClient, store: StoreClient, managers: Any
) -> None:
    ns = "deploy"
    managers("solo")
    await wait_leader(store, {"solo"})
    async with SimAgent(client, ns, ready_after=0.3, stop_delay=0.1):
        await client.create(deployment(ns, 5, "v1"))
        await eventually("5 ready pods", lambda: rolled_out(client, ns, 5, "v1"))

        # Watch every pod change during the rolling update.
        samples: list[tuple[int, int]] = []
        watcher = Informer(client, "pods", namespace=ns)

        def sample(*_: Any) -> None:
            if not watcher.has_synced.is_set():
                return  # the initial list, one add at a time
            pods = live(watcher.list())
            samples.append((len(pods), sum(1 for p in pods if is_ready(p))))

        watcher.on_add(sample)
        watcher.on_update(sample)
        watcher.on_delete(sample)
        watch_task = asyncio.create_task(watcher.run())
        try:
            await asyncio.wait_for(watcher.has_synced.wait(), 10)
            d = await client.get("deployments", "web", ns)
            d.spec.template.spec.processes[0].command[1] = "v2"
            await client.update(d)
            await eventually("rollout to v2", lambda: rolled_out(client, ns, 5, "v2"), 60)
        finally:
            watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch_task
        assert len(samples) > 10
        assert min(ready for _, ready in samples) >= 5 - 1, samples
        assert max(total for total, _ in samples) <= 5 + 1, samples

        code, out = await cli(cluster, "rollout", "status", "deployment/web", "-n", ns)
        assert code == 0 and 'deployment "web" successfully rolled out' in out, out

        code, out = await cli(cluster, "rollout", "undo", "deployment/web", "-n", ns)
        assert code == 0 and "rolled back to revision 1" in out, out
        await eventually("rollback to v1", lambda: rolled_out(client, ns, 5, "v1"), 60)
        code, out = await cli(cluster, "rollout", "history", "deployment/web", "-n", ns)
        assert code == 0, out
        revisions = [line.split()[0] for line in out.splitlines()[2:]]
        assert revisions == ["2", "3"], out  # revision 1 became 3 again

        code, out = await cli(
            cluster, "rollout", "undo", "deploy/web", "-n", ns, "--to-revision", "9"
        )
        assert code == 1 and "unable to find specified revision 9" in out, out

        code, out = await cli(cluster, "scale", "deployment/web", "--replicas", "2", "-n", ns)
        assert code == 0 and "scaled" in out, out
        await eventually("scale to 2", lambda: rolled_out(client, ns, 2, "v1"), 30)
        code, out = await cli(cluster, "scale", "pods/x", "--replicas", "2", "-n", ns)
        assert code == 1, out


async def test_sigkill_leader_fails_over_within_the_ttl(
    client: ObjectsClient, store: StoreClient, managers: Any
) -> None:
    ns = "failover"
    a, b = managers("alpha"), managers("beta")
    by_name = {a.name: a, b.name: b}
    leader = await wait_leader(store, set(by_name))
    standby = ({"alpha", "beta"} - {leader}).pop()
    async with SimAgent(client, ns):
        await client.create(deployment(ns, 2, "v1"))
        await eventually("2 ready pods", lambda: rolled_out(client, ns, 2, "v1"))
        killed_at = time.monotonic()
        by_name[leader].signal(signal.SIGKILL)
        await wait_leader(store, {standby}, timeout=LEASE_TTL + 10)
        took = time.monotonic() - killed_at
        print(f"failover after SIGKILL of the leader: {took:.2f}s (lease TTL {LEASE_TTL}s)")
        assert took < LEASE_TTL + 3
        d = await client.get("deployments", "web", ns)
        d.spec.replicas = 4
        await client.update(d)
        await eventually("the new leader scales to 4", lambda: rolled_out(client, ns, 4, "v1"))


async def test_clean_stop_hands_over_at_once(store: StoreClient, managers: Any) -> None:
    a, b = managers("one"), managers("two")
    by_name = {a.name: a, b.name: b}
    leader = await wait_leader(store, set(by_name))
    standby = ({"one", "two"} - {leader}).pop()
    await asyncio.sleep(1)  # the standby is campaigning (watching the key)
    stopped_at = time.monotonic()
    by_name[leader].signal(signal.SIGTERM)
    await wait_leader(store, {standby}, timeout=10)
    took = time.monotonic() - stopped_at
    print(f"handover after SIGTERM of the leader: {took:.2f}s")
    assert took < LEASE_TTL  # the lease was revoked, not left to expire
    assert by_name[leader].proc.wait(10) == 0


async def test_paused_leader_writes_are_fenced(
    client: ObjectsClient, store: StoreClient, managers: Any
) -> None:
    ns = "fenced"
    replicas = 300
    a, b = managers("first"), managers("second")
    by_name = {a.name: a, b.name: b}
    leader = await wait_leader(store, set(by_name))
    standby = ({"first", "second"} - {leader}).pop()
    rs = pb.ReplicaSet(metadata=pb.ObjectMeta(name="bulk", namespace=ns))
    rs.spec.replicas = replicas
    rs.spec.selector.match_labels["app"] = "bulk"
    rs.spec.template.metadata.labels["app"] = "bulk"
    rs.spec.template.spec.processes.add(name="main", command=["/bin/sleep", "1000"])
    await client.create(rs)

    async def creating() -> bool:
        return len(await pods_of(client, ns)) >= 20

    await eventually("the leader creating pods", creating)
    by_name[leader].signal(signal.SIGSTOP)
    count_at_stop = len(await pods_of(client, ns))
    try:
        await wait_leader(store, {standby}, timeout=LEASE_TTL + 10)
        # more work for the stale leader to get wrong once it runs again
        # (the new leader writes the ReplicaSet's status meanwhile: again on a conflict)
        await modify(
            client,
            "replicasets",
            "bulk",
            ns,
            lambda rs: setattr(rs.spec, "replicas", replicas - 50),
        )
    finally:
        by_name[leader].signal(signal.SIGCONT)

    def fenced() -> list[dict[str, Any]]:
        return [
            e for e in by_name[leader].log_events() if e.get("event") == "fenced_write_rejected"
        ]

    async def saw_fenced() -> bool:
        return bool(fenced())

    await eventually("a fenced write in the stale leader's log", saw_fenced, 20)
    print(
        f"stale leader stopped at {count_at_stop} pods; "
        f"{len(fenced())} of its writes were refused as fenced"
    )

    async def settled() -> bool:
        pods = live(await pods_of(client, ns))
        return len(pods) == replicas - 50

    await eventually(f"{replicas - 50} pods", settled, 60)
    await asyncio.sleep(1.5)
    assert len(live(await pods_of(client, ns))) == replicas - 50
    assert (await current_leader(store, ELECTION_KEY) or ("", 0))[0] == standby


# ------------------------------------------------------------------ config rollouts (issue 16)

CONFIG_HASH = "mizzen.io/config-hash"
SECRET_VALUE = b"pw-4711-never-logged"


def configured(ns: str, name: str, replicas: int, *, opt_out: bool = False) -> pb.Deployment:
    """A Deployment whose process takes its env from ConfigMap web-config and Secret db."""
    d = deployment(ns, replicas, "v1")
    d.metadata.name = name
    d.spec.selector.match_labels["app"] = name
    d.spec.template.metadata.labels["app"] = name
    proc = d.spec.template.spec.processes[0]
    proc.env_from.add().config_map_ref.name = "web-config"
    var = proc.env.add(name="DB_PASSWORD")
    var.value_from.secret_key_ref.name = "db"
    var.value_from.secret_key_ref.key = "password"
    if opt_out:
        d.metadata.annotations["mizzen.io/config-rollout"] = "false"
    return d


async def app_pods(client: ObjectsClient, ns: str, app: str) -> list[pb.Pod]:
    return [p for p in live(await pods_of(client, ns)) if p.metadata.labels.get("app") == app]


async def all_on(client: ObjectsClient, ns: str, app: str, n: int, config_hash: str) -> bool:
    pods = await app_pods(client, ns, app)
    d = await client.get("deployments", app, ns)
    return (
        len(pods) == n
        and all(
            is_ready(p) and p.metadata.annotations.get(CONFIG_HASH) == config_hash for p in pods
        )
        and d.status.updated_replicas == n
        and d.status.available_replicas == n
        and d.status.replicas == n
    )


def history_rows(out: str) -> list[tuple[str, bool, str]]:
    """(revision, current, change cause) of each row of `rollout history`."""
    rows = []
    for line in out.splitlines()[2:]:
        cells = re.split(r"\s{2,}", line.strip())
        rows.append((cells[0], "*" in cells[3:-1], cells[-1]))
    return rows


async def set_level(client: ObjectsClient, ns: str, level: str) -> None:
    cm = await client.get("configmaps", "web-config", ns)
    cm.data["level"] = level
    await client.update(cm)


async def test_config_change_rolls_each_pod_once_and_shows_in_history(
    cluster: MizzenCluster, client: ObjectsClient, store: StoreClient, managers: Any
) -> None:
    ns = "config"
    manager = managers("solo")
    await wait_leader(store, {"solo"})
    cm = pb.ConfigMap(metadata=pb.ObjectMeta(name="web-config", namespace=ns))
    cm.data["level"] = "debug"
    await client.create(cm)
    secret = pb.Secret(metadata=pb.ObjectMeta(name="db", namespace=ns))
    secret.data["password"] = SECRET_VALUE
    await client.create(secret)
    async with SimAgent(client, ns, ready_after=0.3, stop_delay=0.1):
        await client.create(configured(ns, "web", 5))
        await client.create(configured(ns, "pinned", 2, opt_out=True))

        async def first_hash(app: str, n: int) -> str:
            found: list[str] = []

            async def ready() -> bool:
                pods = await app_pods(client, ns, app)
                hashes = {p.metadata.annotations.get(CONFIG_HASH, "") for p in pods}
                if len(pods) == n and all(is_ready(p) for p in pods) and len(hashes) == 1:
                    found.append(hashes.pop())
                    return bool(found[-1])
                return False

            await eventually(f"{n} ready pods of {app}", ready)
            return found[-1]

        h1 = await first_hash("web", 5)
        pinned_h = await first_hash("pinned", 2)
        assert pinned_h == h1  # same references, same content: same hash
        pinned_before = {p.metadata.uid for p in await app_pods(client, ns, "pinned")}
        web_before = {p.metadata.uid for p in await app_pods(client, ns, "web")}

        # Every web pod event while the ConfigMap change rolls out.
        samples: list[tuple[int, int]] = []
        added: set[str] = set()
        watcher = Informer(client, "pods", namespace=ns, label_selector="app=web")

        def sample(*objs: Any) -> None:
            if not watcher.has_synced.is_set():
                return
            pods = live(watcher.list())
            samples.append((len(pods), sum(1 for p in pods if is_ready(p))))

        def on_add(pod: pb.Pod) -> None:
            if watcher.has_synced.is_set():
                added.add(pod.metadata.uid)
            sample()

        watcher.on_add(on_add)
        watcher.on_update(sample)
        watcher.on_delete(sample)
        watch_task = asyncio.create_task(watcher.run())
        try:
            await asyncio.wait_for(watcher.has_synced.wait(), 10)
            await set_level(client, ns, "info")
            h2: list[str] = []

            async def rolled() -> bool:
                pods = await app_pods(client, ns, "web")
                hashes = {p.metadata.annotations.get(CONFIG_HASH, "") for p in pods}
                if len(hashes) == 1 and h1 not in hashes:
                    h2[:] = list(hashes)
                    return await all_on(client, ns, "web", 5, h2[0])
                return False

            await eventually("web rolled to the new config", rolled, 60)
        finally:
            watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch_task
        web_after = {p.metadata.uid for p in await app_pods(client, ns, "web")}
        assert not web_after & web_before  # every pod replaced ...
        assert added == web_after, (added, web_after)  # ... exactly once: 5 new pods, no more
        assert min(ready for _, ready in samples) >= 5 - 1, samples  # maxUnavailable 1
        assert max(total for total, _ in samples) <= 5 + 1, samples  # maxSurge 1
        d = await client.get("deployments", "web", ns)
        assert d.metadata.generation == 1 and "mizzen.io/config-hash" not in str(d.spec)

        # opted out: same pods, one ReplicaSet
        assert {p.metadata.uid for p in await app_pods(client, ns, "pinned")} == pinned_before
        pinned_rs = [
            rs
            for rs in (await client.list("replicasets", ns)).items
            if rs.metadata.labels.get("app") == "pinned"
        ]
        assert len(pinned_rs) == 1

        code, out = await cli(cluster, "rollout", "history", "deployment/web", "-n", ns)
        assert code == 0, out
        changed = "config: ConfigMap web-config changed"
        assert history_rows(out) == [("1", False, "<none>"), ("2", True, changed)], out

        code, out = await cli(cluster, "rollout", "undo", "deployment/web", "-n", ns)
        assert code == 1 and "only in the content of ConfigMap web-config" in out, out

        # the way back: the old content brings revision 1's ReplicaSet back, as revision 3
        await set_level(client, ns, "debug")
        await eventually(
            "web back on the first config", lambda: all_on(client, ns, "web", 5, h1), 60
        )
        code, out = await cli(cluster, "rollout", "history", "deployment/web", "-n", ns)
        assert history_rows(out) == [("2", False, changed), ("3", True, changed)], out

        # a Secret counts too; its value shows up nowhere
        secret = await client.get("secrets", "db", ns)
        secret.data["password"] = b"pw-0815-never-logged"
        await client.update(secret)

        async def secret_rolled() -> bool:
            pods = await app_pods(client, ns, "web")
            hashes = {p.metadata.annotations.get(CONFIG_HASH, "") for p in pods}
            return (
                len(hashes) == 1
                and not hashes & {h1, h2[0]}
                and await all_on(client, ns, "web", 5, hashes.pop())
            )

        await eventually("web rolled for the Secret", secret_rolled, 60)
        code, out = await cli(cluster, "rollout", "history", "deployment/web", "-n", ns)
        assert history_rows(out)[-1] == ("4", True, "config: Secret db changed"), out
        events = [
            e for e in (await client.list("events", ns)).items if e.spec.reason == "ConfigChanged"
        ]
        assert {e.spec.message.split(":")[0] for e in events} >= {
            "ConfigMap web-config changed",
            "Secret db changed",
        }
        everything = (
            manager.log_path.read_bytes()
            + b"".join(e.SerializeToString() for e in events)
            + b"".join(p.SerializeToString() for p in await pods_of(client, ns))
        )
        assert SECRET_VALUE not in everything and b"pw-0815" not in everything
