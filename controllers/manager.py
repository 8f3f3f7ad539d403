"""The controller manager: warm caches always, controllers only while leading.

``run_manager(config)`` runs, for the life of the process: the shared
informers (a standby keeps them warm, so taking over needs no relist), and a
loop of leadership terms. Each term: campaign (``controllers.leader``); once
elected, build every registered controller (``CONTROLLERS``) afresh with a
client fenced by the election token, ``setup`` them and run their workers;
when leadership is lost (lease, election key, or a write the store refused as
fenced) stop them all — queues shut at once, in-flight reconciles get
``stop_grace`` seconds (their writes are fenced anyway) and are then
cancelled — unregister their handlers, revoke the lease and campaign again.
On ``stop`` the leader does the same and exits: revoking the lease lets a
standby take over at once instead of after the TTL.

Every write the store refuses as fenced is logged (``fenced_write_rejected``)
and counted in ``ControllerManager.fenced_writes``. With ``metrics_listen``
set, ``controllers.metrics`` serves Prometheus ``/metrics`` and ``/healthz``
(healthy once the shared caches have synced, leader or standby).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from controllers.base import Controller, ControllerContext, SharedInformers
from controllers.config import WARM_KINDS as WARM_KINDS  # re-exported
from controllers.config import ManagerConfig as ManagerConfig  # re-exported
from controllers.config import default_identity as default_identity  # re-exported
from controllers.leader import LeaderElector, Leadership
from controllers.runner import RunnerStats, run_controller
from mizzen.api.kinds import KindInfo
from mizzen.client.errors import FencedError
from mizzen.client.events import EventRecorder
from mizzen.client.objects import ListResult, ObjectsClient
from mizzen.client.store_client import StoreClient

log = structlog.get_logger(__name__)


class CountingClient:
    """The fenced client as controllers see it: counts and logs writes refused as fenced."""

    def __init__(self, client: ObjectsClient, on_fenced: Callable[[str, str], None]) -> None:
        self._client = client
        self._on_fenced = on_fenced

    async def get(self, kind: str | KindInfo, name: str, namespace: str = "") -> Any:
        return await self._client.get(kind, name, namespace)

    async def list(
        self,
        kind: str | KindInfo,
        namespace: str = "",
        *,
        label_selector: str = "",
        field_selector: str = "",
        limit: int = 0,
        continue_token: str = "",
    ) -> ListResult:
        return await self._client.list(
            kind,
            namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            limit=limit,
            continue_token=continue_token,
        )

    async def create(self, obj: Any) -> Any:
        try:
            return await self._client.create(obj)
        except FencedError:
            self._on_fenced("create", _describe(obj))
            raise

    async def update(self, obj: Any) -> Any:
        try:
            return await self._client.update(obj)
        except FencedError:
            self._on_fenced("update", _describe(obj))
            raise

    async def update_status(self, obj: Any) -> Any:
        try:
            return await self._client.update_status(obj)
        except FencedError:
            self._on_fenced("update_status", _describe(obj))
            raise

    async def delete(
        self,
        kind: str | KindInfo,
        name: str,
        namespace: str = "",
        *,
        grace_period_seconds: int | None = None,
        resource_version: str = "",
        propagation_policy: str = "",
    ) -> tuple[Any, bool]:
        try:
            return await self._client.delete(
                kind,
                name,
                namespace,
                grace_period_seconds=grace_period_seconds,
                resource_version=resource_version,
                propagation_policy=propagation_policy,
            )
        except FencedError:
            self._on_fenced("delete", f"{kind}/{namespace}/{name}")
            raise


def _describe(obj: Any) -> str:
    meta = obj.metadata
    return f"{type(obj).__name__}/{meta.namespace}/{meta.name or meta.generate_name}"


class ControllerManager:
    def __init__(
        self,
        config: ManagerConfig,
        factories: Sequence[Callable[[ManagerConfig], Controller]] | None = None,
    ) -> None:
        self.config = config
        self._factories = list(factories) if factories is not None else list(CONTROLLERS)
        self.fenced_writes = 0
        self.terms = 0
        self.leading = asyncio.Event()
        self.stats = RunnerStats()
        self.controllers: list[Controller] = []
        self.informers: SharedInformers | None = None
        # Given to every Scheduler this manager builds (controllers.metrics sets it).
        self.scheduling_observer: SchedulingObserver | None = None
        self._fenced = asyncio.Event()

    def _count_fenced(self, op: str, what: str) -> None:
        self.fenced_writes += 1
        log.warning("fenced_write_rejected", op=op, object=what, total=self.fenced_writes)
        self._fenced.set()

    def build_controllers(self) -> list[Controller]:
        out = []
        for factory in self._factories:
            controller = factory(self.config)
            if self.config.enabled is not None and controller.name not in self.config.enabled:
                continue
            controller.workers = self.config.workers.get(controller.name, controller.workers)
            if isinstance(controller, Scheduler):
                controller.metrics = self.scheduling_observer
            out.append(controller)
        return out

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until stop is set (or cancelled); see the module doc."""
        cfg = self.config
        stop = stop or asyncio.Event()
        log.info(
            "controller_manager_starting",
            id=cfg.id,
            endpoints=cfg.endpoints,
            key=cfg.election_key,
            lease_ttl=cfg.lease_ttl,
        )
        async with (
            StoreClient(
                cfg.endpoints, timeout=cfg.request_timeout, credentials=cfg.credentials
            ) as store,
            ObjectsClient(
                cfg.endpoints, timeout=cfg.request_timeout, credentials=cfg.credentials
            ) as objects,
        ):
            informers = self.informers = SharedInformers(objects)
            for kind in cfg.warm_kinds:
                informers.get(kind)
            elector = LeaderElector(
                store,
                cfg.id,
                key=cfg.election_key,
                ttl=cfg.lease_ttl,
                check_interval=cfg.renew_interval,
            )
            async with asyncio.TaskGroup() as tg:
                informers_task = tg.create_task(informers.run(), name="informers")
                try:
                    await self._terms(elector, objects, informers, stop)
                finally:
                    informers_task.cancel()
        log.info("controller_manager_stopped", id=cfg.id, fenced_writes=self.fenced_writes)

    async def _terms(
        self,
        elector: LeaderElector,
        objects: ObjectsClient,
        informers: SharedInformers,
        stop: asyncio.Event,
    ) -> None:
        while not stop.is_set():
            leadership = await _until(elector.campaign(), stop)
            if leadership is None:
                return
            self.terms += 1
            await self._lead(elector, leadership, objects, informers, stop)

    async def _lead(
        self,
        elector: LeaderElector,
        leadership: Leadership,
        objects: ObjectsClient,
        informers: SharedInformers,
        stop: asyncio.Event,
    ) -> None:
        cfg = self.config
        self._fenced.clear()
        client = CountingClient(
            objects.fenced(leadership.key, leadership.create_revision), self._count_fenced
        )
        events = EventRecorder(client, "controller-manager", host=socket.gethostname())
        ctx = ControllerContext(
            client=client, informers=informers, events=events, clock=time.time, config=cfg
        )
        hold = asyncio.create_task(elector.hold(leadership), name="leadership")
        fenced = asyncio.create_task(self._fenced.wait())
        stopping = asyncio.create_task(stop.wait())
        synced = asyncio.create_task(informers.wait_synced())
        events_task = asyncio.create_task(events.run(), name="events")
        watched = [hold, fenced, stopping]
        runners: list[asyncio.Task[None]] = []
        try:
            await asyncio.wait([synced, *watched], return_when=asyncio.FIRST_COMPLETED)
            if synced.done():
                self.controllers = self.build_controllers()
                for controller in self.controllers:
                    controller.setup(ctx)
                runners = [
                    asyncio.create_task(
                        run_controller(controller, ctx, stats=self.stats, resync=cfg.resync),
                        name=f"controller-{controller.name}",
                    )
                    for controller in self.controllers
                ]
                self.leading.set()
                log.info(
                    "controllers_started",
                    id=cfg.id,
                    term=self.terms,
                    controllers=[c.name for c in self.controllers],
                )
                await asyncio.wait([*watched, *runners], return_when=asyncio.FIRST_COMPLETED)
            log.warning(
                "controllers_stopping",
                id=cfg.id,
                term=self.terms,
                reason=_why(hold, fenced, stopping),
            )
        finally:
            self.leading.clear()
            await self._stop_runners(runners)
            informers.clear_handlers()
            others = [*watched, synced, events_task]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            # Revoke in every case: a clean stop or a crashed controller hands over at
            # once, and after a loss the lease is gone or about to be anyway.
            await elector.resign(leadership)

    async def _stop_runners(self, runners: list[asyncio.Task[None]]) -> None:
        for controller in self.controllers:
            controller.queue.shutdown()
        if runners:
            _, pending = await asyncio.wait(runners, timeout=self.config.stop_grace)
            for task in pending:
                task.cancel()
            results = await asyncio.gather(*runners, return_exceptions=True)
            for controller, result in zip(self.controllers, results, strict=True):
                if isinstance(result, BaseException) and not isinstance(
                    result, asyncio.CancelledError
                ):
                    log.error("controller_crashed", controller=controller.name, error=repr(result))
        self.controllers = []


def _why(hold: asyncio.Task[str], fenced: asyncio.Task[Any], stopping: asyncio.Task[Any]) -> str:
    """Why a leadership term ended, for the log."""
    if stopping.done():
        return "stop requested"
    if fenced.done():
        return "a write was refused as fenced"
    if hold.done():
        if hold.cancelled():
            return "leadership watch cancelled"
        err = hold.exception()
        return f"leadership watch failed: {err!r}" if err is not None else hold.result()
    return "a controller ended"


async def _until(coro: Any, stop: asyncio.Event) -> Any:
    """coro's result, or None (coro cancelled) once stop is set."""
    task = asyncio.ensure_future(coro)
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return None


async def run_manager(config: ManagerConfig, stop: asyncio.Event | None = None) -> None:
    """Run a controller manager with every registered controller until stop is set.

    Raises ``controllers.metrics.MetricsListenError`` at once when
    ``config.metrics_listen`` cannot be served.
    """
    manager = ControllerManager(config)
    http = None
    if config.metrics_listen:
        from controllers.metrics import serve_metrics

        http = serve_metrics(config.metrics_listen, manager, config.metrics_tls())
    try:
        await manager.run(stop)
    finally:
        if http is not None:
            http.stop()


from controllers.daemonset import daemonset_controller_from_config  # noqa: E402
from controllers.dependencies import dependencies_controller_from_config  # noqa: E402
from controllers.deployment import DeploymentController  # noqa: E402
from controllers.endpoints import endpoints_controller_from_config  # noqa: E402
from controllers.event_ttl import event_ttl_from_config  # noqa: E402
from controllers.gc import garbage_collector_from_config  # noqa: E402
from controllers.job import job_controller_from_config  # noqa: E402
from controllers.node_lifecycle import node_lifecycle_from_config  # noqa: E402
from controllers.replicaset import ReplicaSetController  # noqa: E402
from controllers.scheduler import (  # noqa: E402
    Scheduler,
    SchedulingObserver,
    scheduler_from_config,
)

CONTROLLERS: list[Callable[[ManagerConfig], Controller]] = [
    scheduler_from_config,
    node_lifecycle_from_config,
    ReplicaSetController,
    DeploymentController,
    job_controller_from_config,
    daemonset_controller_from_config,
    endpoints_controller_from_config,
    garbage_collector_from_config,
    event_ttl_from_config,
    dependencies_controller_from_config,
]
"""Factories of every controller the manager runs (add yours here)."""
