"""PodWorker with real processes, file-backed fake cgroups and a fake Objects client.

Covers the store-facing protocol: status written only on change, conflicts
re-read and retried, deletion finished with grace 0 and the local record
removed, and a pod recreated under the same name left alone; one status write
per start, a status overwritten by someone else rewritten, and a pod deleted
while its process is being spawned in the start pool stopped all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mizzen.client.errors import ConflictError, NotFoundError
from nodeagent import runtime
from nodeagent.cgroups.base import Limits, Usage
from nodeagent.logs import PodLogs
from nodeagent.pod_worker import PodWorker, WorkerDeps
from nodeagent.state import StateDir, Terminated, read_boot_id
from protos import objects_pb2 as pb


class FileCgroup:
    def __init__(self, root: Path, path: str) -> None:
        self.path = path
        self.dir = root / path
        self.dir.mkdir(parents=True, exist_ok=True)

    def procs_files(self) -> list[str]:
        return [str(self.dir / "cgroup.procs")]

    def set_limits(self, limits: Limits) -> None:
        pass

    def pids(self) -> set[int]:
        out: set[int] = set()
        for f in self.dir.rglob("cgroup.procs"):
            out |= {int(x) for x in f.read_text().split()}
        return out

    def cpu_and_memory(self) -> tuple[int, int]:
        usage = self.usage()
        return usage.cpu_usage_ns, usage.memory_bytes

    def usage(self) -> Usage:
        return Usage(0, 0, 0, 0)

    def kill_all(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def remove(self) -> None:
        for f in sorted(self.dir.rglob("*"), reverse=True):
            f.rmdir() if f.is_dir() else f.unlink()
        self.dir.rmdir()


class FileDriver:
    version = "v2"

    def __init__(self, root: Path) -> None:
        self.root = root

    def create(self, path: str, limits: Limits | None = None) -> FileCgroup:
        return FileCgroup(self.root, path)

    def open(self, path: str) -> FileCgroup | None:
        return FileCgroup(self.root, path) if (self.root / path).is_dir() else None

    def children(self, path: str = "") -> list[str]:
        return []


class FakePods:
    def __init__(self, pod: pb.Pod) -> None:
        self.pod = pod
        self.rv = 1
        pod.metadata.resource_version = "1"
        self.conflicts = 0
        self.status_writes = 0
        self.deletes: list[tuple[str, int | None, str]] = []

    def _copy(self) -> pb.Pod:
        out = pb.Pod()
        out.CopyFrom(self.pod)
        return out

    def bump(self) -> None:
        self.rv += 1
        self.pod.metadata.resource_version = str(self.rv)

    async def get(self, kind: str, name: str, namespace: str = "") -> pb.Pod:
        if self.pod is None:
            raise NotFoundError("gone")
        return self._copy()

    async def update_status(self, obj: pb.Pod) -> pb.Pod:
        if self.conflicts > 0:
            self.conflicts -= 1
            self.bump()
        if obj.metadata.resource_version != self.pod.metadata.resource_version:
            raise ConflictError("conflict")
        self.pod.status.CopyFrom(obj.status)
        self.status_writes += 1
        self.bump()
        return self._copy()

    async def delete(
        self,
        kind: str,
        name: str,
        namespace: str = "",
        *,
        grace_period_seconds: int | None = None,
        resource_version: str = "",
    ) -> tuple[pb.Pod, bool]:
        self.deletes.append((name, grace_period_seconds, resource_version))
        return self._copy(), True


async def until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


def make_pod(script: str, policy: str = "Always") -> pb.Pod:
    p = pb.Pod(metadata=pb.ObjectMeta(name="web", namespace="default", uid="uid-1"))
    p.spec.restart_policy = policy
    p.spec.termination_grace_period_seconds = 5
    p.spec.processes.add(name="main", command=["/bin/sh", "-c", script])
    return p


@pytest.fixture
def deps_for(tmp_path: Path) -> Callable[[FakePods], WorkerDeps]:
    def make(client: FakePods) -> WorkerDeps:
        return WorkerDeps(
            client=client,
            driver=FileDriver(tmp_path / "cg"),
            logs=PodLogs(str(tmp_path / "logs")),
            state=StateDir(tmp_path / "pods"),
            boot_id=read_boot_id(),
            host_ip="10.0.0.1",
            backoff_initial=0.05,
            backoff_cap=0.1,
            logs_linger=0.0,
        )

    return make


async def run_worker(worker: PodWorker, body: Callable[[], Awaitable[Any]]) -> None:
    task = asyncio.create_task(worker.run())
    try:
        await body()
    finally:
        if not task.done():
            worker.gone()
        async with asyncio.timeout(10):
            await task


def main_status(client: FakePods) -> pb.ProcessStatus:
    return next(
        (p for p in client.pod.status.process_statuses if p.name == "main"), pb.ProcessStatus()
    )


async def test_status_written_after_a_conflict_and_deletion_finished(
    deps_for: Callable[[FakePods], WorkerDeps], tmp_path: Path
) -> None:
    pod = make_pod("exec sleep 30")
    client = FakePods(pod)
    client.conflicts = 1
    deps = deps_for(client)
    worker = PodWorker(pod, deps)

    async def body() -> None:
        await until(lambda: main_status(client).pid > 0, "running")
        assert client.pod.status.phase == "Running"
        assert client.pod.status.host_ip == "10.0.0.1"
        assert deps.state.load("uid-1") is not None
        pid = main_status(client).pid
        writes = client.status_writes
        worker.update(client._copy())  # an unrelated update: nothing to write
        await asyncio.sleep(0.1)
        assert client.status_writes == writes
        deleting = client._copy()
        deleting.metadata.deletion_timestamp.GetCurrentTime()
        deleting.metadata.deletion_grace_period_seconds = 5
        client.pod.CopyFrom(deleting)
        client.bump()
        worker.update(client._copy())
        await until(lambda: bool(client.deletes), "delete call")
        assert client.deletes == [("web", 0, client.pod.metadata.resource_version)]
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

    await run_worker(worker, body)
    assert deps.state.load("uid-1") is None
    assert not (tmp_path / "cg" / "pod-uid-1").exists()


async def test_a_new_pod_with_the_same_name_is_not_deleted(
    deps_for: Callable[[FakePods], WorkerDeps],
) -> None:
    pod = make_pod("exec sleep 30")
    client = FakePods(pod)
    worker = PodWorker(pod, deps_for(client))

    async def body() -> None:
        await until(lambda: main_status(client).pid > 0, "running")
        replacement = make_pod("exec sleep 30")
        replacement.metadata.uid = "uid-2"
        client.pod = replacement
        client.bump()
        deleting = make_pod("exec sleep 30")
        deleting.metadata.deletion_timestamp.GetCurrentTime()
        deleting.metadata.resource_version = "1000"
        worker.update(deleting)
        await until(lambda: worker.done.is_set(), "worker finished")

    await run_worker(worker, body)
    assert client.deletes == []


async def test_never_policy_exit_code_ends_the_pod(
    deps_for: Callable[[FakePods], WorkerDeps],
) -> None:
    pod = make_pod("exit 7", policy="Never")
    client = FakePods(pod)
    worker = PodWorker(pod, deps_for(client))

    async def body() -> None:
        await until(lambda: client.pod.status.phase == "Failed", "failed")
        term = main_status(client).state.terminated
        assert (term.exit_code, term.reason) == (7, "Error")
        assert main_status(client).restart_count == 0

    await run_worker(worker, body)


async def test_always_policy_restarts_with_new_log_instances(
    deps_for: Callable[[FakePods], WorkerDeps], tmp_path: Path
) -> None:
    pod = make_pod("echo run; exit 1")
    client = FakePods(pod)
    worker = PodWorker(pod, deps_for(client))

    async def body() -> None:
        await until(lambda: main_status(client).restart_count >= 3, "restarts")
        assert client.pod.status.phase == "Running"
        assert main_status(client).last_state.terminated.exit_code == 1
        logs = tmp_path / "logs" / "default_web_uid-1" / "main"
        instances = sorted(int(f.name.split(".")[0]) for f in logs.iterdir())
        assert len(instances) <= 2 and instances[-1] >= 2  # a file per run, old ones pruned
        assert (logs / f"{instances[0]}.log").read_text() == "run\n"

    await run_worker(worker, body)
    # logs are pruned to the newest two instances while running, then removed with the pod
    assert not (tmp_path / "logs" / "default_web_uid-1").exists()


async def test_a_start_is_one_status_write(deps_for: Callable[[FakePods], WorkerDeps]) -> None:
    pod = make_pod("exec sleep 30")
    client = FakePods(pod)
    deps = deps_for(client)
    worker = PodWorker(pod, deps)

    async def body() -> None:
        await until(lambda: main_status(client).pid > 0, "running")
        await asyncio.sleep(0.1)
        assert client.status_writes == 1
        assert client.pod.status.phase == "Running"
        record = deps.state.load("uid-1")
        assert record is not None and record.processes["main"].pid == main_status(client).pid

    await run_worker(worker, body)


async def test_a_status_written_by_someone_else_is_rewritten(
    deps_for: Callable[[FakePods], WorkerDeps],
) -> None:
    pod = make_pod("exec sleep 30")
    client = FakePods(pod)
    worker = PodWorker(pod, deps_for(client))

    async def body() -> None:
        await until(lambda: main_status(client).pid > 0, "running")
        client.pod.status.phase = "Unknown"
        client.bump()
        worker.update(client._copy())
        await until(lambda: client.pod.status.phase == "Running", "status rewritten", 2.0)

    await run_worker(worker, body)


class GatedDriver(FileDriver):
    """Holds the creation of process cgroups (in the start pool) until released."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.entered = threading.Event()
        self.release = threading.Event()

    def create(self, path: str, limits: Limits | None = None) -> FileCgroup:
        if "/" in path:
            self.entered.set()
            self.release.wait(10)
        return super().create(path, limits)


@pytest.mark.parametrize(("grace", "exit_code"), [(5, 143), (0, 137)])
async def test_a_pod_deleted_while_its_process_starts_is_stopped(
    deps_for: Callable[[FakePods], WorkerDeps],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    grace: int,
    exit_code: int,
) -> None:
    """SIGTERM (then the grace period) or, once the pod's cgroup was killed, SIGKILL at once."""
    pod = make_pod("exec sleep 30")
    client = FakePods(pod)
    deps = deps_for(client)
    driver = GatedDriver(tmp_path / "cg")
    deps.driver = driver
    worker = PodWorker(pod, deps)
    pids: list[int] = []
    real_start = runtime.start

    def start(*args: Any, **kwargs: Any) -> runtime.ProcessRun:
        run = real_start(*args, **kwargs)
        pids.append(run.pid)
        return run

    monkeypatch.setattr(runtime, "start", start)

    async def body() -> None:
        await asyncio.to_thread(driver.entered.wait, 10)
        deleting = client._copy()
        deleting.metadata.deletion_timestamp.GetCurrentTime()
        deleting.metadata.deletion_grace_period_seconds = grace
        client.pod.CopyFrom(deleting)
        client.bump()
        worker.update(client._copy())
        await asyncio.sleep(0.1)
        driver.release.set()
        await until(lambda: worker.done.is_set(), "worker finished", 4.0)

    await run_worker(worker, body)
    assert client.deletes
    assert len(pids) == 1
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)
    state = worker.supervisors[0].state
    assert isinstance(state, Terminated) and state.exit_code == exit_code
