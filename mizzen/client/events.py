"""EventRecorder: controllers and node agents report what they did as Events, without waiting.

``record`` only appends to an in-memory queue; ``run`` (owned by the manager)
or ``flush`` (tests) writes them. Repeats of the same (object uid, reason,
message) within ``aggregate_window`` seconds update the one Event already
written (count + 1, last_timestamp) instead of creating another. Failures are
logged and the event dropped: reporting must never break a controller. The
queue is bounded; when full the oldest unsent event is dropped.

Writes run ``concurrency`` at a time (a burst of 5,000 scheduling events would
otherwise drain one round trip after another and overflow the queue); events
with the same aggregation key are written in order, never concurrently.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from mizzen.api.defaults import DEFAULT_NAMESPACE
from mizzen.api.kinds import API_VERSION, kind_of
from mizzen.client.errors import ConflictError, NotFoundError, StoreClientError
from protos import objects_pb2 as pb

log = structlog.get_logger(__name__)


class EventWriter(Protocol):
    """The part of ObjectsClient the recorder writes through."""

    async def create(self, obj: Any) -> Any: ...

    async def update(self, obj: Any) -> Any: ...


AGGREGATE_WINDOW = 600.0
MAX_MESSAGE_BYTES = 1024  # like Kubernetes' recorders; the server refuses over 4 KiB
MAX_PENDING = 1000
CONCURRENCY = 8
_MAX_NAME = 253


@dataclass
class _Pending:
    ref: pb.ObjectReference
    type: str
    reason: str
    message: str
    at: float


@dataclass
class _Written:
    event: pb.Event
    last_at: float


def _key(item: _Pending) -> tuple[str, str, str]:
    """What repeats of one event share: the object, the reason and the message."""
    return (item.ref.uid or f"{item.ref.namespace}/{item.ref.name}", item.reason, item.message)


def truncate_message(message: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """message cut to at most limit UTF-8 bytes, ending in "..." when cut."""
    data = message.encode()
    if len(data) <= limit:
        return message
    return data[: limit - 3].decode(errors="ignore") + "..."


def _timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def object_reference(obj: Any) -> pb.ObjectReference:
    meta = obj.metadata
    return pb.ObjectReference(
        api_version=API_VERSION,
        kind=kind_of(obj).kind,
        namespace=meta.namespace,
        name=meta.name,
        uid=meta.uid,
        resource_version=meta.resource_version,
    )


class EventRecorder:
    def __init__(
        self,
        client: EventWriter,
        component: str,
        host: str = "",
        clock: Callable[[], float] = time.time,
        *,
        aggregate_window: float = AGGREGATE_WINDOW,
        max_pending: int = MAX_PENDING,
        concurrency: int = CONCURRENCY,
    ) -> None:
        self._client = client
        self.concurrency = max(1, concurrency)
        self.component = component
        self.host = host
        self._clock = clock
        self.aggregate_window = aggregate_window
        self._pending: deque[_Pending] = deque()
        self._max_pending = max_pending
        self._written: dict[tuple[str, str, str], _Written] = {}
        self._wakeup = asyncio.Event()
        self.dropped = 0
        self.failures = 0

    def record(self, obj: Any, type: str, reason: str, message: str) -> None:
        """Queue an Event about obj ("Normal" or "Warning"); never blocks or raises.

        A message over 1 KiB is truncated (as Kubernetes' recorders do).
        """
        message = truncate_message(message)
        try:
            ref = object_reference(obj)
        except Exception:
            log.exception("event_bad_object", reason=reason)
            return
        if len(self._pending) >= self._max_pending:
            self._pending.popleft()
            self.dropped += 1
        self._pending.append(_Pending(ref, type, reason, message, self._clock()))
        self._wakeup.set()

    def pending(self) -> int:
        return len(self._pending)

    async def run(self) -> None:
        """Write queued events until cancelled."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write every queued event now (aggregating repeats), ``concurrency`` at a time.

        Each round takes queued events up to the first one whose key is already
        in the round, so repeats of one event are written one after another.
        """
        while self._pending:
            batch: list[_Pending] = []
            keys: set[tuple[str, str, str]] = set()
            while self._pending and len(batch) < self.concurrency:
                key = _key(self._pending[0])
                if key in keys:
                    break
                keys.add(key)
                batch.append(self._pending.popleft())
            await asyncio.gather(*(self._write_logged(item) for item in batch))
        self._expire()

    async def _write_logged(self, item: _Pending) -> None:
        try:
            await self._write(item)
        except StoreClientError as err:
            self.failures += 1
            log.warning("event_write_failed", reason=item.reason, error=str(err))
        except Exception:
            self.failures += 1
            log.exception("event_write_failed", reason=item.reason)

    async def _write(self, item: _Pending) -> None:
        key = _key(item)
        seen = self._written.get(key)
        if seen is not None and item.at - seen.last_at <= self.aggregate_window:
            event = pb.Event()
            event.CopyFrom(seen.event)
            event.spec.count += 1
            event.spec.last_timestamp.CopyFrom(_timestamp(item.at))
            try:
                stored = await self._client.update(event)
            except (ConflictError, NotFoundError):
                stored = None  # someone changed or deleted it: start a new Event
            if stored is not None:
                self._written[key] = _Written(stored, item.at)
                return
        stored = await self._client.create(self._new_event(item))
        self._written[key] = _Written(stored, item.at)

    def _new_event(self, item: _Pending) -> pb.Event:
        suffix = secrets.token_hex(8)
        name = f"{item.ref.name[: _MAX_NAME - len(suffix) - 1]}.{suffix}"
        event = pb.Event(
            metadata=pb.ObjectMeta(name=name, namespace=item.ref.namespace or DEFAULT_NAMESPACE)
        )
        spec = event.spec
        spec.involved_object.CopyFrom(item.ref)
        spec.reason = item.reason
        spec.message = item.message
        spec.type = item.type
        spec.source.component = self.component
        spec.source.host = self.host
        spec.first_timestamp.CopyFrom(_timestamp(item.at))
        spec.last_timestamp.CopyFrom(_timestamp(item.at))
        spec.count = 1
        return event

    def _expire(self) -> None:
        now = self._clock()
        for key in [k for k, w in self._written.items() if now - w.last_at > self.aggregate_window]:
            del self._written[key]
