"""A pod worker with ConfigMaps and Secrets: real processes, file-backed fake cgroups, a fake store.

Variables from ConfigMaps and Secrets, ConfigError until a missing object
appears (one Event), volume files rewritten in place with the reload signal,
secret files owned by the process's user, and everything removed and
unfollowed when the pod goes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_pod_worker import FakePods, FileDriver, main_status, run_worker, until

from mizzen.client.errors import NotFoundError
from nodeagent.config_objects import ConfigObjects
from nodeagent.logs import PodLogs
from nodeagent.pod_config import PodPaths
from nodeagent.pod_worker import PodWorker, WorkerDeps
from nodeagent.state import StateDir, read_boot_id
from nodeagent.tmpfs import SecretsRoot
from protos import objects_pb2 as pb


class FakeStore(FakePods):
    """The pod (FakePods) plus ConfigMaps and Secrets with Get and a name-filtered Watch."""

    def __init__(self, pod: pb.Pod) -> None:
        super().__init__(pod)
        self.configs: dict[tuple[str, str], Any] = {}
        self.streams: list[tuple[str, str, asyncio.Queue[tuple[str, Any]]]] = []
        self.crev = 100

    def put(self, obj: Any) -> None:
        self.crev += 1
        obj.metadata.namespace = "default"
        obj.metadata.resource_version = str(self.crev)
        key = (type(obj).__name__, obj.metadata.name)
        kind = "MODIFIED" if key in self.configs else "ADDED"
        self.configs[key] = obj
        for k, name, q in self.streams:
            if (k, name) == key:
                q.put_nowait((kind, obj))

    async def get(self, kind: str, name: str, namespace: str = "") -> Any:
        if kind in ("ConfigMap", "Secret"):
            obj = self.configs.get((kind, name))
            if obj is None:
                raise NotFoundError(f'{kind} "{name}" not found')
            return obj
        return await super().get(kind, name, namespace)

    async def watch(self, kind: str, namespace: str = "", **kwargs: Any) -> AsyncIterator[Any]:
        name = kwargs["field_selector"].removeprefix("metadata.name=")
        q: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        entry = (kind, name, q)
        self.streams.append(entry)
        try:
            while True:
                yield await q.get()
        finally:
            self.streams.remove(entry)


class Events:
    def __init__(self) -> None:
        self.items: list[tuple[str, str, str]] = []

    def record(self, obj: Any, type: str, reason: str, message: str) -> None:
        self.items.append((type, reason, message))

    def reasons(self, reason: str) -> list[str]:
        return [m for _, r, m in self.items if r == reason]


class DiskSecrets(SecretsRoot):
    """No tmpfs mount in unit tests (the integration tests check the mount)."""

    def _mount(self) -> bool:
        return False


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory other users can reach (pytest's tmp_path is inside a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="mizzen-podcfg-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def deps_for(tmp_path: Path, open_dir: Path) -> Callable[[FakeStore], WorkerDeps]:
    def make(client: FakeStore) -> WorkerDeps:
        data = open_dir / "agent"
        data.mkdir(mode=0o711)
        paths = PodPaths.under(str(data))
        paths = PodPaths(paths.pod_dirs, paths.volumes, DiskSecrets(paths.secrets.path))
        return WorkerDeps(
            client=client,
            driver=FileDriver(tmp_path / "cg"),
            logs=PodLogs(str(tmp_path / "logs")),
            state=StateDir(data / "pods"),
            boot_id=read_boot_id(),
            backoff_initial=0.05,
            backoff_cap=0.1,
            logs_linger=0.0,
            events=Events(),
            config_objects=ConfigObjects(client),
            pod_paths=paths,
        )

    return make


def make_pod(script: str) -> pb.Pod:
    p = pb.Pod(metadata=pb.ObjectMeta(name="web", namespace="default", uid="uid-1"))
    p.spec.restart_policy = "Always"
    p.spec.termination_grace_period_seconds = 5
    p.spec.processes.add(name="main", command=["/bin/sh", "-c", script])
    return p


def configmap(name: str, **data: str) -> pb.ConfigMap:
    return pb.ConfigMap(metadata=pb.ObjectMeta(name=name), data=data)


def secret(name: str, **data: bytes) -> pb.Secret:
    return pb.Secret(metadata=pb.ObjectMeta(name=name), data=data)


def pod_dir(deps: WorkerDeps) -> Path:
    assert deps.pod_paths is not None
    return Path(deps.pod_paths.pod_dir("default", "web", "uid-1"))


async def read_when_there(path: Path) -> str:
    await until(lambda: path.exists() and path.read_text().endswith("\n"), f"{path}")
    return path.read_text()


async def test_variables_from_a_configmap_and_a_secret(
    deps_for: Callable[[FakeStore], WorkerDeps],
) -> None:
    pod = make_pod('echo "$LEVEL $DB_PASSWORD $MIZZEN_POD_DIR" > "$MIZZEN_POD_DIR/out"; sleep 30')
    main = pod.spec.processes[0]
    main.env.add(name="LEVEL").value_from.config_map_key_ref.CopyFrom(
        pb.ConfigMapKeySelector(name="app", key="level")
    )
    main.env_from.add(prefix="DB_", secret_ref=pb.SecretEnvSource(name="db"))
    client = FakeStore(pod)
    client.put(configmap("app", level="debug"))
    client.put(secret("db", PASSWORD=b"hunter2"))
    deps = deps_for(client)
    worker = PodWorker(pod, deps)

    async def body() -> None:
        out = await read_when_there(pod_dir(deps) / "out")
        assert out == f"debug hunter2 {pod_dir(deps)}\n"

    await run_worker(worker, body)
    assert not pod_dir(deps).exists()
    assert deps.config_objects is not None and deps.config_objects.entries == {}


async def test_a_missing_configmap_waits_with_config_error_then_starts(
    deps_for: Callable[[FakeStore], WorkerDeps],
) -> None:
    pod = make_pod('echo "$LEVEL" > "$MIZZEN_POD_DIR/out"; sleep 30')
    pod.spec.processes[0].env.add(name="LEVEL").value_from.config_map_key_ref.CopyFrom(
        pb.ConfigMapKeySelector(name="app", key="level")
    )
    client = FakeStore(pod)
    deps = deps_for(client)
    events = deps.events
    assert isinstance(events, Events)
    worker = PodWorker(pod, deps)

    async def body() -> None:
        await until(lambda: main_status(client).state.waiting.reason == "ConfigError", "waiting")
        assert main_status(client).state.waiting.message == 'ConfigMap "app" not found (env LEVEL)'
        assert client.pod.status.phase == "Pending"
        client.put(configmap("app", other="x"))  # there, but without the key
        await until(lambda: "key" in main_status(client).state.waiting.message, "key missing")
        assert main_status(client).state.waiting.message == (
            'key "level" not found in ConfigMap "app" (env LEVEL)'
        )
        client.put(configmap("app", other="y"))  # still without it: no new Event
        await asyncio.sleep(0.1)
        client.put(configmap("app", level="info"))
        assert await read_when_there(pod_dir(deps) / "out") == "info\n"
        await until(lambda: client.pod.status.phase == "Running", "running")

    await run_worker(worker, body)
    assert events.reasons("ConfigError") == [
        'Cannot start process main: ConfigMap "app" not found (env LEVEL)',
        'Cannot start process main: key "level" not found in ConfigMap "app" (env LEVEL)',
    ]


HUP_SCRIPT = """
trap 'cat "$MIZZEN_POD_DIR/conf/app.conf" >> "$MIZZEN_POD_DIR/reloads"' HUP
while :; do sleep 0.05; done
"""


async def test_a_mounted_configmap_is_rewritten_in_place_and_the_process_signalled(
    deps_for: Callable[[FakeStore], WorkerDeps],
) -> None:
    pod = make_pod(HUP_SCRIPT)
    pod.metadata.annotations["mizzen.io/config-reload"] = "signal:SIGHUP"
    pod.spec.volumes.add(name="conf", config_map=pb.ConfigMapVolumeSource(name="app"))
    pod.spec.processes[0].volume_mounts.add(name="conf", mount_path="conf")
    client = FakeStore(pod)
    client.put(configmap("app", **{"app.conf": "v1\n"}))
    deps = deps_for(client)
    events = deps.events
    assert isinstance(events, Events)
    worker = PodWorker(pod, deps)
    conf = pod_dir(deps) / "conf" / "app.conf"

    async def body() -> None:
        await until(lambda: main_status(client).pid > 0, "running")
        pid = main_status(client).pid
        assert conf.read_text() == "v1\n"
        assert stat.S_IMODE(os.stat(conf).st_mode) == 0o644
        assert os.path.islink(pod_dir(deps) / "conf")
        client.put(configmap("app", **{"app.conf": "v2\n"}))
        assert await read_when_there(pod_dir(deps) / "reloads") == "v2\n"
        assert conf.read_text() == "v2\n"
        assert main_status(client).pid == pid and main_status(client).restart_count == 0

    await run_worker(worker, body)
    assert events.reasons("ConfigReload") == [
        'volume conf (ConfigMap "app") changed: files rewritten, sent SIGHUP to process main'
    ]
    assert deps.pod_paths is not None
    assert not os.path.exists(os.path.join(deps.pod_paths.volumes, "uid-1"))


async def test_without_the_annotation_files_change_and_nothing_is_signalled(
    deps_for: Callable[[FakeStore], WorkerDeps],
) -> None:
    pod = make_pod(HUP_SCRIPT)
    pod.spec.volumes.add(name="conf", config_map=pb.ConfigMapVolumeSource(name="app"))
    pod.spec.processes[0].volume_mounts.add(name="conf", mount_path="conf")
    client = FakeStore(pod)
    client.put(configmap("app", **{"app.conf": "v1\n"}))
    deps = deps_for(client)
    worker = PodWorker(pod, deps)
    conf = pod_dir(deps) / "conf" / "app.conf"

    async def body() -> None:
        await until(lambda: main_status(client).pid > 0, "running")
        client.put(configmap("app", **{"app.conf": "v2\n"}))
        await until(lambda: conf.read_text() == "v2\n", "rewritten")
        await asyncio.sleep(0.2)
        assert not (pod_dir(deps) / "reloads").exists()

    await run_worker(worker, body)
    assert isinstance(deps.events, Events) and deps.events.reasons("ConfigReload") == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as another user")
async def test_secret_files_are_0400_and_belong_to_the_process_user(
    deps_for: Callable[[FakeStore], WorkerDeps],
) -> None:
    pod = make_pod('cat "$MIZZEN_POD_DIR/creds/password" > /dev/null && echo ok; sleep 30')
    pod.spec.processes[0].user = "65534"
    pod.spec.volumes.add(name="creds", secret=pb.SecretVolumeSource(secret_name="db"))
    pod.spec.processes[0].volume_mounts.add(name="creds", mount_path="creds")
    client = FakeStore(pod)
    client.put(secret("db", password=b"hunter2"))
    deps = deps_for(client)
    worker = PodWorker(pod, deps)

    async def body() -> None:
        await until(lambda: main_status(client).pid > 0, "running")
        file = pod_dir(deps) / "creds" / "password"
        st = os.stat(file)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (65534, 0o400)
        assert deps.pod_paths is not None
        assert os.path.realpath(file).startswith(deps.pod_paths.secrets.path + "/uid-1/")
        # the process (as 65534) could read it: its log says ok
        log = Path(deps.logs.instance_path("default", "web", "uid-1", "main", 0))
        await until(lambda: log.exists() and log.read_text() == "ok\n", "process read it")

    await run_worker(worker, body)


async def test_two_processes_of_one_user_share_one_copy_at_their_own_paths(
    deps_for: Callable[[FakeStore], WorkerDeps],
) -> None:
    pod = make_pod("exec sleep 30")
    pod.spec.processes.add(name="side", command=["/bin/sh", "-c", "exec sleep 30"])
    pod.spec.volumes.add(name="conf", config_map=pb.ConfigMapVolumeSource(name="app"))
    pod.spec.processes[0].volume_mounts.add(name="conf", mount_path="main/conf")
    pod.spec.processes[1].volume_mounts.add(name="conf", mount_path="side-conf")
    client = FakeStore(pod)
    client.put(configmap("app", k="v"))
    deps = deps_for(client)
    worker = PodWorker(pod, deps)

    async def body() -> None:
        await until(lambda: client.pod.status.phase == "Running", "running")
        home = pod_dir(deps)
        assert os.readlink(home / "main" / "conf") == os.readlink(home / "side-conf")
        assert (home / "side-conf" / "k").read_text() == "v"

    await run_worker(worker, body)


async def test_a_mount_outside_the_pod_directory_is_refused(
    deps_for: Callable[[FakeStore], WorkerDeps],
) -> None:
    pod = make_pod("exec sleep 30")
    pod.spec.volumes.add(name="conf", config_map=pb.ConfigMapVolumeSource(name="app"))
    pod.spec.processes[0].volume_mounts.add(name="conf", mount_path="/etc/app")
    client = FakeStore(pod)
    client.put(configmap("app", k="v"))
    deps = deps_for(client)
    worker = PodWorker(pod, deps)

    async def body() -> None:
        await until(lambda: main_status(client).state.waiting.reason == "ConfigError", "refused")
        message = main_status(client).state.waiting.message
        assert message == 'mountPath "/etc/app" is outside the pod directory'
        assert not os.path.lexists("/etc/app")

    await run_worker(worker, body)
