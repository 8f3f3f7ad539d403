"""The agent's side of dependsOn: processes wait (DependenciesNotReady) until the pod's
condition DependenciesReady is True, then start by themselves; once started they are
never stopped for a dependency; the agent's status writes keep the controller's condition."""

from __future__ import annotations

import asyncio
from pathlib import Path

from test_pod_worker import FakePods, FileDriver, main_status, run_worker, until

from controllers.podutil import mark_condition
from mizzen.api.dependencies import CONDITION, MET, NOT_READY
from nodeagent.logs import PodLogs
from nodeagent.pod_status import ProcessView, Running, compute_status
from nodeagent.pod_worker import PodWorker, WorkerDeps
from nodeagent.state import PodRecord, ProcessRecord, StateDir, read_boot_id
from protos import objects_pb2 as pb


def deps_for(tmp_path: Path, client: FakePods) -> WorkerDeps:
    return WorkerDeps(
        client=client,
        driver=FileDriver(tmp_path / "cg"),
        logs=PodLogs(str(tmp_path / "logs")),
        state=StateDir(tmp_path / "pods"),
        boot_id=read_boot_id(),
        backoff_initial=0.05,
        backoff_cap=0.1,
        logs_linger=0.0,
    )


def waiting_pod(script: str = "exec sleep 30", policy: str = "Always") -> pb.Pod:
    p = pb.Pod(metadata=pb.ObjectMeta(name="api", namespace="default", uid="uid-api"))
    p.spec.restart_policy = policy
    p.spec.termination_grace_period_seconds = 5
    p.spec.processes.add(name="main", command=["/bin/sh", "-c", script])
    p.spec.depends_on.add(service="db")
    return p


def set_condition(client: FakePods, status: str, message: str = "") -> None:
    """The dependencies controller's write: the condition only, on the stored pod."""
    reason = MET if status == "True" else NOT_READY
    mark_condition(client.pod.status.conditions, CONDITION, status, reason, message, 1.0)
    client.bump()


def waiting(client: FakePods) -> tuple[str, str]:
    state = main_status(client).state
    return (state.waiting.reason, state.waiting.message)


def has_condition(pod: pb.PodStatus, status: str) -> bool:
    return any(c.type == CONDITION and c.status == status for c in pod.conditions)


async def test_processes_wait_for_the_condition_and_then_start(tmp_path: Path) -> None:
    pod = waiting_pod()
    client = FakePods(pod)
    worker = PodWorker(pod, deps_for(tmp_path, client))

    async def body() -> None:
        await until(lambda: bool(main_status(client).name), "a first status")
        assert client.pod.status.phase == "Pending"
        assert waiting(client) == (
            "DependenciesNotReady",
            'waiting for the dependencies controller to evaluate: service "db"',
        )
        set_condition(client, "False", 'service "db" has no ready endpoints')
        worker.update(client._copy())
        await until(
            lambda: (
                waiting(client) == ("DependenciesNotReady", 'service "db" has no ready endpoints')
            ),
            "the condition's message",
        )
        assert has_condition(client.pod.status, "False")  # the agent kept it
        await asyncio.sleep(0.2)
        assert main_status(client).pid == 0
        set_condition(client, "True")
        worker.update(client._copy())
        await until(lambda: main_status(client).pid > 0, "started once met")
        assert client.pod.status.phase == "Running"
        assert has_condition(client.pod.status, "True")
        pid = main_status(client).pid
        # the dependency goes away: the running process is left alone
        set_condition(client, "False", 'service "db" has no ready endpoints')
        worker.update(client._copy())
        await asyncio.sleep(0.3)
        assert main_status(client).pid == pid
        assert main_status(client).state.HasField("running")
        assert has_condition(client.pod.status, "False")

    await run_worker(worker, body)


async def test_restarts_do_not_wait_again(tmp_path: Path) -> None:
    pod = waiting_pod("sleep 0.1; exit 1")
    mark_condition(pod.status.conditions, CONDITION, "True", MET, "", 1.0)
    client = FakePods(pod)
    worker = PodWorker(pod, deps_for(tmp_path, client))

    async def body() -> None:
        await until(lambda: main_status(client).restart_count >= 1, "a restart")
        set_condition(client, "False", 'service "db" has no ready endpoints')
        worker.update(client._copy())
        restarts = main_status(client).restart_count
        await until(lambda: main_status(client).restart_count >= restarts + 2, "more restarts")

    await run_worker(worker, body)


async def test_a_pod_without_dependencies_never_waits(tmp_path: Path) -> None:
    pod = waiting_pod()
    del pod.spec.depends_on[:]
    client = FakePods(pod)
    worker = PodWorker(pod, deps_for(tmp_path, client))

    async def body() -> None:
        await until(lambda: main_status(client).pid > 0, "started")

    await run_worker(worker, body)


async def test_a_readopted_pod_is_not_held_back(tmp_path: Path) -> None:
    """A pod whose process ran before the agent restarted starts again at once (its record
    says it had started), whatever the condition says now."""
    pod = waiting_pod("exec sleep 30")
    client = FakePods(pod)
    record = PodRecord(namespace="default", name="api", uid="uid-api")
    record.processes["main"] = ProcessRecord(name="main", pid=999_999_999, started_at=1.0)
    worker = PodWorker(pod, deps_for(tmp_path, client), record)

    async def body() -> None:
        await until(lambda: main_status(client).pid > 0, "started again")

    await run_worker(worker, body)


def test_compute_status_keeps_conditions_the_agent_does_not_own() -> None:
    pod = waiting_pod()
    mark_condition(pod.status.conditions, CONDITION, "True", MET, "", 5.0)
    mark_condition(pod.status.conditions, "PodScheduled", "True", "", "", 4.0)
    view = ProcessView(name="main", state=Running(10.0), ready=True, started_once=True)
    status = compute_status(pod, [view], 20.0)
    types = [c.type for c in status.conditions]
    assert types == ["PodScheduled", "Initialized", "ProcessesReady", "Ready", CONDITION]
    kept = status.conditions[-1]
    assert (kept.status, kept.reason, kept.last_transition_time.seconds) == ("True", MET, 5)
