"""Probe schedule/verdict with stepped time, and real exec/tcp/http probe attempts."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator

import pytest

from nodeagent.probes import ProbeResult, ProbeTracker, run_probe
from protos import objects_pb2 as pb


def _exec(*command: str, timeout: int | None = None) -> pb.Probe:
    probe = pb.Probe(exec=pb.ExecAction(command=list(command)))
    if timeout is not None:
        probe.timeout_seconds = timeout
    return probe


# ------------------------------------------------------------------ tracker


def test_tracker_defaults_follow_kubernetes() -> None:
    t = ProbeTracker(pb.Probe(), started_at=100.0)
    assert (t.initial_delay, t.period, t.timeout) == (0.0, 10.0, 1.0)
    assert (t.success_threshold, t.failure_threshold) == (1, 3)
    assert t.next_due() == 100.0


def test_tracker_schedule_uses_initial_delay_then_period() -> None:
    spec = pb.Probe(initial_delay_seconds=5, period_seconds=2)
    t = ProbeTracker(spec, started_at=100.0)
    assert t.next_due() == 105.0
    t.record(105.5, True)
    assert t.next_due() == 107.5
    t.record(107.5, False)
    assert t.next_due() == 109.5


def test_liveness_fails_after_threshold_consecutive_failures() -> None:
    t = ProbeTracker(pb.Probe(failure_threshold=3), started_at=0.0)
    assert t.healthy
    t.record(0, False)
    t.record(10, False)
    t.record(20, True)  # resets the streak
    t.record(30, False)
    t.record(40, False)
    assert t.healthy
    t.record(50, False)
    assert not t.healthy
    assert t.consecutive_failures == 3


def test_readiness_starts_not_ready_and_needs_success_threshold() -> None:
    t = ProbeTracker(
        pb.Probe(success_threshold=2, failure_threshold=1), started_at=0.0, initial_state=False
    )
    assert not t.healthy
    t.record(0, True)
    assert not t.healthy
    t.record(10, True)
    assert t.healthy
    t.record(20, False)
    assert not t.healthy
    t.record(30, True)
    assert not t.healthy
    t.record(40, True)
    assert t.healthy


# ------------------------------------------------------------------ exec


async def test_exec_true_and_false() -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    assert (await run_probe(_exec("true"), env=env, cwd=None)).ok
    result = await run_probe(_exec("sh", "-c", "echo broken; exit 3"), env=env, cwd=None)
    assert result == ProbeResult(False, "exec probe exited with 3: broken")


async def test_exec_gets_env_cwd_and_wrapper(tmp_path: os.PathLike[str]) -> None:
    seen: list[list[str]] = []

    def wrap(argv: list[str]) -> list[str]:
        seen.append(argv)
        return ["env", "WRAPPED=1", *argv]

    spec = _exec("sh", "-c", 'test "$X" = 7 && test "$WRAPPED" = 1 && test "$(pwd)" = "$D"')
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "X": "7", "D": str(tmp_path)}
    assert (await run_probe(spec, env=env, cwd=str(tmp_path), wrap_argv=wrap)).ok
    assert seen == [list(spec.exec.command)]


async def test_exec_timeout_kills_the_probe_process_group(tmp_path: os.PathLike[str]) -> None:
    pidfile = os.path.join(str(tmp_path), "child.pid")
    # The grandchild would outlive a kill of only the direct child.
    script = f"sleep 30 & echo $! > {pidfile}; wait"
    result = await run_probe(_exec("sh", "-c", script, timeout=1), env=dict(os.environ), cwd=None)
    assert result == ProbeResult(False, "exec probe timed out after 1s")
    with open(pidfile) as f:
        grandchild = int(f.read())
    for _ in range(100):  # reaping by init is asynchronous
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the probe's background child survived the timeout")


async def test_exec_missing_command_is_a_failure_not_an_exception() -> None:
    result = await run_probe(_exec("/nonexistent/probe"), env={}, cwd=None)
    assert not result.ok
    assert "could not start" in result.message
    assert not (await run_probe(_exec(), env={}, cwd=None)).ok
    assert not (await run_probe(pb.Probe(), env={}, cwd=None)).ok


# ------------------------------------------------------------------ tcp


async def test_tcp_listening_and_closed_ports() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        spec = pb.Probe(tcp_socket=pb.TCPSocketAction(port=port))
        assert (await run_probe(spec, env={}, cwd=None)).ok
    finally:
        server.close()
        await server.wait_closed()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # bound, never listening: connection refused
        spec = pb.Probe(tcp_socket=pb.TCPSocketAction(host="127.0.0.1", port=closed))
        result = await run_probe(spec, env={}, cwd=None)
    assert not result.ok
    assert f"127.0.0.1:{closed}" in result.message


# ------------------------------------------------------------------ http


class _HttpServer:
    """Answers GET /ok with 200, /redirect with 302, anything else 500; records requests."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        path = head.split(b" ", 2)[1]
        status = {b"/ok": b"200 OK", b"/redirect": b"302 Found"}.get(path, b"500 Oops")
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def __aenter__(self) -> _HttpServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def http_server() -> AsyncIterator[_HttpServer]:
    async with _HttpServer() as server:
        yield server


async def test_http_status_decides(http_server: _HttpServer) -> None:
    def probe(path: str) -> pb.Probe:
        return pb.Probe(http_get=pb.HTTPGetAction(path=path, port=http_server.port))

    assert (await run_probe(probe("/ok"), env={}, cwd=None)) == ProbeResult(True, "HTTP 200")
    assert (await run_probe(probe("/redirect"), env={}, cwd=None)).ok
    bad = await run_probe(probe("/boom"), env={}, cwd=None)
    assert not bad.ok
    assert "returned 500" in bad.message


async def test_http_sends_host_and_custom_headers(http_server: _HttpServer) -> None:
    spec = pb.Probe(
        http_get=pb.HTTPGetAction(
            path="/ok",
            port=http_server.port,
            http_headers=[pb.HTTPHeader(name="X-Check", value="yes")],
        )
    )
    assert (await run_probe(spec, env={}, cwd=None, default_host="127.0.0.1")).ok
    head = http_server.requests[-1].decode()
    assert head.startswith("GET /ok HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{http_server.port}\r\n" in head
    assert "X-Check: yes\r\n" in head


async def test_http_silent_server_times_out() -> None:
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; returns when the prober hangs up
        writer.close()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        spec = pb.Probe(http_get=pb.HTTPGetAction(path="/", port=port), timeout_seconds=1)
        result = await run_probe(spec, env={}, cwd=None)
    finally:
        server.close()
        await server.wait_closed()
    assert not result.ok
    assert "timed out" in result.message


@pytest.mark.skipif(sys.platform != "linux", reason="linux only")
async def test_http_refused_is_a_failure() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        spec = pb.Probe(http_get=pb.HTTPGetAction(port=port))
        result = await run_probe(spec, env={}, cwd=None)
    assert not result.ok
