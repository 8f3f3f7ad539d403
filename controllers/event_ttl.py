"""Event TTL: Events are records, not state; delete each one ``ttl`` after it last happened.

Kubernetes gives Events an etcd lease; Mizzen's Objects API has none, so this
controller keeps one timer per Event instead: reconciling an Event either
deletes it (its ``last_timestamp`` — else ``first_timestamp``, else its
creation — is at least ``ttl`` seconds old) or requeues it for the moment it
will be. The delete carries the resource_version the cache showed, so an
Event that was just aggregated again (count + 1, new last_timestamp) is not
deleted on stale information: the conflict requeues it and the new timestamp
decides. Time is the context's wall clock, like the timestamps it compares.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from controllers.base import (
    Controller,
    ControllerContext,
    Result,
    TemporaryError,
    split_key,
)
from controllers.podutil import creation_seconds, seconds_of
from mizzen.client.errors import ConflictError, NotFoundError
from protos import objects_pb2 as pb

if TYPE_CHECKING:
    from controllers.config import ManagerConfig

log = structlog.get_logger(__name__)

DEFAULT_TTL = 3600.0


def happened_at(event: pb.Event) -> float:
    """Unix seconds of the last occurrence an Event records."""
    for ts in (event.spec.last_timestamp, event.spec.first_timestamp):
        if ts.seconds or ts.nanos:
            return seconds_of(ts)
    return creation_seconds(event)


def expires_in(event: pb.Event, ttl: float, now: float) -> float:
    """Seconds until event may be deleted (<= 0: now)."""
    return happened_at(event) + ttl - now


class EventTTLController(Controller):
    """See the module doc."""

    name = "event-ttl"
    # No periodic resync: every Event already has its own timer (requeue_after),
    # and re-enqueueing thousands of Events every resync period would be waste.
    primary_kind = None

    def __init__(self, *, ttl: float = DEFAULT_TTL, workers: int = 1) -> None:
        if ttl <= 0:
            raise ValueError("event ttl must be positive")
        self.ttl = ttl
        self.workers = workers

    def setup(self, ctx: ControllerContext) -> None:
        self._ctx = ctx
        self.events = ctx.informers.get("Event")
        self.events.on_add(self.enqueue)
        self.events.on_update(self._updated)

    def _updated(self, old: Any, new: Any) -> None:
        self.enqueue(new)

    async def reconcile(self, key: str) -> Result:
        event: pb.Event | None = self.events.get_key(key)
        if event is None:
            return Result()
        left = expires_in(event, self.ttl, self.ctx.clock())
        if left > 0:
            return Result(requeue_after=left)
        namespace, name = split_key(key)
        try:
            await self.ctx.client.delete(
                "Event", name, namespace, resource_version=event.metadata.resource_version
            )
        except NotFoundError:
            return Result()
        except ConflictError as err:
            raise TemporaryError(f"event changed: {err}") from None
        log.debug("event_expired", key=key, reason=event.spec.reason)
        return Result()


def event_ttl_from_config(config: ManagerConfig) -> EventTTLController:
    """The manager's factory: ``config.event_ttl`` seconds."""
    return EventTTLController(ttl=config.event_ttl)
