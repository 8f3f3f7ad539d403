"""`mizzen get -w`, `describe` and `events` as real subprocesses against a one-node store.

The watch runs as a long-lived `python -m mizzen get pods -w`; lines it prints
are read by a thread so the test can wait for each with a deadline, and it
must end with exit code 0 and no traceback on SIGINT (Ctrl-C).
"""

from __future__ import annotations

import asyncio
import functools
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, TypeVar

import pytest

from mizzen.client.objects import ObjectsClient
from mizzen.testing.local_cluster import REPO_ROOT, MizzenCluster
from protos import objects_pb2 as pb

pytestmark = pytest.mark.integration

T = TypeVar("T")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MizzenCluster]:
    with MizzenCluster(1, tmp_path_factory.mktemp("watch")) as c:
        yield c


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


def _argv_env(
    cluster: MizzenCluster, home: Path, args: tuple[str, ...]
) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIZZEN_")}
    env["HOME"] = str(home)  # no ~/.mizzen/config of the person running the tests
    env["PYTHONPATH"] = str(REPO_ROOT)
    argv = [sys.executable, "-m", "mizzen", *args, "--endpoints", ",".join(cluster.endpoints)]
    return argv, env


def run(cluster: MizzenCluster, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv, env = _argv_env(cluster, home, args)
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=REPO_ROOT, env=env)


def _pod(name: str, namespace: str) -> pb.Pod:
    pod = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace=namespace))
    pod.spec.processes.add(name="main", command=["/bin/sleep", "100"])
    pod.spec.processes[0].resources.limits.memory_bytes = 64 * 2**20
    pod.spec.processes.add(name="helper", command=["/bin/cat"])
    return pod


async def _with_client(cluster: MizzenCluster, fn: Callable[[ObjectsClient], Awaitable[T]]) -> T:
    async with ObjectsClient(cluster.endpoints) as client:
        return await fn(client)


class Lines:
    """A subprocess's stdout, line by line, readable with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.queue.put(line.rstrip("\n"))

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no such line within {timeout}s; saw {self.seen}")
            try:
                line = self.queue.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(line)
            if predicate(line):
                return line


def test_get_watch_sees_create_and_delete_then_exits_on_sigint(
    cluster: MizzenCluster, home: Path
) -> None:
    ns = "watching"
    asyncio.run(_with_client(cluster, lambda c: c.create(_pod("first", ns))))
    argv, env = _argv_env(cluster, home, ("get", "pods", "-w", "-n", ns))
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=env
    )
    try:
        lines = Lines(proc.stdout)  # type: ignore[arg-type]
        header = lines.wait_for(lambda line: line.startswith("NAME"))
        assert header.split() == ["NAME", "READY", "STATUS", "RESTARTS", "NODE", "AGE"]
        assert lines.wait_for(lambda line: line.startswith("first")).split()[1:3] == [
            "0/2",
            "Pending",
        ]

        asyncio.run(_with_client(cluster, lambda c: c.create(_pod("second", ns))))
        assert lines.wait_for(lambda line: line.startswith("second")).split()[1:5] == [
            "0/2",
            "Pending",
            "0",
            "<none>",
        ]

        async def delete(client: ObjectsClient) -> bool:
            _, gone = await client.delete("pods", "first", ns, grace_period_seconds=0)
            return bool(gone)

        assert asyncio.run(_with_client(cluster, delete))
        lines.wait_for(lambda line: line.startswith("first"))
        assert proc.poll() is None, "the watch ended by itself"

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        stderr = proc.stderr.read()  # type: ignore[union-attr]
        assert "Traceback" not in stderr, stderr
        assert lines.seen.count(header) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_get_watch_only_with_name_prints_only_its_changes(
    cluster: MizzenCluster, home: Path
) -> None:
    ns = "watchonly"

    async def create(client: ObjectsClient) -> None:
        await client.create(_pod("target", ns))
        await client.create(_pod("other", ns))

    async def relabel(client: ObjectsClient, round_: int) -> None:
        for name in ("other", "target"):
            pod = await client.get("pods", name, ns)
            pod.metadata.labels["round"] = str(round_)
            await client.update(pod)

    asyncio.run(_with_client(cluster, create))
    argv, env = _argv_env(
        cluster, home, ("get", "pods", "target", "--watch-only", "-o", "name", "-n", ns)
    )
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=env
    )
    try:
        lines = Lines(proc.stdout)  # type: ignore[arg-type]
        time.sleep(1.5)
        assert lines.queue.empty(), "--watch-only printed the existing pod"
        # The watch opens at some moment after start: change the pods until it sees one.
        for round_ in range(50):
            asyncio.run(_with_client(cluster, functools.partial(relabel, round_=round_)))
            if not lines.queue.empty():
                break
            time.sleep(0.2)
        first = lines.wait_for(lambda line: line != "")  # the first change printed
        assert first == "pod/target"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        time.sleep(0.1)
        while not lines.queue.empty():
            lines.seen.append(lines.queue.get())
        assert set(lines.seen) == {"pod/target"}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_describe_pod_with_its_event_and_events_listing(cluster: MizzenCluster, home: Path) -> None:
    ns = "describing"

    async def setup(client: ObjectsClient) -> None:
        pod = await client.create(_pod("web", ns))
        ev = pb.Event(metadata=pb.ObjectMeta(name="web.scheduled", namespace=ns))
        ref = ev.spec.involved_object
        ref.kind, ref.name, ref.namespace, ref.uid = "Pod", "web", ns, pod.metadata.uid
        ev.spec.reason = "FailedScheduling"
        ev.spec.type = "Warning"
        ev.spec.message = "0/0 nodes are available"
        ev.spec.count = 2
        ev.spec.source.component = "scheduler"
        ev.spec.first_timestamp.FromSeconds(int(time.time()) - 200)
        ev.spec.last_timestamp.FromSeconds(int(time.time()) - 3)
        await client.create(ev)
        other = pb.Event(metadata=pb.ObjectMeta(name="else.created", namespace=ns))
        other.spec.involved_object.kind, other.spec.involved_object.name = "Pod", "else"
        other.spec.reason, other.spec.type = "Created", "Normal"
        other.spec.last_timestamp.FromSeconds(int(time.time()) - 100)
        await client.create(other)

    asyncio.run(_with_client(cluster, setup))

    result = run(cluster, home, "describe", "pod", "web", "-n", ns)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["Name:", "web"]
    assert lines[1].split() == ["Namespace:", ns]
    assert "  main:" in lines and "  helper:" in lines
    assert any(line.split() == ["Command:", "/bin/sleep", "100"] for line in lines)
    assert any(line.split() == ["Command:", "/bin/cat"] for line in lines)
    assert any(line.split() == ["memory:", "64Mi"] for line in lines)
    events = lines[lines.index("Events:") + 1 :]
    assert len(events) == 3
    assert events[2].split()[:2] == ["Warning", "FailedScheduling"]
    assert events[2].split()[3:6] == ["(x2", "over", "3m)"]
    assert events[2].endswith("scheduler   0/0 nodes are available")

    result = run(cluster, home, "events", "-n", ns)
    assert result.returncode == 0, result.stderr
    table = result.stdout.splitlines()
    assert table[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert table[1].split()[1:4] == ["Normal", "Created", "pod/else"]
    assert table[2].split()[1:4] == ["(x2", "over", "3m)"]
    assert table[2].split()[4:] == [
        "Warning",
        "FailedScheduling",
        "pod/web",
        "0/0",
        "nodes",
        "are",
        "available",
    ]
    assert len(table) == 3

    result = run(cluster, home, "events", "-A", "--for", "po/web")
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["NAMESPACE", ns]


def test_describe_missing_pod_fails_with_one_line(cluster: MizzenCluster, home: Path) -> None:
    result = run(cluster, home, "describe", "pod", "nope", "-n", "describing")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr == 'mizzen: pods "nope" not found\n'
    assert result.stdout == ""

    result = run(cluster, home, "get", "pods", "nope", "-w", "-n", "describing")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr == 'mizzen: pods "nope" not found\n'

    result = run(cluster, home, "describe", "nonsense", "x")
    assert result.returncode == 1
    assert result.stderr.startswith("mizzen: unknown kind 'nonsense'")
    assert "Traceback" not in result.stderr

    result = run(cluster, home, "events", "--for", "web")
    assert result.returncode == 1
    assert result.stderr == "mizzen: events: --for wants KIND/NAME, not 'web'\n"
