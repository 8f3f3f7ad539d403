"""An in-process controller manager next to a simulated node or agent, and polling.

Shared by the integration tests that run controllers without `mizzen
controllers` subprocesses (test_workloads, test_scheduler_lifecycle).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any

import pytest

from controllers.base import Controller
from controllers.manager import ControllerManager, ManagerConfig


async def until(
    check: Callable[[], Awaitable[Any]], timeout: float, what: str, interval: float = 0.1
) -> Any:
    """check()'s first truthy result; fails the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def leading_manager(
    config: ManagerConfig,
    factories: Sequence[Callable[[ManagerConfig], Controller]],
    beside: Coroutine[Any, Any, Any],
) -> AsyncIterator[ControllerManager]:
    """The manager running (and leading) with `beside` as a task; both stopped on exit."""
    manager = ControllerManager(config, list(factories))
    stop = asyncio.Event()
    side = asyncio.create_task(beside)
    task = asyncio.create_task(manager.run(stop))
    try:
        await asyncio.wait_for(manager.leading.wait(), 20)
        yield manager
    finally:
        stop.set()
        side.cancel()
        try:
            await asyncio.wait_for(task, 10)
        except TimeoutError:
            task.cancel()
        await asyncio.gather(side, task, return_exceptions=True)
