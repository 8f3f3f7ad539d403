"""The NodeAgent gRPC service: process logs and usage of this node's pods.

Errors are mapped once, at this boundary: a request naming something this
node has no logs for is NOT_FOUND with a message naming the pod and process;
malformed input (no pod, negative tail, several processes and none chosen)
is INVALID_ARGUMENT; anything else is INTERNAL and logged.

A follow stream ends when the client cancels, when the pod's logs are
removed, or when the process restarts into a new instance (like
``kubectl logs -f`` ending with its container).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator

import grpc
import structlog

from mizzen.grpc_errors import ErrorMapper
from nodeagent.logs import (
    DiskLogSource,
    LogNotFound,
    ProcessRequired,
    follow,
    has_newer_instance,
    read_tail,
)
from nodeagent.stats import UsageSampler
from protos import agent_pb2, agent_pb2_grpc

log = structlog.get_logger(__name__)

_CHUNK = 64 * 1024
DEFAULT_NAMESPACE = "default"


class InvalidRequest(Exception):
    """The request itself is malformed; the message names the field."""


def _status_for(exc: Exception) -> tuple[grpc.StatusCode, str] | None:
    if isinstance(exc, ProcessRequired | InvalidRequest):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, LogNotFound):
        return grpc.StatusCode.NOT_FOUND, exc.message
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

    def __init__(self, logs: DiskLogSource, sampler: UsageSampler, *, poll: float = 0.2) -> None:
        self._logs = logs
        self._sampler = sampler
        self._poll = poll

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
