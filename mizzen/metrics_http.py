"""``/metrics`` and ``/healthz`` over HTTP for any Mizzen daemon (store, controllers, agent).

A daemon hands ``MetricsHttpServer`` something that renders its Prometheus
exposition and says whether it can do its job (``MetricsSource``); the server
answers scrapes on its own threads, so a daemon whose event loop is wedged can
still be scraped and diagnosed. The threads are bounded (one to accept, a few
workers) and every connection has a deadline: see MetricsHttpServer.

Given ``tls`` (a secure store or agent), it serves HTTPS and requires a client
certificate signed by the cluster CA, like the daemon's gRPC port; the TLS
handshake happens on a worker, under the request timeout, so a slow client
cannot stall the accepting thread.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol, cast
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


WORKERS = 4
MAX_CONNECTIONS = 64
IDLE_TIMEOUT = 5.0
REQUEST_TIMEOUT = 10.0


class MetricsHttpServer:
    """``/metrics`` (Prometheus text) and ``/healthz`` (200 or 503) off the event loop.

    Threads, not the asyncio loop, so a member whose loop is wedged can still
    be scraped and diagnosed. Binding happens in the constructor, so an address
    in use raises ``OSError`` there, before the daemon starts its real work.

    One thread accepts and watches connections with a selector; a connection
    goes to one of ``workers`` threads only once its first bytes arrive, and
    the worker reads the request (and does the TLS handshake) with a socket
    timeout. So idle connections cost no thread: one that sends nothing for
    ``idle_timeout`` seconds is closed, one whose request (or handshake) is not
    done within ``request_timeout`` is shut down under its worker, and beyond
    ``max_connections`` open at once the oldest idle one is closed to let the
    new one in. A flood of connections makes 1 + ``workers`` threads at most.
    """

    def __init__(
        self,
        listen: str,
        metrics: MetricsSource,
        tls: TlsFiles | None = None,
        *,
        workers: int = WORKERS,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout: float = IDLE_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        host, port = parse_listen(listen)
        self._context = server_context(tls) if tls is not None else None
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family, backlog=128)
        self._listener.setblocking(False)
        self._handler = _handler_for(metrics)
        self._handler.timeout = request_timeout
        self._max = max_connections
        self._idle_timeout = idle_timeout
        self._request_timeout = request_timeout
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        # accepted, nothing read yet -> when accepted; handed to a worker -> its deadline
        self._idle: dict[socket.socket, float] = {}
        self._busy: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="metrics-http-worker")
        self._thread = threading.Thread(target=self._serve, name="metrics-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread.is_alive():
            self._thread.join()
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            for sock in [*self._idle, *self._busy]:
                _shut(sock)
            self._idle.clear()
        self._selector.close()
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()

    # ------------------------------------------------------------ accept thread

    def _serve(self) -> None:
        tick = min(self._idle_timeout, self._request_timeout, 1.0) / 2
        while not self._stopping.is_set():
            for key, _ in self._selector.select(timeout=tick):
                sock = key.fileobj
                if sock is self._listener:
                    self._accept()
                elif sock is self._wake_r:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(64)
                else:
                    assert isinstance(sock, socket.socket)
                    self._dispatch(sock)
            self._sweep(time.monotonic())

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of file descriptors: try again next round
                log.warning("metrics_accept_failed", error=str(exc))
                return
            with self._lock:
                if len(self._idle) + len(self._busy) >= self._max and self._idle:
                    oldest = next(iter(self._idle))
                    self._drop(oldest)
                if len(self._idle) + len(self._busy) >= self._max:
                    conn.close()  # every slot is a request being served
                    continue
                self._idle[conn] = time.monotonic()
            conn.setblocking(False)
            self._selector.register(conn, selectors.EVENT_READ)

    def _dispatch(self, conn: socket.socket) -> None:
        self._selector.unregister(conn)
        with self._lock:
            self._idle.pop(conn, None)
            self._busy[conn] = time.monotonic() + self._request_timeout
        try:
            self._pool.submit(self._handle, conn)
        except RuntimeError:  # the pool is shut down: stopping
            self._finish(conn)

    def _sweep(self, now: float) -> None:
        with self._lock:
            for conn, since in list(self._idle.items()):
                if now - since >= self._idle_timeout:
                    self._drop(conn)
            for conn, deadline in self._busy.items():
                if now >= deadline:
                    _shut(conn)  # the worker's read fails, and it closes the connection

    def _drop(self, conn: socket.socket) -> None:
        """Close an idle connection (the lock is held)."""
        del self._idle[conn]
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn)
        conn.close()

    # ------------------------------------------------------------ workers

    def _handle(self, conn: socket.socket) -> None:
        sock = conn
        try:
            conn.setblocking(True)
            conn.settimeout(self._request_timeout)
            if self._context is not None:
                # the TLS socket takes over conn's descriptor: the sweep must see it
                sock = self._context.wrap_socket(
                    conn, server_side=True, do_handshake_on_connect=False
                )
                with self._lock:
                    self._busy[sock] = self._busy.pop(conn)
                sock.do_handshake()
            self._handler(sock, sock.getpeername(), cast(Any, self))  # it uses no server field
        except OSError:
            pass  # a client that went away, timed out or failed the handshake
        finally:
            self._finish(sock)

    def _finish(self, sock: socket.socket) -> None:
        with self._lock:
            self._busy.pop(sock, None)
        _shut(sock)
        sock.close()


def _shut(sock: socket.socket) -> None:
    """Shut down both directions, so a thread blocked reading sock returns at once.

    socket.socket's own shutdown, not SSLSocket's (which also drops its TLS
    state under a worker that may be using it).
    """
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


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
