"""`mizzen exec` and `mizzen kill` (root): a real store, `mizzen controllers` and a real agent.

One pod, ``target``, runs one process as ``nobody`` in ``/tmp`` with FOO=bar;
it traps HUP by appending to ``/tmp/hup-<pod uid>`` (the test's data dir is not
reachable for nobody). Through the real CLI:

* exec returns the command's stdout, its stderr apart, and its exit code, and
  the command sees the process's variables, cgroup (``/proc/self/cgroup``),
  user and working directory; ``-i`` passes stdin through (``cat``);
* the command and what it forked away (background, ``setsid``) are gone once
  the CLI running it is SIGKILLed, and the pod's own process is untouched;
* ``kill --signal HUP`` reaches the trap; KILL is refused without ``--force``
  (the process keeps running), an unknown signal names the field; both
  operations are Events on the pod (who, which signal, which argv);
* with ``-t`` (through the RPC): a pty of the size asked, resized on request;
* more concurrent execs than ``--max-execs`` are RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
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
from agent_fixtures import AgentProcess, agent_and_controllers, cgroups_unavailable, eventually

from mizzen.client import ObjectsClient
from mizzen.testing.local_cluster import REPO_ROOT, MizzenCluster
from protos import agent_pb2, agent_pb2_grpc
from protos import objects_pb2 as pb

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(cgroups_unavailable() is not None, reason=str(cgroups_unavailable())),
]

NS = "execs"
MAX_EXECS = 3
TRAP = "trap 'echo hup >> \"/tmp/hup-$MIZZEN_POD_UID\"' HUP; echo ready; while :; do sleep 1; done"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MizzenCluster]:
    with MizzenCluster(1, tmp_path_factory.mktemp("exec-store")) as c:
        yield c


@pytest.fixture(scope="module")
def agent(
    cluster: MizzenCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentProcess]:
    base: Path = tmp_path_factory.mktemp("exec")
    with agent_and_controllers(
        base, cluster.endpoints, "exec", ["--max-execs", str(MAX_EXECS)]
    ) as a:
        yield a


def mizzen(
    cluster: MizzenCluster, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`mizzen <args>`; the endpoints go before a `--` (after it, all is the command)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIZZEN_")}
    argv = list(args)
    cut = argv.index("--") if "--" in argv else len(argv)
    argv[cut:cut] = ["--endpoints", ",".join(cluster.endpoints)]
    return subprocess.run(
        [sys.executable, "-m", "mizzen", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env=env,
    )


async def _create_target(cluster: MizzenCluster, agent: AgentProcess) -> pb.Pod:
    async with ObjectsClient(cluster.endpoints, timeout=10) as client:
        p = pb.Pod(metadata=pb.ObjectMeta(name="target", namespace=NS))
        p.spec.node_name = agent.name
        p.spec.termination_grace_period_seconds = 1
        proc = p.spec.processes.add(name="main", command=["/bin/sh", "-c", TRAP])
        proc.user = "nobody"
        proc.working_dir = "/tmp"
        proc.env.add(name="FOO", value="bar")
        await client.create(p)
        pod: pb.Pod = await eventually(
            lambda: client.get("pods", "target", NS),
            lambda x: (
                x.status.phase == "Running" and any(ps.pid > 0 for ps in x.status.process_statuses)
            ),
            what="target running",
        )
        return pod


@pytest.fixture(scope="module")
def target(cluster: MizzenCluster, agent: AgentProcess) -> Iterator[pb.Pod]:
    """The pod (killed with the agent's cgroups when the module ends)."""
    pod = asyncio.run(_create_target(cluster, agent))
    yield pod
    with contextlib.suppress(FileNotFoundError):
        os.remove(f"/tmp/hup-{pod.metadata.uid}")


@pytest.fixture
async def client(cluster: MizzenCluster) -> AsyncIterator[ObjectsClient]:
    async with ObjectsClient(cluster.endpoints, timeout=10) as c:
        yield c


def cgroup_pids(agent: AgentProcess, pod: pb.Pod) -> set[int]:
    from nodeagent.cgroups import detect

    cgroup = detect(parent=agent.parent).open(f"pod-{pod.metadata.uid}")
    assert cgroup is not None
    return cgroup.pids()


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def main_pid(pod: pb.Pod) -> int:
    return next(ps.pid for ps in pod.status.process_statuses if ps.name == "main")


async def pod_events(client: ObjectsClient, reason: str) -> list[str]:
    selector = f"involvedObject.kind=Pod,involvedObject.name=target,reason={reason}"
    events = (await client.list("events", NS, field_selector=selector)).items
    return [e.spec.message for e in events]


async def test_exec_sees_env_cgroup_user_cwd_and_returns_the_exit_code(
    cluster: MizzenCluster, agent: AgentProcess, target: pb.Pod, client: ObjectsClient
) -> None:
    script = 'echo "FOO=$FOO"; id -un; pwd; cat /proc/self/cgroup; echo oops >&2; exit 3'
    out = mizzen(cluster, "exec", "target", "-n", NS, "--", "sh", "-c", script)
    assert out.returncode == 3, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:3] == ["FOO=bar", "nobody", "/tmp"]
    cgroup = f"/{agent.parent}/pod-{target.metadata.uid}/main"
    assert any(line.endswith(cgroup) for line in lines[3:]), out.stdout
    assert out.stderr == "oops\n"
    messages = await eventually(
        lambda: pod_events(client, "Exec"), lambda m: any(script in x for x in m), what="Event"
    )
    assert any("anonymous" in m and "process main" in m for m in messages), messages
    assert not any("FOO=bar" in m for m in messages)  # its output, never


async def test_exec_stdin_and_a_missing_command(
    cluster: MizzenCluster, agent: AgentProcess, target: pb.Pod
) -> None:
    out = mizzen(cluster, "exec", "-i", "target", "-n", NS, "--", "cat", stdin="hello\nworld\n")
    assert (out.returncode, out.stdout) == (0, "hello\nworld\n"), out.stderr
    out = subprocess.run(
        f"yes | {sys.executable} -m mizzen exec -i target -n {NS} "
        f"--endpoints {','.join(cluster.endpoints)} -- head -2",
        shell=True, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
    )  # fmt: skip
    assert (out.returncode, out.stdout) == (0, "y\ny\n"), out.stderr
    out = mizzen(cluster, "exec", "-t", "target", "-n", NS, "--", "sh", "-c", "tty; exit 4")
    assert out.returncode == 4 and out.stdout.startswith("/dev/pts/"), out
    out = mizzen(cluster, "exec", "target", "-n", NS, "--", "no-such-command")
    assert out.returncode == 1
    assert out.stderr.strip() == 'mizzen: exec: executable "no-such-command" not found in PATH'
    out = mizzen(cluster, "exec", "target", "-n", NS, "-p", "other", "--", "true")
    assert out.returncode == 1 and 'has no process "other"' in out.stderr


async def test_killed_client_leaves_nothing_behind(
    cluster: MizzenCluster, agent: AgentProcess, target: pb.Pod, client: ObjectsClient
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIZZEN_")}
    script = "sleep 1001 & setsid sleep 1002 & exec sleep 1003"
    cli = subprocess.Popen(
        [
            sys.executable, "-m", "mizzen", "exec", "target", "-n", NS,
            "--endpoints", ",".join(cluster.endpoints), "--", "sh", "-c", script,
        ],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        cwd=REPO_ROOT, env=env, start_new_session=True,
    )  # fmt: skip
    pod = await client.get("pods", "target", NS)
    try:

        async def sleepers() -> list[str]:
            return [c for p in cgroup_pids(agent, target) if "sleep 100" in (c := cmdline(p))]

        await eventually(sleepers, lambda s: len(s) == 3, what="the three sleeps running")
        cli.kill()
        cli.wait(10)
        await eventually(sleepers, lambda s: s == [], what="the exec's processes gone")
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(10)
    again = await client.get("pods", "target", NS)
    assert main_pid(again) == main_pid(pod) and main_pid(pod) in cgroup_pids(agent, target)


async def test_a_client_gone_while_output_floods_leaves_nothing_behind(
    agent: AgentProcess, target: pb.Pod
) -> None:
    """The agent's output buffer is full when the call ends: the command is killed all
    the same (nothing waits on a queue nobody reads)."""
    channel, _queue, call = await _exec_call(agent, [_start(["sh", "-c", "exec yes flood"])])
    try:
        assert (await call.read()).stdout.startswith(b"flood\n")
        await asyncio.sleep(0.5)  # not a threshold: lets the agent's buffer fill up
    finally:
        await channel.close(None)

    async def floods() -> list[int]:
        return [p for p in cgroup_pids(agent, target) if "yes flood" in cmdline(p)]

    await eventually(floods, lambda s: s == [], what="yes killed")


async def test_kill_signals_the_process_group_and_refuses_kill(
    cluster: MizzenCluster, agent: AgentProcess, target: pb.Pod, client: ObjectsClient
) -> None:
    before = main_pid(await client.get("pods", "target", NS))
    out = mizzen(cluster, "kill", "target", "-n", NS, "--signal", "HUP")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "pod/target process main: sent SIGHUP\n"

    async def trapped() -> str:
        read = mizzen(cluster, "exec", "target", "-n", NS, "--", "sh", "-c",
                      'cat "/tmp/hup-$MIZZEN_POD_UID" 2>/dev/null || true')  # fmt: skip
        return read.stdout

    await eventually(trapped, lambda s: "hup" in s, what="the HUP trap ran")
    messages = await eventually(
        lambda: pod_events(client, "Signal"), lambda m: len(m) > 0, what="Signal Event"
    )
    assert any("sent SIGHUP to process main" in m and "anonymous" in m for m in messages)

    out = mizzen(cluster, "kill", "target", "-n", NS, "--signal", "KILL")
    assert out.returncode == 1
    assert out.stderr.startswith("mizzen: signal: SIGKILL cannot be handled"), out.stderr
    assert "force" in out.stderr
    out = mizzen(cluster, "kill", "target", "-n", NS, "--signal", "NOPE")
    assert out.returncode == 1
    assert out.stderr.strip() == 'mizzen: signal: unknown signal "NOPE"'
    pod = await client.get("pods", "target", NS)
    assert main_pid(pod) == before and pod.status.phase == "Running"


async def _exec_call(agent: AgentProcess, requests: list[agent_pb2.ExecRequest]) -> Any:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{agent.port}")
    queue: asyncio.Queue[agent_pb2.ExecRequest] = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)

    async def source() -> AsyncIterator[agent_pb2.ExecRequest]:
        while True:
            yield await queue.get()

    stub = agent_pb2_grpc.NodeAgentStub(channel)
    return channel, queue, stub.Exec(source(), timeout=30)


def _start(command: list[str], **kw: Any) -> agent_pb2.ExecRequest:
    return agent_pb2.ExecRequest(
        start=agent_pb2.ExecStart(namespace=NS, pod="target", command=command, **kw)
    )


async def test_tty_size_and_resize(agent: AgentProcess, target: pb.Pod) -> None:
    script = "stty size; read x; stty size; tty"
    start = _start(
        ["sh", "-c", script], stdin=True, tty=True, size=agent_pb2.WindowSize(rows=30, cols=100)
    )
    channel, queue, call = await _exec_call(agent, [start])
    output = b""
    code = None
    resized = False
    try:
        async for response in call:
            output += response.stdout
            if b"30 100" in output and not resized:
                resized = True
                queue.put_nowait(
                    agent_pb2.ExecRequest(resize=agent_pb2.WindowSize(rows=40, cols=120))
                )
                queue.put_nowait(agent_pb2.ExecRequest(stdin=b"go\n"))
            if response.HasField("exit"):
                code = response.exit.code
    finally:
        await channel.close(None)
    assert code == 0, output
    text = output.decode()
    assert "30 100" in text and "40 120" in text and "/dev/pts/" in text, text
    assert text.index("30 100") < text.index("40 120")


def _read_until(fd: int, wanted: bytes, seen: bytearray, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while wanted not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {wanted!r} in {bytes(seen)!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            seen += os.read(fd, 4096)


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_cli_terminal_raw_mode_and_sigwinch(cluster: MizzenCluster, target: pb.Pod) -> None:
    """`mizzen exec -it` on a local terminal: the remote shell gets the local size, a
    SIGWINCH to the CLI forwards the new one, and `exit 9` is the CLI's exit code."""
    master, slave = os.openpty()
    _set_size(slave, 20, 70)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIZZEN_")}
    cli = subprocess.Popen(
        [
            sys.executable, "-m", "mizzen", "exec", "-it", "target", "-n", NS,
            "--endpoints", ",".join(cluster.endpoints), "--", "sh",
        ],
        stdin=slave, stdout=slave, stderr=slave, cwd=REPO_ROOT, env=env,
        start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    seen = bytearray()
    try:
        _read_until(master, b"$ ", seen)  # the remote shell's prompt: connected, raw mode on
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
            _read_until(master, b"$ ", answer)  # the answer, up to the next prompt
            seen += answer
        os.write(master, b"exit 9\n")
        assert cli.wait(30) == 9, bytes(seen)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(10)
        os.close(master)


async def test_concurrent_execs_are_bounded(agent: AgentProcess, target: pb.Pod) -> None:
    calls = []
    try:
        for _ in range(MAX_EXECS):
            channel, _queue, call = await _exec_call(
                agent, [_start(["sh", "-c", "echo up; sleep 60"])]
            )
            calls.append(channel)
            first = await call.read()
            assert first.stdout == b"up\n"
        channel, _queue, call = await _exec_call(agent, [_start(["true"])])
        calls.append(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call.read()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at most 3" in (refused.value.details() or "")
    finally:
        for channel in calls:
            await channel.close(None)
    # the slots come back once the calls are gone
    deadline = time.monotonic() + 20
    while True:
        channel, _queue, call = await _exec_call(agent, [_start(["true"])])
        try:
            exits = [r.exit.code async for r in call if r.HasField("exit")]
            assert exits == [0]
            break
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
        finally:
            await channel.close(None)


async def test_kill_and_exec_input_errors(
    cluster: MizzenCluster, agent: AgentProcess, target: pb.Pod, client: ObjectsClient
) -> None:
    out = mizzen(cluster, "kill", "nowhere", "-n", NS, "--signal", "HUP")
    assert out.returncode == 1 and 'pods "nowhere" not found' in out.stderr
    p = pb.Pod(metadata=pb.ObjectMeta(name="pair", namespace=NS))
    p.spec.node_name = agent.name
    p.spec.termination_grace_period_seconds = 0
    for name in ("a", "b"):
        p.spec.processes.add(name=name, command=["sleep", "300"])
    await client.create(p)
    await eventually(
        lambda: client.get("pods", "pair", NS),
        lambda x: x.status.phase == "Running",
        what="pair running",
    )
    out = mizzen(cluster, "kill", "pair", "-n", NS, "--signal", "HUP")
    assert out.returncode == 1
    assert out.stderr.strip() == 'mizzen: process: required: pod "execs/pair" has processes a, b'
    out = mizzen(cluster, "exec", "pair", "-n", NS, "-p", "b", "--", "sh", "-c", "exit 7")
    assert out.returncode == 7, out.stderr
    out = mizzen(cluster, "exec", "pair", "-n", NS)
    assert out.returncode == 1 and "give the command after --" in out.stderr
    await client.delete("pods", "pair", NS)


async def test_agent_killed_mid_exec_then_restarted_kills_the_leftovers(
    agent: AgentProcess, target: pb.Pod, client: ObjectsClient
) -> None:
    """Last in the module: the agent is SIGKILLed while a command runs (nothing ends the
    session); the next agent kills the command before it serves, and re-adopts the pod."""
    before = main_pid(await client.get("pods", "target", NS))
    start = _start(["sh", "-c", "echo up; setsid sleep 1004 & exec sleep 1005"])
    channel, _queue, call = await _exec_call(agent, [start])
    try:
        assert (await call.read()).stdout == b"up\n"

        async def sleepers() -> list[str]:
            return [c for p in cgroup_pids(agent, target) if "sleep 100" in (c := cmdline(p))]

        await eventually(sleepers, lambda s: len(s) == 2, what="both sleeps running")
        agent.kill()
        assert len(await sleepers()) == 2  # nobody ended them
        agent.start()
        await eventually(sleepers, lambda s: s == [], what="the leftovers killed")
    finally:
        await channel.close(None)
    assert agent.count_log_events("stale_exec_processes_killed") == 1
    assert main_pid(await client.get("pods", "target", NS)) == before
    assert before in cgroup_pids(agent, target)
