"""etcd's HTTP/JSON gateway (grpc-gateway) on a store member: ``--listen-client-http``.

etcd serves ``POST /v3/kv/range`` and friends on its client URL: JSON bodies
mapped to the gRPC request messages (bytes as base64, 64-bit integers as
strings, proto field names), answered by the same gRPC services. This module
serves the same routes (etcd 3.4's table, ``ROUTES``; ``/v3beta/`` too) plus
``GET /version``, ``GET /health`` and ``GET /metrics`` on an HTTP/1.1 address
of its own: gRPC Python owns its listening socket, so HTTP cannot share the
client port.

Every call goes through the gRPC server's own interceptor chain and handler
(``Dispatcher``), in this process, with a ``GatewayContext`` standing in for
gRPC's: the malformed-request check, authentication (the TLS client
certificate becomes ``x509_pem_cert`` in the auth context, as gRPC reports
it; ``Authorization: Bearer <token>`` is a Mizzen bearer token), the
per-identity limits, ``StorePolicy`` with the gRPC method name, the leader
check and the RPC metrics all run exactly as for a gRPC call. An etcd auth
token (``Authorization: <token>``, as etcd's gateway takes it) reaches the
handlers as the metadata ``authorization`` (what grpc-gateway forwards) and
``token`` (what etcd's gRPC clients send); ``Grpc-Metadata-<name>`` headers
become metadata ``<name>``, as grpc-gateway maps them.

What etcd's gateway answers was read off a real etcd 3.4.23 (see
tests/integration/test_etcd_gateway.py): errors as ``{"error", "message",
"code"}`` with grpc-gateway's HTTP status per gRPC code; a streamed call
(``/v3/watch``, ``/v3/lease/keepalive``, ``/v3/maintenance/snapshot``,
``/v3/election/observe``) as one ``{"result": ...}`` JSON object per line,
and an error in a stream as ``{"error": {"grpc_code", "http_code",
"message", "http_status"}}``. The JSON mapping itself is store/gateway_json.py.

One file because it is one translation, an HTTP request into a gRPC call of
this server and its answer back: the route table, the stand-in context and
dispatcher that make the call exactly as gRPC would, and the HTTP serving are
read together when asking "what does this request do".
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, cast

import grpc
import structlog
from aiohttp import web
from google.protobuf.message import Message

from mizzen.metrics_http import parse_listen, server_context
from mizzen.security.server_auth import CALLER, AuthInterceptor
from mizzen.security.tls import AUTHORIZATION, BEARER, ServerTLS
from protos import rpc_pb2, v3election_pb2, v3lock_pb2

from .cluster_service import API_VERSION
from .gateway_json import (
    HTTP_STATUS,
    GatewayAbort,
    JsonValues,
    dumps,
    error_body,
    render,
    stream_error_body,
    to_message,
)

if TYPE_CHECKING:
    from .metrics import StoreMetrics
    from .node import StoreNode

log = structlog.get_logger("store.gateway")

CORS = {
    "Access-Control-Allow-Headers": "accept, content-type, authorization",
    "Access-Control-Allow-Methods": "POST, GET, OPTIONS, PUT, DELETE",
    "Access-Control-Allow-Origin": "*",
}
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
# what etcd 3.4 answers, and the text format generate_latest writes
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
MAX_BODY_BYTES = 4 * 1024 * 1024  # a 1.5 MiB request (the store's limit) in base64 JSON
HEALTH_TIMEOUT = 1.0  # etcd 3.4 gives its /health read one second too
PREFIXES = ("/v3/", "/v3beta/")  # etcd 3.4 rewrites /v3beta/ to /v3/; it has no /v3alpha/


@dataclass(frozen=True)
class Route:
    method: str  # the gRPC method, /package.Service/Method
    request: type[Message]
    kind: str  # unary | server_stream | bidi


def _routes() -> dict[str, Route]:
    r = rpc_pb2
    unary: dict[str, tuple[str, type[Message]]] = {
        "kv/range": ("/etcdserverpb.KV/Range", r.RangeRequest),
        "kv/put": ("/etcdserverpb.KV/Put", r.PutRequest),
        "kv/deleterange": ("/etcdserverpb.KV/DeleteRange", r.DeleteRangeRequest),
        "kv/txn": ("/etcdserverpb.KV/Txn", r.TxnRequest),
        "kv/compaction": ("/etcdserverpb.KV/Compact", r.CompactionRequest),
        "lease/grant": ("/etcdserverpb.Lease/LeaseGrant", r.LeaseGrantRequest),
        "lease/revoke": ("/etcdserverpb.Lease/LeaseRevoke", r.LeaseRevokeRequest),
        "kv/lease/revoke": ("/etcdserverpb.Lease/LeaseRevoke", r.LeaseRevokeRequest),
        "lease/timetolive": ("/etcdserverpb.Lease/LeaseTimeToLive", r.LeaseTimeToLiveRequest),
        "kv/lease/timetolive": (
            "/etcdserverpb.Lease/LeaseTimeToLive",
            r.LeaseTimeToLiveRequest,
        ),
        "lease/leases": ("/etcdserverpb.Lease/LeaseLeases", r.LeaseLeasesRequest),
        "kv/lease/leases": ("/etcdserverpb.Lease/LeaseLeases", r.LeaseLeasesRequest),
        "cluster/member/add": ("/etcdserverpb.Cluster/MemberAdd", r.MemberAddRequest),
        "cluster/member/remove": ("/etcdserverpb.Cluster/MemberRemove", r.MemberRemoveRequest),
        "cluster/member/update": ("/etcdserverpb.Cluster/MemberUpdate", r.MemberUpdateRequest),
        "cluster/member/list": ("/etcdserverpb.Cluster/MemberList", r.MemberListRequest),
        "cluster/member/promote": (
            "/etcdserverpb.Cluster/MemberPromote",
            r.MemberPromoteRequest,
        ),
        "maintenance/alarm": ("/etcdserverpb.Maintenance/Alarm", r.AlarmRequest),
        "maintenance/status": ("/etcdserverpb.Maintenance/Status", r.StatusRequest),
        "maintenance/defragment": ("/etcdserverpb.Maintenance/Defragment", r.DefragmentRequest),
        # etcd 3.4 annotates Hash and HashKV both with /v3/maintenance/hash: Hash wins
        "maintenance/hash": ("/etcdserverpb.Maintenance/Hash", r.HashRequest),
        "maintenance/transfer-leadership": (
            "/etcdserverpb.Maintenance/MoveLeader",
            r.MoveLeaderRequest,
        ),
        "auth/enable": ("/etcdserverpb.Auth/AuthEnable", r.AuthEnableRequest),
        "auth/disable": ("/etcdserverpb.Auth/AuthDisable", r.AuthDisableRequest),
        "auth/authenticate": ("/etcdserverpb.Auth/Authenticate", r.AuthenticateRequest),
        "auth/user/add": ("/etcdserverpb.Auth/UserAdd", r.AuthUserAddRequest),
        "auth/user/get": ("/etcdserverpb.Auth/UserGet", r.AuthUserGetRequest),
        "auth/user/list": ("/etcdserverpb.Auth/UserList", r.AuthUserListRequest),
        "auth/user/delete": ("/etcdserverpb.Auth/UserDelete", r.AuthUserDeleteRequest),
        "auth/user/changepw": (
            "/etcdserverpb.Auth/UserChangePassword",
            r.AuthUserChangePasswordRequest,
        ),
        "auth/user/grant": ("/etcdserverpb.Auth/UserGrantRole", r.AuthUserGrantRoleRequest),
        "auth/user/revoke": ("/etcdserverpb.Auth/UserRevokeRole", r.AuthUserRevokeRoleRequest),
        "auth/role/add": ("/etcdserverpb.Auth/RoleAdd", r.AuthRoleAddRequest),
        "auth/role/get": ("/etcdserverpb.Auth/RoleGet", r.AuthRoleGetRequest),
        "auth/role/list": ("/etcdserverpb.Auth/RoleList", r.AuthRoleListRequest),
        "auth/role/delete": ("/etcdserverpb.Auth/RoleDelete", r.AuthRoleDeleteRequest),
        "auth/role/grant": (
            "/etcdserverpb.Auth/RoleGrantPermission",
            r.AuthRoleGrantPermissionRequest,
        ),
        "auth/role/revoke": (
            "/etcdserverpb.Auth/RoleRevokePermission",
            r.AuthRoleRevokePermissionRequest,
        ),
        "lock/lock": ("/v3lockpb.Lock/Lock", v3lock_pb2.LockRequest),
        "lock/unlock": ("/v3lockpb.Lock/Unlock", v3lock_pb2.UnlockRequest),
        "election/campaign": ("/v3electionpb.Election/Campaign", v3election_pb2.CampaignRequest),
        "election/proclaim": ("/v3electionpb.Election/Proclaim", v3election_pb2.ProclaimRequest),
        "election/leader": ("/v3electionpb.Election/Leader", v3election_pb2.LeaderRequest),
        "election/resign": ("/v3electionpb.Election/Resign", v3election_pb2.ResignRequest),
    }
    routes = {path: Route(m, req, "unary") for path, (m, req) in unary.items()}
    routes["watch"] = Route("/etcdserverpb.Watch/Watch", r.WatchRequest, "bidi")
    routes["lease/keepalive"] = Route(
        "/etcdserverpb.Lease/LeaseKeepAlive", r.LeaseKeepAliveRequest, "bidi"
    )
    routes["maintenance/snapshot"] = Route(
        "/etcdserverpb.Maintenance/Snapshot", r.SnapshotRequest, "server_stream"
    )
    routes["election/observe"] = Route(
        "/v3electionpb.Election/Observe", v3election_pb2.LeaderRequest, "server_stream"
    )
    return routes


ROUTES = _routes()
# etcd's gRPC server ignores a watch stream's half-close; Mizzen's Watch ends the stream on
# it, so the gateway keeps the request side of a watch open until the HTTP client leaves
KEEP_OPEN = frozenset({"/etcdserverpb.Watch/Watch"})


# ------------------------------------------------------------------ in-process calls


class GatewayContext:
    """What the interceptors and servicers use of grpc.aio.ServicerContext, for one call."""

    def __init__(self, metadata: Sequence[tuple[str, str]], pem: bytes | None, peer: str):
        self._metadata = tuple(metadata)
        self._auth = {"x509_pem_cert": [pem]} if pem is not None else {}
        self._peer = peer
        self._code: grpc.StatusCode | None = None
        self._details: str | None = None
        # as in gRPC, an abort ends the call even when raised in a task of the handler's
        # own (the Watch servicer reads its requests, and so meets a refusal, in one)
        self.aborted: GatewayAbort | None = None

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> NoReturn:
        self._code, self._details = code, details
        self.aborted = GatewayAbort(code, details)
        raise self.aborted

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    def peer(self) -> str:
        return self._peer

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def details(self) -> str | None:
        return self._details

    def set_details(self, details: str) -> None:
        self._details = details

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass

    def time_remaining(self) -> float | None:
        return None

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return False


@dataclass(frozen=True)
class _CallDetails:
    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


class Dispatcher:
    """Finds a method's handler through the server's interceptors, as grpc.aio does."""

    def __init__(self) -> None:
        self.interceptors: list[grpc.aio.ServerInterceptor] = []
        self._generic: list[grpc.GenericRpcHandler] = []
        self._registered: dict[str, grpc.RpcMethodHandler] = {}

    def record(self, server: grpc.aio.Server) -> grpc.aio.Server:
        """A server that also tells this dispatcher every handler registered with it."""
        return _Recording(server, self)  # type: ignore[return-value]

    def _lookup(self, details: _CallDetails) -> grpc.RpcMethodHandler | None:
        found = self._registered.get(details.method)
        if found is not None:
            return found
        for generic in self._generic:
            handler = generic.service(details)  # type: ignore[arg-type]
            if handler is not None:
                return handler
        return None

    async def handler(
        self, method: str, metadata: tuple[tuple[str, str], ...]
    ) -> grpc.RpcMethodHandler | None:
        details = _CallDetails(method, metadata)

        async def terminal(d: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
            return self._lookup(details)

        chain: Callable[[Any], Awaitable[Any]] = terminal
        for interceptor in reversed(self.interceptors):
            chain = _link(interceptor, chain)
        found: grpc.RpcMethodHandler | None = await chain(details)
        return found


def _link(
    interceptor: grpc.aio.ServerInterceptor, then: Callable[[Any], Awaitable[Any]]
) -> Callable[[Any], Awaitable[Any]]:
    async def call(details: Any) -> Any:
        return await interceptor.intercept_service(then, details)

    return call


class _Recording:
    """Forwards everything to the server; keeps a copy of the handlers registered."""

    def __init__(self, server: grpc.aio.Server, dispatcher: Dispatcher) -> None:
        self._server = server
        self._dispatcher = dispatcher

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._dispatcher._generic.extend(handlers)
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        for name, handler in handlers.items():
            self._dispatcher._registered[f"/{service}/{name}"] = handler
        self._server.add_registered_method_handlers(service, handlers)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


def call_metadata(headers: Any) -> tuple[tuple[str, str], ...]:
    """The gRPC metadata grpc-gateway would send for these HTTP headers."""
    out: list[tuple[str, str]] = []
    auth = headers.get("Authorization")
    if auth:
        out.append((AUTHORIZATION, auth))
        if not auth.startswith(BEARER):  # an etcd auth token, as etcd's gRPC clients send it
            out.append(("token", auth))
    prefix = "grpc-metadata-"
    for name, value in headers.items():
        if name.lower().startswith(prefix) and len(name) > len(prefix):
            out.append((name[len(prefix) :].lower(), value))
    return tuple(out)


# ------------------------------------------------------------------ HTTP


class Gateway:
    """The HTTP server: bound by ``start`` (OSError if the address is taken)."""

    def __init__(
        self,
        listen: str,
        dispatcher: Dispatcher,
        node: StoreNode,
        metrics: StoreMetrics,
        tls: ServerTLS | None = None,
        *,
        token_clients: bool = False,
    ) -> None:
        self.host, self.port = parse_listen(listen)
        self.dispatcher = dispatcher
        self.node = node
        self.metrics = metrics
        self._ssl: ssl.SSLContext | None = None
        if tls is not None:
            self._ssl = server_context(tls)
            if token_clients:  # a bearer token instead of a certificate, as --token-listen
                self._ssl.verify_mode = ssl.CERT_OPTIONAL
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._serve)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, handler_cancellation=True
        )

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.host, self.port, ssl_context=self._ssl, shutdown_timeout=1.0
        )
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise

    async def stop(self) -> None:
        await self._runner.cleanup()

    # -------------------------------------------------------------- routing

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        CALLER.set(None)  # a keep-alive connection's next request is a new call
        path = request.path
        if path in ("/version", "/health", "/metrics"):
            if request.method != "GET":
                return _text(405, "Method Not Allowed\n", {"Allow": "GET"})
            if not self._authenticated(request):
                return _text(401, "Unauthorized: no client certificate or bearer token\n")
            if path == "/version":
                return _plain(200, dumps({"etcdserver": API_VERSION, "etcdcluster": _cluster()}))
            if path == "/health":
                return await self._health()
            body = await asyncio.to_thread(self.metrics.exposition)
            return web.Response(
                status=200, body=body, headers={**CORS, "Content-Type": PROMETHEUS_TEXT}
            )
        for prefix in PREFIXES:
            if path.startswith(prefix):
                route = ROUTES.get(path[len(prefix) :])
                if route is None:
                    return _text(404, "Not Found\n")
                if request.method != "POST":
                    return _text(405, "Method Not Allowed\n")
                return await self._call(request, route)
        return _text(404, "404 page not found\n")

    def _authenticated(self, request: web.Request) -> bool:
        """Whether the caller of a route that is no gRPC call is someone (secure mode).

        The TLS handshake has verified a certificate if there is one; with token
        clients there may be none, and then a valid bearer token must name the
        caller, as the client port's AuthInterceptor decides for a gRPC call.
        """
        auth = next(
            (i for i in self.dispatcher.interceptors if isinstance(i, AuthInterceptor)), None
        )
        if auth is None:
            return True  # plaintext: everyone is the anonymous admin
        context = GatewayContext(call_metadata(request.headers), _peer_pem(request), _peer(request))
        return auth.identify(cast(Any, context)) is not None

    async def _health(self) -> web.Response:
        """etcd 3.4: healthy with a leader, no alarm, and a linearizable read that succeeds."""
        ok = self.node.has_leader()
        if ok:
            try:
                await self.node.barrier(HEALTH_TIMEOUT)
            except Exception:
                ok = False
        if ok and self.node.read(lambda sm: bool(getattr(sm, "alarms", None))):
            ok = False
        if ok:
            return _plain(200, b'{"health":"true"}')
        return _text(503, '{"health":"false"}\n')

    # -------------------------------------------------------------- calls

    async def _call(self, request: web.Request, route: Route) -> web.StreamResponse:
        metadata = call_metadata(request.headers)
        context = GatewayContext(metadata, _peer_pem(request), _peer(request))
        values = JsonValues(request.content.readany, MAX_BODY_BYTES)
        if route.kind == "unary":
            try:
                found, value = await values.next()
                message = to_message(value if found else None, route.request)
                handler = await self.dispatcher.handler(route.method, metadata)
                if handler is None or handler.unary_unary is None:
                    raise GatewayAbort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
                behavior: Any = handler.unary_unary
                answer = await behavior(message, context)
            except GatewayAbort as err:
                return _error(err.code, err.details)
            except Exception as err:  # a handler's bug: gRPC answers UNKNOWN
                log.exception("gateway_call_failed", method=route.method)
                return _error(grpc.StatusCode.UNKNOWN, f"Unexpected {type(err)}: {err}")
            return _json(200, dumps(render(answer)))
        return await self._stream(request, route, values, metadata, context)

    async def _stream(
        self,
        request: web.Request,
        route: Route,
        values: JsonValues,
        metadata: tuple[tuple[str, str], ...],
        context: GatewayContext,
    ) -> web.StreamResponse:
        # grpc-gateway decodes the first request before calling; a failure is a plain
        # (not a status) error: UNKNOWN
        try:
            found, value = await values.next()
            first = to_message(value, route.request) if found else None
        except GatewayAbort as err:
            return _error(grpc.StatusCode.UNKNOWN, err.details)
        if first is None and route.kind == "server_stream":
            first = route.request()
        handler = await self.dispatcher.handler(route.method, metadata)
        response: web.StreamResponse | None = None
        try:
            if handler is None:
                raise GatewayAbort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
            answers: AsyncIterator[Any]
            if route.kind == "server_stream":
                server_stream: Any = handler.unary_stream
                answers = server_stream(first, context)
            else:
                bidi: Any = handler.stream_stream
                keep_open = route.method in KEEP_OPEN
                answers = bidi(_requests(first, values, route.request, keep_open), context)
            async for answer in answers:
                if context.aborted is not None:
                    raise context.aborted
                if isinstance(answer, bytes):  # the Watch servicer sends serialized responses
                    answer = rpc_pb2.WatchResponse.FromString(answer)
                if response is None:
                    response = web.StreamResponse(
                        status=200, headers={**CORS, "Content-Type": JSON}
                    )
                    await response.prepare(request)
                await response.write(dumps({"result": render(answer)}) + b"\n")
            if context.aborted is not None:
                raise context.aborted
        except GatewayAbort as err:
            code, details = err.code, err.details
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as err:
            log.exception("gateway_stream_failed", method=route.method)
            code, details = grpc.StatusCode.UNKNOWN, f"Unexpected {type(err)}: {err}"
        else:
            if response is None:
                response = await _stream_response(request, 200)
            await response.write_eof()
            return response
        if response is None:
            response = await _stream_response(request, HTTP_STATUS.get(code, 500))
        await response.write(stream_error_body(code, details))
        await response.write_eof()
        return response


async def _requests(
    first: Message | None, values: JsonValues, cls: type[Message], keep_open: bool
) -> AsyncIterator[Message]:
    """A stream's requests: the first, then each further JSON value of the body.

    A value that does not parse ends the requests, as grpc-gateway closes the
    send side then; with keep_open the stream then stays open until the HTTP
    client leaves (the handler task is cancelled).
    """
    if first is not None:
        yield first
        while True:
            try:
                found, value = await values.next()
                if not found:
                    break
                yield to_message(value, cls)
            except GatewayAbort:
                break
    if keep_open:
        await asyncio.Event().wait()


def _cluster() -> str:
    major, minor, *_ = API_VERSION.split(".")
    return f"{major}.{minor}.0"


def _peer(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if not peer:
        return "unknown"
    host, port = peer[0], peer[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


def _peer_pem(request: web.Request) -> bytes | None:
    """The client's verified certificate as PEM (what gRPC puts in x509_pem_cert)."""
    if request.transport is None:
        return None
    sslobj = request.transport.get_extra_info("ssl_object")
    if sslobj is None:
        return None
    der = sslobj.getpeercert(binary_form=True)
    return ssl.DER_cert_to_PEM_cert(der).encode() if der else None


async def _stream_response(request: web.Request, status: int) -> web.StreamResponse:
    response = web.StreamResponse(status=status, headers={**CORS, "Content-Type": JSON})
    await response.prepare(request)
    return response


def _json(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, headers={**CORS, "Content-Type": JSON})


def _error(code: grpc.StatusCode, message: str) -> web.Response:
    return _json(HTTP_STATUS.get(code, 500), error_body(code, message))


def _plain(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, headers={**CORS, "Content-Type": TEXT})


def _text(status: int, text: str, extra: dict[str, str] | None = None) -> web.Response:
    headers = {**CORS, "Content-Type": TEXT, "X-Content-Type-Options": "nosniff", **(extra or {})}
    return web.Response(status=status, body=text.encode(), headers=headers)
