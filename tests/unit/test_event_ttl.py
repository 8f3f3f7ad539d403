"""Event TTL controller against FakeObjects with a stepped clock."""

from __future__ import annotations

from typing import Any

import pytest

from controllers.base import ControllerContext
from controllers.event_ttl import EventTTLController, expires_in, happened_at
from controllers.manager import ManagerConfig
from controllers.podutil import set_timestamp
from controllers.runner import process_key
from controllers.testing.fake_objects import FakeInformers, FakeObjects
from protos import objects_pb2 as pb

T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Events:
    def record(self, obj: Any, type: str, reason: str, message: str) -> None:
        pass


def event(name: str, *, first: float | None = None, last: float | None = None) -> pb.Event:
    ev = pb.Event(metadata=pb.ObjectMeta(name=name, namespace="default"))
    ev.spec.involved_object.kind = "Pod"
    ev.spec.involved_object.name = "web-1"
    ev.spec.reason = "Scheduled"
    ev.spec.type = "Normal"
    ev.spec.count = 1
    if first is not None:
        set_timestamp(ev.spec.first_timestamp, first)
    if last is not None:
        set_timestamp(ev.spec.last_timestamp, last)
    return ev


@pytest.mark.parametrize(
    ("first", "last", "created", "expected"),
    [
        (T0 - 50, T0 - 10, T0 - 100, T0 - 10),
        (T0 - 50, None, T0 - 100, T0 - 50),
        (None, None, T0 - 100, T0 - 100),
    ],
    ids=["last timestamp", "first timestamp", "creation"],
)
def test_happened_at_prefers_last_then_first_then_creation(
    first: float | None, last: float | None, created: float, expected: float
) -> None:
    ev = event("e", first=first, last=last)
    set_timestamp(ev.metadata.creation_timestamp, created)
    assert happened_at(ev) == pytest.approx(expected)
    assert expires_in(ev, 60, T0) == pytest.approx(expected + 60 - T0)


class Harness:
    def __init__(self, ttl: float = 60.0) -> None:
        self.clock = Clock()
        self.objects = FakeObjects(clock=self.clock)
        self.informers = FakeInformers(self.objects)
        self.controller = EventTTLController(ttl=ttl)
        self.ctx = ControllerContext(
            client=self.objects,
            informers=self.informers,
            events=Events(),
            clock=self.clock,
            config=ManagerConfig(),
        )
        self.controller.setup(self.ctx)

    async def run_due(self) -> None:
        queue = self.controller.queue
        while (key := queue.get_nowait()) is not None:
            await process_key(self.controller, key, self.ctx)

    def names(self) -> list[str]:
        return [e.metadata.name for e in self.objects.objects("Event", "default")]


async def test_events_are_deleted_once_their_ttl_has_passed() -> None:
    h = Harness(ttl=60)
    h.objects.add(event("old", last=T0 - 61), event("fresh", last=T0 - 30), event("new", last=T0))
    await h.run_due()
    assert h.names() == ["fresh", "new"]
    assert h.controller.queue.delayed() == pytest.approx(
        {"default/fresh": 30.0, "default/new": 60.0}, abs=1.0
    )
    h.clock.now += 30
    assert await h.controller.reconcile("default/fresh") is not None
    assert h.names() == ["new"]
    h.clock.now += 29
    result = await h.controller.reconcile("default/new")
    assert result.requeue_after == pytest.approx(1)
    assert h.names() == ["new"]


async def test_an_event_that_repeated_lives_on() -> None:
    h = Harness(ttl=60)
    (ev,) = h.objects.add(event("e", first=T0 - 100, last=T0 - 100))
    h.clock.now += 1
    ev.spec.count = 2
    set_timestamp(ev.spec.last_timestamp, T0)
    await h.objects.update(ev)
    await h.run_due()
    assert h.names() == ["e"]


async def test_stale_cache_never_deletes_a_refreshed_event() -> None:
    h = Harness(ttl=60)
    h.informers.auto_sync = False
    (ev,) = h.objects.add(event("e", last=T0 - 100))
    h.informers.sync()
    ev.spec.count = 2
    set_timestamp(ev.spec.last_timestamp, T0)
    await h.objects.update(ev)  # the cache still shows the old, expired version
    await h.run_due()
    assert h.names() == ["e"]
    h.informers.sync()
    result = await h.controller.reconcile("default/e")
    assert result.requeue_after == pytest.approx(60)


def test_ttl_must_be_positive() -> None:
    with pytest.raises(ValueError):
        EventTTLController(ttl=0)
