"""`mizzen exec` and `mizzen kill`: non-state operations delivered by the pod's node agent.

Like ``mizzen logs``, the store says where the pod runs and where that node's
agent listens; the command then calls the agent's NodeAgent service directly
(same TLS and credentials).

``exec`` streams stdin (with ``-i``), stdout and stderr over one bidirectional
call and exits with the command's exit code. With ``-t`` the agent runs the
command on a pseudo-terminal; when the local stdin is a terminal it is put in
raw mode for the call and window size changes (SIGWINCH) are forwarded. When
this command ends or is killed, the call ends and the agent kills whatever the
command started.

``kill`` sends a signal (default TERM) to a process's process group; KILL and
STOP need ``--force``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any

import grpc

from mizzen.api.defaults import DEFAULT_NAMESPACE
from mizzen.cli.errors import CommandError, UsageError
from mizzen.cli.logs_cmd import agent_error, connect_agent, locate_agent
from mizzen.cli.runner import client_options, with_objects_client
from mizzen.cli.terminal import remote_terminal, stdin_is_terminal, window
from mizzen.client.objects import ObjectsClient
from mizzen.security.tls import ClientCredentials
from protos import agent_pb2, agent_pb2_grpc

_READ = 64 * 1024


class _CommandAfterDashes(argparse.ArgumentParser):
    """Everything after the first ``--`` is the command, whatever options precede it
    (argparse alone binds an empty ``nargs="*"`` positional right after POD)."""

    def parse_known_args(  # type: ignore[override]
        self, args: list[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        args = list(sys.argv[1:] if args is None else args)
        if "--" not in args:
            return super().parse_known_args(args, namespace)
        cut = args.index("--")
        parsed, extras = super().parse_known_args(args[:cut], namespace)
        parsed.argv = [*parsed.argv, *args[cut + 1 :]]
        return parsed, extras


def add_exec_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = client_options()

    p = sub.add_parser(
        "exec",
        parents=[common],
        help="run a command in a pod's process environment (mizzen exec POD -- CMD ARGS...)",
        description="Run CMD in the cgroup, environment, user and working directory of one of "
        "POD's processes, on its node; exits with CMD's exit code.",
    )
    p.add_argument("pod", metavar="POD")
    p.add_argument("argv", nargs="*", metavar="CMD", help="the command and its arguments, after --")
    p.add_argument("-n", "--namespace", default=None)
    p.add_argument("-p", "--process", default="", help="process name (required if several)")
    p.add_argument("-i", "--stdin", action="store_true", help="pass stdin to the command")
    p.add_argument("-t", "--tty", action="store_true", help="run the command on a terminal (pty)")
    p.set_defaults(func=run_exec, client_command=True)
    p.__class__ = _CommandAfterDashes

    p = sub.add_parser(
        "kill",
        parents=[common],
        help="send a signal to a pod's process (its process group)",
    )
    p.add_argument("pod", metavar="POD")
    p.add_argument("-n", "--namespace", default=None)
    p.add_argument("-p", "--process", default="", help="process name (required if several)")
    p.add_argument(
        "-s", "--signal", default="TERM", help="signal name or number (default TERM): HUP, USR1..."
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="allow KILL and STOP, which bypass the pod's graceful deletion",
    )
    p.set_defaults(func=run_kill, client_command=True)


# ------------------------------------------------------------------ kill


def run_kill(args: argparse.Namespace) -> int:
    namespace = args.namespace or DEFAULT_NAMESPACE

    async def body(client: ObjectsClient) -> int:
        node, address = await locate_agent(client, namespace, args.pod)
        request = agent_pb2.SignalRequest(
            namespace=namespace,
            pod=args.pod,
            process=args.process,
            signal=args.signal,
            force=args.force,
        )
        channel = await connect_agent(address, node, args.request_timeout, client.credentials)
        try:
            stub = agent_pb2_grpc.NodeAgentStub(channel)
            response = await stub.Signal(request, timeout=args.request_timeout)
        except grpc.aio.AioRpcError as err:
            raise agent_error(err, node, address) from None
        finally:
            await channel.close(None)
        print(f"pod/{args.pod} process {response.process}: sent {response.signal}")
        return 0

    return with_objects_client(args, body)


# ------------------------------------------------------------------ exec


def _read_stdin(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]) -> None:
    """Thread body: copy stdin into queue as requests, then stdin_close (a daemon
    thread, so a terminal that never ends does not keep the command alive)."""
    fd = sys.stdin.fileno()
    while True:
        try:
            data = os.read(fd, _READ)
        except OSError:
            data = b""
        request = (
            agent_pb2.ExecRequest(stdin=data) if data else agent_pb2.ExecRequest(stdin_close=True)
        )
        try:
            loop.call_soon_threadsafe(queue.put_nowait, request)
        except RuntimeError:  # the call is over and its loop closed
            return
        if not data:
            return


async def _exec(
    args: argparse.Namespace,
    namespace: str,
    node: str,
    address: str,
    credentials: ClientCredentials,
) -> int:
    start = agent_pb2.ExecStart(
        namespace=namespace,
        pod=args.pod,
        process=args.process,
        command=args.argv,
        stdin=args.stdin,
        tty=args.tty,
    )
    local_terminal = args.tty and stdin_is_terminal()
    if args.tty:
        size = window()
        if size is not None:
            start.size.CopyFrom(size)
    loop = asyncio.get_running_loop()
    outgoing: asyncio.Queue[Any] = asyncio.Queue()

    async def requests() -> AsyncIterator[agent_pb2.ExecRequest]:
        yield agent_pb2.ExecRequest(start=start)
        while True:
            yield await outgoing.get()

    channel = await connect_agent(address, node, args.request_timeout, credentials)
    code: int | None = None
    terminal: contextlib.AbstractContextManager[None] = (
        remote_terminal(
            lambda size: outgoing.put_nowait(agent_pb2.ExecRequest(resize=size)),
            raw=args.stdin,
        )
        if local_terminal
        else contextlib.nullcontext()
    )
    try:
        if args.stdin:
            threading.Thread(target=_read_stdin, args=(loop, outgoing), daemon=True).start()
        with terminal:
            stub = agent_pb2_grpc.NodeAgentStub(channel)
            out, err = sys.stdout.buffer, sys.stderr.buffer
            call = stub.Exec(requests())
            async for response in call:
                kind = response.WhichOneof("kind")
                if kind == "stdout":
                    with contextlib.suppress(BrokenPipeError):
                        out.write(response.stdout)
                        out.flush()
                elif kind == "stderr":
                    err.write(response.stderr)
                    err.flush()
                elif kind == "exit":
                    # The last message. Stop here: stdin still being sent (`yes | mizzen
                    # exec -i POD -- head -1`) must not turn the ended call into an error.
                    code = response.exit.code
                    call.cancel()
                    break
    except grpc.aio.AioRpcError as error:
        raise agent_error(error, node, address) from None
    finally:
        await channel.close(None)
    if code is None:
        raise CommandError(f'the agent of node "{node}" ended the exec without an exit status')
    return code


def run_exec(args: argparse.Namespace) -> int:
    if not args.argv:
        raise UsageError("exec: give the command after --: mizzen exec POD -- CMD ARGS...")
    namespace = args.namespace or DEFAULT_NAMESPACE

    async def body(client: ObjectsClient) -> int:
        node, address = await locate_agent(client, namespace, args.pod)
        return await _exec(args, namespace, node, address, client.credentials)

    return with_objects_client(args, body)
