"""A simulated node agent (and, optionally, scheduler) for controller integration tests.

    async with SimAgent(client, namespace="t1") as agent:
        ...   # pods of namespace t1 get bound, Running and Ready

It watches pods (one namespace or all) through an Informer and, per pod:

* unbound and ``bind`` → sets ``spec.node_name = node`` (conditional update,
  re-read on conflict), as a scheduler would;
* bound to one of ``nodes`` (default: just ``node``) and not ready → after
  ``ready_after`` seconds sets phase Running, PodScheduled and Ready True,
  start_time and process statuses; or phase Succeeded when ``succeed(pod)``
  says so (for Job tests);
* terminating (deletion_timestamp) → deletes it with grace 0 after
  ``stop_delay`` seconds, as an agent does once the processes stopped.

Everything it does runs in one task owned by the context manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import structlog

from controllers.workqueue import QueueShutDown, RateLimitedQueue
from mizzen.api.pods import has_ended
from mizzen.client import Informer, ObjectsClient
from mizzen.client.errors import ConflictError, NotFoundError, StoreClientError
from protos import objects_pb2 as pb

log = structlog.get_logger(__name__)


class SimAgent:
    def __init__(
        self,
        client: ObjectsClient,
        namespace: str = "",
        *,
        node: str = "sim-node",
        nodes: tuple[str, ...] | None = None,
        bind: bool = True,
        ready_after: float = 0.0,
        stop_delay: float = 0.0,
        succeed: Callable[[pb.Pod], bool] | None = None,
    ) -> None:
        self.client = client
        self.node = node
        self.nodes = set(nodes) if nodes is not None else {node}
        self.bind = bind
        self.ready_after = ready_after
        self.stop_delay = stop_delay
        self.succeed = succeed
        self.informer = Informer(client, "pods", namespace=namespace)
        self.queue = RateLimitedQueue(base_delay=0.05, max_delay=1.0)
        self._seen_at: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self.started = 0
        self.finished = 0

    async def __aenter__(self) -> SimAgent:
        self.informer.on_add(self._enqueue)
        self.informer.on_update(lambda old, new: self._enqueue(new))
        self._task = asyncio.create_task(self._run(), name="sim-agent")
        await asyncio.wait_for(self.informer.has_synced.wait(), 10)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        self.queue.shutdown()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _enqueue(self, pod: pb.Pod) -> None:
        self.queue.add(f"{pod.metadata.namespace}/{pod.metadata.name}")

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.informer.run())
            for _ in range(4):
                tg.create_task(self._worker())

    async def _worker(self) -> None:
        while True:
            try:
                key = await self.queue.get()
            except QueueShutDown:
                return
            try:
                delay = await self._handle(key)
            except (ConflictError, NotFoundError):
                delay = 0.05
            except StoreClientError as err:
                log.warning("sim_agent_error", key=key, error=str(err))
                delay = 0.2
            finally:
                self.queue.done(key)
            if delay is not None:
                self.queue.add_after(key, delay)

    async def _handle(self, key: str) -> float | None:
        """Do what is due for the pod; seconds until it should be looked at again, or None."""
        namespace, _, name = key.partition("/")
        pod: Any = self.informer.get(namespace, name)
        if pod is None:
            self._seen_at.pop(key, None)
            return None
        now = time.monotonic()
        if pod.metadata.HasField("deletion_timestamp"):
            if pod.spec.node_name and pod.spec.node_name not in self.nodes:
                return None
            wait = self._seen_at.setdefault(key, now) + self.stop_delay - now
            if wait > 0:
                return wait
            await self.client.delete("pods", name, namespace, grace_period_seconds=0)
            self.finished += 1
            self._seen_at.pop(key, None)
            return None
        if not pod.spec.node_name:
            if not self.bind:
                return None
            fresh = await self.client.get("pods", name, namespace)
            if fresh.spec.node_name or fresh.metadata.HasField("deletion_timestamp"):
                return None
            fresh.spec.node_name = self.node
            await self.client.update(fresh)
            return None
        if pod.spec.node_name not in self.nodes or has_ended(pod):
            return None
        if _ready(pod) and not (self.succeed and self.succeed(pod)):
            return None
        wait = self._seen_at.setdefault(key, now) + self.ready_after - now
        if wait > 0:
            return wait
        await self._set_running(pod)
        return None

    async def _set_running(self, pod: pb.Pod) -> None:
        changed = pb.Pod()
        changed.CopyFrom(pod)
        st = changed.status
        done = self.succeed is not None and self.succeed(pod)
        st.phase = "Succeeded" if done else "Running"
        st.host_ip = "127.0.0.1"
        if not st.HasField("start_time"):
            st.start_time.GetCurrentTime()
        del st.conditions[:]
        for kind in ("PodScheduled", "Ready"):
            cond = st.conditions.add(
                type=kind, status="False" if done and kind == "Ready" else "True"
            )
            cond.last_transition_time.GetCurrentTime()
        del st.process_statuses[:]
        for process in changed.spec.processes:
            ps = st.process_statuses.add(name=process.name, ready=not done)
            if done:
                ps.state.terminated.exit_code = 0
                ps.state.terminated.reason = "Completed"
            else:
                ps.state.running.started_at.GetCurrentTime()
        await self.client.update_status(changed)
        self.started += 1


def _ready(pod: pb.Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)
