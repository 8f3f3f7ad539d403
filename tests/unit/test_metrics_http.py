"""The /metrics listener under a flood: bounded threads, idle ones closed, scrapes answered."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mizzen.metrics_http import WORKERS, MetricsHttpServer
from mizzen.security.pki import init_pki, issue

IDLE = 200
# Generous: how long a test waits for something that should happen within a second.
WAIT = 30.0


class Source:
    serving = True

    def exposition(self) -> bytes:
        return b"mizzen_up 1\n"


@pytest.fixture
def server() -> Iterator[MetricsHttpServer]:
    http = MetricsHttpServer("127.0.0.1:0", Source(), idle_timeout=0.5, request_timeout=1.0)
    http.start()
    try:
        yield http
    finally:
        http.stop()


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=WAIT)


def _closed_by_server(sock: socket.socket) -> bool:
    """Waits (up to WAIT) for the server to close sock; True if it did."""
    sock.settimeout(WAIT)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def _scrape(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=WAIT) as resp:
        return bytes(resp.read())


def test_idle_connections_take_no_thread_and_are_closed(server: MetricsHttpServer) -> None:
    before = threading.active_count()
    with contextlib.ExitStack() as stack:
        idle = [stack.enter_context(_connect(server.port)) for _ in range(IDLE)]
        # a scrape is answered while 200 connections sit idle
        assert _scrape(server.port) == b"mizzen_up 1\n"
        assert threading.active_count() <= before + WORKERS
        # and every idle one is closed by the server
        assert all(_closed_by_server(sock) for sock in idle)
    assert _scrape(server.port) == b"mizzen_up 1\n"


def test_a_client_that_stops_mid_request_is_cut_off(server: MetricsHttpServer) -> None:
    with _connect(server.port) as slow:
        slow.sendall(b"GET /metr")  # then nothing: it holds a worker until request_timeout
        assert _closed_by_server(slow)
    assert _scrape(server.port) == b"mizzen_up 1\n"


def test_more_connections_than_the_cap_close_the_oldest_idle() -> None:
    http = MetricsHttpServer("127.0.0.1:0", Source(), max_connections=10, idle_timeout=WAIT * 10)
    http.start()
    try:
        with contextlib.ExitStack() as stack:
            idle = [stack.enter_context(_connect(http.port)) for _ in range(10)]
            time.sleep(0.2)  # not a threshold: only lets the server accept them in order
            # the cap is reached: a scrape still gets in, at the cost of the oldest idle one
            assert _scrape(http.port) == b"mizzen_up 1\n"
            assert _closed_by_server(idle[0])
    finally:
        http.stop()


@dataclass(frozen=True)
class Tls:
    cacert: str
    cert: str
    key: str


def test_tls_scrape_and_a_stalled_handshake(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    init_pki(pki, hosts=["127.0.0.1"], nodes=[])
    issue(pki, "vera", "viewer")
    tls = Tls(
        str(pki / "ca.crt"), str(pki / "store-127.0.0.1.crt"), str(pki / "store-127.0.0.1.key")
    )
    http = MetricsHttpServer("127.0.0.1:0", Source(), tls, idle_timeout=0.5, request_timeout=1.0)
    http.start()
    try:
        with _connect(http.port) as stalled:
            stalled.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
            client = ssl.create_default_context(cafile=tls.cacert)
            client.load_cert_chain(str(pki / "vera.crt"), str(pki / "vera.key"))
            url = f"https://127.0.0.1:{http.port}/metrics"
            with urllib.request.urlopen(url, context=client, timeout=WAIT) as reply:
                assert reply.read() == b"mizzen_up 1\n"
            assert _closed_by_server(stalled)
    finally:
        http.stop()
