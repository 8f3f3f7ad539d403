"""A resuming watch: an async iterator of event batches that survives endpoint failures.

Guarantees, given a store that keeps its watch contract:

* batches arrive in revision order, with no gap and no duplicate, across any
  number of broken streams: after a failure the watch is re-created on the
  next endpoint from ``last_revision + 1`` and events below that are dropped;
* when the store says the start revision was compacted away, iteration raises
  ``CompactedError(compact_revision)`` and the caller must relist;
* a server-side cancel with a reason (e.g. a slow watcher) resumes like a
  broken stream; a watch the server refuses to create raises.

Each Watcher owns exactly one Watch stream at a time (one watch per stream);
the stream is cancelled when the iterator is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from types import TracebackType

import grpc
import structlog

from mizzen.client import retry_policy
from mizzen.client.endpoints import EOF, REQUIRE_LEADER, Connection, EndpointPool, Metadata
from mizzen.client.errors import (
    CompactedError,
    StoreClientError,
    UnavailableError,
    from_rpc_error,
)
from mizzen.client.records import WatchBatch, WatchEvent
from protos import rpc_pb2

log = structlog.get_logger("mizzen.client")


class Watcher:
    """``async for batch in watcher`` — see the module docstring for what is guaranteed.

    ``endpoint`` is the endpoint serving the current stream (None between
    streams); ``last_revision`` the newest revision delivered or known to be
    covered by a progress notification (``start_revision - 1`` at first).
    """

    def __init__(
        self,
        pool: EndpointPool,
        key: bytes,
        range_end: bytes,
        *,
        start_revision: int = 0,
        prev_kv: bool = False,
        progress_notify: bool = False,
        resume_timeout: float = 30.0,
    ) -> None:
        self._pool = pool
        self._key = key
        self._range_end = range_end
        self._prev_kv = prev_kv
        self._progress_notify = progress_notify
        self._resume_timeout = resume_timeout
        self._next = max(start_revision, 0)
        self.endpoint: str | None = None
        self.resumes = 0
        self._gen = self._run()

    @property
    def last_revision(self) -> int:
        return self._next - 1

    def __aiter__(self) -> Watcher:
        return self

    async def __anext__(self) -> WatchBatch:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        await self._gen.aclose()

    async def __aenter__(self) -> Watcher:
        """Pin "from now" to a revision, so every change after entering is delivered.

        A Watcher iterated without ``async with`` starts "now" only when first iterated.
        """
        if self._next == 0:
            request = rpc_pb2.RangeRequest(
                key=self._key, range_end=self._range_end, count_only=True
            )

            async def send(conn: Connection, t: float, md: Metadata) -> rpc_pb2.RangeResponse:
                return await conn.kv.Range(request, timeout=t, metadata=md)

            response = await self._pool.call(send, mutating=False, what="watch_start")
            self._next = int(response.header.revision) + 1
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _create_request(self) -> rpc_pb2.WatchRequest:
        return rpc_pb2.WatchRequest(
            create_request=rpc_pb2.WatchCreateRequest(
                key=self._key,
                range_end=self._range_end,
                start_revision=self._next,
                prev_kv=self._prev_kv,
                progress_notify=self._progress_notify,
            )
        )

    async def _run(self) -> AsyncGenerator[WatchBatch, None]:
        pool = self._pool
        failures = 0
        outage_since: float | None = None
        while True:
            if pool.closed:
                raise StoreClientError("client is closed")
            if failures:
                now = pool.clock()
                outage_since = now if outage_since is None else outage_since
                if now - outage_since > self._resume_timeout:
                    raise UnavailableError(
                        f"watch could not resume from revision {self._next} "
                        f"within {self._resume_timeout}s"
                    )
                if failures > 1:
                    await asyncio.sleep(min(0.05 * 2 ** (failures - 2), 1.0))
            ep = pool.read_order()[0]
            conn = pool.connection(ep)
            if not await conn.ready(pool.connect_timeout):
                pool.mark_failed(ep)
                failures += 1
                continue
            call = conn.watch.Watch(metadata=REQUIRE_LEADER)
            try:
                with contextlib.suppress(asyncio.InvalidStateError):
                    await call.write(self._create_request())  # if the call ended, read() says why
                while True:
                    response = await call.read()
                    if response is EOF:
                        log.info("watch_stream_ended", endpoint=ep, next_revision=self._next)
                        break
                    assert isinstance(response, rpc_pb2.WatchResponse)
                    if response.compact_revision > 0:
                        raise CompactedError(int(response.compact_revision))
                    if response.canceled:
                        if response.created:
                            raise StoreClientError(
                                f"watch rejected by {ep}: {response.cancel_reason}"
                            )
                        log.info(
                            "watch_canceled_by_server",
                            endpoint=ep,
                            reason=response.cancel_reason,
                            next_revision=self._next,
                        )
                        break
                    if response.created:
                        if self._next == 0:
                            self._next = int(response.header.revision) + 1
                        self.endpoint = ep
                        outage_since = None
                        continue
                    batch = self._accept(response)
                    if batch is not None:
                        failures = 0
                        yield batch
            except asyncio.CancelledError:
                pool.raise_if_closed_under_us()
                raise
            except grpc.aio.AioRpcError as err:
                if not retry_policy.stream_resumable(err.code()):
                    raise from_rpc_error(err) from err
                log.info(
                    "watch_stream_failed",
                    endpoint=ep,
                    code=err.code().name,
                    next_revision=self._next,
                )
                pool.mark_failed(ep)
            finally:
                call.cancel()
                self.endpoint = None
            failures += 1
            self.resumes += 1

    def _accept(self, response: rpc_pb2.WatchResponse) -> WatchBatch | None:
        """The batch to deliver (duplicates dropped), advancing the resume point."""
        header_revision = int(response.header.revision)
        if not response.events:
            self._next = max(self._next, header_revision + 1)
            return WatchBatch((), self._next - 1)
        events = tuple(
            WatchEvent.from_proto(ev) for ev in response.events if ev.kv.mod_revision >= self._next
        )
        if not events:
            return None
        self._next = events[-1].revision + 1
        return WatchBatch(events, header_revision)
