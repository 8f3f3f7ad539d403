"""Enforce etcd's auth (users, roles, key-range permissions) on the raw etcd APIs.

With etcd auth off nothing changes, except that a request carrying a ``token``
must carry a valid one (etcd refuses any token it does not know, and there is
none while auth is off). With it on, each raw etcd method is one of:

* free — Maintenance.Status, Cluster.MemberList, LeaseKeepAlive,
  LeaseTimeToLive, LeaseLeases, AuthStatus: no token needed or looked at;
* token only — LeaseGrant, Compact, Alarm, Authenticate: a token, if given,
  must be valid (etcd 3.4 checks nothing more for these);
* keys — Range, Put, DeleteRange, Txn, Watch (each create), LeaseRevoke (every
  key of the lease), Lock and Election: the user's roles must grant the verb
  on every key range the request touches (``store/authz.py``
  ``key_ranges``);
* root — the Auth service's admin methods (UserGet of oneself and RoleGet of
  one's own role excepted), Cluster's member changes, Maintenance's Hash,
  HashKV, Snapshot, Defragment and MoveLeader.

A decision with a token is made after a Raft barrier (a serializable Range
excepted, which etcd also answers from the member's own state), so a revoked
permission, a deleted user or a changed password count from the next request
on, whichever member it reaches.

Who else may: on a secure store every caller already has a Mizzen identity
(certificate or bearer token) and keeps its role's rights (``StorePolicy``);
an etcd token is one more way to be allowed a raw etcd request
(``EtcdUserPolicy``). Without a token, or when the etcd user is not allowed,
the Mizzen role decides. On a plaintext store (no identities) the etcd user
decides, and a request without a token is refused as etcd refuses it — except
the ``controller`` role's raw rights (the leader-election keys under
``/mizzen/leader/``, revoking a lease whose keys are all there; the rest of the
Lease API needs no token anyway), so a plaintext cluster's controllers keep
electing their leader.

Watch streams: a refused create is answered on the stream (etcd's
created+canceled response) through a queue merged with the service's own
responses; a stream opened without a token while auth is off skips that queue
(one generator layer less per response) and, if auth is turned on meanwhile, a
refused create ends it with the same error.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from mizzen.grpc_intercept import CachingInterceptor
from mizzen.security.server_auth import Identity, Policy, WatchAnswer
from mizzen.security.tls import AUTHORIZATION, BEARER
from protos import rpc_pb2

from . import etcd_auth
from .authz import LEADER_PREFIX, LOCK_ELECTION_METHODS, key_ranges, within
from .errors import StoreError
from .node import StoreNode
from .state_machine import StateMachine

TOKEN = "token"
AUTH = "/etcdserverpb.Auth/"
FREE = frozenset(
    {
        "/etcdserverpb.Maintenance/Status",
        "/etcdserverpb.Cluster/MemberList",
        "/etcdserverpb.Lease/LeaseKeepAlive",
        "/etcdserverpb.Lease/LeaseTimeToLive",
        "/etcdserverpb.Lease/LeaseLeases",
        "/etcdserverpb.Auth/AuthStatus",
    }
)
TOKEN_ONLY = frozenset(
    {
        "/etcdserverpb.Lease/LeaseGrant",
        "/etcdserverpb.KV/Compact",
        "/etcdserverpb.Maintenance/Alarm",
        "/etcdserverpb.Auth/Authenticate",
    }
)
KEYS = frozenset(
    {
        "/etcdserverpb.KV/Range",
        "/etcdserverpb.KV/Put",
        "/etcdserverpb.KV/DeleteRange",
        "/etcdserverpb.KV/Txn",
        "/etcdserverpb.Watch/Watch",
        "/etcdserverpb.Lease/LeaseRevoke",
        *LOCK_ELECTION_METHODS,
    }
)
MAINTENANCE_ROOT = frozenset(
    {
        "/etcdserverpb.Maintenance/Hash",
        "/etcdserverpb.Maintenance/HashKV",
        "/etcdserverpb.Maintenance/Snapshot",
        "/etcdserverpb.Maintenance/Defragment",
        "/etcdserverpb.Maintenance/MoveLeader",
    }
)
ETCD_SERVICES = (
    "/etcdserverpb.",
    "/v3lockpb.",
    "/v3electionpb.",
)
WATCH = "/etcdserverpb.Watch/Watch"
REVOKE = "/etcdserverpb.Lease/LeaseRevoke"
# every identity may log in as an etcd user and ask whether auth is on
PUBLIC_AUTH = frozenset({AUTH + "Authenticate", AUTH + "AuthStatus"})
GO_CODES = {
    "INVALID_ARGUMENT": "InvalidArgument",
    "PERMISSION_DENIED": "PermissionDenied",
    "UNAUTHENTICATED": "Unauthenticated",
}

ETCD_GRANTED: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar(
    "mizzen_etcd_granted", default=None
)
"""(method, id(request)) an etcd user was allowed, for EtcdUserPolicy (secure stores)."""


def method_class(method: str) -> str:
    """free, token, keys, root or none (not an etcd method)."""
    if not method.startswith(ETCD_SERVICES):
        return "none"
    if method in FREE:
        return "free"
    if method in TOKEN_ONLY:
        return "token"
    if method in KEYS:
        return "keys"
    return "root"


def decide(
    sm: StateMachine, method: str, request: Any, name: str | None, lease_keys: list[bytes]
) -> StoreError | None:
    """None when user name (None: no token) may send this request with auth on; else
    etcd's refusal. Pure: the state, the method, the request, the user."""
    kind = method_class(method)
    if kind in ("free", "token", "none"):
        return None
    maintenance = method in MAINTENANCE_ROOT
    if name is None:
        return etcd_auth.MAINTENANCE_USER_EMPTY if maintenance else etcd_auth.USER_EMPTY
    user = etcd_auth.user(sm, name)
    if etcd_auth.is_root(user):
        return None
    if kind == "keys":
        if method == REVOKE:
            ranges = [("write", k, b"") for k in lease_keys]
        else:
            ranges = list(key_ranges(method, request))
        return None if etcd_auth.permitted(sm, name, ranges) else etcd_auth.DENIED
    if method == AUTH + "UserGet" and request.name == name:
        return None
    if method == AUTH + "RoleGet" and user is not None and request.role in user.roles:
        return None
    return etcd_auth.MAINTENANCE_DENIED if maintenance else etcd_auth.DENIED


def anonymous_allowed(method: str, request: Any, lease_keys: list[bytes]) -> bool:
    """What a plaintext store lets a caller without a token do while auth is on: the
    controller role's raw rights (leader election keys; revoking a lease whose keys
    are all leader keys)."""
    if method == REVOKE:
        return all(within(k, b"", LEADER_PREFIX) for k in lease_keys)
    if method not in KEYS or method in LOCK_ELECTION_METHODS:
        return False
    ranges = list(key_ranges(method, request))
    return bool(ranges) and all(within(k, end, LEADER_PREFIX) for _, k, end in ranges)


def token_of(metadata: Any) -> str | None:
    """The etcd token: ``token`` metadata, or (as etcd 3.4 also reads it) a bare
    ``authorization`` value — never a Mizzen ``authorization: Bearer ...`` token."""
    found = None
    for key, value in metadata or ():
        if not isinstance(value, str):
            continue
        if key == TOKEN:
            return value
        if key == AUTHORIZATION and not value.startswith(BEARER) and found is None:
            found = value
    return found


def watch_refusal(err: StoreError, header: rpc_pb2.ResponseHeader) -> bytes:
    """etcd's answer to a refused watch create: created and canceled, id -1."""
    reason = f"rpc error: code = {GO_CODES.get(err.code.value, err.code.value)} desc = {err}"
    resp = rpc_pb2.WatchResponse(
        header=header, watch_id=-1, created=True, canceled=True, cancel_reason=reason
    )
    return resp.SerializeToString()


class EtcdUserPolicy:
    """A secure store's policy: what an etcd user was allowed passes, the rest is the
    Mizzen role's to decide (``base``, the StorePolicy)."""

    def __init__(self, base: Policy) -> None:
        self.base = base

    async def authorize(self, identity: Identity, method: str, request: Any) -> None:
        if method in PUBLIC_AUTH or ETCD_GRANTED.get() == (method, id(request)):
            return
        await self.base.authorize(identity, method, request)

    def watch_delta(self, method: str, request: Any) -> int:
        return self.base.watch_delta(method, request)

    def watch_answer(self, method: str, response: Any) -> WatchAnswer | None:
        return self.base.watch_answer(method, response)


class EtcdAuthInterceptor(CachingInterceptor):
    """See the module docstring. ``secure``: every caller also has a Mizzen identity."""

    def __init__(
        self, node: StoreNode, secure: bool, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__()
        self.node = node
        self.secure = secure
        self.clock = clock

    def rewrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        kind = method_class(method)
        if kind in ("none", "free"):
            return handler
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary), **kwargs
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._unary_stream(method, handler.unary_stream), **kwargs
            )
        if handler.stream_stream is not None and method == WATCH:
            return grpc.stream_stream_rpc_method_handler(
                self._watch(method, handler.stream_stream), **kwargs
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(method, handler.stream_stream), **kwargs
            )
        return handler

    # ------------------------------------------------------------ deciding

    def _enabled(self) -> bool:
        return bool(self.node.replicated.state.auth_enabled)  # one attribute read: no lock

    async def _check(self, method: str, request: Any, token: str | None) -> StoreError | None:
        """None: go on (maybe to the Mizzen role's decision); else the refusal to send.

        Sets ETCD_GRANTED when an etcd user was allowed this request.
        """
        if token is None:
            if not self._enabled() or self.secure or method_class(method) == "token":
                return None

            def anonymous(sm: StateMachine) -> StoreError | None:
                keys = sm.lease_keys(request.ID) if method == REVOKE else []
                if anonymous_allowed(method, request, keys):
                    return None
                return decide(sm, method, request, None, keys)

            return self.node.read(anonymous)
        if not (method == "/etcdserverpb.KV/Range" and request.serializable):
            try:
                await self.node.barrier()
            except StoreError as err:  # no leader, timed out: the client may retry
                return err
        now = self.clock()

        def judge(sm: StateMachine) -> StoreError | None:
            name = etcd_auth.token_user(sm, token, now)
            if name is None:
                return etcd_auth.INVALID_TOKEN
            if not sm.auth_enabled:
                return None
            keys = sm.lease_keys(request.ID) if method == REVOKE else []
            return decide(sm, method, request, name, keys)

        refusal = self.node.read(judge)
        if refusal is None:
            ETCD_GRANTED.set((method, id(request)))
            return None
        if self.secure and refusal is not etcd_auth.INVALID_TOKEN:
            return None  # the Mizzen role decides
        return refusal

    # ------------------------------------------------------------ wrapping

    def _unary(self, method: str, behavior: Any) -> Any:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            refusal = await self._check(method, request, token_of(context.invocation_metadata()))
            if refusal is not None:
                await context.abort(refusal.code.grpc, refusal.message)
            return await behavior(request, context)

        return call

    def _unary_stream(self, method: str, behavior: Any) -> Any:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            refusal = await self._check(method, request, token_of(context.invocation_metadata()))
            if refusal is not None:
                await context.abort(refusal.code.grpc, refusal.message)
            async for item in behavior(request, context):
                yield item

        return call

    def _stream(self, method: str, behavior: Any) -> Any:
        """Client streams (LeaseKeepAlive is free): every message is checked."""

        async def call(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            token = token_of(context.invocation_metadata())

            async def checked() -> AsyncIterator[Any]:
                async for request in requests:
                    refusal = await self._check(method, request, token)
                    if refusal is not None:
                        await context.abort(refusal.code.grpc, refusal.message)
                    yield request

            async for item in behavior(checked(), context):
                yield item

        return call

    def _watch(self, method: str, behavior: Any) -> Any:
        """A refused watch create is answered on the stream (etcd's created+canceled
        response), the stream stays open; other requests pass through."""

        async def call(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            token = token_of(context.invocation_metadata())
            if token is None and not self._enabled():
                # the common case, without the extra task and queue hop per response:
                # auth off as the stream opens; if it is turned on meanwhile, a
                # refused create ends the stream with etcd's error instead
                async def unchanged() -> AsyncIterator[Any]:
                    async for request in requests:
                        if request.HasField("create_request"):
                            refusal = await self._check(method, request, None)
                            if refusal is not None:
                                await context.abort(refusal.code.grpc, refusal.message)
                        yield request

                async for item in behavior(unchanged(), context):
                    yield item
                return
            out: asyncio.Queue[Any] = asyncio.Queue()
            end = object()

            async def checked() -> AsyncIterator[Any]:
                async for request in requests:
                    if request.HasField("create_request"):
                        refusal = await self._check(method, request, token)
                        if refusal is not None:
                            out.put_nowait(watch_refusal(refusal, self.node.header()))
                            continue
                    yield request

            async def pump() -> None:
                try:
                    async for item in behavior(checked(), context):
                        out.put_nowait(item)
                except BaseException as exc:  # re-raised in the handler's own task
                    out.put_nowait(exc)
                finally:
                    out.put_nowait(end)

            task = asyncio.create_task(pump())
            try:
                while True:
                    item = await out.get()
                    if item is end:
                        break
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        return call
