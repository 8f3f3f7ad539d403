"""Keeping a lease alive over the LeaseKeepAlive stream, in a task the KeepAlive owns.

    async with client.keep_alive(lease_id) as ka:
        ...                      # ka.lost is set if the lease is lost
        await ka.wait_lost()     # or: raises LeaseExpiredError when it is

The lease is renewed every ttl/3 seconds. A broken stream is reopened on the
next endpoint (known leader first) and renewal retried until the lease's
expiry; the lease is declared lost when a server answers TTL <= 0 (expired or
revoked) or when no renewal succeeded before the last granted TTL ran out — a
holder must then assume the lease, and anything it guards, is gone. The
renewal task is cancelled when the KeepAlive is closed; it never outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Any, NoReturn

import grpc
import structlog

from mizzen.client import retry_policy
from mizzen.client.endpoints import EOF, REQUIRE_LEADER, EndpointPool
from mizzen.client.errors import (
    LeaseExpiredError,
    StoreClientError,
    UnavailableError,
    from_rpc_error,
)
from protos import rpc_pb2

log = structlog.get_logger("mizzen.client")


class KeepAlive:
    """Renews one lease in the background while open; reports its loss via ``lost``."""

    def __init__(self, pool: EndpointPool, lease_id: int) -> None:
        self._pool = pool
        self.lease_id = lease_id
        self.ttl = 0
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self.renewals = 0
        self._last_sent = 0.0
        self._expires_at = 0.0
        self._call: Any = None
        self._endpoint: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def endpoint(self) -> str | None:
        """The endpoint of the open keep-alive stream, if any."""
        return self._endpoint

    async def start(self) -> KeepAlive:
        """Renew once (raising LeaseExpiredError if the lease is gone), then keep renewing."""
        if self._task is not None:
            raise RuntimeError("KeepAlive already started")
        pool = self._pool
        sent_at = pool.clock()
        ttl = await self._renew(deadline=sent_at + pool.timeout)
        if ttl <= 0:
            self._drop_stream()
            self._mark_lost("lease not found (server TTL <= 0)")
            raise LeaseExpiredError(f"lease {self.lease_id:x}: {self.lost_reason}")
        self._renewed(sent_at, ttl)
        self._task = asyncio.create_task(self._run(), name=f"keepalive-{self.lease_id:x}")
        return self

    async def aclose(self) -> None:
        """Stop renewing (the lease itself is left to expire or be revoked)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._drop_stream()

    async def __aenter__(self) -> KeepAlive:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def check(self) -> None:
        """Raise LeaseExpiredError if the lease has been lost."""
        if self.lost.is_set():
            raise LeaseExpiredError(f"lease {self.lease_id:x}: {self.lost_reason}")

    async def wait_lost(self) -> NoReturn:
        """Block until the lease is lost, then raise LeaseExpiredError."""
        await self.lost.wait()
        self.check()
        raise AssertionError("unreachable")

    # -- the renewal loop ---------------------------------------------------------

    async def _run(self) -> None:
        pool = self._pool
        while True:
            wait = self._last_sent + self.ttl / 3 - pool.clock()
            if wait > 0:
                await asyncio.sleep(wait)
            sent_at = pool.clock()
            try:
                ttl = await self._renew(deadline=self._expires_at)
            except UnavailableError:
                self._mark_lost(f"not renewed within its TTL of {self.ttl}s")
                break
            except StoreClientError as err:  # a definite refusal, or the client closed
                self._mark_lost(str(err))
                break
            if ttl <= 0:
                self._mark_lost("expired or revoked (server TTL <= 0)")
                break
            self._renewed(sent_at, ttl)
        self._drop_stream()

    def _renewed(self, sent_at: float, ttl: int) -> None:
        self.ttl = ttl
        self._last_sent = sent_at
        self._expires_at = sent_at + ttl
        self.renewals += 1

    def _mark_lost(self, reason: str) -> None:
        self.lost_reason = reason
        log.warning("lease_lost", lease=f"{self.lease_id:x}", reason=reason)
        self.lost.set()

    async def _renew(self, deadline: float) -> int:
        """One request/response on the stream, reopening it as needed; the new TTL."""
        pool = self._pool
        delay = 0.05
        last = "no endpoint tried"
        while True:
            remaining = deadline - pool.clock()
            if remaining <= 0:
                raise UnavailableError(f"lease {self.lease_id:x} keep-alive failed ({last})")
            try:
                call = self._call or await self._open_stream(remaining)
                if call is None:
                    last = "no endpoint connected"
                else:
                    async with asyncio.timeout(deadline - pool.clock()):
                        await call.write(rpc_pb2.LeaseKeepAliveRequest(ID=self.lease_id))
                        response = await call.read()
                    if response is not EOF:
                        return int(response.TTL)
                    last = f"{self._endpoint}: stream ended"
            except grpc.aio.AioRpcError as err:
                if not retry_policy.stream_resumable(err.code()):
                    self._drop_stream()
                    raise LeaseExpiredError(str(from_rpc_error(err))) from err
                last = f"{self._endpoint}: {err.code().name}: {err.details()}"
            except TimeoutError:
                last = f"{self._endpoint}: no answer"
            except asyncio.InvalidStateError:  # write() on a stream the server already ended
                last = f"{self._endpoint}: stream ended"
            if self._endpoint is not None:
                pool.mark_failed(self._endpoint)
            self._drop_stream()
            await asyncio.sleep(max(min(delay, deadline - pool.clock()), 0.0))
            delay = min(delay * 2, 0.5)

    async def _open_stream(self, budget: float) -> Any:
        pool = self._pool
        for ep in pool.leader_order():
            conn = pool.connection(ep)
            if await conn.ready(min(budget, pool.connect_timeout)):
                self._call = conn.lease.LeaseKeepAlive(metadata=REQUIRE_LEADER)
                self._endpoint = ep
                return self._call
            pool.mark_failed(ep)
        return None

    def _drop_stream(self) -> None:
        call, self._call = self._call, None
        self._endpoint = None
        if call is not None:
            call.cancel()
