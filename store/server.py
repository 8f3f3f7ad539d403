"""Run a store node: Raft + the etcd-compatible gRPC services + health + reflection.

With ``NodeConfig.metrics_listen`` set, it also serves Prometheus ``/metrics``
and ``/healthz`` over HTTP. The gRPC health service (every service name and
"") and ``/healthz`` give the same verdict, ``store.metrics.serving``,
re-evaluated every ``HEALTH_INTERVAL`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import asdict

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mizzen.malformed_requests import MalformedRequestInterceptor
from mizzen.security.encryption import Keyring
from mizzen.security.server_auth import AuthInterceptor
from mizzen.security.settings import PLAINTEXT, ServerSecurity
from mizzen.security.tls import add_port
from mizzen.security.tokens import load_tokens
from protos import (
    objects_api_pb2,
    objects_api_pb2_grpc,
    rpc_pb2,
    rpc_pb2_grpc,
    v3election_pb2,
    v3election_pb2_grpc,
    v3lock_pb2,
    v3lock_pb2_grpc,
)

from .auth_service import AuthService
from .authz import WATCH_METHODS, StorePolicy
from .cluster_service import ClusterService, MaintenanceService
from .election_service import ElectionService
from .etcd_auth_interceptor import EtcdAuthInterceptor, EtcdUserPolicy
from .gateway import Dispatcher, Gateway
from .kv_service import KVService
from .lease_service import LeaseService
from .lock_service import Concurrency, LockService
from .metrics import MetricsHttpServer, StoreMetrics, serving
from .node import NodeConfig, StoreNode
from .objects_codec import ValueCodec
from .objects_service import ObjectsService
from .require_leader import RequireLeaderInterceptor
from .watch_service import WatchService, add_watch_service

log = structlog.get_logger("store.server")

MAX_RECV_BYTES = 2 * 1024 * 1024  # request limit (1.5 MiB) plus gRPC overhead, like etcd
MAX_SEND_BYTES = 2**31 - 1
HEALTH_INTERVAL = 0.5


class AddressInUse(Exception):
    """A listen address could not be bound."""


SERVICES = ("KV", "Watch", "Lease", "Cluster", "Maintenance", "Auth")
# What the per-identity write quotas count (mizzen.security.server_auth.Limits).
WRITE_METHODS = frozenset(
    {
        "/etcdserverpb.KV/Put",
        "/etcdserverpb.KV/Txn",
        "/etcdserverpb.KV/DeleteRange",
        "/mizzen.v1.Objects/Create",
        "/mizzen.v1.Objects/Update",
        "/mizzen.v1.Objects/UpdateStatus",
        "/mizzen.v1.Objects/Delete",
        "/v3lockpb.Lock/Lock",
        "/v3lockpb.Lock/Unlock",
        "/v3electionpb.Election/Campaign",
        "/v3electionpb.Election/Proclaim",
        "/v3electionpb.Election/Resign",
    }
)


def _interceptors(node: StoreNode, security: ServerSecurity) -> list[grpc.aio.ServerInterceptor]:
    """Malformed requests refused first, then etcd's auth (users and roles, both modes),
    then authentication and authorization (secure mode only), then the leader check."""
    out: list[grpc.aio.ServerInterceptor] = [MalformedRequestInterceptor()]
    out.append(EtcdAuthInterceptor(node, secure=security.secure))
    if security.secure:
        tokens = load_tokens(security.token_file) if security.token_file else {}
        out.append(
            AuthInterceptor(
                EtcdUserPolicy(StorePolicy()),
                tokens=tokens,
                limits=security.limits,
                watch_methods=WATCH_METHODS,
                write_methods=WRITE_METHODS,
            )
        )
    out.append(RequireLeaderInterceptor(node.has_leader))
    return out


async def _start_gateway(
    cfg: NodeConfig,
    dispatcher: Dispatcher,
    node: StoreNode,
    metrics: StoreMetrics,
    security: ServerSecurity,
) -> Gateway | None:
    """The HTTP/JSON gateway on --listen-client-http, serving (None: not asked for)."""
    if not cfg.client_http_listen:
        return None
    gateway = Gateway(
        cfg.client_http_listen,
        dispatcher,
        node,
        metrics,
        security.tls,
        token_clients=bool(security.token_listen),
    )
    try:
        await gateway.start()
    except OSError as err:
        raise AddressInUse(f"cannot listen on {cfg.client_http_listen}: {err}") from None
    return gateway


async def serve(
    cfg: NodeConfig,
    listen: str,
    stop: asyncio.Event | None = None,
    security: ServerSecurity = PLAINTEXT,
    keyring: Keyring | None = None,
) -> None:
    """Serve until ``stop`` is set or SIGTERM/SIGINT arrives.

    With ``security.tls`` the client port requires certificates and
    ``security.token_listen`` (if set) serves bearer-token clients over TLS.
    ``keyring`` seals Secrets at rest; without one a secure store refuses to
    store Secrets and a plaintext one stores them unencrypted.
    """
    node = StoreNode(cfg)
    await node.start()
    metrics = StoreMetrics(node)
    metrics.attach()
    http: MetricsHttpServer | None = None
    if cfg.metrics_listen:
        try:
            http = MetricsHttpServer(cfg.metrics_listen, metrics, security.tls)
        except (OSError, ValueError) as err:
            await node.stop()
            raise AddressInUse(f"cannot serve metrics on {cfg.metrics_listen}: {err}") from None
    options: list[tuple[str, int]] = [
        ("grpc.max_receive_message_length", MAX_RECV_BYTES),
        ("grpc.max_send_message_length", MAX_SEND_BYTES),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    ]
    if security.secure and security.limits.max_concurrent_streams > 0:
        options.append(("grpc.max_concurrent_streams", security.limits.max_concurrent_streams))
    try:
        interceptors = _interceptors(node, security)
    except Exception:
        await node.stop()
        if http is not None:
            http.stop()
        raise
    chain = [*interceptors, metrics.interceptor()]
    # the HTTP gateway calls the same handlers through the same interceptor instances
    dispatcher = Dispatcher()
    dispatcher.interceptors = chain
    server = dispatcher.record(grpc.aio.server(interceptors=chain, options=options))
    rpc_pb2_grpc.add_KVServicer_to_server(KVService(node), server)
    add_watch_service(WatchService(node), server)
    rpc_pb2_grpc.add_LeaseServicer_to_server(LeaseService(node), server)
    rpc_pb2_grpc.add_ClusterServicer_to_server(ClusterService(node), server)
    rpc_pb2_grpc.add_MaintenanceServicer_to_server(MaintenanceService(node), server)
    rpc_pb2_grpc.add_AuthServicer_to_server(AuthService(node), server)
    codec = ValueCodec(keyring, require_key=security.secure)
    objects_api_pb2_grpc.add_ObjectsServicer_to_server(ObjectsService(node, codec), server)
    concurrency = Concurrency(node)
    v3lock_pb2_grpc.add_LockServicer_to_server(LockService(node, concurrency), server)
    v3election_pb2_grpc.add_ElectionServicer_to_server(ElectionService(node, concurrency), server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [rpc_pb2.DESCRIPTOR.services_by_name[s].full_name for s in SERVICES]
    names.append(objects_api_pb2.DESCRIPTOR.services_by_name["Objects"].full_name)
    names.append(v3lock_pb2.DESCRIPTOR.services_by_name["Lock"].full_name)
    names.append(v3election_pb2.DESCRIPTOR.services_by_name["Election"].full_name)
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    failed = None if add_port(server, listen, security.tls) else f"{listen} (client"
    if not failed and security.token_listen:
        token = add_port(server, security.token_listen, security.tls, require_client_cert=False)
        failed = None if token else f"{security.token_listen} (token"
    if failed:
        if http is not None:
            http.stop()
        await node.stop()
        raise AddressInUse(f"cannot listen on {failed} address in use?)")
    try:
        gateway = await _start_gateway(cfg, dispatcher, node, metrics, security)
    except AddressInUse:
        if http is not None:
            http.stop()
        await node.stop()
        raise
    await server.start()
    if http is not None:
        http.start()
    log.info(
        "store_serving",
        listen=listen,
        name=cfg.name,
        metrics=cfg.metrics_listen,
        tls=security.secure,
        token_listen=security.token_listen,
        client_http=cfg.client_http_listen,
    )

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    async def report_health() -> None:
        last: bool | None = None
        while True:
            try:
                facts = node.raft_facts()
                ok = serving(facts)
            except Exception:
                log.exception("health_check_failed")
                facts, ok = None, False
            metrics.serving = ok
            if ok != last:
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if ok
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                for name in ["", *names]:
                    await health_servicer.set(name, status)
                if last is not None:
                    log.info("health_changed", serving=ok, **(asdict(facts) if facts else {}))
                last = ok
            await asyncio.sleep(HEALTH_INTERVAL)

    health_task = asyncio.create_task(report_health())
    try:
        await stop.wait()
    finally:
        log.info("store_stopping", name=cfg.name)
        health_task.cancel()
        await asyncio.gather(health_task, return_exceptions=True)
        if gateway is not None:
            await gateway.stop()
        await server.stop(grace=1.0)
        if http is not None:
            http.stop()
        await node.stop()
        log.info("store_stopped", name=cfg.name)
