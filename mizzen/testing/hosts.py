"""Test hosts: network namespaces on one bridge, each a "machine" with its own address.

``TestHosts(n, base_dir)`` builds, in the root namespace, a bridge holding the
subnet's first address (the *gateway*, e.g. 198.18.0.1, where the test driver
lives) and n namespaces ``mz<tag>-h<i>``, each joined to the bridge by a veth
pair and addressed ``<subnet>.(10+i)`` (i = 1..n), loopback up. Each host runs
real daemons (``spawn``), which can be SIGKILLed one at a time (``kill``) or all
together (``kill_all``: the whole host), and can be cut off (``partition``) and
reconnected (``heal``). ``ip netns exec`` gives a daemon a private ``/sys``
without ``/sys/fs/cgroup``; ``spawn(..., host_mounts=True)`` runs it in the
caller's mount namespace instead (still in the host's network namespace), as a
node agent needs the real cgroup hierarchies.

What is guaranteed:

* a partition is symmetric and total on the host's link: iptables rules inside
  the namespace drop everything in and out of its ``eth0`` (optionally except
  the gateway, so the test can still observe the isolated side); loopback
  inside the namespace keeps working;
* ``stop()`` (also run by ``__exit__``, at interpreter exit and for a
  collected ``TestHosts``) SIGKILLs every tracked daemon and every other
  process found in each namespace, removes the hosts' cgroups
  (``host.cgroup_parent`` under every cgroup hierarchy), the namespaces, veths
  and the bridge, even when a test failed;
* daemons spawned from the main thread carry ``PR_SET_PDEATHSIG=SIGKILL``; a
  marker file per instance under ``/run/mizzen-testhosts`` lets the next
  ``TestHosts`` remove what a SIGKILLed test runner left behind;
* nothing is bound outside the subnet and loopback.

Only one ``TestHosts`` per subnet can exist on a machine at a time (the subnet
is routed to its bridge); a second one fails fast with ``HostsError``.

One file because building the namespaces and bridge, running daemons in them
and tearing everything down (stale sweeps included) act on the same network
objects, and a partial split would let a teardown miss what a builder made.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import structlog

from mizzen.testing.processes import TERMINATING, dies_with_parent, has_exited, reap_group

_log = structlog.get_logger(__name__)

DEFAULT_SUBNET = "198.18.0.0/24"
MARKER_DIR = Path("/run/mizzen-testhosts")
CGROUP_ROOT = Path("/sys/fs/cgroup")
_NSENTER = shutil.which("nsenter")


class HostsError(RuntimeError):
    """Setting up, driving or tearing down the test hosts failed."""


def unavailable_reason() -> str | None:
    """Why TestHosts cannot run here (not root, no ``ip``/``iptables``), else None."""
    if os.geteuid() != 0:
        return "test hosts need root (network namespaces, veths, iptables)"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install iproute2 iptables)"
    probe = f"mzprobe{os.getpid()}"
    try:
        _run("ip", "netns", "add", probe)
    except HostsError as err:
        return f"cannot create a network namespace: {err}"
    try:
        _run("ip", "netns", "exec", probe, "iptables", "-w", "-S")
    except HostsError as err:
        return f"iptables does not work inside a network namespace: {err}"
    finally:
        with contextlib.suppress(HostsError):
            _run("ip", "netns", "del", probe)
    return None


def _run(*argv: str, timeout: float = 15.0) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise HostsError(f"{shlex.join(argv)}: {err}") from err
    if done.returncode != 0:
        raise HostsError(f"{shlex.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


class TestHost:
    """One namespace: its address, its daemons (by name), its partition state."""

    __test__ = False

    def __init__(self, index: int, tag: str, address: str, gateway: str, prefix: int) -> None:
        self.index = index
        self.name = f"h{index}"
        self.netns = f"mz{tag}-h{index}"
        self.address = address
        self.gateway = gateway
        self.prefix = prefix
        self.veth = f"mz{tag}h{index}"
        self.cgroup_parent = f"mizzen-test-{tag}-h{index}"
        self.partitioned = False
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def __repr__(self) -> str:
        return f"TestHost({self.name} {self.address} netns={self.netns})"

    def exec(self, *argv: str, timeout: float = 15.0) -> str:
        """Run a short command inside the namespace; its stdout."""
        return _run("ip", "netns", "exec", self.netns, *argv, timeout=timeout)

    # -- daemons ----------------------------------------------------------------

    def spawn(
        self,
        argv: Sequence[str],
        name: str,
        *,
        env: Mapping[str, str] | None = None,
        log: str | os.PathLike[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        host_mounts: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start argv inside the namespace in its own session, tracked under name.

        The Popen's pid is the daemon's own (``ip netns exec`` and ``nsenter``
        exec it). Output is appended to the file log (a header line marks each
        start), else discarded. With host_mounts the daemon re-enters the
        caller's mount namespace (the real ``/sys/fs/cgroup``), keeping the
        host's network namespace.
        """
        old = self._procs.get(name)
        if old is not None and not has_exited(old):
            raise HostsError(f"{self.name}: daemon {name} is already running (pid {old.pid})")
        inner = list(argv)
        if host_mounts:
            if _NSENTER is None:
                raise HostsError("host_mounts needs nsenter (apt-get install util-linux)")
            inner = [_NSENTER, f"--mount=/proc/{os.getpid()}/ns/mnt", "--", *inner]
        full = dies_with_parent(["ip", "netns", "exec", self.netns, *inner])
        out = open(log, "ab") if log is not None else None  # noqa: SIM115
        try:
            if out is not None:
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
                out.write(f"=== {stamp} start on {self.name}: {shlex.join(argv)}\n".encode())
                out.flush()
            proc = subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=out if out is not None else subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        finally:
            if out is not None:
                out.close()
        self._procs[name] = proc
        _log.info("test_host_spawned", host=self.name, daemon=name, pid=proc.pid)
        return proc

    def proc(self, name: str) -> subprocess.Popen[bytes] | None:
        return self._procs.get(name)

    def running(self, name: str) -> bool:
        proc = self._procs.get(name)
        return proc is not None and not has_exited(proc)

    def kill(self, name: str, sig: int = signal.SIGKILL, *, wait: float = 10.0) -> None:
        """Signal daemon name's process group; for a terminating signal, reap it.

        A daemon that outlives ``wait`` seconds after a terminating signal is SIGKILLed.
        """
        proc = self._procs.get(name)
        if proc is None or has_exited(proc):
            raise HostsError(f"{self.name}: daemon {name} is not running")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        if sig not in TERMINATING:
            return
        reap_group(proc, wait)
        _log.info("test_host_killed", host=self.name, daemon=name, signal=int(sig))

    def kill_all(self) -> None:
        """The whole host dies: SIGKILL every tracked daemon and every process in the netns."""
        for proc in self._procs.values():
            if not has_exited(proc):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        for _ in range(50):
            pids = self.netns_pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
        for proc in self._procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        _log.info("test_host_killed_all", host=self.name)

    def netns_pids(self) -> list[int]:
        """Live processes inside the namespace (whoever started them)."""
        try:
            out = _run("ip", "netns", "pids", self.netns)
        except HostsError:
            return []
        return [int(p) for p in out.split()]

    # -- network ----------------------------------------------------------------

    def partition(self, *, except_gateway: bool = False) -> None:
        """Drop all traffic in and out of this host's link (both directions).

        With except_gateway, packets to and from the gateway address (the test
        driver in the root namespace) still pass, so the isolated side can be
        observed; other hosts still cannot reach it nor it them.
        """
        self.heal()
        rules: list[list[str]] = []
        if except_gateway:
            rules += [
                ["-A", "INPUT", "-i", "eth0", "-s", self.gateway, "-j", "ACCEPT"],
                ["-A", "OUTPUT", "-o", "eth0", "-d", self.gateway, "-j", "ACCEPT"],
            ]
        rules += [
            ["-A", "INPUT", "-i", "eth0", "-j", "DROP"],
            ["-A", "OUTPUT", "-o", "eth0", "-j", "DROP"],
        ]
        for rule in rules:
            self.exec("iptables", "-w", *rule)
        self.partitioned = True
        _log.info("test_host_partitioned", host=self.name, except_gateway=except_gateway)

    def heal(self) -> None:
        """Remove the partition (the namespace's filter table is ours alone)."""
        self.exec("iptables", "-w", "-F")
        if self.partitioned:
            _log.info("test_host_healed", host=self.name)
        self.partitioned = False


class TestHosts:
    """n hosts on a fresh bridge; a context manager that always cleans up."""

    __test__ = False

    def __init__(
        self,
        n: int,
        base_dir: str | os.PathLike[str],
        *,
        subnet: str = DEFAULT_SUBNET,
        tag: str | None = None,
    ) -> None:
        net = ipaddress.ip_network(subnet)
        if n < 1 or n + 10 >= net.num_addresses - 1:
            raise ValueError(f"cannot fit {n} hosts in {subnet}")
        self.base_dir = Path(base_dir)
        self.subnet = net
        self.tag = tag or secrets.token_hex(2)
        self.bridge = f"mzbr{self.tag}"
        self.gateway = str(net.network_address + 1)
        self.hosts = [
            TestHost(i, self.tag, str(net.network_address + 10 + i), self.gateway, net.prefixlen)
            for i in range(1, n + 1)
        ]
        self._marker = MARKER_DIR / f"{self.tag}.json"
        self._started = False

    def __len__(self) -> int:
        return len(self.hosts)

    def __iter__(self) -> Iterator[TestHost]:
        return iter(self.hosts)

    def __getitem__(self, i: int) -> TestHost:
        return self.hosts[i]

    def start(self) -> Self:
        """Create bridge, namespaces and links; fail if the subnet is already in use."""
        sweep_stale()
        self._check_subnet_free()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._write_marker()
        self._started = True
        _instances.add(self)
        try:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            _run("ip", "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            for h in self.hosts:
                peer = f"{h.veth}p"
                _run("ip", "netns", "add", h.netns)
                _run("ip", "link", "add", h.veth, "type", "veth", "peer", "name", peer)
                _run("ip", "link", "set", peer, "netns", h.netns)
                _run("ip", "link", "set", h.veth, "master", self.bridge)
                _run("ip", "link", "set", h.veth, "up")
                h.exec("ip", "link", "set", peer, "name", "eth0")
                h.exec("ip", "addr", "add", f"{h.address}/{h.prefix}", "dev", "eth0")
                h.exec("ip", "link", "set", "eth0", "up")
                h.exec("ip", "link", "set", "lo", "up")
                h.heal()
        except BaseException:
            self.stop()
            raise
        _log.info("test_hosts_started", tag=self.tag, hosts=[h.address for h in self.hosts])
        return self

    def stop(self) -> None:
        """Kill every process, remove cgroups, namespaces, links and the bridge. Idempotent."""
        if not self._started:
            return
        problems = _teardown(
            [h.netns for h in self.hosts],
            self.bridge,
            [h.cgroup_parent for h in self.hosts],
            kill_first=self.hosts,
        )
        self._started = False
        with contextlib.suppress(FileNotFoundError):
            self._marker.unlink()
        if problems:
            raise HostsError("test hosts teardown incomplete: " + "; ".join(problems))
        _log.info("test_hosts_stopped", tag=self.tag)

    def _check_subnet_free(self) -> None:
        for line in _run("ip", "-4", "-o", "addr", "show").splitlines():
            fields = line.split()
            if "inet" not in fields:
                continue
            addr = ipaddress.ip_interface(fields[fields.index("inet") + 1])
            if addr.network.overlaps(self.subnet):
                raise HostsError(f"subnet {self.subnet} is already in use on {fields[1]} ({addr})")

    def _write_marker(self) -> None:
        MARKER_DIR.mkdir(parents=True, exist_ok=True)
        record = {
            "pid": os.getpid(),
            "netns": [h.netns for h in self.hosts],
            "bridge": self.bridge,
            "cgroups": [h.cgroup_parent for h in self.hosts],
        }
        self._marker.write_text(json.dumps(record))

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


def _teardown(
    netns: Sequence[str],
    bridge: str,
    cgroups: Sequence[str],
    kill_first: Sequence[TestHost] = (),
) -> list[str]:
    problems: list[str] = []
    for h in kill_first:
        h.kill_all()
    existing = set(_run("ip", "netns", "list").split())
    for ns in netns:
        if ns not in existing:
            continue
        with contextlib.suppress(HostsError):
            for pid in _run("ip", "netns", "pids", ns).split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        try:
            _run("ip", "netns", "del", ns)
        except HostsError as err:
            problems.append(str(err))
    for parent in cgroups:
        problems += _remove_cgroups(parent)
    problems += _remove_bridge(bridge)
    return problems


def _remove_bridge(bridge: str, timeout: float = 5.0) -> list[str]:
    """Delete the bridge and wait until no link mentions it.

    Deleting a namespace is asynchronous in the kernel: its veth's host side
    (a port of the bridge) can outlive ``ip netns del`` for a moment, so check
    again until the bridge and its ports are gone.
    """
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        links = _run("ip", "-o", "link", "show")
        if bridge not in links:
            return []
        if f" {bridge}:" in links:
            try:
                _run("ip", "link", "del", bridge)
            except HostsError as err:
                last = str(err)
        if time.monotonic() > deadline:
            return [last or f"links still refer to {bridge} after {timeout}s"]
        time.sleep(0.1)


def _remove_cgroups(parent: str) -> list[str]:
    """SIGKILL what is left in <hierarchy>/<parent> (v2 or every v1 controller), rmdir it."""
    roots = [CGROUP_ROOT]
    if not (CGROUP_ROOT / "cgroup.controllers").exists() and CGROUP_ROOT.is_dir():
        roots = [p for p in CGROUP_ROOT.iterdir() if p.is_dir() and not p.is_symlink()]
    problems: list[str] = []
    for root in roots:
        top = root / parent
        if not top.is_dir():
            continue
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for d in [*dirs, top]:
            deadline = time.monotonic() + 5
            while True:
                with contextlib.suppress(OSError):
                    for pid in (d / "cgroup.procs").read_text().split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as err:
                    if time.monotonic() > deadline:
                        problems.append(f"cannot remove cgroup {d}: {err}")
                        break
                    time.sleep(0.05)
    return problems


def sweep_stale() -> None:
    """Remove what TestHosts of dead processes left behind (their marker files say what)."""
    if not MARKER_DIR.is_dir():
        return
    for marker in MARKER_DIR.glob("*.json"):
        try:
            record = json.loads(marker.read_text())
            pid = int(record["pid"])
        except (OSError, ValueError, KeyError):
            continue
        if pid != os.getpid() and Path(f"/proc/{pid}").exists():
            continue
        if pid == os.getpid() and any(t._marker == marker and t._started for t in _instances):
            continue
        problems = _teardown(record["netns"], record["bridge"], record["cgroups"])
        _log.warning("test_hosts_swept_stale", marker=str(marker), problems=problems)
        if not problems:
            marker.unlink(missing_ok=True)


_instances: weakref.WeakSet[TestHosts] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for hosts in list(_instances):
        with contextlib.suppress(Exception):
            hosts.stop()
