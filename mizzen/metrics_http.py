"""``/metrics`` and ``/healthz`` over HTTP for any Mizzen daemon (store, controllers, agent).

A daemon hands ``MetricsHttpServer`` something that renders its Prometheus
exposition and says whether it can do its job (``MetricsSource``); the server
answers scrapes on its own thread, so a daemon whose event loop is wedged can
still be scraped and diagnosed.

Given ``tls`` (a secure store or agent), it serves HTTPS and requires a client
certificate signed by the cluster CA, like the daemon's gRPC port; the TLS
handshake happens on the request's thread, so a slow client cannot stall others.
"""

from __future__ import annotations

import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import urlsplit

import structlog
from prometheus_client import CONTENT_TYPE_LATEST

log = structlog.get_logger(__name__)


class MetricsSource(Protocol):
    """What the server serves: the exposition and the health verdict (read on its thread)."""

    @property
    def serving(self) -> bool: ...

    def exposition(self) -> bytes: ...


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) → (host, port); ValueError naming the address."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"metrics address must be host:port, got {listen!r}")
    return host.strip("[]"), int(port)


class TlsFiles(Protocol):
    """PEM paths: the server's certificate and key, and the CA clients must chain to."""

    @property
    def cacert(self) -> str: ...

    @property
    def cert(self) -> str: ...

    @property
    def key(self) -> str: ...


def server_context(tls: TlsFiles) -> ssl.SSLContext:
    """TLS 1.2+ server context that requires a client certificate from the CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert, tls.key)
    context.load_verify_locations(tls.cacert)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class MetricsHttpServer:
    """``/metrics`` (Prometheus text) and ``/healthz`` (200 or 503) on a daemon thread.

    A thread, not the asyncio loop, so a member whose loop is wedged can still
    be scraped and diagnosed. Binding happens in the constructor, so an address
    in use raises ``OSError`` there, before the daemon starts its real work.
    """

    def __init__(self, listen: str, metrics: MetricsSource, tls: TlsFiles | None = None) -> None:
        host, port = parse_listen(listen)
        handler = _handler_for(metrics)
        server_class = _V6Server if ":" in host else ThreadingHTTPServer
        self._server = server_class((host, port), handler)
        self._server.daemon_threads = True
        if tls is not None:
            try:
                context = server_context(tls)
            except (OSError, ssl.SSLError):
                self._server.server_close()
                raise
            self._server.socket = context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()


class _V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _handler_for(metrics: MetricsSource) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/metrics":
                try:
                    body = metrics.exposition()
                except Exception:
                    log.exception("metrics_scrape_failed")
                    self._reply(500, b"scrape failed\n", "text/plain")
                    return
                self._reply(200, body, CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/health"):
                ok = metrics.serving
                self._reply(200 if ok else 503, b"ok\n" if ok else b"not serving\n", "text/plain")
            else:
                self._reply(404, b"not found: try /metrics or /healthz\n", "text/plain")

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes every few seconds would drown the daemon's log

    return Handler
