"""Authentication, authorization and per-identity limits for a gRPC aio server.

``AuthInterceptor`` runs before every handler of a secure server:

1. **Who** — the verified client certificate (CN = name, O = ``mizzen:<role>``;
   nodes are ``node:<name>``) or, when the server has a token file, a bearer
   token (``authorization: Bearer <token>``, looked up by its SHA-256). Neither
   → UNAUTHENTICATED. Health checks are public.
2. **Limits** — a token bucket of requests per second per identity (stream
   messages count too), a cap on open watches per identity and, for the
   server's write methods, write quotas per identity: writes per second and
   request bytes per second (node identities have their own, lower ones).
   Each is answered with RESOURCE_EXHAUSTED naming the identity and the limit;
   the rate limit and the quotas also say how long to wait, in the message and
   in a ``retry-after`` trailer (``mizzen.retry_after``). A write refused by a
   quota says "too many requests": nothing was proposed, so the SDK waits and
   retries it.
3. **May they** — the server's ``Policy`` sees the identity, the method and
   each request message (unary, server-streaming, and every message of a
   client stream) and raises ``Denied``; the caller gets PERMISSION_DENIED
   with the identity and the verb, and the denial is logged.

The authenticated identity is also left in the ``CALLER`` context variable for
the handler (every RPC runs in its own asyncio task, so it is that call's
caller): rules that depend on stored state are decided by the handler on the
state it acts on (the store's ``store/authz.py``), not here.

An insecure server (loopback or ``--insecure``) installs no interceptor: every
caller is the anonymous admin.

One file because who, limits and authorization run in one interceptor per
call, in that order; the identity, the buckets and the watch counts are the
state that interceptor keeps.
"""

from __future__ import annotations

import contextvars
import functools
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import structlog
from cryptography import x509
from cryptography.x509.oid import NameOID

from mizzen import retry_after
from mizzen.echo import bounded_status
from mizzen.grpc_intercept import CachingInterceptor
from mizzen.security.identities import ROLE_PREFIX, ROLES
from mizzen.security.tls import AUTHORIZATION, BEARER
from mizzen.security.tokens import lookup

log = structlog.get_logger("mizzen.auth")

NODE_PREFIX = "node:"
PUBLIC_SERVICES = ("grpc.health.v1.Health",)


@dataclass(frozen=True)
class Identity:
    name: str
    role: str

    @property
    def node(self) -> str | None:
        """The node name of a node identity (CN ``node:<name>``), else None."""
        if self.role == "node" and self.name.startswith(NODE_PREFIX):
            return self.name[len(NODE_PREFIX) :]
        return None

    def __str__(self) -> str:
        return f"{self.name} (role {self.role})"


CALLER: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "mizzen_caller", default=None
)
"""The authenticated caller of the current call; None on a server without AuthInterceptor."""


def current_caller() -> Identity | None:
    return CALLER.get()


class Denied(Exception):
    """A policy's refusal: ``verb`` is what was attempted, ``reason`` why not."""

    def __init__(self, verb: str, reason: str) -> None:
        super().__init__(f"{verb}: {reason}")
        self.verb = verb
        self.reason = reason

    def message(self, identity: Identity) -> str:
        """What the caller is told (with PERMISSION_DENIED)."""
        return bounded_status(f"mizzen: {identity} may not {self.verb}: {self.reason}")

    def log(self, identity: Identity, method: str) -> None:
        log.warning(
            "permission_denied",
            identity=identity.name,
            role=identity.role,
            method=method,
            verb=self.verb,
            reason=self.reason,
        )


class Policy(Protocol):
    async def authorize(self, identity: Identity, method: str, request: Any) -> None:
        """Raise Denied unless identity may send this request to this method."""

    def watch_delta(self, method: str, request: Any) -> int:
        """How many watches this message opens (+) or closes (-) beyond the stream itself."""

    def watch_answer(self, method: str, response: Any) -> WatchAnswer | None:
        """What an answer on a stream did to one watch it counts (None: nothing).

        For a stream whose watches end by the server's answer (etcd's Watch: a
        cancel request may name an id that was never opened), requests only open
        (watch_delta +1) and answers release: ("refused", id) a create that did
        not open, ("opened", id), then ("closed", id) once, for an opened id."""


WatchAnswer = tuple[str, int]


MIB = 1024 * 1024
QUOTA_BURST_SECONDS = 2.0
# A bytes bucket holds at least this much, so the largest request (gRPC's 2 MiB
# receive limit) can always pass once the bucket is full.
MIN_BYTES_BURST = 2 * MIB


@dataclass(frozen=True)
class WriteQuota:
    """Writes per second and request bytes per second of one identity; 0 turns one off.

    Each is a token bucket holding ``QUOTA_BURST_SECONDS`` of its rate (a bytes
    bucket at least ``MIN_BYTES_BURST``).
    """

    writes: float
    bytes: float

    @property
    def writes_burst(self) -> float:
        return max(1.0, self.writes * QUOTA_BURST_SECONDS)

    @property
    def bytes_burst(self) -> float:
        return max(float(MIN_BYTES_BURST), self.bytes * QUOTA_BURST_SECONDS)


@dataclass(frozen=True)
class Limits:
    """Per-identity limits; 0 turns one off."""

    rate: float = 2000.0  # requests (and stream messages) per second
    burst: int = 4000
    max_watches: int = 512  # open watch streams plus etcd watch ids
    max_concurrent_streams: int = 1024  # per HTTP/2 connection (a gRPC server option)
    # Write quotas (the server's write methods): every role but node, and node
    # identities. Far above what a scheduler binding hundreds of pods/s or an agent
    # reporting status needs; they stop one identity from swamping Raft.
    write_rate: float = 2000.0
    write_bytes_rate: float = 32 * MIB
    node_write_rate: float = 100.0
    node_write_bytes_rate: float = 1 * MIB

    def write_quota(self, identity: Identity) -> WriteQuota:
        if identity.role == "node":
            return WriteQuota(self.node_write_rate, self.node_write_bytes_rate)
        return WriteQuota(self.write_rate, self.write_bytes_rate)


@functools.lru_cache(maxsize=1024)
def identity_from_pem(pem: bytes) -> Identity | None:
    """The identity a (verified) certificate names, or None if it names no valid one."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    roles = [str(o.value)[len(ROLE_PREFIX) :] for o in orgs if str(o.value).startswith(ROLE_PREFIX)]
    if len(names) != 1 or len(roles) != 1 or roles[0] not in ROLES:
        return None
    identity = Identity(str(names[0].value), roles[0])
    if identity.role == "node" and not identity.node:
        return None
    return identity


def bearer_token(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == AUTHORIZATION and isinstance(value, str) and value.startswith(BEARER):
            return value[len(BEARER) :].strip()
    return None


class TokenBucket:
    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate, self.burst, self.clock = rate, float(burst), clock
        self.tokens = float(burst)
        self.stamp = clock()

    def wait_for(self, cost: float = 1.0) -> float:
        """Seconds until ``cost`` tokens are there (0.0: now); takes nothing.

        A cost above the burst is counted as the burst, so it passes once the
        bucket is full.
        """
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        missing = min(cost, self.burst) - self.tokens
        return 0.0 if missing <= 0 else missing / self.rate

    def spend(self, cost: float = 1.0) -> None:
        self.tokens -= min(cost, self.burst)

    def take(self, cost: float = 1.0) -> bool:
        if self.wait_for(cost) > 0:
            return False
        self.spend(cost)
        return True


class Exhausted(Exception):
    """A limit was hit; ``retry_after`` seconds is when trying again can succeed (if known)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _per_second(rate: float, unit: str) -> str:
    if unit == "bytes" and rate >= MIB:
        return f"{rate / MIB:g} MiB/s"
    if unit == "bytes" and rate >= 1024:
        return f"{rate / 1024:g} KiB/s"
    return f"{rate:g} {unit}/s"


class IdentityLimits:
    """Token buckets and watch counts per identity name."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._writes: dict[str, TokenBucket] = {}
        self._write_bytes: dict[str, TokenBucket] = {}
        self.watches: dict[str, int] = {}

    def _bucket(
        self, buckets: dict[str, TokenBucket], name: str, rate: float, burst: float
    ) -> TokenBucket:
        bucket = buckets.get(name)
        if bucket is None:
            bucket = buckets[name] = TokenBucket(rate, burst, self.clock)
        return bucket

    def request(self, identity: Identity) -> None:
        if self.limits.rate <= 0:
            return
        burst = max(self.limits.burst, 1)
        bucket = self._bucket(self._buckets, identity.name, self.limits.rate, burst)
        wait = bucket.wait_for()
        if wait > 0:
            raise Exhausted(
                f"mizzen: rate limit exceeded for {identity.name}: "
                f"{self.limits.rate:g} requests/s (burst {self.limits.burst}); "
                f"retry after {retry_after.seconds_text(wait)} s",
                wait,
            )
        bucket.spend()

    def write(self, identity: Identity, size: int) -> None:
        """Count one write of ``size`` request bytes against the identity's write quota.

        Raises Exhausted (nothing counted) when either bucket is short, with the
        seconds until both would have enough.
        """
        quota = self.limits.write_quota(identity)
        checks: list[tuple[TokenBucket, float, str]] = []
        if quota.writes > 0:
            bucket = self._bucket(self._writes, identity.name, quota.writes, quota.writes_burst)
            checks.append((bucket, 1.0, f"{_per_second(quota.writes, 'writes')}"))
        if quota.bytes > 0:
            bucket = self._bucket(self._write_bytes, identity.name, quota.bytes, quota.bytes_burst)
            checks.append((bucket, float(size), f"{_per_second(quota.bytes, 'bytes')}"))
        waits = [(bucket.wait_for(cost), what) for bucket, cost, what in checks]
        wait, what = max(waits, default=(0.0, ""))
        if wait > 0:
            raise Exhausted(
                f"mizzen: too many requests: {identity.name} exceeded its write quota of "
                f"{what}; retry after {retry_after.seconds_text(wait)} s",
                wait,
            )
        for bucket, cost, _ in checks:
            bucket.spend(cost)

    def open_watches(self, identity: Identity, n: int) -> None:
        """Count n more (or, negative, fewer) watches; raise Exhausted past the cap."""
        current = self.watches.get(identity.name, 0)
        cap = self.limits.max_watches
        if n > 0 and cap > 0 and current + n > cap:
            raise Exhausted(f"mizzen: too many watches for {identity.name}: limit {cap}")
        total = current + n
        if total > 0:
            self.watches[identity.name] = total
        else:
            self.watches.pop(identity.name, None)


Handler = grpc.RpcMethodHandler


async def _exhausted(context: grpc.aio.ServicerContext, err: Exhausted) -> None:
    trailer = () if err.retry_after is None else retry_after.trailer(err.retry_after)
    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(err), trailing_metadata=trailer)


class AuthInterceptor(CachingInterceptor):
    """Authenticate, rate-limit and authorize every call (see the module docstring)."""

    def __init__(
        self,
        policy: Policy,
        *,
        tokens: Mapping[str, tuple[str, str]] | None = None,
        limits: Limits | None = None,
        watch_methods: frozenset[str] = frozenset(),
        write_methods: frozenset[str] = frozenset(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.tokens = dict(tokens or {})
        self.limits = IdentityLimits(limits or Limits(), clock)
        self.watch_methods = watch_methods
        self.write_methods = write_methods
        super().__init__()

    def rewrap(self, method: str, handler: Handler) -> Handler:
        if method.lstrip("/").partition("/")[0] in PUBLIC_SERVICES:
            return handler
        return self._wrap(method, handler)

    # -------------------------------------------------------------- identity

    def identify(self, context: grpc.aio.ServicerContext) -> Identity | None:
        auth = context.auth_context()
        pems = auth.get("x509_pem_cert")
        if pems:
            return identity_from_pem(next(iter(pems)))
        token = bearer_token(context.invocation_metadata())
        if token is None:
            return None
        found = lookup(self.tokens, token)
        return Identity(*found) if found else None

    async def _admit(
        self, method: str, request: Any, context: grpc.aio.ServicerContext, identity: Identity
    ) -> None:
        try:
            self.limits.request(identity)
            if method in self.write_methods:
                self.limits.write(identity, request.ByteSize())
        except Exhausted as err:
            await _exhausted(context, err)
        try:
            await self.policy.authorize(identity, method, request)
        except Denied as denied:
            denied.log(identity, method)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, denied.message(identity))

    async def _who(self, context: grpc.aio.ServicerContext) -> Identity:
        identity = self.identify(context)
        if identity is None:
            has_cert = bool(context.auth_context().get("x509_pem_cert"))
            has_token = bearer_token(context.invocation_metadata()) is not None
            why = (
                "the client certificate names no mizzen identity (CN, O=mizzen:<role>)"
                if has_cert
                else "invalid bearer token"
                if has_token
                else "no client certificate or bearer token"
            )
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"mizzen: {why}")
        assert identity is not None
        CALLER.set(identity)  # this call's task: the handler sees it, no other call does
        return identity

    # -------------------------------------------------------------- wrapping

    def _wrap(self, method: str, handler: Handler) -> Handler:
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary_unary(method, handler.unary_unary), **kwargs
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._unary_stream(method, handler.unary_stream), **kwargs
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._stream_unary(method, handler.stream_unary), **kwargs
            )
        return grpc.stream_stream_rpc_method_handler(
            self._stream_stream(method, handler.stream_stream), **kwargs
        )

    def _unary_unary(self, method: str, behavior: Any) -> Any:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            identity = await self._who(context)
            await self._admit(method, request, context, identity)
            return await behavior(request, context)

        return call

    def _unary_stream(self, method: str, behavior: Any) -> Any:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            identity = await self._who(context)
            await self._admit(method, request, context, identity)
            async with self._watching(method, context, identity) as counted:
                del counted
                async for item in behavior(request, context):
                    yield item

        return call

    def _checked(
        self,
        method: str,
        requests: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
        identity: Identity,
        counted: list[int],
    ) -> AsyncIterator[Any]:
        async def checked() -> AsyncIterator[Any]:
            async for request in requests:
                await self._admit(method, request, context, identity)
                delta = self.policy.watch_delta(method, request)
                if delta:
                    delta = max(delta, -counted[0])
                    try:
                        self.limits.open_watches(identity, delta)
                    except Exhausted as err:
                        await _exhausted(context, err)
                    counted[0] += delta
                yield request

        return checked()

    def _stream_unary(self, method: str, behavior: Any) -> Any:
        async def call(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            identity = await self._who(context)
            counted = [0]
            try:
                return await behavior(
                    self._checked(method, requests, context, identity, counted), context
                )
            finally:
                self.limits.open_watches(identity, -counted[0])

        return call

    def _stream_stream(self, method: str, behavior: Any) -> Any:
        async def call(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            identity = await self._who(context)
            watching = self._watching(method, context, identity)
            async with watching as counted:
                checked = self._checked(method, requests, context, identity, counted)
                async for item in behavior(checked, context):
                    answer = self.policy.watch_answer(method, item)
                    if answer is not None:
                        watching.answered(answer)
                    yield item

        return call

    def _watching(
        self, method: str, context: grpc.aio.ServicerContext, identity: Identity
    ) -> _WatchCount:
        return _WatchCount(self, method, context, identity)


class _WatchCount:
    """Counts a watch stream (and the watches opened on it) for its identity while open."""

    def __init__(
        self,
        interceptor: AuthInterceptor,
        method: str,
        context: grpc.aio.ServicerContext,
        identity: Identity,
    ) -> None:
        self.interceptor = interceptor
        self.stream = 1 if method in interceptor.watch_methods else 0
        self.context = context
        self.identity = identity
        self.counted = [0]
        self.opened: set[int] = set()  # ids the server answered as open (watch_answer)

    async def __aenter__(self) -> list[int]:
        if self.stream:
            try:
                self.interceptor.limits.open_watches(self.identity, 1)
            except Exhausted as err:
                await _exhausted(self.context, err)
        return self.counted

    async def __aexit__(self, *exc: object) -> None:
        self.interceptor.limits.open_watches(self.identity, -(self.stream + self.counted[0]))

    def answered(self, answer: WatchAnswer) -> None:
        """Release what a refused create reserved, or an opened watch once it closed."""
        what, watch_id = answer
        if what == "opened":
            self.opened.add(watch_id)
            return
        if what == "closed":
            if watch_id not in self.opened:
                return  # never opened, or already closed (a cancel after a compaction's)
            self.opened.discard(watch_id)
        if self.counted[0] > 0:
            self.counted[0] -= 1
            self.interceptor.limits.open_watches(self.identity, -1)


class RolePolicy:
    """Allow whole roles (admin always): enough for a server whose every method is one verb."""

    def __init__(self, roles: frozenset[str], what: str) -> None:
        self.roles = roles | {"admin"}
        self.what = what

    async def authorize(self, identity: Identity, method: str, request: Any) -> None:
        if identity.role not in self.roles:
            allowed = ", ".join(sorted(self.roles))
            raise Denied(self.what, f"only roles {allowed} may")

    def watch_delta(self, method: str, request: Any) -> int:
        return 0

    def watch_answer(self, method: str, response: Any) -> WatchAnswer | None:
        return None
