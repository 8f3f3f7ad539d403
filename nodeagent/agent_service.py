"""The NodeAgent gRPC service: process logs and usage of this node's pods, signals to
their processes, commands run beside them and attaching to their stdin and output
(``mizzen kill``, ``mizzen exec``, ``mizzen run -i``).

Errors are mapped once, at this boundary: a request naming something this
node has no logs for, or no running pod, is NOT_FOUND with a message naming
the pod and process; malformed input (no pod, negative tail, several
processes and none chosen, an unknown signal, KILL without force, no
command) is INVALID_ARGUMENT naming the field; a process that is not running
or a command that cannot start, or an attach that cannot have the process's
stdin, is FAILED_PRECONDITION; more concurrent execs
than ``max_execs`` is RESOURCE_EXHAUSTED; anything else is INTERNAL and logged.

Signal, Exec and Attach are recorded as Events on the pod (who, which signal or
which argv — never a command's input or output).

A follow stream ends when the client cancels, when the pod's logs are
removed, or when the process restarts into a new instance (like
``kubectl logs -f`` ending with its container).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shlex
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any

import grpc
import structlog

from mizzen.grpc_errors import ErrorMapper
from nodeagent.launch import LaunchError
from nodeagent.logs import (
    DiskLogSource,
    LogNotFound,
    ProcessRequired,
    follow,
    has_newer_instance,
    read_tail,
)
from nodeagent.pod_attach import DEFAULT_WAIT, MAX_WAIT, AttachSession, wait_for_target
from nodeagent.pod_exec import ExecSession
from nodeagent.pod_ops import (
    InvalidRequest,
    NotRunning,
    TargetNotFound,
    caller,
    check_signal,
    find_target,
    parse_signal,
)
from nodeagent.process_stdin import AttachRefused
from nodeagent.stats import UsageSampler
from protos import agent_pb2, agent_pb2_grpc

if TYPE_CHECKING:
    from nodeagent.pod_worker import PodWorker

log = structlog.get_logger(__name__)

_CHUNK = 64 * 1024
DEFAULT_NAMESPACE = "default"


DEFAULT_MAX_EXECS = 16
# Longest argv text in an Event message (the recorder truncates the whole message at 1 KiB).
_ARGV_IN_EVENT = 512


class TooManyExecs(Exception):
    """The agent already runs its maximum of concurrent exec commands."""


def _status_for(exc: Exception) -> tuple[grpc.StatusCode, str] | None:
    if isinstance(exc, ProcessRequired | InvalidRequest):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, LogNotFound):
        return grpc.StatusCode.NOT_FOUND, exc.message
    if isinstance(exc, TargetNotFound):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, NotRunning | AttachRefused):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    if isinstance(exc, LaunchError):
        return grpc.StatusCode.FAILED_PRECONDITION, f"exec: {exc}"
    if isinstance(exc, TooManyExecs):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    return None


_errors = ErrorMapper(_status_for, log=log, internal_prefix="mizzen agent")
_unary_errors = _errors.unary
_stream_errors = _errors.stream


async def _chunks(path: str) -> AsyncIterator[bytes]:
    """The file's bytes in 64 KiB pieces, read off the event loop; missing is empty."""
    try:
        f = await asyncio.to_thread(open, path, "rb")
    except FileNotFoundError:
        return
    with f:
        while data := await asyncio.to_thread(f.read, _CHUNK):
            yield data


class NodeAgentService(agent_pb2_grpc.NodeAgentServicer):
    """Serves logs from disk (DiskLogSource) and the latest UsageSampler rates."""

    def __init__(
        self,
        logs: DiskLogSource,
        sampler: UsageSampler,
        *,
        poll: float = 0.2,
        workers: Callable[[], Iterable[PodWorker]] = tuple,
        max_execs: int = DEFAULT_MAX_EXECS,
    ) -> None:
        self._logs = logs
        self._sampler = sampler
        self._poll = poll
        self._workers = workers
        self._max_execs = max_execs
        self.execs = 0

    @_stream_errors
    async def Logs(
        self, request: agent_pb2.LogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.LogChunk]:
        if not request.pod:
            raise InvalidRequest("pod: required")
        if request.HasField("tail_lines") and request.tail_lines < 0:
            raise InvalidRequest(f"tail_lines: must be >= 0, got {request.tail_lines}")
        namespace = request.namespace or DEFAULT_NAMESPACE
        paths = await asyncio.to_thread(
            self._logs.instance_files,
            namespace,
            request.pod,
            request.process or None,
            request.previous,
        )
        log.debug("logs_request", pod=f"{namespace}/{request.pod}", files=len(paths))
        offset = 0
        if request.HasField("tail_lines"):
            data, offset = await asyncio.to_thread(read_tail, paths, request.tail_lines)
            for i in range(0, len(data), _CHUNK):
                yield agent_pb2.LogChunk(data=data[i : i + _CHUNK])
        else:
            for i, path in enumerate(paths):
                read = 0
                async for data in _chunks(path):
                    read += len(data)
                    yield agent_pb2.LogChunk(data=data)
                if i == len(paths) - 1:
                    offset = read
        if not request.follow or request.previous or not paths:
            return
        current = paths[-1]
        restarted = functools.partial(has_newer_instance, current)
        stream = follow(current, start_offset=offset, poll=self._poll, stop_when=restarted)
        async with contextlib.aclosing(stream):
            async for data in stream:
                for i in range(0, len(data), _CHUNK):
                    yield agent_pb2.LogChunk(data=data[i : i + _CHUNK])

    @_unary_errors
    async def Stats(
        self, request: agent_pb2.StatsRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.StatsResponse:
        node = self._sampler.node()
        response = agent_pb2.StatsResponse(
            node=agent_pb2.NodeUsageStats(
                cpu_millis=node.cpu_millis,
                memory_bytes=node.memory_bytes,
                memory_total_bytes=node.memory_total,
                cpu_capacity_millis=node.cpu_capacity_millis,
            )
        )
        for pod in self._sampler.pods():
            if request.namespace and pod.namespace != request.namespace:
                continue
            response.pods.append(
                agent_pb2.PodUsageStats(
                    namespace=pod.namespace,
                    name=pod.name,
                    uid=pod.uid,
                    cpu_millis=pod.cpu_millis,
                    memory_bytes=pod.memory_bytes,
                    processes=[
                        agent_pb2.ProcessUsageStats(
                            name=p.name, cpu_millis=p.cpu_millis, memory_bytes=p.memory_bytes
                        )
                        for p in pod.processes
                    ],
                )
            )
        sampled_at = self._sampler.sampled_at
        if sampled_at is not None:
            response.timestamp.FromNanoseconds(int(sampled_at * 1e9))
        return response

    @_unary_errors
    async def Signal(
        self, request: agent_pb2.SignalRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.SignalResponse:
        if not request.pod:
            raise InvalidRequest("pod: required")
        sig = parse_signal(request.signal)
        check_signal(sig, request.force)
        namespace = request.namespace or DEFAULT_NAMESPACE
        target = find_target(self._workers(), namespace, request.pod, request.process)
        name, pid, who = target.supervisor.name, target.run.pid, caller()
        if not target.run.signal_group(sig):
            raise NotRunning(f'process "{name}" of pod "{target.pod}" is not running')
        log.info("process_signalled", pod=target.pod, process=name, signal=sig.name, by=who)
        target.worker.ctx.event(
            "Normal", "Signal", f"{who} sent {sig.name} to process {name} (process group {pid})"
        )
        return agent_pb2.SignalResponse(process=name, signal=sig.name, number=int(sig), pgid=pid)

    @_stream_errors
    async def Exec(
        self, requests: AsyncIterator[agent_pb2.ExecRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.ExecResponse]:
        start = await _first_start(requests)
        if not start.command or not start.command[0]:
            raise InvalidRequest("start.command: required")
        namespace = start.namespace or DEFAULT_NAMESPACE
        target = find_target(self._workers(), namespace, start.pod, start.process)
        if self.execs >= self._max_execs:
            raise TooManyExecs(
                f"exec: this agent already runs {self.execs} commands (at most {self._max_execs}"
                " at once, --max-execs); try again later"
            )
        self.execs += 1
        try:
            name, who = target.supervisor.name, caller()
            argv = shlex.join(start.command)
            if len(argv) > _ARGV_IN_EVENT:
                argv = argv[:_ARGV_IN_EVENT] + "..."
            log.info("exec_started", pod=target.pod, process=name, by=who, tty=start.tty)
            target.worker.ctx.event("Normal", "Exec", f"{who} ran in process {name}: {argv}")
            spec = target.supervisor.launch_spec(target.run.cgroup)
            spawning = asyncio.ensure_future(
                asyncio.to_thread(
                    ExecSession.spawn,
                    spec,
                    target.run.cgroup,
                    list(start.command),
                    stdin=start.stdin,
                    tty=start.tty,
                    size=start.size if start.HasField("size") else None,
                )
            )
            try:
                session = await asyncio.shield(spawning)
            except asyncio.CancelledError:
                # The client left while the command was being spawned: do not leave it behind.
                with contextlib.suppress(LaunchError):
                    (await spawning).close()
                raise
            code = None
            async with contextlib.aclosing(session.stream(requests)) as stream:
                async for item in stream:
                    if item.HasField("exit"):
                        code = item.exit.code
                    yield item
            log.info("exec_finished", pod=target.pod, process=name, exit_code=code)
        finally:
            self.execs -= 1

    @_stream_errors
    async def Attach(
        self, requests: AsyncIterator[agent_pb2.AttachRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.ExecResponse]:
        start = await _first_start(requests)
        if start.wait_seconds > MAX_WAIT:
            raise InvalidRequest(
                f"start.wait_seconds: at most {MAX_WAIT}, got {start.wait_seconds}"
            )
        namespace = start.namespace or DEFAULT_NAMESPACE
        wait = float(start.wait_seconds) if start.wait_seconds else DEFAULT_WAIT
        target = await wait_for_target(self._workers, namespace, start.pod, start.process, wait)
        who = caller()
        session = AttachSession(target, start, who)  # claims the stdin (or refuses)
        name = target.supervisor.name
        log.info("attached", pod=target.pod, process=name, by=who, stdin=start.stdin)
        what = " with stdin" if start.stdin else ""
        target.worker.ctx.event("Normal", "Attached", f"{who} attached to process {name}{what}")
        code = None
        async with contextlib.aclosing(session.stream(requests)) as stream:
            async for item in stream:
                if item.HasField("exit"):
                    code = item.exit.code
                yield item
        log.info("attach_finished", pod=target.pod, process=name, exit_code=code)


async def _first_start(requests: AsyncIterator[Any]) -> Any:
    """The ``start`` of an Exec or Attach stream: its first message, naming a pod."""
    first = await anext(requests, None)
    if first is None or first.WhichOneof("kind") != "start":
        raise InvalidRequest("start: the first message must be start")
    if not first.start.pod:
        raise InvalidRequest("start.pod: required")
    return first.start
