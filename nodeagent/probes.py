"""Liveness and readiness probes: when to run them, how to run one, what they conclude.

``ProbeTracker`` is pure (time is passed in) and holds the Kubernetes rules:
the first probe is due ``initial_delay_seconds`` after the process started,
then every ``period_seconds``; the verdict flips to unhealthy after
``failure_threshold`` consecutive failures and back after
``success_threshold`` consecutive successes.

``run_probe`` performs one check (exec, TCP connect or HTTP GET) bounded by
``timeout_seconds``; a port given by name must have been replaced by its
number (``nodeagent.host_ports.with_port_numbers``). It never raises: every
failure, including a probe that cannot be started or a malformed spec, is
``ProbeResult(False, reason)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from protos import objects_pb2 as pb

log = structlog.get_logger(__name__)

DEFAULT_INITIAL_DELAY = 0
DEFAULT_PERIOD = 10
DEFAULT_TIMEOUT = 1
DEFAULT_SUCCESS_THRESHOLD = 1
DEFAULT_FAILURE_THRESHOLD = 3

# Output of an exec probe or an HTTP status line kept for the message.
_MAX_OUTPUT = 1024


def _field(spec: pb.Probe, name: str, default: int) -> int:
    value = getattr(spec, name) if spec.HasField(name) else 0
    return value if value > 0 else default


def probe_timeout(spec: pb.Probe) -> float:
    """Seconds one attempt of spec may take (timeout_seconds, default 1)."""
    return float(_field(spec, "timeout_seconds", DEFAULT_TIMEOUT))


class ProbeTracker:
    """Schedule and verdict of one probe of one process instance.

    Create a new tracker for every (re)start of the process. ``healthy``
    starts at ``initial_state``: True for liveness (a process is alive until
    proven otherwise), False for readiness (not ready until a probe succeeds).
    """

    def __init__(self, spec: pb.Probe, *, started_at: float, initial_state: bool = True) -> None:
        self.initial_delay = float(_field(spec, "initial_delay_seconds", DEFAULT_INITIAL_DELAY))
        self.period = float(_field(spec, "period_seconds", DEFAULT_PERIOD))
        self.timeout = probe_timeout(spec)
        self.success_threshold = _field(spec, "success_threshold", DEFAULT_SUCCESS_THRESHOLD)
        self.failure_threshold = _field(spec, "failure_threshold", DEFAULT_FAILURE_THRESHOLD)
        self._started_at = started_at
        self._last_run: float | None = None
        self._healthy = initial_state
        self._successes = 0
        self._failures = 0

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def next_due(self) -> float:
        """When the next attempt should start (on the caller's clock)."""
        if self._last_run is None:
            return self._started_at + self.initial_delay
        return self._last_run + self.period

    def record(self, now: float, ok: bool) -> None:
        """Count the outcome of the attempt that started at ``now``."""
        self._last_run = now
        if ok:
            self._successes += 1
            self._failures = 0
            if not self._healthy and self._successes >= self.success_threshold:
                self._healthy = True
        else:
            self._failures += 1
            self._successes = 0
            if self._healthy and self._failures >= self.failure_threshold:
                self._healthy = False


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    message: str


async def run_probe(
    spec: pb.Probe,
    *,
    env: Mapping[str, str],
    cwd: str | None,
    wrap_argv: Callable[[list[str]], list[str]] | None = None,
    default_host: str = "127.0.0.1",
) -> ProbeResult:
    """Run one attempt of spec; never raises (cancellation excepted)."""
    timeout = probe_timeout(spec)
    try:
        if spec.HasField("exec"):
            return await _run_exec(list(spec.exec.command), env, cwd, wrap_argv, timeout)
        if spec.HasField("tcp_socket"):
            tcp = spec.tcp_socket
            if tcp.port_name and not tcp.port:
                return ProbeResult(False, f"tcp probe: the process has no port {tcp.port_name!r}")
            return await _run_tcp(tcp.host or default_host, tcp.port, timeout)
        if spec.HasField("http_get"):
            http = spec.http_get
            if http.port_name and not http.port:
                return ProbeResult(False, f"http probe: the process has no port {http.port_name!r}")
            return await _run_http(http, default_host, timeout)
        return ProbeResult(False, "probe has no exec, tcp_socket or http_get action")
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a probe must never take the pod worker down
        log.warning("probe_error", error=repr(exc))
        return ProbeResult(False, f"probe error: {exc}")


# ------------------------------------------------------------------ exec


async def _run_exec(
    command: list[str],
    env: Mapping[str, str],
    cwd: str | None,
    wrap_argv: Callable[[list[str]], list[str]] | None,
    timeout: float,
) -> ProbeResult:
    if not command:
        return ProbeResult(False, "exec probe has no command")
    argv = wrap_argv(command) if wrap_argv is not None else command
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=dict(env),
            cwd=cwd or None,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        return ProbeResult(False, f"exec probe {command[0]!r} could not start: {exc.strerror}")
    assert proc.stdout is not None
    reader = asyncio.ensure_future(_read_bounded(proc.stdout))
    try:
        async with asyncio.timeout(timeout):
            code = await proc.wait()
    except TimeoutError:
        _kill_group(proc.pid)
        await proc.wait()
        reader.cancel()
        return ProbeResult(False, f"exec probe timed out after {timeout:g}s")
    except BaseException:
        _kill_group(proc.pid)
        reader.cancel()
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            proc.kill()
        raise
    # Leftovers the probe started in its group would keep the pipe open.
    _kill_group(proc.pid)
    output = b""
    try:
        async with asyncio.timeout(timeout):
            output = await reader
    except TimeoutError:
        reader.cancel()
    text = output.decode(errors="replace").strip()
    if code == 0:
        return ProbeResult(True, text)
    reason = (
        f"exec probe exited with {code}" if code >= 0 else f"exec probe killed by signal {-code}"
    )
    return ProbeResult(False, f"{reason}: {text}" if text else reason)


async def _read_bounded(stream: asyncio.StreamReader) -> bytes:
    kept = bytearray()
    while chunk := await stream.read(65536):
        if len(kept) < _MAX_OUTPUT:
            kept += chunk[: _MAX_OUTPUT - len(kept)]
    return bytes(kept)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


# ------------------------------------------------------------------ tcp


async def _run_tcp(host: str, port: int, timeout: float) -> ProbeResult:
    if not 0 < port < 65536:
        return ProbeResult(False, f"tcp probe: invalid port {port}")
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return ProbeResult(False, f"tcp probe: connect to {host}:{port} timed out")
    except OSError as exc:
        return ProbeResult(False, f"tcp probe: connect to {host}:{port}: {exc.strerror or exc}")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return ProbeResult(True, f"connected to {host}:{port}")


# ------------------------------------------------------------------ http


def _insecure_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _http_request(action: pb.HTTPGetAction, host: str) -> bytes:
    path = action.path or "/"
    if not path.startswith("/"):
        path = "/" + path
    authority = f"[{host}]" if ":" in host else host
    headers = {
        "host": ("Host", f"{authority}:{action.port}"),
        "user-agent": ("User-Agent", "mizzen-probe/1"),
        "accept": ("Accept", "*/*"),
    }
    for h in action.http_headers:
        headers[h.name.lower()] = (h.name, h.value)
    headers["connection"] = ("Connection", "close")
    lines = [f"GET {path} HTTP/1.1", *(f"{name}: {value}" for name, value in headers.values())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace")


async def _run_http(action: pb.HTTPGetAction, default_host: str, timeout: float) -> ProbeResult:
    host = action.host or default_host
    port = action.port
    scheme = (action.scheme or "HTTP").upper()
    if scheme not in ("HTTP", "HTTPS"):
        return ProbeResult(False, f"http probe: unsupported scheme {action.scheme!r}")
    if not 0 < port < 65536:
        return ProbeResult(False, f"http probe: invalid port {port}")
    url = f"{scheme.lower()}://{host}:{port}{action.path or '/'}"
    ctx = _insecure_context() if scheme == "HTTPS" else None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
            try:
                writer.write(_http_request(action, host))
                await writer.drain()
                status_line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
    except TimeoutError:
        return ProbeResult(False, f"http probe: GET {url} timed out after {timeout:g}s")
    except (OSError, ssl.SSLError) as exc:
        return ProbeResult(False, f"http probe: GET {url}: {exc.strerror or exc}")
    parts = status_line.decode("latin-1").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        shown = status_line[:_MAX_OUTPUT].decode("latin-1").strip()
        return ProbeResult(False, f"http probe: GET {url}: malformed response {shown!r}")
    status = int(parts[1])
    if 200 <= status < 400:
        return ProbeResult(True, f"HTTP {status}")
    return ProbeResult(False, f"http probe: GET {url} returned {status}")
