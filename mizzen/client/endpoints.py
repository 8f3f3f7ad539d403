"""One gRPC channel per endpoint, the leader we follow, and the retrying unary call.

``EndpointPool.call`` runs one RPC under an overall deadline, moving to the next
endpoint as ``retry_policy.classify`` allows. Writes go to the leader first: the
pool learns it from Maintenance.Status (the endpoint whose header.member_id
equals StatusResponse.leader) and re-learns it when it goes stale or fails.
Reads stick to one endpoint and move on only when it fails.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc
import structlog

from mizzen import retry_after
from mizzen.client import retry_policy
from mizzen.client.errors import AmbiguousWriteError, StoreClientError, UnavailableError, translate
from mizzen.client.retry_policy import Verdict
from mizzen.security.tls import INSECURE, ClientCredentials
from protos import rpc_pb2, rpc_pb2_grpc

log = structlog.get_logger("mizzen.client")

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]

REQUIRE_LEADER: Metadata = (("hasleader", "true"),)
"""etcd's RequireLeader metadata: a member without a leader rejects up front."""
NO_METADATA: Metadata = ()

CHANNEL_OPTIONS: list[tuple[str, object]] = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Pings every 10 s (etcd refuses clients pinging more often than every 5 s).
    # gRPC also sets TCP_USER_TIMEOUT to the keepalive timeout: a request sent
    # to a host that died or was cut off fails after 1.5 s without a TCP ACK
    # instead of waiting for the call deadline, so the client moves to the new
    # leader (bench/failover_bench.py, whole leader host lost: 5.4 s -> 1.9 s).
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 1_500),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]

EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]
"""What a stream's read() returns once the server has closed it (missing from grpc-stubs)."""

_READY = grpc.ChannelConnectivity.READY
_DEAD = (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN)


class Connection:
    """A channel to one endpoint and the etcd service stubs on it."""

    def __init__(self, address: str, channel: grpc.aio.Channel) -> None:
        self.address = address
        self.channel = channel
        self.kv = rpc_pb2_grpc.KVStub(channel)
        self.watch = rpc_pb2_grpc.WatchStub(channel)
        self.lease = rpc_pb2_grpc.LeaseStub(channel)
        self.cluster = rpc_pb2_grpc.ClusterStub(channel)
        self.maintenance = rpc_pb2_grpc.MaintenanceStub(channel)

    @classmethod
    def open(cls, address: str, credentials: ClientCredentials = INSECURE) -> Connection:
        return cls(address, credentials.aio_channel(address, CHANNEL_OPTIONS))

    @staticmethod
    def opener(credentials: ClientCredentials | None) -> ConnectFn:
        """A ConnectFn opening channels with these credentials (plaintext when None)."""
        creds = credentials or INSECURE
        return lambda address: Connection.open(address, creds)

    async def ready(self, timeout: float) -> bool:
        """Connect if needed; True once READY, False on failure or after timeout.

        False guarantees nothing was sent on this channel by the caller.
        """
        state = self.channel.get_state(try_to_connect=True)
        if state is _READY:
            return True
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                while state is not _READY:
                    if state in _DEAD:
                        return False
                    await self.channel.wait_for_state_change(state)
                    state = self.channel.get_state(try_to_connect=True)
        except TimeoutError:
            return False
        return True

    async def failure(self, timeout: float = 0.2) -> str | None:
        """Why the channel last failed to connect, in gRPC's words; None if it has not.

        A call without wait-for-ready on a channel in TRANSIENT_FAILURE fails at
        once with that reason, sending nothing.
        """
        if self.channel.get_state() is not grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            return None
        try:
            await self.maintenance.Status(
                rpc_pb2.StatusRequest(), timeout=timeout, wait_for_ready=False
            )
        except grpc.aio.AioRpcError as err:
            if err.code() is grpc.StatusCode.UNAVAILABLE:
                details = err.details() or ""
                return details.rpartition("last error: ")[2] or details
        return None

    async def close(self) -> None:
        await self.channel.close(None)


REFUSAL_WINDOW = 1.0
"""Seconds an endpoint must keep refusing (closing connections in the handshake, or
refusing the TCP connection: nothing listening) before a call stops waiting for it.
Several reconnect attempts fit in it, and so does a quick restart of a store; a named
TLS failure counts at once."""


class Refusals:
    """The endpoints that refuse this client, during one call, and how.

    So that a client with the wrong certificate (or none, or plaintext against
    TLS), or one pointed where no store runs, fails in about a second with the
    reason instead of retrying until its deadline. An endpoint counts only
    while it keeps refusing the same way: one that answers, times out, or
    changes how it refuses (a restarting store) starts over.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._since: dict[str, tuple[retry_policy.Refusal, float]] = {}

    def note(self, endpoint: str, reason: str | None) -> None:
        kind = retry_policy.connect_refusal(reason or "")
        if kind is None:
            self._since.pop(endpoint, None)
            return
        now = self._clock()
        if kind is retry_policy.Refusal.FINAL:
            self._since[endpoint] = (kind, now - REFUSAL_WINDOW)
        elif endpoint not in self._since or self._since[endpoint][0] is not kind:
            self._since[endpoint] = (kind, now)

    def everywhere(self, endpoints: Sequence[str]) -> bool:
        """True when every one of endpoints has refused for REFUSAL_WINDOW."""
        now = self._clock()
        return bool(endpoints) and all(
            ep in self._since and now - self._since[ep][1] >= REFUSAL_WINDOW for ep in endpoints
        )

    def kinds(self, endpoints: Sequence[str]) -> set[retry_policy.Refusal]:
        """How endpoints refuse (those that do)."""
        return {self._since[ep][0] for ep in endpoints if ep in self._since}


ConnectFn = Callable[[str], Connection]
Send = Callable[[Connection, float, Metadata], Awaitable[T]]


class EndpointPool:
    """Channels, the preferred read endpoint, the known leader, and ``call``."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float,
        connect_timeout: float = 1.0,
        leader_ttl: float = 10.0,
        connect: ConnectFn | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not endpoints:
            raise ValueError("StoreClient needs at least one endpoint")
        self.sleep = sleep
        self.endpoints: tuple[str, ...] = tuple(endpoints)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.leader_ttl = leader_ttl
        self.clock = clock
        self._connect = connect or Connection.open
        self._conns: dict[str, Connection] = {}
        self._preferred = 0
        self._leader: str | None = None
        self._leader_learned = float("-inf")
        self._leader_probed = float("-inf")
        self.member_ids: dict[str, int] = {}
        self.last_endpoint: str | None = None
        self.closed = False

    # -- endpoints ------------------------------------------------------------------

    def connection(self, endpoint: str) -> Connection:
        if self.closed:
            raise StoreClientError("client is closed")
        conn = self._conns.get(endpoint)
        if conn is None:
            conn = self._conns[endpoint] = self._connect(endpoint)
        return conn

    @property
    def leader(self) -> str | None:
        return self._leader

    def read_order(self) -> list[str]:
        eps = self.endpoints
        return [eps[(self._preferred + i) % len(eps)] for i in range(len(eps))]

    def leader_order(self) -> list[str]:
        """Known leader first, then the read order; no probing."""
        order = self.read_order()
        if self._leader is not None and self._leader in order:
            order.remove(self._leader)
            order.insert(0, self._leader)
        return order

    def mark_failed(self, endpoint: str) -> None:
        if self.endpoints[self._preferred] == endpoint:
            self._preferred = (self._preferred + 1) % len(self.endpoints)
        if self._leader == endpoint:
            self._leader = None

    def mark_ok(self, endpoint: str) -> None:
        self.last_endpoint = endpoint

    async def write_order(self, deadline: float) -> list[str]:
        """Leader first, learning it when unknown or stale (at most every 0.5 s)."""
        now = self.clock()
        if len(self.endpoints) > 1:
            stale = self._leader is None or now - self._leader_learned > self.leader_ttl
            if stale and now - self._leader_probed >= 0.5:
                budget = min(self.connect_timeout, max(deadline - now, 0.0) / 2)
                await self.refresh_leader(budget)
        return self.leader_order()

    async def refresh_leader(self, budget: float) -> str | None:
        """Ask every endpoint for Status concurrently; remember the one that leads."""
        self._leader_probed = self.clock()
        answers = await asyncio.gather(*(self._status_of(ep, budget) for ep in self.endpoints))
        for ep, status in zip(self.endpoints, answers, strict=True):
            if status is not None:
                self.member_ids[ep] = int(status.header.member_id)
        claims = [
            (int(status.raftTerm), ep)
            for ep, status in zip(self.endpoints, answers, strict=True)
            if status is not None
            and status.leader != 0
            and status.leader == status.header.member_id
        ]
        if not claims:
            self._leader = None
            return None
        _, ep = max(claims)  # a deposed leader that has not noticed yet has an older term
        if ep != self._leader:
            log.info("store_leader_learned", endpoint=ep, member_id=self.member_ids.get(ep))
        self._leader = ep
        self._leader_learned = self.clock()
        return ep

    async def _status_of(self, endpoint: str, budget: float) -> rpc_pb2.StatusResponse | None:
        conn = self.connection(endpoint)
        if not await conn.ready(budget):
            return None
        try:
            response: rpc_pb2.StatusResponse = await conn.maintenance.Status(
                rpc_pb2.StatusRequest(), timeout=max(budget, 0.05)
            )
        except grpc.RpcError:
            return None
        return response

    # -- the retrying call --------------------------------------------------------

    async def call(
        self,
        send: Send[T],
        *,
        mutating: bool,
        require_leader: bool = True,
        endpoint: str | None = None,
        timeout: float | None = None,
        what: str = "call",
    ) -> T:
        """Run send on endpoints in turn until it succeeds, under one overall deadline.

        ``send(conn, attempt_timeout, metadata)`` performs the RPC. See
        ``retry_policy`` for when a failure moves on and when it is raised. A
        retryable refusal that says when to retry (a ``retry-after`` trailer: a
        write quota, a full proposal queue) is retried after that long, from the
        first endpoint again rather than on another member (each member counts
        its own quota); when that is past the deadline the call fails at once
        with the error, whose ``retry_after`` says it.
        """
        total = self.timeout if timeout is None else timeout
        deadline = self.clock() + total
        metadata = REQUIRE_LEADER if require_leader else NO_METADATA
        last: str = "no endpoint tried"
        refusals = Refusals(self.clock)
        delay = 0.05
        while True:
            told_to_wait = False
            if endpoint is not None:
                order = [endpoint]
            elif mutating:
                order = await self.write_order(deadline)
            else:
                order = self.read_order()
            for i, ep in enumerate(order):
                remaining = deadline - self.clock()
                if remaining <= 0:
                    break
                conn = self.connection(ep)
                if not await conn.ready(min(remaining, self.connect_timeout)):
                    reason = await conn.failure()
                    last = f"{ep}: {reason or 'not connected'}"
                    refusals.note(ep, reason)
                    self.mark_failed(ep)
                    continue
                refusals.note(ep, None)
                remaining = deadline - self.clock()
                attempt = remaining
                if not mutating and i < len(order) - 1:
                    attempt = max(remaining / 2, min(remaining, self.connect_timeout))
                try:
                    result = await send(conn, attempt, metadata)
                except asyncio.CancelledError:
                    self.raise_if_closed_under_us()
                    raise
                except grpc.aio.AioRpcError as err:
                    code, details = err.code(), err.details() or ""
                    wait = retry_after.parse(err.trailing_metadata())
                    verdict = retry_policy.classify(code, details, mutating=mutating)
                    if verdict is Verdict.FAIL:
                        raise translate(code, details, retry_after=wait) from err
                    if verdict is Verdict.AMBIGUOUS:
                        raise AmbiguousWriteError(
                            f"{what} to {ep} may or may not have been applied: "
                            f"{code.name}: {details}",
                            code=code,
                            details=details,
                        ) from err
                    log.debug("store_call_retry", what=what, endpoint=ep, code=code.name)
                    last = f"{ep}: {code.name}: {details}"
                    if wait is not None:
                        if self.clock() + wait > deadline:
                            raise translate(code, details, retry_after=wait) from err
                        await self.sleep(wait)
                        told_to_wait = True
                        break
                    self.mark_failed(ep)
                    continue
                self.mark_ok(ep)
                return result
            if told_to_wait:
                continue
            if refusals.everywhere(order):
                if refusals.kinds(order) == {retry_policy.Refusal.NOT_LISTENING}:
                    raise UnavailableError(f"{what}: nothing is listening at {', '.join(order)}")
                raise UnavailableError(f"{what}: refused in the TLS handshake ({last})")
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise UnavailableError(f"{what}: no endpoint answered within {total}s ({last})")
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.5)

    def raise_if_closed_under_us(self) -> None:
        """Called on CancelledError: closing the client cancels its calls, and that
        must reach callers as an error, not as a cancellation of their own task."""
        task = asyncio.current_task()
        if self.closed and task is not None and task.cancelling() == 0:
            raise StoreClientError("client is closed") from None

    async def close(self) -> None:
        self.closed = True
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            await conn.close()
