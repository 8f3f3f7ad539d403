"""Test doubles for controllers: in-memory objects, synchronous informers, recorded events.

objects = FakeObjects(clock=clock)
objects.add(deployment)
ctx = fake_context(objects, clock=clock)
controller = DeploymentController(); controller.setup(ctx)
await drain(controller, ctx)
assert objects.writes == [("create", "ReplicaSet", "default/web-5d9c7b")]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from controllers.base import Controller, ControllerContext
from controllers.runner import RunnerStats, process_key
from controllers.testing.fake_objects import FakeInformers, FakeObjects, FencedObjects
from mizzen.api.kinds import kind_of


@dataclass(frozen=True)
class RecordedEvent:
    kind: str
    namespace: str
    name: str
    type: str
    reason: str
    message: str


@dataclass
class RecordingEvents:
    """An EventSink that keeps what was recorded, synchronously."""

    events: list[RecordedEvent] = field(default_factory=list)

    def record(self, obj: Any, type: str, reason: str, message: str) -> None:
        meta = obj.metadata
        self.events.append(
            RecordedEvent(kind_of(obj).kind, meta.namespace, meta.name, type, reason, message)
        )

    def reasons(self) -> list[str]:
        return [e.reason for e in self.events]


def fake_context(
    objects: FakeObjects,
    *,
    clock: Callable[[], float] = time.time,
    config: Any = None,
    auto_sync: bool = True,
) -> ControllerContext:
    """A ControllerContext over objects with FakeInformers and RecordingEvents."""
    from controllers.config import ManagerConfig

    return ControllerContext(
        client=objects,
        informers=FakeInformers(objects, auto_sync=auto_sync),
        events=RecordingEvents(),
        clock=clock,
        config=config if config is not None else ManagerConfig(),
    )


async def drain(
    controller: Controller,
    ctx: ControllerContext,
    *,
    max_steps: int = 1000,
    stats: RunnerStats | None = None,
) -> int:
    """Reconcile ready keys (as the runner would) until none is ready; how many were processed.

    Keys delayed by add_after / backoff stay delayed: step the queue's clock to
    make them due. Raises RuntimeError after max_steps (a controller that never
    settles).
    """
    steps = 0
    while True:
        key = controller.queue.get_nowait()
        if key is None:
            return steps
        if steps >= max_steps:
            raise RuntimeError(f"{controller.name} did not settle in {max_steps} reconciles")
        steps += 1
        await process_key(controller, key, ctx, stats)


__all__ = [
    "FakeInformers",
    "FakeObjects",
    "FencedObjects",
    "RecordedEvent",
    "RecordingEvents",
    "drain",
    "fake_context",
]
