"""One pod on this node, from first start to final cleanup: one asyncio task per pod.

The worker owns the pod's cgroup (``pod-<uid>``), one ``ProcessSupervisor``
per process, the pod's local record (for re-adoption) and its status in the
store. Guarantees:

* status is written only when ``compute_status`` yields something different
  (read-modify-write on resource_version; on conflict it re-reads and retries),
  and not before every process's first start attempt has an outcome, so a pod
  start is one status write;
* the blocking work of a start (cgroups, spawning) runs on ``WorkerDeps.start_pool``;
* termination (deletion timestamp, or the pod vanished from the store) sends
  SIGTERM to every process group, waits the grace period, then kills the whole
  pod cgroup — nothing started by the pod survives — removes the cgroups and
  the record, and finishes the deletion in the store (NotFound is fine);
* cancelling ``run`` (the agent shutting down) leaves the processes running
  and the record on disk: the next agent re-adopts them.

One file because it is one pod's lifecycle, from first start to final cleanup:
the cgroup, the supervisors, the local record and the status writes happen in
an order that only makes sense read together.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from mizzen.api.pods import has_ended
from mizzen.client.errors import ConflictError, NotFoundError, StoreClientError
from nodeagent.cgroups.base import Cgroup, CgroupDriver, CgroupError
from nodeagent.config_objects import ConfigObjects
from nodeagent.dependencies import DependencyGate
from nodeagent.host_ports import PORT_IN_USE, port_env, ports_in_use
from nodeagent.logs import PodLogs
from nodeagent.pod_config import PodConfig, PodPaths, run_as_of
from nodeagent.pod_status import Waiting, compute_status, status_differs
from nodeagent.services import PodServices, ServiceDirectory
from nodeagent.state import PodRecord, ProcessRecord, StateDir
from nodeagent.supervisor import PodContext, ProcessSupervisor
from protos import objects_pb2 as pb

log = structlog.get_logger(__name__)

STATUS_ATTEMPTS = 5
# The status is recomputed when something the agent observes changes, and when the
# store's copy stops matching the last one the agent wrote or confirmed (someone
# else wrote it); this period is only a backstop.
STATUS_RESYNC = 60.0


class EventSink(Protocol):
    def record(self, obj: Any, type: str, reason: str, message: str) -> None: ...


@dataclass
class WorkerDeps:
    client: Any  # ObjectsClient (or a fake with get/update_status/delete)
    driver: CgroupDriver
    logs: PodLogs
    state: StateDir
    boot_id: str
    host_ip: str = ""
    backoff_initial: float = 1.0
    backoff_cap: float = 60.0
    logs_linger: float = 60.0
    events: EventSink | None = None
    # Runs the blocking part of pod starts (a small bounded pool); None: the loop's default.
    start_pool: Executor | None = None
    # The node's followed ConfigMaps and Secrets; None: references cannot be resolved.
    config_objects: ConfigObjects | None = None
    # Pod directories and volumes; None: no MIZZEN_POD_DIR and no volume mounts.
    pod_paths: PodPaths | None = None
    # The Services of the pods' namespaces (discovery variables and files); None: none.
    services: ServiceDirectory | None = None


def _rv(pod: pb.Pod) -> int:
    rv = pod.metadata.resource_version
    return int(rv) if rv.isdigit() else 0


class PodWorker:
    def __init__(self, pod: pb.Pod, deps: WorkerDeps, record: PodRecord | None = None) -> None:
        self.pod = pod
        self.deps = deps
        self.uid = pod.metadata.uid
        self._log = log.bind(pod=f"{pod.metadata.namespace}/{pod.metadata.name}", uid=self.uid)
        self._terminate = asyncio.Event()
        self._changed = asyncio.Event()
        # The pod status last written or found up to date: another status means someone
        # else wrote it, and the agent must recompute its own.
        self._synced_status = pod.status
        self._gone = False
        # A pod that finished before this agent knew it (no record): leave it alone.
        self.passive = record is None and has_ended(pod)
        self._readopting = record is not None
        self.record = record or PodRecord(
            namespace=pod.metadata.namespace, name=pod.metadata.name, uid=self.uid
        )
        self.record.grace_seconds = int(pod.spec.termination_grace_period_seconds)
        self.ctx = PodContext(
            namespace=pod.metadata.namespace,
            pod=pod.metadata.name,
            uid=self.uid,
            restart_policy=pod.spec.restart_policy or "Always",
            driver=deps.driver,
            logs=deps.logs,
            boot_id=deps.boot_id,
            save=self._save,
            changed=self._changed.set,
            grace=self._grace,
            backoff_initial=deps.backoff_initial,
            backoff_cap=deps.backoff_cap,
            event=self._event,
            start_pool=deps.start_pool,
            port_env=port_env(pod.spec),
        )
        self.config = PodConfig(
            pod,
            deps.config_objects,
            deps.pod_paths,
            event=self._event,
            annotations=lambda: self.pod.metadata.annotations,
            send_signal=self._send_signal,
            executor=deps.start_pool,
        )
        self.ctx.config = self.config
        self.services = PodServices(deps.services, pod)
        self.ctx.services = self.services
        self.supervisors: list[ProcessSupervisor] = []
        for spec in pod.spec.processes:
            rec = self.record.processes.setdefault(spec.name, ProcessRecord(name=spec.name))
            self.supervisors.append(ProcessSupervisor(self.ctx, spec, rec))
        started = any(s.started_once for s in self.supervisors)
        self.dependencies = DependencyGate(pod, started=started)
        self.ctx.dependencies = self.dependencies
        self.pod_cgroup: Cgroup | None = None
        # (reason, message) when the pod was refused before any process started
        self.failure: tuple[str, str] | None = None
        self.done = asyncio.Event()
        if self._deleting(pod):
            self._terminate.set()

    # -- events from the informer ------------------------------------------------------

    def update(self, pod: pb.Pod) -> None:
        if pod.metadata.uid != self.uid:
            return
        if _rv(pod) >= _rv(self.pod):
            self.pod = pod
            self.dependencies.update(pod)
            if pod.status != self._synced_status:
                self._changed.set()
        if self._deleting(pod):
            self._terminate.set()

    def gone(self) -> None:
        """The store no longer has the pod: stop it, nothing to finish in the store."""
        self._gone = True
        self._terminate.set()

    @staticmethod
    def _deleting(pod: pb.Pod) -> bool:
        return pod.metadata.HasField("deletion_timestamp")

    def _event(self, type: str, reason: str, message: str) -> None:
        if self.deps.events is not None:
            self.deps.events.record(self.pod, type, reason, message)

    def _send_signal(self, process: str, sig: int) -> bool:
        for s in self.supervisors:
            if s.name == process and s.run is not None:
                return s.run.send_signal(sig)
        return False

    def _grace(self) -> float:
        meta = self.pod.metadata
        if meta.HasField("deletion_grace_period_seconds"):
            return float(meta.deletion_grace_period_seconds)
        return float(self.pod.spec.termination_grace_period_seconds)

    def cgroups(self) -> tuple[Cgroup, Mapping[str, Cgroup]] | None:
        if self.pod_cgroup is None:
            return None
        procs = {s.name: s.cgroup for s in self.supervisors if s.cgroup is not None}
        return self.pod_cgroup, procs

    def log_files(self) -> list[str]:
        """The current log instance file of every process (for rotation)."""
        meta = self.pod.metadata
        return [
            self.deps.logs.instance_path(
                meta.namespace, meta.name, self.uid, s.name, s.record.restart_count
            )
            for s in self.supervisors
            if s.run is not None
        ]

    # -- the task --------------------------------------------------------------------

    async def run(self) -> None:
        try:
            if self.passive:
                await self._terminate.wait()
            else:
                await self._run_pod()
            if not self._gone:
                await self._finish_deletion()
        finally:
            self.done.set()
        if not self.passive:
            await asyncio.sleep(self.deps.logs_linger)
            meta = self.pod.metadata
            self.deps.logs.remove_pod(meta.namespace, meta.name, self.uid)

    async def _run_pod(self) -> None:
        loop = asyncio.get_running_loop()
        if not self._readopting and not any(s.started_once for s in self.supervisors):
            taken = await loop.run_in_executor(self.deps.start_pool, ports_in_use, self.pod.spec)
            if taken:
                await self._refuse(PORT_IN_USE, "; ".join(taken))
                return
        self.config.start()  # the first reads overlap the cgroup's creation
        self.services.start()
        try:
            await loop.run_in_executor(self.deps.start_pool, self._setup_pod_dir)
            create = self._create_pod_cgroup
            self.pod_cgroup, self.ctx.new_cgroup = await loop.run_in_executor(
                self.deps.start_pool, create
            )
        except CgroupError as err:
            for s in self.supervisors:
                s.start_error = f"cgroup: {err}"
        was_ready = {ps.name: ps.ready for ps in self.pod.status.process_statuses}
        for s in self.supervisors:
            s.recover(was_ready.get(s.name, False))
            if s.run is not None:
                self.config.adopt(s.spec, run_as_of(s.spec))
        if self._readopting:
            # A new pod's record is first saved with its first run; until then a
            # restarted agent finds only its pod-<uid> cgroup (removed as an orphan).
            self._save()
        self._changed.set()
        async with asyncio.TaskGroup() as tg:
            status = tg.create_task(self._status_loop())
            volumes = tg.create_task(self.config.sync_loop())
            tasks = [tg.create_task(s.supervise()) for s in self.supervisors]
            config_done = tg.create_task(self._release_config(tasks, volumes))
            await self._terminate.wait()
            await self._stop_processes(tasks)
            status.cancel()
            try:
                await self._sync_status()
            except StoreClientError as err:
                self._log.warning("pod_status_failed", error=str(err))
            await config_done
        self._cleanup()
        try:
            await loop.run_in_executor(self.deps.start_pool, self.config.remove_files)
        except OSError as err:
            self._log.error("pod_files_remove_failed", error=str(err))

    async def _refuse(self, reason: str, message: str) -> None:
        """Fail the pod before any of its processes starts (nothing was created for it),
        and keep its status so until it is deleted (its ReplicaSet replaces it)."""
        self.failure = (reason, message)
        self._log.warning("pod_refused", reason=reason, message=message)
        self._event("Warning", reason, message)
        for s in self.supervisors:
            s.state = Waiting(reason, message)
            s.settled.set()
        self._changed.set()
        status = asyncio.create_task(self._status_loop())
        try:
            await self._terminate.wait()
        finally:
            status.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await status

    def _setup_pod_dir(self) -> None:
        """The pod's directory (runs in a pool thread, before any process starts)."""
        try:
            self.config.setup_dir(run_as_of(s.spec) for s in self.supervisors)
        except OSError as err:
            self._log.error("pod_dir_failed", error=str(err))
            return
        self.services.link(self.config.pod_dir)

    async def _release_config(
        self, tasks: list[asyncio.Task[None]], volumes: asyncio.Task[None]
    ) -> None:
        """Once every process is finished for good, stop following the pod's config."""
        if tasks:
            await asyncio.wait(tasks)
        volumes.cancel()
        self.config.close()
        self.services.close()

    def _create_pod_cgroup(self) -> tuple[Cgroup, bool]:
        """The pod's cgroup and whether it did not exist before (runs in a pool thread)."""
        driver, path = self.deps.driver, self.ctx.pod_cgroup_path
        new = driver.open(path) is None
        return driver.create(path), new

    async def _stop_processes(self, tasks: list[asyncio.Task[None]]) -> None:
        grace = self._grace()
        self._log.info("pod_stopping", grace=grace, gone=self._gone)
        if not self._gone:
            self._event("Normal", "Killing", f"Stopping pod processes (grace period {grace:g}s)")
        self.ctx.stopping.set()
        if grace > 0:
            for s in self.supervisors:
                if s.run is not None:
                    s.run.signal_group(signal.SIGTERM)
            await asyncio.wait(tasks, timeout=grace)
        self.ctx.killing = True
        if self.pod_cgroup is not None:
            try:
                self.pod_cgroup.kill_all()
            except CgroupError as err:
                self._log.error("pod_kill_failed", error=str(err))
                for s in self.supervisors:
                    if s.run is not None:
                        s.run.signal_group(signal.SIGKILL)
        await asyncio.wait(tasks)

    def _cleanup(self) -> None:
        if self.pod_cgroup is not None:
            try:
                self.pod_cgroup.remove()
            except CgroupError as err:
                self._log.error("pod_cgroup_remove_failed", error=str(err))
            self.pod_cgroup = None
        self.deps.state.remove(self.uid)
        self._log.info("pod_stopped")

    async def _finish_deletion(self) -> None:
        meta = self.pod.metadata
        client = self.deps.client
        for attempt in range(10):
            try:
                current = await client.get("pods", meta.name, meta.namespace)
                if current.metadata.uid != self.uid:
                    return  # a new pod of the same name: not ours to delete
                await client.delete(
                    "pods",
                    meta.name,
                    meta.namespace,
                    grace_period_seconds=0,
                    resource_version=current.metadata.resource_version,
                )
                return
            except NotFoundError:
                return
            except StoreClientError as err:
                self._log.warning("pod_delete_failed", error=str(err), attempt=attempt)
                await asyncio.sleep(min(2.0**attempt * 0.2, 5.0))

    # -- local record and status -------------------------------------------------------

    def _save(self) -> None:
        try:
            self.deps.state.save(self.record)
        except OSError as err:
            self._log.error("state_save_failed", error=str(err))

    def views(self) -> list[Any]:
        return [s.view() for s in self.supervisors]

    async def _status_loop(self) -> None:
        # One write for the whole start: wait until every first start attempt has an outcome.
        await asyncio.gather(*(s.settled.wait() for s in self.supervisors))
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STATUS_RESYNC):
                    await self._changed.wait()
            self._changed.clear()
            try:
                await self._sync_status()
            except StoreClientError as err:
                self._log.warning("pod_status_failed", error=str(err))
                await asyncio.sleep(1.0)
                self._changed.set()

    async def _sync_status(self) -> None:
        client = self.deps.client
        meta = self.pod.metadata
        for _ in range(STATUS_ATTEMPTS):
            pod = self.pod
            status = compute_status(pod, self.views(), time.time(), self.deps.host_ip, self.failure)
            if not status_differs(pod.status, status):
                self._synced_status = pod.status
                return
            out = pb.Pod()
            out.CopyFrom(pod)
            out.status.CopyFrom(status)
            try:
                written = await client.update_status(out)
                self._synced_status = written.status
                self.update(written)
                return
            except ConflictError:
                fresh = await client.get("pods", meta.name, meta.namespace)
                if fresh.metadata.uid != self.uid:
                    return
                self.update(fresh)
            except NotFoundError:
                return
        raise StoreClientError("pod status: too many conflicting writes")
