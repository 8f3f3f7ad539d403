"""ConfigMaps and Secrets injected by a real `mizzen agent` (root, real cgroups, 1-node store).

Pods are created already bound to the agent's node. The agent's data dir is in
a directory other users can reach (pytest's tmp dirs are 0700), so a process
running as ``nobody`` reaches its pod directory. ConfigMaps and Secrets are
created through the Objects API directly (no validation or encryption needed).
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from agent_fixtures import AgentProcess, cgroups_unavailable, eventually, pid_alive

from mizzen.client import ObjectsClient
from mizzen.client.errors import NotFoundError
from mizzen.testing.local_cluster import MizzenCluster
from nodeagent.tmpfs import mount_fstype
from protos import objects_pb2 as pb

_why = cgroups_unavailable()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(_why is not None, reason=_why or ""),
    pytest.mark.timeout(90),
]

NS = "default"
SECRET_VALUE = "s3cr3t-0f-th3-t3st"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MizzenCluster]:
    with MizzenCluster(1, tmp_path_factory.mktemp("cfg-store")) as c:
        yield c


@pytest.fixture(scope="module")
def agent(cluster: MizzenCluster) -> Iterator[AgentProcess]:
    base = Path(tempfile.mkdtemp(prefix="mizzen-cfg-agent-"))
    base.chmod(0o711)
    a = AgentProcess(base, cluster.endpoints)
    a.start()
    try:
        yield a
    finally:
        print(a.log_tail(80))
        a.destroy()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def client(cluster: MizzenCluster, agent: AgentProcess) -> AsyncIterator[ObjectsClient]:
    async with ObjectsClient(cluster.endpoints, timeout=10) as c:
        yield c


def make_pod(agent: AgentProcess, name: str, script: str) -> pb.Pod:
    p = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace=NS))
    p.spec.node_name = agent.name
    p.spec.termination_grace_period_seconds = 1
    p.spec.processes.add(name="main", command=["/bin/sh", "-c", script])
    return p


def configmap(name: str, **data: str) -> pb.ConfigMap:
    return pb.ConfigMap(metadata=pb.ObjectMeta(name=name, namespace=NS), data=data)


def secret(name: str, **data: bytes) -> pb.Secret:
    return pb.Secret(metadata=pb.ObjectMeta(name=name, namespace=NS), data=data)


def main_status(pod: pb.Pod) -> pb.ProcessStatus:
    return next((p for p in pod.status.process_statuses if p.name == "main"), pb.ProcessStatus())


async def running(client: ObjectsClient, name: str) -> pb.Pod:
    pod: pb.Pod = await eventually(
        lambda: client.get("pods", name, NS),
        lambda p: p.status.phase == "Running" and main_status(p).pid > 0,
        what=f"{name} running",
    )
    return pod


def pod_dir(agent: AgentProcess, pod: pb.Pod) -> Path:
    meta = pod.metadata
    return agent.data_dir / "poddirs" / f"{meta.namespace}_{meta.name}_{meta.uid}"


async def file_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


async def delete_and_wait_gone(client: ObjectsClient, name: str) -> None:
    await client.delete("pods", name, NS)

    async def gone() -> bool:
        try:
            await client.get("pods", name, NS)
            return False
        except NotFoundError:
            return True

    await eventually(gone, bool, what=f"pod {name} deleted")


async def events_of(client: ObjectsClient, pod: str, reason: str) -> list[pb.Event]:
    selector = f"involvedObject.kind=Pod,involvedObject.name={pod}"
    items = (await client.list("events", NS, field_selector=selector)).items
    return [e for e in items if e.spec.reason == reason]


async def test_env_files_and_a_secret_volume_owned_by_the_process_user(
    client: ObjectsClient, agent: AgentProcess
) -> None:
    await client.create(configmap("app", level="debug", **{"app.conf": "port=8080\n"}))
    await client.create(secret("db", password=SECRET_VALUE.encode()))
    script = (
        'echo "$LEVEL|$DB_password|$MIZZEN_POD_DIR" > "$MIZZEN_POD_DIR/env.out"; '
        'cat "$MIZZEN_POD_DIR/creds/password" > "$MIZZEN_POD_DIR/read.out"; exec sleep 300'
    )
    p = make_pod(agent, "env-files", script)
    main = p.spec.processes[0]
    main.user = "65534"
    main.env.add(name="LEVEL").value_from.config_map_key_ref.CopyFrom(
        pb.ConfigMapKeySelector(name="app", key="level")
    )
    main.env_from.add(prefix="DB_", secret_ref=pb.SecretEnvSource(name="db"))
    p.spec.volumes.add(name="conf", config_map=pb.ConfigMapVolumeSource(name="app"))
    p.spec.volumes.add(name="creds", secret=pb.SecretVolumeSource(secret_name="db"))
    main.volume_mounts.add(name="conf", mount_path="etc/conf")
    main.volume_mounts.add(name="creds", mount_path="creds")
    await client.create(p)
    pod = await running(client, "env-files")
    home = pod_dir(agent, pod)
    env = await eventually(lambda: file_text(home / "env.out"), bool, what="env written")
    assert env == f"debug|{SECRET_VALUE}|{home}\n"
    read = await eventually(lambda: file_text(home / "read.out"), bool, what="secret read")
    assert read == SECRET_VALUE  # the process, as nobody, could read its secret file
    assert (home / "etc" / "conf" / "app.conf").read_text() == "port=8080\n"
    assert stat.S_IMODE(os.stat(home / "etc" / "conf" / "app.conf").st_mode) == 0o644

    password = home / "creds" / "password"
    st = os.stat(password)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (65534, 0o400)
    secrets_root = agent.data_dir / "secrets"
    assert os.path.realpath(password).startswith(f"{secrets_root}/{pod.metadata.uid}/")
    assert mount_fstype(str(secrets_root)) == "tmpfs"

    await delete_and_wait_gone(client, "env-files")
    assert not home.exists()
    assert not (secrets_root / pod.metadata.uid).exists()
    assert SECRET_VALUE not in agent.log_path.read_text(errors="replace")
    events = (await client.list("events", NS)).items
    assert all(SECRET_VALUE not in e.spec.message for e in events)


async def test_a_configmap_update_rewrites_the_file_in_place_within_5s(
    client: ObjectsClient, agent: AgentProcess
) -> None:
    await client.create(configmap("web", **{"index.html": "v1\n"}))
    p = make_pod(agent, "in-place", "exec sleep 300")
    p.spec.volumes.add(name="html", config_map=pb.ConfigMapVolumeSource(name="web"))
    p.spec.processes[0].volume_mounts.add(name="html", mount_path="html")
    await client.create(p)
    pod = await running(client, "in-place")
    pid = main_status(pod).pid
    index = pod_dir(agent, pod) / "html" / "index.html"
    assert index.read_text() == "v1\n"
    cm = await client.get("configmaps", "web", NS)
    cm.data["index.html"] = "v2\n"
    started = time.monotonic()
    await client.update(cm)
    await eventually(
        lambda: file_text(index), lambda t: t == "v2\n", timeout=5, interval=0.05, what="v2"
    )
    print(f"file rewritten {time.monotonic() - started:.3f}s after the update")
    pod = await client.get("pods", "in-place", NS)
    assert main_status(pod).pid == pid and main_status(pod).restart_count == 0
    assert pid_alive(pid)
    await delete_and_wait_gone(client, "in-place")


async def test_a_missing_configmap_is_config_error_until_it_is_created(
    client: ObjectsClient, agent: AgentProcess
) -> None:
    p = make_pod(agent, "waits", 'echo "$MODE" > "$MIZZEN_POD_DIR/mode"; exec sleep 300')
    p.spec.processes[0].env.add(name="MODE").value_from.config_map_key_ref.CopyFrom(
        pb.ConfigMapKeySelector(name="late", key="mode")
    )
    await client.create(p)
    pod = await eventually(
        lambda: client.get("pods", "waits", NS),
        lambda p: main_status(p).state.waiting.reason == "ConfigError",
        what="ConfigError",
    )
    assert main_status(pod).state.waiting.message == 'ConfigMap "late" not found (env MODE)'
    assert pod.status.phase == "Pending"
    # the agent does not retry in a loop: one Event, counted once
    (event,) = await eventually(
        lambda: events_of(client, "waits", "ConfigError"), bool, what="ConfigError event"
    )
    assert event.spec.type == "Warning" and 'ConfigMap "late" not found' in event.spec.message
    await client.create(configmap("late", mode="fast"))
    pod = await running(client, "waits")
    mode = await eventually(
        lambda: file_text(pod_dir(agent, pod) / "mode"), bool, what="process started"
    )
    assert mode == "fast\n"
    (event,) = await events_of(client, "waits", "ConfigError")
    assert event.spec.count == 1
    await delete_and_wait_gone(client, "waits")


async def test_sighup_reaches_a_trapping_process_on_a_volume_change(
    client: ObjectsClient, agent: AgentProcess
) -> None:
    await client.create(configmap("reload", **{"app.conf": "a\n"}))
    script = (
        'trap \'cat "$MIZZEN_POD_DIR/conf/app.conf" >> "$MIZZEN_POD_DIR/reloads"\' HUP; '
        "while :; do sleep 0.1; done"
    )
    p = make_pod(agent, "hup", script)
    p.metadata.annotations["mizzen.io/config-reload"] = "signal:SIGHUP"
    p.spec.volumes.add(name="conf", config_map=pb.ConfigMapVolumeSource(name="reload"))
    p.spec.processes[0].volume_mounts.add(name="conf", mount_path="conf")
    await client.create(p)
    pod = await running(client, "hup")
    pid = main_status(pod).pid
    cm = await client.get("configmaps", "reload", NS)
    cm.data["app.conf"] = "b\n"
    await client.update(cm)
    reloads = pod_dir(agent, pod) / "reloads"
    assert await eventually(lambda: file_text(reloads), bool, timeout=5, what="reload") == "b\n"
    pod = await client.get("pods", "hup", NS)
    assert main_status(pod).pid == pid and main_status(pod).restart_count == 0
    (event,) = await eventually(
        lambda: events_of(client, "hup", "ConfigReload"), bool, what="ConfigReload event"
    )
    assert event.spec.message == (
        'volume conf (ConfigMap "reload") changed: files rewritten, sent SIGHUP to process main'
    )
    await delete_and_wait_gone(client, "hup")


async def test_a_change_while_the_agent_was_down_is_written_when_it_comes_back(
    client: ObjectsClient, agent: AgentProcess
) -> None:
    """The last test of the module: it kills and restarts the module's agent."""
    await client.create(configmap("offline", **{"app.conf": "1\n"}))
    script = (
        'trap \'cat "$MIZZEN_POD_DIR/conf/app.conf" >> "$MIZZEN_POD_DIR/reloads"\' HUP; '
        "while :; do sleep 0.1; done"
    )
    p = make_pod(agent, "offline", script)
    p.metadata.annotations["mizzen.io/config-reload"] = "signal:HUP"
    p.spec.volumes.add(name="conf", config_map=pb.ConfigMapVolumeSource(name="offline"))
    p.spec.processes[0].volume_mounts.add(name="conf", mount_path="conf")
    await client.create(p)
    pod = await running(client, "offline")
    pid = main_status(pod).pid
    agent.kill()
    cm = await client.get("configmaps", "offline", NS)
    cm.data["app.conf"] = "2\n"
    await client.update(cm)
    agent.start()
    reloads = pod_dir(agent, pod) / "reloads"
    assert await eventually(lambda: file_text(reloads), bool, what="reload after restart") == "2\n"
    assert (pod_dir(agent, pod) / "conf" / "app.conf").read_text() == "2\n"
    pod = await client.get("pods", "offline", NS)
    assert main_status(pod).pid == pid and main_status(pod).restart_count == 0
    await delete_and_wait_gone(client, "offline")
