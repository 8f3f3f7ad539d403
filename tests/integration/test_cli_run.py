"""`mizzen run` and `mizzen rollout restart` against a real store, controllers and agent.

run --rm prints the process's output, exits with its exit code and leaves no
pod; Ctrl-C (SIGINT to the CLI) while the process runs deletes the pod and
leaves no process; an unschedulable pod fails with the scheduler's reason; a
taken name is a one-line error. rollout restart replaces every pod of a
Deployment exactly once, and history says it was a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from agent_fixtures import (
    AgentProcess,
    agent_and_controllers,
    cgroups_unavailable,
    eventually,
    pid_alive,
)

from mizzen.cli.terminal import NOT_A_TERMINAL
from mizzen.client import ObjectsClient
from mizzen.testing.local_cluster import REPO_ROOT, MizzenCluster
from protos import agent_pb2, agent_pb2_grpc
from protos import objects_pb2 as pb

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(cgroups_unavailable() is not None, reason=str(cgroups_unavailable())),
]

NS = "runs"
DEPLOYMENT = """\
apiVersion: mizzen/v1
kind: Deployment
metadata: {name: restarted, namespace: runs}
spec:
  replicas: 2
  selector:
    matchLabels: {app: restarted}
  template:
    metadata:
      labels: {app: restarted}
    spec:
      terminationGracePeriodSeconds: 1
      processes:
        - name: main
          command: ["sleep", "3600"]
          resources:
            requests: {cpu: 10m, memory: 8Mi}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MizzenCluster]:
    with MizzenCluster(1, tmp_path_factory.mktemp("run-store")) as c:
        yield c


@pytest.fixture(scope="module")
def daemons(
    cluster: MizzenCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentProcess]:
    base: Path = tmp_path_factory.mktemp("run")
    with agent_and_controllers(base, cluster.endpoints, "run") as agent:
        yield agent


@pytest.fixture
async def client(cluster: MizzenCluster) -> AsyncIterator[ObjectsClient]:
    async with ObjectsClient(cluster.endpoints, timeout=10) as c:
        yield c


def env(cluster: MizzenCluster) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("MIZZEN_")}
    out["MIZZEN_ENDPOINTS"] = ",".join(cluster.endpoints)
    return out


def mizzen(cluster: MizzenCluster, *args: str, stdin: str | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mizzen", *args],
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=env(cluster),
    )


def run(cluster: MizzenCluster, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    proc = mizzen(cluster, *args, stdin=stdin)
    try:
        out, err = proc.communicate(stdin, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


async def gone(client: ObjectsClient, name: str) -> None:
    async def names() -> list[str]:
        return [p.metadata.name for p in (await client.list("pods", NS)).items]

    await eventually(names, lambda ns: name not in ns, timeout=30, what=f"pod {name} gone")


@pytest.mark.timeout(90)
async def test_run_rm_prints_output_exits_with_the_code_and_removes_the_pod(
    cluster: MizzenCluster, daemons: AgentProcess, client: ObjectsClient
) -> None:
    code, out, err = run(
        cluster, "run", "once", "-n", NS, "--rm", "--env", "WORD=hi", "--",
        "sh", "-c", 'echo "$WORD"; exit 4',
    )  # fmt: skip
    assert (code, out) == (4, "hi\n"), err
    assert err == ""
    with pytest.raises(Exception, match="not found"):
        await client.get("pods", "once", NS)

    # without --rm the pod stays, Succeeded; its name is then taken
    code, out, err = run(cluster, "run", "kept", "-n", NS, "--", "echo", "kept")
    assert (code, out) == (0, "kept\n"), err
    pod = await client.get("pods", "kept", NS)
    assert pod.status.phase == "Succeeded"
    code, out, err = run(cluster, "run", "kept", "-n", NS, "--", "true")
    assert code == 1
    assert err == 'mizzen: pods "kept" already exists in namespace "runs"\n'
    await client.delete("pods", "kept", NS)

    # -t without -i: kubectl's usage error
    code, out, err = run(cluster, "run", "talk", "-n", NS, "-t", "--", "cat")
    assert code == 1 and err.count("\n") == 1, err
    assert "-i/--stdin is required for containers with -t/--tty=true" in err
    # -i -t whose stdin is not a terminal: kubectl's warning, then a tty all the same
    # (the end of input is ^D on it)
    code, out, err = run(
        cluster, "run", "talk", "-n", NS, "--rm", "-i", "-t", "--", "sh", "-c",
        'read line; tty; echo "got $line"', stdin="hello\n",
    )  # fmt: skip
    assert code == 0, err
    assert err == f"{NOT_A_TERMINAL}\n"
    assert "got hello" in out and re.search(r"/dev/pts/\d+", out), out
    await gone(client, "talk")


def _read_until(fd: int, wanted: bytes | re.Pattern[bytes], seen: bytearray) -> None:
    """Read fd into seen until wanted is in it (30 s at most)."""
    deadline = time.monotonic() + 30

    def found() -> bool:
        return bool(wanted.search(seen)) if isinstance(wanted, re.Pattern) else wanted in seen

    while not found():
        left = deadline - time.monotonic()
        assert left > 0, f"no {wanted!r} in {bytes(seen)!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            seen += os.read(fd, 4096)


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


@pytest.mark.timeout(90)
async def test_run_it_rm_a_shell_on_a_terminal(
    cluster: MizzenCluster, daemons: AgentProcess, client: ObjectsClient
) -> None:
    """`mizzen run x -i -t --rm -- sh` on a local terminal (a pty): the process's shell
    is on a terminal of its own (`tty`: /dev/pts/N) of the local size, a SIGWINCH
    forwards the new size, `exit 3` is the CLI's exit code and the pod is gone."""
    master, slave = os.openpty()
    _set_size(slave, 20, 70)
    cli = subprocess.Popen(
        [sys.executable, "-m", "mizzen", "run", "shell", "-n", NS, "-i", "-t", "--rm", "--", "sh"],
        stdin=slave, stdout=slave, stderr=slave, cwd=REPO_ROOT, env=env(cluster),
        start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    seen = bytearray()
    try:
        _read_until(master, b"# ", seen)  # the remote shell's prompt (root)
        os.write(master, b"stty size\n")
        _read_until(master, b"20 70", seen)
        _set_size(master, 25, 90)
        cli.send_signal(signal.SIGWINCH)
        # the CLI reads the signal and the typed line on one event loop, in either
        # order: ask again until the resize has reached the remote terminal
        deadline = time.monotonic() + 30
        while b"25 90" not in seen:
            assert time.monotonic() < deadline, f"no b'25 90' in {bytes(seen)!r}"
            os.write(master, b"stty size\n")
            answer = bytearray()
            _read_until(master, b"# ", answer)  # the answer, up to the next prompt
            seen += answer
        os.write(master, b"echo $((6*7)); tty; exit 3\n")
        _read_until(master, re.compile(rb"42\r\n/dev/pts/\d+"), seen)
        assert cli.wait(60) == 3, bytes(seen)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(10)
        os.close(master)
    await gone(client, "shell")


@pytest.mark.timeout(90)
async def test_run_i_passes_stdin_streams_output_and_exits_with_the_code(
    cluster: MizzenCluster, daemons: AgentProcess, client: ObjectsClient
) -> None:
    code, out, err = run(cluster, "run", "x", "-n", NS, "-i", "--rm", "--", "cat", stdin="hello\n")
    assert (code, out, err) == (0, "hello\n", "")
    await gone(client, "x")
    code, out, err = run(
        cluster, "run", "y", "-n", NS, "-i", "--rm", "--", "sh", "-c", "wc -l; exit 3",
        stdin="a\nb\n",
    )  # fmt: skip
    assert (code, out.strip(), err) == (3, "2", "")
    await gone(client, "y")

    async def attached() -> list[str]:
        selector = "involvedObject.kind=Pod,involvedObject.name=y,reason=Attached"
        return [
            e.spec.message for e in (await client.list("events", NS, field_selector=selector)).items
        ]

    (message,) = await eventually(attached, bool, what="the Attached Event")
    assert message == "anonymous (insecure agent) attached to process y with stdin"


@pytest.mark.timeout(90)
async def test_run_i_a_process_that_does_not_read_or_restarts(
    cluster: MizzenCluster, daemons: AgentProcess, client: ObjectsClient, tmp_path: Path
) -> None:
    """Output is complete whether the process ended before the attach or not, and a
    restart under OnFailure is followed after the attached instance (by its log)."""
    code, out, err = run(cluster, "run", "quick", "-n", NS, "-i", "--rm", "--", "echo", "hi")
    assert (code, out, err) == (0, "hi\n", "")
    await gone(client, "quick")
    marker = tmp_path / "failed-once"
    script = (
        f"if [ -e {marker} ]; then echo second; exit 0; fi; "
        f"read w; echo got $w; touch {marker}; exit 1"
    )
    code, out, err = run(
        cluster, "run", "again", "-n", NS, "-i", "--rm", "--restart", "OnFailure", "--",
        "sh", "-c", script, stdin="w1\n",
    )  # fmt: skip
    assert (code, out) == (0, "got w1\nsecond\n"), err
    await gone(client, "again")


@pytest.mark.timeout(90)
async def test_run_i_rm_ctrl_c_deletes_the_pod(
    cluster: MizzenCluster, daemons: AgentProcess, client: ObjectsClient
) -> None:
    cli = mizzen(cluster, "run", "stopped", "-n", NS, "-i", "--rm", "--", "cat", stdin="")
    assert cli.stdin is not None and cli.stdout is not None
    try:
        cli.stdin.write("ping\n")
        cli.stdin.flush()
        assert await asyncio.to_thread(cli.stdout.readline) == "ping\n"
        pod = await client.get("pods", "stopped", NS)
        (pid,) = [ps.pid for ps in pod.status.process_statuses]
        cli.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(cli.wait, 60) == 130
        await gone(client, "stopped")
        assert not pid_alive(pid)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(10)


@pytest.mark.timeout(90)
async def test_run_i_killed_client_leaves_no_process(
    cluster: MizzenCluster, daemons: AgentProcess, client: ObjectsClient
) -> None:
    """SIGKILL of `run -i` (no --rm cleanup can run): the call ends, stdinOnce closes the
    process's stdin, cat reads end of file and the pod ends."""
    cli = mizzen(
        cluster, "run", "orphan", "-n", NS, "-i", "--", "sh", "-c", "cat; echo eof", stdin=""
    )
    assert cli.stdin is not None and cli.stdout is not None
    try:
        cli.stdin.write("first\n")
        cli.stdin.flush()
        assert await asyncio.to_thread(cli.stdout.readline) == "first\n"  # attached
        pod = await client.get("pods", "orphan", NS)
        (pid,) = [ps.pid for ps in pod.status.process_statuses]
        assert pid_alive(pid)
        cli.kill()
        cli.wait(10)
        ended = await eventually(
            lambda: client.get("pods", "orphan", NS),
            lambda p: p.status.phase in ("Succeeded", "Failed"),
            what="the pod ended",
        )
        assert ended.status.phase == "Succeeded"
        assert not pid_alive(pid)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(10)
        with contextlib.suppress(Exception):
            await client.delete("pods", "orphan", NS)
    await gone(client, "orphan")


def _attach_start(pod: str, **kw: Any) -> agent_pb2.AttachRequest:
    return agent_pb2.AttachRequest(start=agent_pb2.AttachStart(namespace=NS, pod=pod, **kw))


@pytest.mark.timeout(90)
async def test_attach_waits_for_the_start_and_stdin_once_refuses_a_second_attach(
    cluster: MizzenCluster, daemons: AgentProcess, client: ObjectsClient
) -> None:
    pod = pb.Pod(metadata=pb.ObjectMeta(name="talker", namespace=NS))
    pod.spec.restart_policy = "Never"
    pod.spec.termination_grace_period_seconds = 0
    proc = pod.spec.processes.add(
        name="main", command=["sh", "-c", "cat; echo closed; exec sleep 3600"]
    )
    proc.stdin = proc.stdin_once = True
    pod.spec.processes.add(name="quiet", command=["sleep", "3600"])
    await client.create(pod)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{daemons.port}")
    try:
        stub = agent_pb2_grpc.NodeAgentStub(channel)
        queue: asyncio.Queue[agent_pb2.AttachRequest] = asyncio.Queue()

        async def source() -> AsyncIterator[agent_pb2.AttachRequest]:
            while True:
                yield await queue.get()

        # Attached right after the create: the agent waits for the process to start.
        queue.put_nowait(_attach_start("talker", process="main", stdin=True, wait_seconds=60))
        queue.put_nowait(agent_pb2.AttachRequest(stdin=b"one\n"))
        call = stub.Attach(source(), timeout=60)
        assert (await call.read()).stdout == b"one\n"
        queue.put_nowait(agent_pb2.AttachRequest(stdin_close=True))
        assert (await call.read()).stdout == b"closed\n"  # cat got end of file
        call.cancel()

        async def refused(**kw: Any) -> grpc.aio.AioRpcError:
            async def one() -> AsyncIterator[agent_pb2.AttachRequest]:
                yield _attach_start("talker", **kw)
                await asyncio.sleep(30)

            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in stub.Attach(one(), timeout=30):
                    pass
            return err.value

        err = await refused(process="main", stdin=True)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.details() == (
            'process "main" of pod "runs/talker": cannot attach stdin: '
            "it was closed when its first attach ended (stdinOnce)"
        )
        err = await refused(process="quiet", stdin=True)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "does not take stdin" in (err.details() or "")
        err = await refused(stdin=True)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.details() or "").startswith("process: required")
    finally:
        await channel.close(None)
        await client.delete("pods", "talker", NS)
    await gone(client, "talker")


@pytest.mark.timeout(60)
async def test_run_unschedulable_fails_with_the_schedulers_reason(
    cluster: MizzenCluster, daemons: AgentProcess, client: ObjectsClient
) -> None:
    code, _, err = run(
        cluster, "run", "nowhere", "-n", NS, "--rm", "--node-selector", "disk=none",
        "--schedule-timeout", "2", "--", "true",
    )  # fmt: skip
    assert code == 1
    assert err.startswith('mizzen: pod "runs/nowhere" was not scheduled within 2s: '), err
    assert "Unschedulable" in err and err.count("\n") == 1, err
    await gone(client, "nowhere")


@pytest.mark.timeout(60)
async def test_on_failure_output_of_every_instance_and_the_last_exit_code(
    cluster: MizzenCluster, daemons: AgentProcess, client: ObjectsClient, tmp_path: Path
) -> None:
    marker = tmp_path / "failed-once"
    script = f"echo try; if [ -e {marker} ]; then exit 0; fi; touch {marker}; exit 1"
    code, out, err = run(
        cluster, "run", "retry", "-n", NS, "--rm", "--restart", "OnFailure", "--",
        "sh", "-c", script,
    )  # fmt: skip
    assert (code, out) == (0, "try\ntry\n"), err
    await gone(client, "retry")

    code, out, err = run(cluster, "run", "missing", "-n", NS, "--rm", "--", "/no/such/program")
    assert (code, out) == (128, ""), err
    assert err.startswith('mizzen: pod "runs/missing": process missing: StartError: '), err
    assert err.count("\n") == 1
    await gone(client, "missing")


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("sig", "expected"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_ctrl_c_deletes_the_pod_and_leaves_no_process(
    cluster: MizzenCluster,
    daemons: AgentProcess,
    client: ObjectsClient,
    sig: signal.Signals,
    expected: int,
) -> None:
    proc = mizzen(cluster, "run", "sleepy", "-n", NS, "--rm", "--", "sleep", "100")
    try:
        pod = await eventually(
            lambda: client.get("pods", "sleepy", NS),
            lambda p: any(ps.pid > 0 for ps in p.status.process_statuses),
            timeout=30,
            what="sleep running",
        )
        pid = next(ps.pid for ps in pod.status.process_statuses if ps.pid > 0)
        assert pid_alive(pid)
        await asyncio.sleep(0.5)  # the CLI sees it running and follows its output
        proc.send_signal(sig)
        _, err = await asyncio.to_thread(proc.communicate, None, 60)
        assert proc.returncode == expected, err
        assert err == ""
        # the CLI waited for the pod to be gone: nothing left
        with pytest.raises(Exception, match="not found"):
            await client.get("pods", "sleepy", NS)
        assert not pid_alive(pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        with contextlib.suppress(Exception):
            await client.delete("pods", "sleepy", NS, grace_period_seconds=0)


@pytest.mark.timeout(120)
async def test_rollout_restart_replaces_every_pod_exactly_once(
    cluster: MizzenCluster, daemons: AgentProcess, client: ObjectsClient
) -> None:
    code, _, err = run(cluster, "apply", "-f", "-", stdin=DEPLOYMENT)
    assert code == 0, err

    async def pods() -> list[pb.Pod]:
        return list((await client.list("pods", NS, label_selector="app=restarted")).items)

    def running(ps: list[pb.Pod]) -> bool:
        return len(ps) == 2 and all(
            p.status.process_statuses and p.status.process_statuses[0].pid > 0 for p in ps
        )

    before = await eventually(pods, running, timeout=60, what="2 pods running")
    await eventually(
        lambda: client.get("deployments", "restarted", NS),
        lambda d: d.status.available_replicas == 2 and d.status.updated_replicas == 2,
        timeout=30,
        what="deployment available",
    )
    old_uids = {p.metadata.uid for p in before}
    old_pids = {p.status.process_statuses[0].pid for p in before}
    listed = await client.list("pods", NS, label_selector="app=restarted")
    created: list[str] = []

    async def record() -> None:
        async for kind, obj in client.watch(
            "pods", NS, label_selector="app=restarted", resource_version=listed.resource_version
        ):
            if kind == "ADDED":
                created.append(obj.metadata.uid)

    recorder = asyncio.create_task(record())
    try:
        code, out, err = run(cluster, "rollout", "restart", "deploy/restarted", "-n", NS)
        assert (code, out) == (0, "deployment.mizzen/restarted restarted\n"), err
        after = await eventually(
            pods,
            lambda ps: running(ps) and not {p.metadata.uid for p in ps} & old_uids,
            timeout=60,
            what="2 new pods running, no old one",
        )
        await eventually(
            lambda: client.get("deployments", "restarted", NS),
            lambda d: d.status.available_replicas == 2 and d.status.replicas == 2,
            timeout=30,
            what="rollout done",
        )
        await asyncio.sleep(1)  # a further (wrong) replacement would show up here
    finally:
        recorder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await recorder
    new_uids = {p.metadata.uid for p in after}
    assert sorted(created) == sorted(new_uids), "each pod replaced exactly once"
    assert not {p.metadata.name for p in after} & {p.metadata.name for p in before}
    for p in after:
        assert "mizzen.io/restartedAt" in p.metadata.annotations
    assert not [pid for pid in old_pids if pid_alive(pid)]

    code, out, err = run(cluster, "rollout", "history", "deploy/restarted", "-n", NS)
    assert code == 0, err
    last = out.splitlines()[-1]
    assert last.split()[0] == "2" and "restart: mizzen rollout restart at " in last, out
    code, _, err = run(cluster, "delete", "deployment", "restarted", "-n", NS)
    assert code == 0, err


DAEMONSET = """\
apiVersion: mizzen/v1
kind: DaemonSet
metadata: {name: daemon, namespace: runs}
spec:
  selector: {matchLabels: {app: daemon}}
  template:
    metadata: {labels: {app: daemon}}
    spec:
      terminationGracePeriodSeconds: 1
      processes: [{name: main, command: [sleep, "3600"]}]
"""


@pytest.mark.timeout(60)
async def test_rollout_restart_of_a_daemonset_replaces_its_pod(
    cluster: MizzenCluster, daemons: AgentProcess, client: ObjectsClient
) -> None:
    code, _, err = run(cluster, "apply", "-f", "-", stdin=DAEMONSET)
    assert code == 0, err

    async def pods() -> list[pb.Pod]:
        return list((await client.list("pods", NS, label_selector="app=daemon")).items)

    def one_running(ps: list[pb.Pod]) -> bool:
        return len(ps) == 1 and any(s.pid > 0 for s in ps[0].status.process_statuses)

    (before,) = await eventually(pods, one_running, timeout=30, what="the daemon pod running")
    code, out, err = run(cluster, "rollout", "restart", "ds/daemon", "-n", NS)
    assert (code, out) == (0, "daemonset.mizzen/daemon restarted\n"), err
    (after,) = await eventually(
        pods,
        lambda ps: one_running(ps) and ps[0].metadata.uid != before.metadata.uid,
        timeout=30,
        what="a new daemon pod running",
    )
    assert "mizzen.io/restartedAt" in after.metadata.annotations
    code, out, err = run(cluster, "rollout", "status", "ds/daemon", "-n", NS, "--timeout", "30")
    assert code == 0 and out.endswith('daemon set "daemon" successfully rolled out\n'), (out, err)
    code, _, err = run(cluster, "delete", "daemonset", "daemon", "-n", NS)
    assert code == 0, err

    code, _, err = run(cluster, "rollout", "restart", "job/x", "-n", NS)
    assert code == 1 and "expected one of deployment, daemonset" in err, err
