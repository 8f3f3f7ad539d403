"""`mizzen run NAME [--rm] [-i] -- CMD ARGS...`: a one-off Pod, its output, its exit code.

The command creates a Pod named NAME with one process named NAME
(restartPolicy Never unless ``--restart OnFailure``), then follows it with a
watch (no polling): once the scheduler bound it and the agent started the
process, the process's output is streamed from that node's agent (the Logs
RPC, as ``mizzen logs -f``; a restart under OnFailure follows the next
instance). When the pod ends (Succeeded or Failed) the rest of the output is
read and the command exits with the process's exit code (128 + signal if a
signal ended it); what the agent said beyond the code (StartError, OOMKilled,
a signal) is one line on stderr. A pod not bound within ``--schedule-timeout`` seconds fails
the command with the scheduler's reason (its PodScheduled condition); a bound
pod whose process has not started within ``--pod-running-timeout`` fails with
the process's waiting reason.

``--rm`` deletes the pod afterwards, whatever the outcome: also on Ctrl-C
(SIGINT, exit 130) and SIGTERM (exit 143), after which the command waits until
the store has removed the pod (the agent has stopped its processes).

``-i`` (as ``kubectl run -i``): the process is created with ``stdin: true``
and ``stdinOnce: true``; once it started, the command attaches to it (the
agent's Attach RPC, from the start of the run's output, so nothing written
before is missed), copies its own stdin to it (its end of file closes the
process's stdin), and shows the output as it comes. The exit code and the
rest are as without ``-i``. If the command goes away (Ctrl-C, even SIGKILL),
the call ends and, stdinOnce, the process's stdin is closed.

``-i -t`` (as ``kubectl run -it``): the process also gets ``tty: true``, a
pseudo-terminal held by its agent. When this command's stdin is a terminal,
it is put in raw mode for the attach (every key, ^C and ^D included, goes to
the process's terminal; restored whatever ends the command) and its size is
sent at the start and on each SIGWINCH. The end of this command's input is
^D on the process's terminal. ``-t`` without ``-i`` is a usage error, and
``-t`` whose stdin is not a terminal says so on stderr (kubectl's words) and
goes on without the local terminal's raw mode and size.

One file because it is one command: creating the pod, following it by watch,
streaming its output and exiting with its code are steps of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import functools
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable

import grpc

from mizzen.api import quantity
from mizzen.api.conditions import find_condition
from mizzen.api.defaults import DEFAULT_NAMESPACE
from mizzen.api.pods import has_ended
from mizzen.cli.errors import CommandError, UsageError
from mizzen.cli.logs_cmd import agent_error, connect_agent, pod_agent, stream_logs
from mizzen.cli.runner import client_options, with_objects_client
from mizzen.cli.terminal import NOT_A_TERMINAL, remote_terminal, stdin_is_terminal, window
from mizzen.client.errors import AlreadyExistsError, NotFoundError
from mizzen.client.objects import ObjectsClient
from protos import agent_pb2, agent_pb2_grpc
from protos import objects_pb2 as pb

RUN_LABEL = "run"
DELETE_WAIT = 60.0
"""Seconds --rm waits, beyond the pod's grace period, for the store to remove the pod."""
TTY_NEEDS_STDIN = "-i/--stdin is required for containers with -t/--tty=true"
_READ = 64 * 1024
_STDIN_QUEUE = 16
REFUSED_GRACE = 5.0
"""Seconds a refused attach waits to see the pod end (it ended before the attach) before
the refusal is the command's error."""
_EXIT_ON = {signal.SIGINT: 130, signal.SIGTERM: 143}


def add_run_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        parents=[client_options()],
        help="run a command once in a new pod and show its output",
        description="Create a one-off pod running CMD ARGS, stream its output, exit with its "
        "exit code; --rm deletes the pod afterwards (also on Ctrl-C); -i passes this "
        "command's stdin to it.",
    )
    p.add_argument("name", metavar="NAME", help="the pod's name and its process's")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS...")
    p.add_argument("-n", "--namespace", default=None)
    p.add_argument("--rm", action="store_true", help="delete the pod when it ends or on Ctrl-C")
    p.add_argument(
        "-i",
        "--stdin",
        action="store_true",
        help="pass stdin to the process (stdin: true, stdinOnce: true) and attach to it",
    )
    p.add_argument(
        "-t",
        "--tty",
        action="store_true",
        help="with -i: the process runs on a terminal (tty: true), this terminal in raw mode",
    )
    p.add_argument("--restart", default="Never", choices=["Never", "OnFailure"])
    p.add_argument("--env", action="append", default=[], metavar="K=V")
    p.add_argument("--cpu", default="", metavar="Q", help="CPU request and limit, e.g. 500m")
    p.add_argument("--memory", default="", metavar="Q", help="memory request and limit")
    p.add_argument("--node-selector", action="append", default=[], metavar="k=v")
    p.add_argument("--labels", action="append", default=[], metavar="k=v[,k=v]")
    p.add_argument(
        "--schedule-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds the pod may stay unscheduled before the command fails (default 10)",
    )
    p.add_argument(
        "--pod-running-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds a scheduled pod may take to start its process (default 60)",
    )
    p.set_defaults(func=run_run, client_command=True, run_parser=p)


# ------------------------------------------------------------------ the pod


def _pairs(values: list[str], flag: str, *, split_commas: bool = False) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        for item in value.split(",") if split_commas else [value]:
            key, sep, val = item.partition("=")
            if not sep or not key:
                raise UsageError(f"{flag}: expected KEY=VALUE, got {item!r}")
            out[key] = val
    return out


def command_of(args: argparse.Namespace) -> list[str]:
    """CMD ARGS: what follows "--"; options between NAME and "--" are parsed into args.

    argparse stops at NAME (the command's own words may look like options), so
    ``run NAME --rm -- CMD`` leaves "--rm --" to parse here. Without "--",
    everything after NAME is the command.
    """
    words = list(args.argv)
    if getattr(args, "command_parsed", False) or "--" not in words:
        return words
    args.command_parsed = True
    cut = words.index("--")
    options, command = words[:cut], words[cut + 1 :]
    if options:
        parser: argparse.ArgumentParser = args.run_parser
        parser.parse_args([*options, args.name], namespace=args)
    args.argv = command
    return command


def build_pod(args: argparse.Namespace, namespace: str) -> pb.Pod:
    """The Pod of a `mizzen run` command line (validated by the store, not here)."""
    argv = command_of(args)
    if not argv:
        raise UsageError("run: give the command after --, e.g. mizzen run NAME -- echo hi")
    pod = pb.Pod()
    pod.metadata.name = args.name
    pod.metadata.namespace = namespace
    pod.metadata.labels[RUN_LABEL] = args.name
    pod.metadata.labels.update(_pairs(args.labels, "--labels", split_commas=True))
    pod.spec.restart_policy = args.restart
    pod.spec.node_selector.update(_pairs(args.node_selector, "--node-selector"))
    proc = pod.spec.processes.add(name=args.name, command=argv[:1], args=argv[1:])
    if args.stdin:
        proc.stdin = True
        proc.stdin_once = True
        proc.tty = bool(args.tty)
    for key, value in _pairs(args.env, "--env").items():
        proc.env.add(name=key, value=value)
    try:
        if args.cpu:
            millis = quantity.parse_cpu(args.cpu)
            proc.resources.requests.cpu_millis = millis
            proc.resources.limits.cpu_millis = millis
        if args.memory:
            nbytes = quantity.parse_memory(args.memory)
            proc.resources.requests.memory_bytes = nbytes
            proc.resources.limits.memory_bytes = nbytes
    except ValueError as err:
        raise UsageError(f"--cpu/--memory: {err}") from None
    return pod


def unscheduled_reason(pod: pb.Pod, waited: float) -> str:
    """Why pod is not bound, from the scheduler's PodScheduled condition."""
    where = f'pod "{pod.metadata.namespace}/{pod.metadata.name}"'
    cond = find_condition(pod.status.conditions, "PodScheduled")
    if cond is not None and cond.status == "False":
        why = f"{cond.reason}: {cond.message}" if cond.message else cond.reason
        return f"{where} was not scheduled within {waited:g}s: {why}"
    return (
        f"{where} was not scheduled within {waited:g}s and no scheduler said why "
        f"(is `mizzen controllers` running?)"
    )


def started(pod: pb.Pod) -> bool:
    """Whether the process ever ran (running, ended, or restarted)."""
    return any(
        ps.state.HasField("running") or ps.state.HasField("terminated") or ps.restart_count
        for ps in pod.status.process_statuses
    )


def not_started_reason(pod: pb.Pod, waited: float) -> str:
    where = f'pod "{pod.metadata.namespace}/{pod.metadata.name}"'
    for ps in pod.status.process_statuses:
        if ps.state.HasField("waiting"):
            w = ps.state.waiting
            why = f"{w.reason}: {w.message}" if w.message else w.reason
            return f"{where} did not start within {waited:g}s: {why}"
    return f'{where} did not start within {waited:g}s on node "{pod.spec.node_name}"'


def ended_note(pod: pb.Pod) -> str:
    """Why the process ended, when the agent said more than its exit code (it could not
    start, the OOM killer, a signal); "" for a plain exit."""
    for ps in pod.status.process_statuses:
        t = ps.state.terminated
        if ps.state.HasField("terminated") and t.message:
            where = f'pod "{pod.metadata.namespace}/{pod.metadata.name}"'
            return f"{where}: process {ps.name}: {t.reason}: {t.message}"
    return ""


def exit_code(pod: pb.Pod) -> int:
    """The process's exit code (128 + signal when a signal ended it); 1 if unknown."""
    for ps in pod.status.process_statuses:
        if ps.state.HasField("terminated"):
            t = ps.state.terminated
            return 128 + t.signal if t.signal else int(t.exit_code)
    return 0 if pod.status.phase == "Succeeded" else 1


# ------------------------------------------------------------------ following it


class PodWatch:
    """The pod as last seen through a watch; ``until`` waits for a predicate."""

    def __init__(self, pod: pb.Pod) -> None:
        self.pod = pod
        self.deleted = False
        self.error: BaseException | None = None  # the watch failed: until() raises it
        self._changed = asyncio.Event()

    async def run(self, client: ObjectsClient) -> None:
        meta = self.pod.metadata
        try:
            async for kind, obj in client.watch(
                "Pod",
                meta.namespace,
                field_selector=f"metadata.name={meta.name}",
                resource_version=meta.resource_version,
                resume_timeout=30.0,
            ):
                if kind == "BOOKMARK" or obj.metadata.uid != meta.uid:
                    continue
                self.pod = obj
                self.deleted = kind == "DELETED"
                self._changed.set()
                if self.deleted:
                    return
        except Exception as err:  # handed to the waiter, raised there
            self.error = err
            self._changed.set()

    async def until(self, check: Callable[[pb.Pod], bool], timeout: float | None) -> bool:
        """True once check(pod) (or the pod is deleted), False at the timeout."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not (self.deleted or check(self.pod)):
            if self.error is not None:
                raise self.error
            self._changed.clear()
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            try:
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
            except TimeoutError:
                return check(self.pod)
        return True


class Output:
    """The process's output from its agent: followed while it runs, the rest read at the end."""

    def __init__(self, client: ObjectsClient, pod: pb.Pod, timeout: float) -> None:
        self.client = client
        self.namespace = str(pod.metadata.namespace)
        self.name = str(pod.metadata.name)
        self.process = str(pod.spec.processes[0].name)
        self.timeout = timeout
        self.shown = 0  # bytes of the instance being followed
        self.instance = -1
        self.agent: tuple[str, str] | None = None

    def _count(self, n: int) -> None:
        self.shown += n

    async def _stream(self, follow: bool) -> None:
        if self.agent is None:
            pod = await self.client.get("Pod", self.name, self.namespace)
            self.agent = await pod_agent(self.client, pod)
        node, address = self.agent
        request = agent_pb2.LogsRequest(
            namespace=self.namespace, pod=self.name, process=self.process, follow=follow
        )
        skip, self.shown = self.shown, 0
        try:
            await stream_logs(
                address,
                node,
                request,
                self.timeout,
                self.client.credentials,
                skip=skip,
                written=self._count,
            )
        finally:  # also when cancelled (the pod ended): rest() goes on from here
            self.shown += skip

    async def follow(self, watch: PodWatch) -> None:
        """Follow each instance in turn until cancelled (a restart ends a follow)."""
        while True:
            restarts = _restarts(watch.pod)
            if restarts != self.instance:
                self.instance, self.shown = restarts, 0
            await self._stream(follow=True)
            # The instance ended: wait for the next one (or for cancellation).
            await watch.until(functools.partial(_restarted_since, restarts), None)

    async def rest(self, pod: pb.Pod) -> None:
        """What the last instance wrote that has not been shown yet."""
        restarts = _restarts(pod)
        if restarts != self.instance:
            self.instance, self.shown = restarts, 0
        await self._stream(follow=False)


def _restarts(pod: pb.Pod) -> int:
    return max((ps.restart_count for ps in pod.status.process_statuses), default=0)


def _restarted_since(restarts: int, pod: pb.Pod) -> bool:
    return _restarts(pod) > restarts


def _read_stdin(
    loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[agent_pb2.AttachRequest]
) -> None:
    """Thread body: copy this command's stdin into queue, then stdin_close (a daemon
    thread: a terminal that never ends does not keep the command alive)."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):  # no stdin at all: its end, at once
        fd = -1
    while True:
        try:
            data = os.read(fd, _READ) if fd >= 0 else b""
        except OSError:
            data = b""
        request = (
            agent_pb2.AttachRequest(stdin=data)
            if data
            else agent_pb2.AttachRequest(stdin_close=True)
        )
        try:
            asyncio.run_coroutine_threadsafe(queue.put(request), loop).result()
        except (RuntimeError, concurrent.futures.CancelledError):  # the loop is gone
            return
        if not data:
            return


async def attach(
    client: ObjectsClient, output: Output, watch: PodWatch, args: argparse.Namespace
) -> None:
    """Attach to the started process: this command's stdin to it, its output (from the
    run's start) to stdout, until it exits. A refusal because the process ended before
    the attach is not an error (the rest of the output is read as without -i)."""
    pod = watch.pod
    if output.agent is None:
        output.agent = await pod_agent(client, pod)
    node, address = output.agent
    output.instance, output.shown = _restarts(pod), 0
    start = agent_pb2.AttachStart(
        namespace=output.namespace,
        pod=output.name,
        process=output.process,
        stdin=True,
        from_start=True,
        wait_seconds=max(1, min(300, int(args.pod_running_timeout))),
    )
    loop = asyncio.get_running_loop()
    outgoing: asyncio.Queue[agent_pb2.AttachRequest] = asyncio.Queue(_STDIN_QUEUE)

    async def requests() -> AsyncIterator[agent_pb2.AttachRequest]:
        yield agent_pb2.AttachRequest(start=start)
        while True:
            yield await outgoing.get()

    def resize(size: agent_pb2.WindowSize) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # the next resize brings it up to date
            outgoing.put_nowait(agent_pb2.AttachRequest(resize=size))

    local_terminal = bool(args.tty) and stdin_is_terminal()
    terminal: contextlib.AbstractContextManager[None] = (
        remote_terminal(resize, raw=True) if local_terminal else contextlib.nullcontext()
    )
    if local_terminal:
        size = window()
        if size is not None:
            resize(size)
    channel = await connect_agent(address, node, args.request_timeout, client.credentials)
    out = sys.stdout.buffer
    try:
        threading.Thread(target=_read_stdin, args=(loop, outgoing), daemon=True).start()
        with terminal:
            call = agent_pb2_grpc.NodeAgentStub(channel).Attach(requests())
            async for response in call:
                kind = response.WhichOneof("kind")
                if kind == "stdout":
                    with contextlib.suppress(BrokenPipeError):
                        out.write(response.stdout)
                        out.flush()
                    output.shown += len(response.stdout)
                elif kind == "exit":
                    call.cancel()  # the last message; stdin may still be flowing
                    break
    except grpc.aio.AioRpcError as err:
        if err.code() != grpc.StatusCode.FAILED_PRECONDITION or not await watch.until(
            has_ended, REFUSED_GRACE
        ):
            raise agent_error(err, node, address) from None
    finally:
        await channel.close(None)


async def follow_pod(client: ObjectsClient, pod: pb.Pod, args: argparse.Namespace) -> int:
    """Wait for pod to be scheduled and started, show its output, return its exit code."""
    watch = PodWatch(pod)
    watcher = asyncio.create_task(watch.run(client))
    follower: asyncio.Task[None] | None = None
    try:
        if not await watch.until(lambda p: bool(p.spec.node_name), args.schedule_timeout):
            raise CommandError(unscheduled_reason(watch.pod, args.schedule_timeout))
        running = lambda p: started(p) or has_ended(p)  # noqa: E731
        if not await watch.until(running, args.pod_running_timeout):
            raise CommandError(not_started_reason(watch.pod, args.pod_running_timeout))
        output = Output(client, watch.pod, args.request_timeout)
        if args.stdin and not has_ended(watch.pod) and not watch.deleted:
            await attach(client, output, watch, args)
        if not has_ended(watch.pod) and not watch.deleted:
            follower = asyncio.create_task(output.follow(watch))
            ended = asyncio.create_task(watch.until(lambda p: has_ended(p), None))
            await asyncio.wait({follower, ended}, return_when=asyncio.FIRST_COMPLETED)
            if follower.done():
                ended.cancel()
                follower.result()  # raises the agent's error
            follower.cancel()
            # the pod ended: how the follow stopped does not matter, rest() reads the rest
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await follower
        if watch.deleted:
            raise CommandError(f'pod "{pod.metadata.namespace}/{pod.metadata.name}" was deleted')
        await output.rest(watch.pod)
        note = ended_note(watch.pod)
        if note:
            sys.stdout.flush()
            print(f"mizzen: {note}", file=sys.stderr, flush=True)
        return exit_code(watch.pod)
    finally:
        for task in (watcher, follower):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


async def delete_and_wait(client: ObjectsClient, pod: pb.Pod) -> None:
    """Delete pod and wait (watch) until the store has removed it."""
    ns, name = str(pod.metadata.namespace), str(pod.metadata.name)
    try:
        stored, gone = await client.delete("Pod", name, ns)
    except NotFoundError:
        return
    if gone:
        return
    grace = stored.metadata.deletion_grace_period_seconds or 0
    watch = PodWatch(stored)
    watcher = asyncio.create_task(watch.run(client))
    try:
        if not await watch.until(lambda p: False, grace + DELETE_WAIT):
            raise CommandError(f'pod "{ns}/{name}" is still being deleted')
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher


# ------------------------------------------------------------------ the command


def run_run(args: argparse.Namespace) -> int:
    command_of(args)  # options given after NAME, before "--"
    if args.tty and not args.stdin:
        raise UsageError(TTY_NEEDS_STDIN)
    if args.tty and not stdin_is_terminal():
        print(NOT_A_TERMINAL, file=sys.stderr, flush=True)
    namespace = args.namespace or DEFAULT_NAMESPACE
    pod = build_pod(args, namespace)

    async def body(client: ObjectsClient) -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        received: list[int] = []

        created: pb.Pod | None = None

        def interrupt(sig: int) -> None:
            # While the pod is being created the signal is only noted (acted on right
            # after), so that a pod created meanwhile is still removed with --rm.
            if not received:
                received.append(sig)
                if created is not None:
                    task.cancel()

        for sig in _EXIT_ON:
            loop.add_signal_handler(sig, interrupt, sig)
        try:
            try:
                created = await client.create(pod)
            except AlreadyExistsError:
                raise CommandError(
                    f'pods "{args.name}" already exists in namespace "{namespace}"'
                ) from None
            if received:
                return _EXIT_ON[signal.Signals(received[0])]
            return await follow_pod(client, created, args)
        except asyncio.CancelledError:
            if not received:
                raise
            task.uncancel()
            return _EXIT_ON[signal.Signals(received[0])]
        finally:
            if args.rm and created is not None:
                # Further signals must not cut the cleanup short.
                await asyncio.shield(delete_and_wait(client, created))
            for sig in _EXIT_ON:
                loop.remove_signal_handler(sig)

    code = with_objects_client(args, body)
    sys.stdout.flush()
    return code


__all__ = ["add_run_parser", "build_pod", "exit_code", "unscheduled_reason"]
