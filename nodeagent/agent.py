"""The node agent daemon: ``run_agent(config)``.

Startup order: detect the cgroup driver, serve gRPC (logs, stats, health,
reflection), register the Node, then watch this node's pods. Pod workers are
created from informer events; a worker finds its pod's local record on disk
and re-adopts its processes. Once the informer has synced, local records and
``pod-<uid>`` cgroups of pods the store no longer has are killed and removed
(the contract: an agent that comes back kills any local pod the store no
longer has).

gRPC health (and ``/healthz`` with ``metrics_listen``) reports SERVING only
while the Node is registered and its lease is being renewed
(``nodeagent.metrics``); Prometheus ``/metrics`` is served with
``metrics_listen``.

SIGTERM/SIGINT stop the agent WITHOUT stopping pods (like kubelet): their
processes keep running in their own sessions and cgroups, and the next agent
re-adopts them.

One file because it is the daemon's composition: startup order, the pod
workers' registry, the orphan sweep and health depend on each other's order;
the parts with logic of their own (pod worker, supervisor, cgroups, metrics)
live in their own modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mizzen.client import ObjectsClient
from mizzen.client.errors import StoreClientError
from mizzen.client.events import EventRecorder
from mizzen.client.informer import Informer
from mizzen.malformed_requests import MalformedRequestInterceptor
from mizzen.metrics_http import MetricsHttpServer
from mizzen.security.server_auth import AuthInterceptor
from mizzen.security.tls import add_port
from nodeagent import runtime
from nodeagent.agent_service import NodeAgentService
from nodeagent.cgroups import CgroupDriver, CgroupError, detect
from nodeagent.cgroups.base import Cgroup
from nodeagent.config import AgentConfig
from nodeagent.config_objects import ConfigObjects
from nodeagent.logs import DiskLogSource, PodLogs, rotate_if_needed
from nodeagent.metrics import AgentMetrics, CountingEvents
from nodeagent.node_status import (
    NodeFacts,
    NodeHeartbeat,
    allocatable,
    outbound_ip,
    parse_reserved,
    read_capacity,
    system_info,
)
from nodeagent.pod_config import PodPaths
from nodeagent.pod_exec import kill_stale_sessions
from nodeagent.pod_ops import AgentPolicy
from nodeagent.pod_worker import PodWorker, WorkerDeps
from nodeagent.services import ServiceDirectory
from nodeagent.state import PodRecord, StateDir, read_boot_id
from nodeagent.stats import PodRef, UsageSampler
from protos import agent_pb2, agent_pb2_grpc
from protos import objects_pb2 as pb

log = structlog.get_logger(__name__)

ROTATE_INTERVAL = 10.0
HEALTH_SERVICES = ("", agent_pb2.DESCRIPTOR.services_by_name["NodeAgent"].full_name)
RESYNC_PERIOD = 30.0
# Threads for the blocking part of pod starts (cgroup mkdirs and writes, fork/exec: they
# release the GIL). A few are enough to overlap them; more only contend for the loop.
START_WORKERS = 4


def _make_traversable(data_dir: str) -> None:
    """Let processes running as other users reach their pod directory under data_dir.

    Adds search (x) permission for group and others — not read: nobody else can
    list it. Its ``pods/`` and ``logs/`` stay 0700.
    """
    mode = os.stat(data_dir).st_mode & 0o7777
    if mode & 0o011 != 0o011:
        os.chmod(data_dir, mode | 0o011)
        log.info("agent_data_dir_traversable", path=data_dir, mode=oct(mode | 0o011))


class AgentStartError(Exception):
    """The agent cannot start (cgroups unusable, address in use); the message says why."""


class _TimedHeartbeat(NodeHeartbeat):
    """Remembers when the lease was last renewed, for the health verdict."""

    renewed_at: float | None = None

    async def renew_lease(self) -> None:
        await super().renew_lease()
        self.renewed_at = self.clock()


class Agent:
    def __init__(self, config: AgentConfig, driver: CgroupDriver, client: ObjectsClient) -> None:
        self.config = config
        self.driver = driver
        self.client = client
        self.boot_id = read_boot_id()
        self.state = StateDir(config.pods_dir)
        self.logs = PodLogs(config.logs_dir)
        os.makedirs(config.logs_dir, exist_ok=True)
        _make_traversable(config.data_dir)
        self.paths = PodPaths.under(config.data_dir)
        self.config_objects = ConfigObjects(client)
        self.services = ServiceDirectory(client, os.path.join(config.data_dir, "services"))
        self.address = config.address or outbound_ip(config.endpoints[0])
        self.start_pool = ThreadPoolExecutor(START_WORKERS, thread_name_prefix="pod-start")
        self.deps = WorkerDeps(
            client=client,
            driver=driver,
            logs=self.logs,
            state=self.state,
            boot_id=self.boot_id,
            host_ip=self.address,
            backoff_initial=config.backoff_initial,
            backoff_cap=config.backoff_cap,
            logs_linger=config.logs_linger,
            start_pool=self.start_pool,
            config_objects=self.config_objects,
            pod_paths=self.paths,
            services=self.services,
        )
        self.events = EventRecorder(client, "agent", host=config.name)
        self.workers: dict[str, PodWorker] = {}
        self.sampler = UsageSampler(self._pod_cgroups)
        self.metrics = AgentMetrics(self)
        self.deps.events = CountingEvents(self.events, self.metrics)
        self.heartbeat: _TimedHeartbeat | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._log = log.bind(node=config.name)

    def grpc_address(self) -> str:
        host, _, port = self.config.listen.rpartition(":")
        if host in ("", "0.0.0.0", "::", "[::]"):
            host = self.address
        return f"{host}:{port}"

    def lease_renewed_at(self) -> float | None:
        """Wall-clock time of the last successful lease renewal; None before the first."""
        return self.heartbeat.renewed_at if self.heartbeat is not None else None

    def _pod_cgroups(self) -> Mapping[PodRef, tuple[Cgroup, Mapping[str, Cgroup]]]:
        out: dict[PodRef, tuple[Cgroup, Mapping[str, Cgroup]]] = {}
        for w in list(self.workers.values()):
            groups = w.cgroups()
            if groups is not None:
                out[PodRef(w.ctx.namespace, w.ctx.pod, w.uid)] = groups
        return out

    # -- pod dispatch (informer handlers; run in the informer's task) -------------------

    def _dispatch(self, pod: pb.Pod) -> None:
        uid = pod.metadata.uid
        worker = self.workers.get(uid)
        if worker is not None:
            worker.update(pod)
            return
        if self._tg is None:
            return
        record = self.state.load(uid)
        worker = PodWorker(pod, self.deps, record)
        self.workers[uid] = worker
        self.metrics.worker_added(worker, readopted=record is not None)
        task = self._tg.create_task(self._run_worker(worker))
        task.add_done_callback(lambda _: self._worker_done(worker))

    def _worker_done(self, worker: PodWorker) -> None:
        if self.workers.get(worker.uid) is worker:
            del self.workers[worker.uid]
        self.metrics.worker_removed(worker)

    def _gone(self, pod: pb.Pod) -> None:
        worker = self.workers.get(pod.metadata.uid)
        if worker is not None:
            worker.gone()

    async def _run_worker(self, worker: PodWorker) -> None:
        try:
            await worker.run()
        except Exception:
            # Its record stays on disk: the next resync re-adopts the processes.
            worker._log.exception("pod_worker_failed")

    # -- orphans ---------------------------------------------------------------------

    async def _kill_orphans(self) -> None:
        """Stop every local pod (record or cgroup) whose uid has no worker."""
        for record in self.state.load_all():
            if record.uid not in self.workers:
                await self._kill_orphan(record)
        self._remove_orphan_logs()
        try:
            children = self.driver.children("")
        except CgroupError as err:
            self._log.warning("cgroup_list_failed", error=str(err))
            return
        for path in children:
            uid = path.removeprefix("pod-")
            if path.startswith("pod-") and uid not in self.workers:
                cgroup = self.driver.open(path)
                if cgroup is not None:
                    self._log.info("orphan_cgroup_removed", cgroup=path)
                    self._destroy(cgroup)

    def _remove_orphan_logs(self) -> None:
        """Log directories (``<ns>_<pod>_<uid>``), pod directories and volumes of pods
        with no worker."""
        for uid in self.paths.remove_orphans(self.workers):
            self._log.info("orphan_pod_files_removed", uid=uid)
        for namespace in self.services.remove_unused():
            self._log.info("orphan_service_files_removed", namespace=namespace)
        try:
            names = os.listdir(self.config.logs_dir)
        except OSError:
            return
        for name in names:
            uid = name.rpartition("_")[2]
            if uid and uid not in self.workers:
                shutil.rmtree(os.path.join(self.config.logs_dir, name), ignore_errors=True)

    async def _kill_orphan(self, record: PodRecord) -> None:
        self._log.info("orphan_pod_stopping", pod=f"{record.namespace}/{record.name}")
        runs = [
            run
            for p in record.processes.values()
            if (run := runtime.recover(p, self.driver, self.boot_id)) is not None
        ]
        await asyncio.gather(*(runtime.stop(r, float(record.grace_seconds)) for r in runs))
        cgroup = self.driver.open(f"pod-{record.uid}")
        if cgroup is not None:
            self._destroy(cgroup)
        self.state.remove(record.uid)
        self.logs.remove_pod(record.namespace, record.name, record.uid)
        self.paths.remove_pod(record.namespace, record.name, record.uid)

    async def stop_all_pods(self) -> None:
        """Stop every local pod's processes (each with its grace) and remove the cgroups.

        Only for ``--stop-pods-on-exit`` (``mizzen up``): a production agent
        leaves pods running when it stops and re-adopts them when it starts.
        The pod objects stay in the store, so the next start runs them again.
        """
        await asyncio.gather(*(self._kill_orphan(r) for r in self.state.load_all()))
        parent = self.driver.open("")
        if parent is not None:
            self._destroy(parent)
        self.paths.remove_orphans(())
        await self.services.close()
        self.services.remove_unused()
        self.paths.secrets.unmount()

    def kill_stale_execs(self) -> None:
        """Kill what exec sessions of a previous agent run left behind (that agent was
        killed before it could end them); the pods' own recorded processes are kept."""
        root = self.driver.open("")
        if root is None:
            return
        keep = {p.pid for r in self.state.load_all() for p in r.processes.values() if p.pid > 0}
        killed = kill_stale_sessions(root, keep)
        if killed:
            self._log.info("stale_exec_processes_killed", count=killed)

    def _destroy(self, cgroup: Cgroup) -> None:
        try:
            cgroup.kill_all()
            cgroup.remove()
        except CgroupError as err:
            self._log.error("cgroup_destroy_failed", cgroup=cgroup.path, error=str(err))

    # -- periodic work ---------------------------------------------------------------

    async def _housekeeping(self) -> None:
        since_rotate = 0.0
        interval = self.config.stats_interval
        while True:
            try:
                await asyncio.to_thread(self.sampler.sample)
            except Exception as err:
                self._log.warning("usage_sample_failed", error=repr(err))
            since_rotate += interval
            if since_rotate >= ROTATE_INTERVAL:
                since_rotate = 0.0
                for w in list(self.workers.values()):
                    for path in w.log_files():
                        with contextlib.suppress(OSError):
                            rotate_if_needed(path, self.config.log_max_bytes, self.config.log_keep)
            await asyncio.sleep(interval)

    async def _register(self, heartbeat: NodeHeartbeat) -> None:
        delay = 0.2
        while True:
            try:
                await heartbeat.register()
                return
            except StoreClientError as err:
                self._log.warning("node_register_failed", error=str(err), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def run(self) -> None:
        cfg = self.config
        capacity = read_capacity()
        facts = NodeFacts(
            name=cfg.name,
            labels=cfg.labels,
            capacity=capacity,
            allocatable=allocatable(capacity, parse_reserved(cfg.reserved)),
            addresses=[
                ("InternalIP", self.address),
                ("Hostname", cfg.name),
                ("AgentGRPC", self.grpc_address()),
            ],
            info=system_info(self.boot_id, self.driver.version),
            dynamic_ports=cfg.port_range,
        )
        heartbeat = _TimedHeartbeat(self.client, facts, status_interval=cfg.status_interval)
        self.heartbeat = heartbeat
        await self._register(heartbeat)
        informer = Informer(
            self.client,
            "pods",
            field_selector=f"spec.nodeName={cfg.name}",
            resync_period=RESYNC_PERIOD,
        )
        informer.on_add(self._dispatch)
        informer.on_update(lambda _old, new: self._dispatch(new))
        informer.on_delete(self._gone)
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            tg.create_task(heartbeat.run(cfg.heartbeat_interval))
            tg.create_task(informer.run())
            tg.create_task(self._housekeeping())
            tg.create_task(self.events.run())
            await informer.has_synced.wait()
            await self._kill_orphans()
            self._log.info("agent_synced", pods=len(self.workers))


async def _serve_grpc(agent: Agent, listen: str) -> tuple[grpc.aio.Server, Any]:
    """The started gRPC server and its health servicer (NOT_SERVING until registered).

    In secure mode (the node certificate given) it serves TLS, requires client
    certificates, only admins and viewers may read logs and stats, and only admins
    (or the roles of --exec-roles / --signal-roles) may exec and signal.
    """
    cfg = agent.config
    security = cfg.security
    interceptors: list[grpc.aio.ServerInterceptor] = [MalformedRequestInterceptor()]
    options: list[tuple[str, int]] = []
    if security.secure:
        policy = AgentPolicy(exec_roles=cfg.exec_roles, signal_roles=cfg.signal_roles)
        interceptors.append(AuthInterceptor(policy, limits=security.limits))
        options.append(("grpc.max_concurrent_streams", security.limits.max_concurrent_streams))
    server = grpc.aio.server(interceptors=interceptors, options=options)
    service = NodeAgentService(
        DiskLogSource(cfg.logs_dir),
        agent.sampler,
        workers=lambda: list(agent.workers.values()),
        max_execs=cfg.max_execs,
    )
    agent_pb2_grpc.add_NodeAgentServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    name = agent_pb2.DESCRIPTOR.services_by_name["NodeAgent"].full_name
    reflection.enable_server_reflection(
        [name, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    bound = add_port(server, listen, security.tls)
    if not bound:
        raise AgentStartError(f"cannot listen on {listen} (address in use?)")
    await server.start()
    for service_name in HEALTH_SERVICES:
        await health_servicer.set(service_name, health_pb2.HealthCheckResponse.NOT_SERVING)
    return server, health_servicer


async def _report_health(agent: Agent, health_servicer: Any) -> None:
    """Keep gRPC health in step with ``agent.metrics.serving`` until cancelled."""
    serving: bool | None = None
    while True:
        now = agent.metrics.serving
        if now != serving:
            status = health_pb2.HealthCheckResponse
            for service_name in HEALTH_SERVICES:
                await health_servicer.set(
                    service_name, status.SERVING if now else status.NOT_SERVING
                )
            if serving is not None or not now:
                log.info("agent_health_changed", node=agent.config.name, serving=now)
            serving = now
        await asyncio.sleep(min(agent.config.heartbeat_interval, 1.0))


def _serve_metrics(agent: Agent) -> MetricsHttpServer | None:
    listen = agent.config.metrics_listen
    if not listen:
        return None
    try:
        http = MetricsHttpServer(listen, agent.metrics, agent.config.security.tls)
    except (ValueError, OSError) as err:
        raise AgentStartError(f"cannot serve metrics on {listen}: {err}") from None
    http.start()
    log.info("metrics_serving", listen=listen, node=agent.config.name)
    return http


async def run_agent(config: AgentConfig, stop: asyncio.Event | None = None) -> None:
    """Run until stop is set or SIGTERM/SIGINT; pods keep running afterwards."""
    log.info("agent_config", **config.for_log())
    try:
        prefer = None if config.cgroup_version == "auto" else config.cgroup_version
        driver = detect(config.cgroup_root, config.cgroup_parent, prefer)
    except CgroupError as err:
        raise AgentStartError(f"cgroups: {err}") from None
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with ObjectsClient(
        config.endpoints, timeout=config.request_timeout, credentials=config.credentials
    ) as client:
        agent = Agent(config, driver, client)
        agent.kill_stale_execs()  # before the gRPC port can start new ones
        server, health_servicer = await _serve_grpc(agent, config.listen)
        try:
            http = _serve_metrics(agent)
        except AgentStartError:
            await server.stop(grace=None)
            raise
        log.info("agent_serving", listen=config.listen, node=config.name, cgroups=driver.version)
        work = asyncio.create_task(agent.run())
        stopped = asyncio.create_task(stop.wait())
        reporting = asyncio.create_task(_report_health(agent, health_servicer))
        try:
            await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, stopped, reporting):
                task.cancel()
            await asyncio.gather(work, stopped, reporting, return_exceptions=True)
            if http is not None:
                http.stop()
            if config.stop_pods_on_exit:
                log.info("agent_stopping_pods", node=config.name)
                await agent.stop_all_pods()
            await server.stop(grace=1.0)
            await agent.config_objects.close()
            await agent.services.close()
            agent.start_pool.shutdown(wait=True)
            log.info("agent_stopped", node=config.name)
        if work.done() and not work.cancelled() and work.exception() is not None:
            raise work.exception()  # type: ignore[misc]
