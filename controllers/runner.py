"""Runs controllers: workers take keys from the controller's queue and reconcile them.

For each key: ``Result.requeue_after`` → ``add_after``; success → ``forget``
(backoff reset); ``TemporaryError`` → ``add_after(delay)`` or
``add_rate_limited``; ``PermanentError`` → logged, a Warning Event on the
object (when the primary informer has it), no requeue (the next change or
resync retries); any other exception → logged with its traceback and
``add_rate_limited``. A ``FencedError`` (this process is no longer the leader)
is counted in ``RunnerStats.fenced_writes`` and the key requeued with backoff
(the manager stops the controllers when it notices). Every
``resync`` seconds the keys of the controller's ``primary_kind`` are queued
again, so a missed event or a lost write is repaired (level-triggered).

When ``RunnerStats.observe`` is set, every settled key is reported to it as
``(controller, result, seconds)``: result ``success`` (no requeue),
``requeue`` (``Result.requeue_after`` or a ``TemporaryError``: an expected
retry) or ``error`` (permanent, fenced or unexpected failure). Metrics use it.

``run_controller`` returns once the controller's queue is shut down and every
worker has finished its current key; cancelling it cancels the workers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from controllers.base import Controller, ControllerContext, PermanentError, TemporaryError
from controllers.workqueue import QueueShutDown
from mizzen.client.errors import FencedError

log = structlog.get_logger(__name__)

DEFAULT_RESYNC = 30.0

ReconcileObserver = Callable[[str, str, float], None]
"""(controller name, "success" | "requeue" | "error", seconds the reconcile took)."""


@dataclass
class RunnerStats:
    reconciles: int = 0
    errors: int = 0
    fenced_writes: int = 0
    observe: ReconcileObserver | None = None


async def process_key(
    controller: Controller,
    key: str,
    ctx: ControllerContext,
    stats: RunnerStats | None = None,
) -> None:
    """Reconcile one key taken from the queue and settle it (requeue, forget, done)."""
    queue = controller.queue
    stats = stats if stats is not None else RunnerStats()
    stats.reconciles += 1
    started = time.perf_counter() if stats.observe is not None else 0.0
    outcome = "error"
    try:
        result = await controller.reconcile(key)
    except asyncio.CancelledError:
        queue.done(key)
        raise
    except FencedError as err:
        stats.fenced_writes += 1
        stats.errors += 1
        log.warning("reconcile_fenced", controller=controller.name, key=key, error=str(err))
        queue.add_rate_limited(key)
    except TemporaryError as err:
        stats.errors += 1
        outcome = "requeue"
        log.info(
            "reconcile_retry",
            controller=controller.name,
            key=key,
            error=str(err),
            requeues=queue.num_requeues(key),
        )
        if err.delay is not None:
            queue.add_after(key, err.delay)
        else:
            queue.add_rate_limited(key)
    except PermanentError as err:
        stats.errors += 1
        log.error("reconcile_failed", controller=controller.name, key=key, error=str(err))
        queue.forget(key)
        _report(controller, ctx, key, err)
    except Exception as err:
        stats.errors += 1
        log.exception(
            "reconcile_error",
            controller=controller.name,
            key=key,
            error=str(err),
            requeues=queue.num_requeues(key),
        )
        queue.add_rate_limited(key)
    else:
        queue.forget(key)
        outcome = "success"
        if result.requeue_after is not None:
            outcome = "requeue"
            queue.add_after(key, result.requeue_after)
    queue.done(key)
    if stats.observe is not None:
        stats.observe(controller.name, outcome, time.perf_counter() - started)


def _report(controller: Controller, ctx: ControllerContext, key: str, err: PermanentError) -> None:
    if controller.primary_kind is None:
        return
    obj = ctx.informers.get(controller.primary_kind).get_key(key)
    if obj is not None:
        ctx.events.record(obj, "Warning", err.reason, str(err))


async def _worker(controller: Controller, ctx: ControllerContext, stats: RunnerStats) -> None:
    queue = controller.queue
    while True:
        try:
            key = await queue.get()
        except QueueShutDown:
            return
        await process_key(controller, key, ctx, stats)


async def _resync(
    controller: Controller,
    ctx: ControllerContext,
    period: float,
    sleep: Callable[[float], Awaitable[None]],
) -> None:
    assert controller.primary_kind is not None
    informer = ctx.informers.get(controller.primary_kind)
    while True:
        await sleep(period)
        for key in informer.queue_keys():
            controller.queue.add(key)


async def run_controller(
    controller: Controller,
    ctx: ControllerContext,
    *,
    stats: RunnerStats | None = None,
    resync: float = DEFAULT_RESYNC,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Run controller's workers (and its resync) until its queue shuts down; setup must have run."""
    stats = stats if stats is not None else RunnerStats()
    log.info("controller_started", controller=controller.name, workers=controller.workers)
    try:
        async with asyncio.TaskGroup() as tg:
            resync_task = None
            if controller.primary_kind is not None and resync > 0:
                resync_task = tg.create_task(_resync(controller, ctx, resync, sleep))
            workers = [
                tg.create_task(_worker(controller, ctx, stats), name=f"{controller.name}-{i}")
                for i in range(max(controller.workers, 1))
            ]
            await asyncio.wait(workers)
            if resync_task is not None:
                resync_task.cancel()
    finally:
        controller.queue.shutdown()
        log.info("controller_stopped", controller=controller.name)


async def run_controllers(
    controllers: Sequence[Controller],
    ctx: ControllerContext,
    *,
    stats: RunnerStats | None = None,
    resync: float = DEFAULT_RESYNC,
) -> None:
    """setup() every controller, then run them all until cancelled."""
    for controller in controllers:
        controller.setup(ctx)
    async with asyncio.TaskGroup() as tg:
        for controller in controllers:
            tg.create_task(run_controller(controller, ctx, stats=stats, resync=resync))
