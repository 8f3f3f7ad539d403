"""`mizzen run`'s pure parts: the command line into a Pod, the exit code, the reasons it gives."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mizzen.cli.errors import UsageError
from mizzen.cli.main import build_parser
from mizzen.cli.run_cmd import PodWatch, build_pod, command_of, exit_code, unscheduled_reason
from mizzen.client.errors import UnavailableError
from protos import objects_pb2 as pb


def pod_of(*words: str) -> pb.Pod:
    args = build_parser("run").parse_args(["run", *words])
    command_of(args)
    return build_pod(args, args.namespace or "default")


def test_options_before_the_double_dash_and_the_command_after_it() -> None:
    pod = pod_of(
        "job1", "--rm", "-n", "batch", "--env", "A=1", "--cpu", "250m", "--memory", "64Mi",
        "--node-selector", "disk=ssd", "--labels", "team=x,tier=y", "--restart", "OnFailure",
        "--", "sh", "-c", "echo --rm -- x",
    )  # fmt: skip
    assert pod.metadata.namespace == "batch"
    assert dict(pod.metadata.labels) == {"run": "job1", "team": "x", "tier": "y"}
    assert pod.spec.restart_policy == "OnFailure"
    assert dict(pod.spec.node_selector) == {"disk": "ssd"}
    (proc,) = pod.spec.processes
    assert (proc.name, list(proc.command), list(proc.args)) == (
        "job1",
        ["sh"],
        ["-c", "echo --rm -- x"],
    )
    assert [(e.name, e.value) for e in proc.env] == [("A", "1")]
    assert proc.resources.requests.cpu_millis == proc.resources.limits.cpu_millis == 250
    assert proc.resources.limits.memory_bytes == 64 * 1024 * 1024
    assert pod_of("x", "--", "true").spec.restart_policy == "Never"


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (("x",), "give the command after --"),
        (("x", "--env", "A", "--", "true"), "--env: expected KEY=VALUE, got 'A'"),
        (("x", "--cpu", "lots", "--", "true"), "--cpu/--memory"),
    ],
)
def test_bad_command_lines_are_usage_errors(words: tuple[str, ...], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        pod_of(*words)


def test_exit_code_is_the_processes_or_128_plus_its_signal() -> None:
    pod = pb.Pod()
    ps = pod.status.process_statuses.add(name="x")
    ps.state.terminated.exit_code = 4
    assert exit_code(pod) == 4
    ps.state.terminated.signal = 15
    assert exit_code(pod) == 143


def test_unscheduled_reason_quotes_the_scheduler() -> None:
    pod = pb.Pod(metadata=pb.ObjectMeta(name="x", namespace="default"))
    assert "no scheduler said why" in unscheduled_reason(pod, 2)
    pod.status.conditions.add(
        type="PodScheduled", status="False", reason="Unschedulable", message="0/1 nodes ..."
    )
    assert unscheduled_reason(pod, 2) == (
        'pod "default/x" was not scheduled within 2s: Unschedulable: 0/1 nodes ...'
    )


async def test_a_failed_watch_ends_the_wait_with_its_error() -> None:
    class Broken:
        async def watch(self, *args: object, **kwargs: object) -> AsyncIterator[tuple[str, Any]]:
            raise UnavailableError("watch: no stream within 30s")
            yield  # an async generator

    watch = PodWatch(pb.Pod(metadata=pb.ObjectMeta(name="x", namespace="default", uid="u")))
    task = asyncio.create_task(watch.run(Broken()))  # type: ignore[arg-type]
    with pytest.raises(UnavailableError, match="no stream"):
        await watch.until(lambda p: bool(p.spec.node_name), None)
    await task
