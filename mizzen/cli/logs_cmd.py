"""`mizzen logs` and `mizzen top`: what the node agents know, reached through the store.

The store says where a pod runs (``spec.node_name``) and where that node's
agent listens (the Node's ``AgentGRPC`` address); the command then talks to
that agent's NodeAgent service directly. Every failure leaves as one readable
line and exit code 1: pod not found, not scheduled yet, node without an agent
address, agent unreachable, no such log. ``top`` never fails for one bad
node: a node whose agent cannot be reached shows ``<unknown>``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from mizzen.api.defaults import DEFAULT_NAMESPACE
from mizzen.api.pods import has_ended
from mizzen.cli import tables
from mizzen.cli.errors import CommandError, UsageError
from mizzen.cli.runner import client_options, with_objects_client
from mizzen.client.errors import NotFoundError
from mizzen.client.objects import ObjectsClient
from mizzen.security.tls import ClientCredentials
from protos import agent_pb2, agent_pb2_grpc

AGENT_ADDRESS_TYPE = "AgentGRPC"
UNKNOWN = "<unknown>"
_MI = 1024 * 1024


def add_logs_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = client_options()

    p = sub.add_parser("logs", parents=[common], help="print the output of a pod's process")
    p.add_argument("pod", metavar="POD")
    p.add_argument("-n", "--namespace", default=None)
    p.add_argument("-p", "--process", default="", help="process name (required if several)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new output")
    p.add_argument(
        "--tail", type=int, default=-1, metavar="N", help="last N lines only (default: all)"
    )
    p.add_argument(
        "--previous", action="store_true", help="output of the previous (crashed) instance"
    )
    p.set_defaults(func=run_logs, client_command=True)

    top = sub.add_parser("top", help="CPU and memory use of nodes or pods")
    top_sub = top.add_subparsers(dest="top_command", required=True)
    p = top_sub.add_parser("nodes", aliases=["node", "no"], parents=[common], help="per node")
    p.set_defaults(func=run_top_nodes, client_command=True)
    p = top_sub.add_parser("pods", aliases=["pod", "po"], parents=[common], help="per pod")
    p.add_argument("-n", "--namespace", default=None)
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("--processes", action="store_true", help="one row per process")
    p.set_defaults(func=run_top_pods, client_command=True)


# ------------------------------------------------------------------ plumbing


def agent_address(node: Any) -> str | None:
    """The node agent's gRPC host:port from Node.status.addresses, or None."""
    for addr in node.status.addresses:
        if addr.type == AGENT_ADDRESS_TYPE and addr.address:
            return str(addr.address)
    return None


def agent_error(err: grpc.aio.AioRpcError, node: str, address: str) -> CommandError:
    code = err.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return CommandError(
            f'cannot reach the agent of node "{node}" at {address} ({err.details() or code.name})'
        )
    return CommandError((err.details() or code.name).removeprefix("mizzen: "))


async def connect_agent(
    address: str, node: str, timeout: float, credentials: ClientCredentials
) -> grpc.aio.Channel:
    channel = credentials.aio_channel(address)
    try:
        async with asyncio.timeout(timeout):
            await channel.channel_ready()
    except TimeoutError:
        await channel.close(None)
        raise CommandError(
            f'cannot reach the agent of node "{node}" at {address} (no answer in {timeout:g}s)'
        ) from None
    return channel


# ------------------------------------------------------------------ logs


def run_logs(args: argparse.Namespace) -> int:
    if args.tail < -1:
        raise UsageError("--tail: expected N >= 0 (or -1 for all)")
    namespace = args.namespace or DEFAULT_NAMESPACE

    async def body(client: ObjectsClient) -> int:
        node_name, address = await locate_agent(client, namespace, args.pod)
        request = agent_pb2.LogsRequest(
            namespace=namespace,
            pod=args.pod,
            process=args.process,
            follow=args.follow,
            previous=args.previous,
        )
        if args.tail >= 0:
            request.tail_lines = args.tail
        await stream_logs(address, node_name, request, args.request_timeout, client.credentials)
        return 0

    return with_objects_client(args, body)


async def locate_agent(client: ObjectsClient, namespace: str, pod_name: str) -> tuple[str, str]:
    """(node name, agent address) of the node a pod (by name) is bound to; CommandError
    saying why there is none."""
    try:
        pod = await client.get("Pod", pod_name, namespace)
    except NotFoundError:
        raise CommandError(f'pods "{pod_name}" not found in namespace "{namespace}"') from None
    return await pod_agent(client, pod)


async def pod_agent(client: ObjectsClient, pod: Any) -> tuple[str, str]:
    """(node name, its agent's host:port) of a pod; CommandError saying why there is none."""
    where = f"{pod.metadata.namespace}/{pod.metadata.name}"
    node_name = str(pod.spec.node_name)
    if not node_name:
        raise CommandError(f'pod "{where}" is not scheduled to a node yet')
    try:
        node = await client.get("Node", node_name)
    except NotFoundError:
        raise CommandError(f'node "{node_name}" of pod "{where}" not found') from None
    address = agent_address(node)
    if address is None:
        raise CommandError(
            f'node "{node_name}" has no {AGENT_ADDRESS_TYPE} address (is its agent running?)'
        )
    return node_name, address


async def stream_logs(
    address: str,
    node: str,
    request: agent_pb2.LogsRequest,
    timeout: float,
    credentials: ClientCredentials,
    *,
    skip: int = 0,
    written: Callable[[int], None] | None = None,
) -> None:
    """Write the output the agent streams for request to stdout, as it comes.

    The first ``skip`` bytes are left out (already shown); ``written(n)`` is
    told of every n bytes written. A reader that went away (`| head`) ends it
    quietly, like cat.
    """
    channel = await connect_agent(address, node, timeout, credentials)
    out = sys.stdout.buffer
    try:
        stub = agent_pb2_grpc.NodeAgentStub(channel)
        async for chunk in stub.Logs(request):
            data = chunk.data
            if skip:
                data, skip = data[skip:], max(0, skip - len(data))
            if not data:
                continue
            out.write(data)
            out.flush()
            if written is not None:
                written(len(data))
    except grpc.aio.AioRpcError as err:
        raise agent_error(err, node, address) from None
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    finally:
        await channel.close(None)


# ------------------------------------------------------------------ top


@dataclass(frozen=True)
class _NodeStats:
    node: Any
    stats: agent_pb2.StatsResponse | None


async def _stats(
    node: Any, namespace: str, timeout: float, credentials: ClientCredentials
) -> _NodeStats:
    address = agent_address(node)
    if address is None:
        return _NodeStats(node, None)
    try:
        async with credentials.aio_channel(address) as channel:
            stub = agent_pb2_grpc.NodeAgentStub(channel)
            response = await stub.Stats(
                agent_pb2.StatsRequest(namespace=namespace), timeout=timeout
            )
    except grpc.aio.AioRpcError:
        return _NodeStats(node, None)
    return _NodeStats(node, response)


def _cpu(millis: int) -> str:
    return f"{millis}m"


def _memory(nbytes: int) -> str:
    return f"{nbytes // _MI}Mi"


def _percent(used: int, total: int) -> str:
    return f"{round(100 * used / total)}%" if total > 0 else UNKNOWN


def _allocatable(node: Any, field: str, reported: int) -> int:
    for source in (node.status.allocatable, node.status.capacity):
        if source.HasField(field) and getattr(source, field) > 0:
            return int(getattr(source, field))
    return reported


def node_rows(results: list[_NodeStats]) -> list[list[str]]:
    """kubectl-like `top nodes` rows, header first, sorted by node name."""
    rows = [["NAME", "CPU(cores)", "CPU%", "MEMORY(bytes)", "MEMORY%"]]
    for r in sorted(results, key=lambda r: str(r.node.metadata.name)):
        name = str(r.node.metadata.name)
        if r.stats is None:
            rows.append([name, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN])
            continue
        n = r.stats.node
        cpu_total = _allocatable(r.node, "cpu_millis", n.cpu_capacity_millis)
        mem_total = _allocatable(r.node, "memory_bytes", n.memory_total_bytes)
        rows.append(
            [
                name,
                _cpu(n.cpu_millis),
                _percent(n.cpu_millis, cpu_total),
                _memory(n.memory_bytes),
                _percent(n.memory_bytes, mem_total),
            ]
        )
    return rows


def run_top_nodes(args: argparse.Namespace) -> int:
    async def body(client: ObjectsClient) -> int:
        nodes = (await client.list("Node")).items
        if not nodes:
            print("No resources found.", file=sys.stderr)
            return 0
        results = await asyncio.gather(
            *(_stats(n, "", args.request_timeout, client.credentials) for n in nodes)
        )
        sys.stdout.write(tables.render(node_rows(list(results))))
        return 0

    return with_objects_client(args, body)


def pod_rows(
    pods: list[Any], results: list[_NodeStats], *, with_namespace: bool, processes: bool
) -> list[list[str]]:
    """kubectl-like `top pods` rows for bound, non-terminal pods; header first."""
    by_uid: dict[str, agent_pb2.PodUsageStats] = {}
    for r in results:
        if r.stats is not None:
            for pod_usage in r.stats.pods:
                by_uid[pod_usage.uid] = pod_usage
    header = ["NAME", "CPU(cores)", "MEMORY(bytes)"]
    if processes:
        header = ["POD", "NAME", "CPU(cores)", "MEMORY(bytes)"]
    rows = [(["NAMESPACE"] if with_namespace else []) + header]
    for pod in sorted(pods, key=lambda p: (p.metadata.namespace, p.metadata.name)):
        lead = [str(pod.metadata.namespace)] if with_namespace else []
        usage = by_uid.get(pod.metadata.uid)
        if not processes:
            if usage is None:
                rows.append([*lead, pod.metadata.name, UNKNOWN, UNKNOWN])
            else:
                cpu, mem = _cpu(usage.cpu_millis), _memory(usage.memory_bytes)
                rows.append([*lead, pod.metadata.name, cpu, mem])
            continue
        measured = {p.name: p for p in usage.processes} if usage is not None else {}
        for proc in pod.spec.processes:
            p = measured.get(proc.name)
            cpu = _cpu(p.cpu_millis) if p is not None else UNKNOWN
            mem = _memory(p.memory_bytes) if p is not None else UNKNOWN
            rows.append([*lead, pod.metadata.name, proc.name, cpu, mem])
    return rows


def run_top_pods(args: argparse.Namespace) -> int:
    if args.all_namespaces and args.namespace:
        raise UsageError("top pods: give either -n NAMESPACE or -A, not both")
    namespace = "" if args.all_namespaces else (args.namespace or DEFAULT_NAMESPACE)

    async def body(client: ObjectsClient) -> int:
        pods = [
            p
            for p in (await client.list("Pod", namespace)).items
            if p.spec.node_name and not has_ended(p)
        ]
        if not pods:
            where = f" in {namespace} namespace" if namespace else ""
            print(f"No resources found{where}.", file=sys.stderr)
            return 0
        node_names = sorted({p.spec.node_name for p in pods})
        nodes = {n.metadata.name: n for n in (await client.list("Node")).items}
        present = [nodes[name] for name in node_names if name in nodes]
        results = await asyncio.gather(
            *(_stats(n, namespace, args.request_timeout, client.credentials) for n in present)
        )
        rows = pod_rows(pods, list(results), with_namespace=not namespace, processes=args.processes)
        sys.stdout.write(tables.render(rows))
        return 0

    return with_objects_client(args, body)
