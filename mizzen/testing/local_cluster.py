"""Real store clusters (etcd or Mizzen) as local processes on 127.0.0.1.

Integration tests and benchmarks start n member processes, wait until they
agree on a leader, then kill, restart and stop members. What is guaranteed:

* every member runs in its own session, so it and anything it forks form one
  process group; reaping a member SIGKILLs what is left of its group;
* ``stop()`` is idempotent and returns only when every process it started has
  been reaped (SIGTERM, a grace period, then SIGKILL);
* a cluster still running when it is garbage-collected or when the interpreter
  exits is stopped, and members spawned from the main thread carry
  ``PR_SET_PDEATHSIG=SIGKILL`` (``mizzen.testing.processes``, shared with the
  test hosts), so even a test runner killed with SIGKILL leaves no store behind.

Member index ``i`` is 0-based, as in ``endpoints``; its name is ``n{i+1}``
(``e{i+1}`` for etcd), its data dir ``base/<name>`` and its log ``base/<name>.log``.

One file because etcd and Mizzen clusters share one lifecycle (ports, start,
leader agreement, kill, restart, stop and reaping); the two subclasses only
say how a member is started.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import grpc

from mizzen.security.tls import INSECURE, ClientCredentials
from mizzen.testing.processes import (
    TERMINATING,
    dies_with_parent,
    has_exited,
    kill_group,
    reap_group,
)
from protos import rpc_pb2, rpc_pb2_grpc

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[2]

_PROBE_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]

_ports_lock = threading.Lock()
_ports_given: set[int] = set()


class ClusterError(RuntimeError):
    """A member failed to start, died unexpectedly, or no leader was agreed in time."""


def free_ports(n: int) -> list[int]:
    """Return n distinct TCP ports on 127.0.0.1 that were free a moment ago.

    The n sockets are held open together, so one call never repeats a port, and
    ports handed out earlier in this process are skipped.
    """
    ports: list[int] = []
    held: list[socket.socket] = []
    with _ports_lock:
        try:
            for _ in range(n + 1000):
                if len(ports) == n:
                    break
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(sock)
                sock.bind((HOST, 0))
                port = int(sock.getsockname()[1])
                if port not in _ports_given:
                    ports.append(port)
        finally:
            for sock in held:
                sock.close()
        if len(ports) != n:
            raise ClusterError(f"could not find {n} free ports on {HOST}")
        _ports_given.update(ports)
    return ports


@dataclass
class _Member:
    index: int
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    argv: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    expect_running: bool = False
    paused: bool = False


class LocalCluster:
    """n member processes of one store on loopback; subclasses supply the command line."""

    name_prefix = "n"
    # How status probes connect (a secure cluster's tests set admin credentials).
    probe_credentials: ClientCredentials = INSECURE

    def __init__(
        self,
        n: int,
        base_dir: str | os.PathLike[str],
        *,
        env: Mapping[str, str] | None = None,
        stop_grace: float = 5.0,
    ) -> None:
        if n < 1:
            raise ValueError("a cluster needs at least one member")
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._env = dict(env or {})
        self._grace = stop_grace
        ports = free_ports(2 * n)
        self._members: list[_Member] = []
        for i in range(n):
            name = f"{self.name_prefix}{i + 1}"
            self._members.append(
                _Member(
                    index=i,
                    name=name,
                    client_port=ports[2 * i],
                    peer_port=ports[2 * i + 1],
                    data_dir=self.base_dir / name,
                    log_path=self.base_dir / f"{name}.log",
                )
            )
        for m in self._members:
            m.argv = self._argv(m)
        _clusters.add(self)

    # -- what subclasses define -------------------------------------------------

    def _argv(self, m: _Member) -> list[str]:
        raise NotImplementedError

    def _child_env(self) -> dict[str, str]:
        env = os.environ.copy()
        env.update(self._env)
        return env

    # -- addresses and state ----------------------------------------------------

    def __len__(self) -> int:
        return len(self._members)

    @property
    def endpoints(self) -> list[str]:
        return [self.endpoint(i) for i in range(len(self._members))]

    def endpoint(self, i: int) -> str:
        return f"{HOST}:{self._members[i].client_port}"

    @property
    def names(self) -> list[str]:
        return [m.name for m in self._members]

    @property
    def pids(self) -> list[int | None]:
        """Pid of each member's process, None where it is not running."""
        return [m.proc.pid if self._running(m) and m.proc else None for m in self._members]

    def argv(self, i: int) -> list[str]:
        return list(self._members[i].argv)

    def data_dir(self, i: int) -> Path:
        return self._members[i].data_dir

    def log_path(self, i: int) -> Path:
        return self._members[i].log_path

    def is_running(self, i: int) -> bool:
        return self._running(self._members[i])

    def log_tail(self, i: int, lines: int = 20) -> str:
        try:
            text = self._members[i].log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle --------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Self:
        """Spawn every member; return when all answer Status and agree on a leader."""
        if any(self._running(m) for m in self._members):
            raise ClusterError("cluster already started")
        try:
            for m in self._members:
                self._spawn(m)
            self._wait_leader(timeout, require=set(range(len(self._members))))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop members one at a time: SIGTERM, wait up to the grace period, SIGKILL, reap.

        One at a time because etcd members terminated together each wait ~7 s for
        their peers; in turn each exits in milliseconds. Idempotent.
        """
        for m in self._members:
            if m.proc is None or m.proc.returncode is not None:
                continue
            m.expect_running = False
            self._signal_group(m, signal.SIGTERM)
            self._signal_group(m, signal.SIGCONT)
            self._reap(m, self._grace)

    def kill(self, i: int, sig: int = signal.SIGKILL, *, wait: bool = True) -> None:
        """Send sig to member i's process (not its group).

        SIGSTOP/SIGCONT pause and resume it. For a terminating signal the member is
        no longer expected to run and, with wait, is reaped (SIGKILLed after the
        grace period if it ignores the signal).
        """
        m = self._members[i]
        if m.proc is None or not self._running(m):
            raise ClusterError(f"member {m.name} is not running")
        os.kill(m.proc.pid, sig)
        if sig == signal.SIGSTOP:
            m.paused = True
        elif sig == signal.SIGCONT:
            m.paused = False
        elif sig in TERMINATING:
            m.expect_running = False
            if wait:
                if m.paused:
                    os.kill(m.proc.pid, signal.SIGCONT)
                self._reap(m, self._grace)

    def restart(self, i: int, *, wait: bool = True, timeout: float = 30.0) -> None:
        """Start member i again with the same command line and data dir.

        A member still running is stopped first (SIGTERM, then SIGKILL after the
        grace period). With wait, return once it answers Status (it need not have
        a leader: with quorum lost that would never happen).
        """
        m = self._members[i]
        if self._running(m):
            self.kill(i, signal.SIGTERM)
        elif m.proc is not None:
            self._reap(m, 0)
        self._spawn(m)
        if not wait:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if self.status(i, timeout=0.5) is not None:
                return
            time.sleep(0.05)
        raise ClusterError(f"{m.name} did not answer Status within {timeout}s\n{self._tails([i])}")

    # -- Status probes ----------------------------------------------------------

    def status(self, i: int, timeout: float = 1.0) -> rpc_pb2.StatusResponse | None:
        """Maintenance.Status of member i, or None if it is down or does not answer."""
        if not self._running(self._members[i]):
            return None
        try:
            with self.probe_credentials.channel(self.endpoint(i), _PROBE_OPTIONS) as channel:
                stub = rpc_pb2_grpc.MaintenanceStub(channel)
                response: rpc_pb2.StatusResponse = stub.Status(
                    rpc_pb2.StatusRequest(), timeout=timeout
                )
                return response
        except grpc.RpcError:
            return None

    def leader_index(self, timeout: float = 10.0) -> int:
        """Index of the leader once every live (running, not paused) member agrees on it."""
        live = {m.index for m in self._members if self._running(m) and not m.paused}
        return self._wait_leader(timeout, require=live)

    def member_id(self, i: int, timeout: float = 1.0) -> int | None:
        response = self.status(i, timeout)
        return None if response is None else int(response.header.member_id)

    def _wait_leader(self, timeout: float, require: set[int]) -> int:
        deadline = time.monotonic() + timeout
        seen: dict[int, tuple[int, int] | None] = {}
        while True:
            self._check_alive()
            statuses = {i: self.status(i, timeout=0.5) for i in sorted(require)}
            seen = {
                i: None if s is None else (int(s.header.member_id), int(s.leader))
                for i, s in statuses.items()
            }
            leader = _agreed_leader(seen)
            if leader is not None:
                return leader
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        shown = {self._members[i].name: v for i, v in seen.items()}
        raise ClusterError(
            f"no leader agreed by {sorted(shown)} within {timeout}s "
            f"((member_id, leader) per member: {shown})\n{self._tails(sorted(require))}"
        )

    # -- growing the cluster ----------------------------------------------------

    def add_member(self, *, start: bool = True) -> int:
        """Append one member (next name, fresh ports) that joins the running cluster.

        Its command line comes from ``_join_argv`` (after the cluster was told of
        it, e.g. by MemberAdd). Returns its index; with start, it is spawned.
        """
        i = len(self._members)
        client_port, peer_port = free_ports(2)
        name = f"{self.name_prefix}{i + 1}"
        m = _Member(
            index=i,
            name=name,
            client_port=client_port,
            peer_port=peer_port,
            data_dir=self.base_dir / name,
            log_path=self.base_dir / f"{name}.log",
        )
        self._members.append(m)
        m.argv = self._join_argv(m)
        if start:
            self._spawn(m)
        return i

    def peer_address(self, i: int) -> str:
        return f"{HOST}:{self._members[i].peer_port}"

    def _join_argv(self, m: _Member) -> list[str]:
        raise NotImplementedError

    # -- processes --------------------------------------------------------------

    def _running(self, m: _Member) -> bool:
        return m.proc is not None and not has_exited(m.proc)

    def _check_alive(self) -> None:
        dead = [
            m.index
            for m in self._members
            if m.expect_running and m.proc is not None and has_exited(m.proc)
        ]
        if dead:
            names = ", ".join(self._members[i].name for i in dead)
            raise ClusterError(f"member(s) {names} exited unexpectedly\n{self._tails(dead)}")

    def _spawn(self, m: _Member) -> None:
        m.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # as the store makes it
        argv = dies_with_parent(m.argv)
        with open(m.log_path, "ab") as log:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            log.write(f"=== {stamp} start: {shlex.join(m.argv)}\n".encode())
            log.flush()
            m.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._child_env(),
                start_new_session=True,
            )
        m.expect_running = True
        m.paused = False

    def _signal_group(self, m: _Member, sig: int) -> None:
        if m.proc is not None:
            kill_group(m.proc, sig)

    def _reap(self, m: _Member, grace: float) -> None:
        proc = m.proc
        if proc is None:
            return
        try:
            reap_group(proc, grace)
        except subprocess.TimeoutExpired as exc:  # only if the kernel cannot kill it
            raise ClusterError(f"{m.name} (pid {proc.pid}) survived SIGKILL") from exc

    def _tails(self, indexes: Sequence[int], lines: int = 15) -> str:
        parts = []
        for i in indexes:
            m = self._members[i]
            parts.append(f"--- {m.log_path} (last {lines} lines)\n{self.log_tail(i, lines)}")
        return "\n".join(parts)

    # -- scoping ----------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()


def _agreed_leader(seen: Mapping[int, tuple[int, int] | None]) -> int | None:
    """Index whose member id every answer names as leader; None while they differ."""
    if not seen or any(v is None for v in seen.values()):
        return None
    answers = [v for v in seen.values() if v is not None]
    leaders = {leader for _, leader in answers}
    if len(leaders) != 1 or 0 in leaders:
        return None
    (leader,) = leaders
    for i, v in seen.items():
        if v is not None and v[0] == leader:
            return i
    return None


class EtcdCluster(LocalCluster):
    """Debian's ``etcd`` (3.4): a fresh cluster with a unique token, warn-level logs."""

    name_prefix = "e"

    def __init__(
        self,
        n: int,
        base_dir: str | os.PathLike[str],
        *,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        binary: str | None = None,
        stop_grace: float = 5.0,
    ) -> None:
        found = binary or shutil.which("etcd")
        if found is None:
            raise ClusterError("etcd is not on PATH (apt-get install etcd-server)")
        self.binary = found
        self.token = f"mizzen-test-{uuid.uuid4().hex[:12]}"
        self._extra = list(extra_args)
        super().__init__(n, base_dir, env=env, stop_grace=stop_grace)

    def _argv(self, m: _Member) -> list[str]:
        initial = ",".join(f"{x.name}=http://{HOST}:{x.peer_port}" for x in self._members)
        client = f"http://{HOST}:{m.client_port}"
        peer = f"http://{HOST}:{m.peer_port}"
        return [
            self.binary,
            "--name", m.name,
            "--data-dir", str(m.data_dir),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", initial,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", self.token,
            "--logger", "zap",
            "--log-outputs", "stderr",
            "--log-level", "warn",
            *self._extra,
        ]  # fmt: skip


class MizzenCluster(LocalCluster):
    """``python -m mizzen store`` members; extra_args go to every node."""

    name_prefix = "n"

    def __init__(
        self,
        n: int,
        base_dir: str | os.PathLike[str],
        *,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        python: str | None = None,
        stop_grace: float = 5.0,
        credentials: ClientCredentials | None = None,
    ) -> None:
        if credentials is not None:
            self.probe_credentials = credentials
        self.python = python or sys.executable
        self._extra = list(extra_args)
        super().__init__(n, base_dir, env=env, stop_grace=stop_grace)

    def _join_argv(self, m: _Member) -> list[str]:
        """Every member started so far, this one included, and ``existing``."""
        return [*self._argv(m), "--initial-cluster-state", "existing"]

    def _argv(self, m: _Member) -> list[str]:
        initial = ",".join(f"{x.name}={HOST}:{x.peer_port}" for x in self._members)
        return [
            self.python, "-m", "mizzen", "store",
            "--name", m.name,
            "--data-dir", str(m.data_dir),
            "--listen-client", f"{HOST}:{m.client_port}",
            "--listen-raft", f"{HOST}:{m.peer_port}",
            "--initial-cluster", initial,
            *self._extra,
        ]  # fmt: skip

    def _child_env(self) -> dict[str, str]:
        env = super()._child_env()
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{path}" if path else str(REPO_ROOT)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def start(self, timeout: float = 30.0) -> Self:
        """Also wait until every member lists every member's client URL (they publish
        them through the log right after the first election)."""
        super().start(timeout)
        deadline = time.monotonic() + timeout
        while not all(self._lists_all_urls(i) for i in range(len(self))):
            if time.monotonic() > deadline:
                self.stop()
                raise ClusterError(f"members did not publish their client URLs within {timeout}s")
            time.sleep(0.05)
        return self

    def _lists_all_urls(self, i: int) -> bool:
        try:
            with self.probe_credentials.channel(self.endpoint(i), _PROBE_OPTIONS) as channel:
                members = rpc_pb2_grpc.ClusterStub(channel).MemberList(
                    rpc_pb2.MemberListRequest(), timeout=1.0
                )
        except grpc.RpcError:
            return False
        return len(members.members) == len(self) and all(m.clientURLs for m in members.members)


_clusters: weakref.WeakSet[LocalCluster] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for cluster in list(_clusters):
        with contextlib.suppress(Exception):
            cluster.stop()
