"""The pure parts of Attach / `mizzen run -i`: a process's stdin pipe as the agent holds it
(one writer, stdinOnce, a write waiting on a full pipe ended by its close), who may attach
(Exec's permission, also through a real gRPC server with the AuthInterceptor), and the
command line's stdin fields."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from mizzen.cli.errors import UsageError
from mizzen.cli.main import build_parser
from mizzen.cli.run_cmd import build_pod, command_of, run_run
from mizzen.security.server_auth import AuthInterceptor, Denied, Identity
from mizzen.security.tokens import hash_token
from nodeagent.agent_service import NodeAgentService
from nodeagent.logs import DiskLogSource
from nodeagent.pod_ops import AgentPolicy
from nodeagent.process_stdin import AttachRefused, ProcessStdin
from nodeagent.stats import UsageSampler
from protos import agent_pb2, agent_pb2_grpc

WHERE = 'process "main" of pod "default/p"'


@pytest.fixture
def pipe() -> Iterator[tuple[int, ProcessStdin]]:
    """The read end (closed afterwards) and a ProcessStdin owning the write end."""
    read_end, write_end = os.pipe()
    stdin = ProcessStdin(write_end, once=True)
    yield read_end, stdin
    stdin.close()
    with contextlib.suppress(OSError):
        os.close(read_end)


async def test_one_writer_and_stdin_once(pipe: tuple[int, ProcessStdin]) -> None:
    read_end, stdin = pipe
    stdin.claim("ada", WHERE)
    with pytest.raises(AttachRefused, match="stdin is already attached by ada"):
        stdin.claim("bob", WHERE)
    assert await stdin.write(b"hello\n")
    assert os.read(read_end, 100) == b"hello\n"
    stdin.release()  # the first attach ended: the process sees end of file
    assert stdin.closed and os.read(read_end, 100) == b""
    assert not await stdin.write(b"more")
    with pytest.raises(AttachRefused) as refused:
        stdin.claim("bob", WHERE)
    assert str(refused.value) == (
        f"{WHERE}: cannot attach stdin: it was closed when its first attach ended (stdinOnce)"
    )


async def test_without_stdin_once_the_pipe_stays_open(pipe: tuple[int, ProcessStdin]) -> None:
    read_end, stdin = pipe
    stdin.once = False
    stdin.claim("ada", WHERE)
    stdin.end_input()
    stdin.release()
    assert not stdin.closed
    stdin.claim("bob", WHERE)
    assert await stdin.write(b"again")
    assert os.read(read_end, 100) == b"again"
    stdin.close()
    with pytest.raises(AttachRefused, match="the process's stdin is closed"):
        stdin.claim("cy", WHERE)


async def test_close_ends_a_write_waiting_on_a_full_pipe(pipe: tuple[int, ProcessStdin]) -> None:
    _read_end, stdin = pipe
    writing = asyncio.create_task(stdin.write(b"x" * (4 << 20)))  # more than a pipe holds
    for _ in range(100):
        await asyncio.sleep(0)
    assert not writing.done()
    stdin.close()  # e.g. the process exited
    assert await asyncio.wait_for(writing, 10) is False


async def test_a_reader_gone_drops_the_rest() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    stdin = ProcessStdin(write_end, once=True)
    assert await stdin.write(b"nobody reads this") is False
    stdin.close()


async def test_attach_is_the_exec_permission() -> None:
    async def allowed(policy: AgentPolicy, who: Identity) -> bool:
        try:
            await policy.authorize(who, "/mizzen.v1.NodeAgent/Attach", None)
        except Denied:
            return False
        return True

    viewer = Identity("vera", "viewer")
    assert await allowed(AgentPolicy(), Identity("ada", "admin"))
    assert not await allowed(AgentPolicy(), viewer)
    assert not await allowed(AgentPolicy(signal_roles=frozenset({"viewer"})), viewer)
    assert await allowed(AgentPolicy(exec_roles=frozenset({"viewer"})), viewer)
    with pytest.raises(Denied) as denied:
        await AgentPolicy().authorize(viewer, "/mizzen.v1.NodeAgent/Attach", None)
    assert denied.value.message(viewer) == (
        "mizzen: vera (role viewer) may not attach to pod processes (attach): only roles admin may"
    )


async def test_attach_through_the_interceptor(tmp_path: pytest.TempPathFactory) -> None:
    """A viewer's token is refused Attach before the service runs; an admin's reaches it
    (here: INVALID_ARGUMENT for the wait it asks)."""
    tokens = {hash_token("tok-v"): ("vera", "viewer"), hash_token("tok-a"): ("ada", "admin")}
    server = grpc.aio.server(interceptors=[AuthInterceptor(AgentPolicy(), tokens=tokens)])
    service = NodeAgentService(DiskLogSource(str(tmp_path)), UsageSampler(dict))
    agent_pb2_grpc.add_NodeAgentServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    async def requests() -> AsyncIterator[agent_pb2.AttachRequest]:
        start = agent_pb2.AttachStart(pod="p", stdin=True, wait_seconds=301)
        yield agent_pb2.AttachRequest(start=start)

    errors = {}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = agent_pb2_grpc.NodeAgentStub(channel)
            for token in ("tok-v", "tok-a"):
                md = (("authorization", f"Bearer {token}"),)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    async for _ in stub.Attach(requests(), metadata=md, timeout=10):
                        pass
                errors[token] = (err.value.code(), err.value.details())
    finally:
        await server.stop(None)
    assert errors["tok-v"][0] == grpc.StatusCode.PERMISSION_DENIED
    assert "may not attach to pod processes" in (errors["tok-v"][1] or "")
    assert errors["tok-a"] == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "start.wait_seconds: at most 300, got 301",
    )


def test_run_i_declares_stdin_and_stdin_once() -> None:
    args = build_parser("run").parse_args(["run", "x", "-i", "--rm", "--", "cat"])
    command_of(args)
    (proc,) = build_pod(args, "default").spec.processes
    assert (proc.stdin, proc.stdin_once, list(proc.command)) == (True, True, ["cat"])
    args = build_parser("run").parse_args(["run", "x", "--", "cat"])
    (proc,) = build_pod(args, "default").spec.processes
    assert (proc.stdin, proc.stdin_once) == (False, False)


def test_run_t_without_i_is_refused_in_one_line() -> None:
    """As kubectl run: -t needs -i (refused before anything is created)."""
    args = build_parser("run").parse_args(["run", "x", "-t", "--", "sh"])
    with pytest.raises(UsageError) as err:
        run_run(args)
    assert str(err.value) == "-i/--stdin is required for containers with -t/--tty=true"
