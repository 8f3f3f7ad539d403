"""A Mizzen store cluster on test hosts: one member per host, Raft over the bridge.

``store_on_hosts(hosts, base_dir)`` (hosts: a ``TestHosts`` or a list of some
of its hosts) starts one member per host given, named after the host
(``h<i>``), inside the host's network namespace, serving clients on
``<address>:2379`` and Raft on ``<address>:2380``. It is a ``MizzenCluster``,
so start, kill, restart, status, leader_index and stop work as on loopback
(member index i is the i-th host given); the members are also the hosts'
tracked ``store`` daemons, so ``hosts[i].kill_all()`` (or ``kill_host(i)``)
takes member i down with its host and the hosts' teardown removes whatever is
left.

Secure by default: ``store_on_hosts`` makes a ``HostPki`` (``mizzen pki init``
for the hosts' addresses, a node certificate per host) unless given
``pki=None``; members then serve TLS with client certificates and encrypt Raft
with ``raft.secret``, and ``cluster.credentials`` is the admin's.
``HostPki.client_flags(role)`` gives the flags for a ``mizzen controllers`` or
``mizzen agent`` on a host.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mizzen.security.pki import init_pki
from mizzen.security.tls import INSECURE, ClientCredentials
from mizzen.testing.local_cluster import MizzenCluster, _Member

if TYPE_CHECKING:
    from mizzen.testing.hosts import TestHost, TestHosts


class HostPki:
    """Certificates for a set of test hosts: a store and a node certificate per host."""

    def __init__(self, hosts: TestHosts | Sequence[TestHost], directory: str | os.PathLike[str]):
        self.dir = Path(directory)
        init_pki(
            self.dir,
            hosts=[h.address for h in hosts],
            nodes=[f"{h.name}={h.address}" for h in hosts],
        )

    def _files(self, name: str) -> tuple[str, str, str]:
        return (
            str(self.dir / "ca.crt"),
            str(self.dir / f"{name}.crt"),
            str(self.dir / f"{name}.key"),
        )

    def credentials(self, name: str = "admin") -> ClientCredentials:
        return ClientCredentials(*self._files(name))

    @property
    def admin(self) -> ClientCredentials:
        return self.credentials("admin")

    def store_flags(self, host: TestHost) -> list[str]:
        ca, cert, key = self._files(f"store-{host.address}")
        secret = str(self.dir / "raft.secret")
        keys = ["--encryption-key-file", str(self.dir / "encryption.yaml")]
        return ["--cacert", ca, "--cert", cert, "--key", key, "--peer-secret-file", secret, *keys]

    def client_flags(self, name: str) -> list[str]:
        """--cacert/--cert/--key of identity name: "controller", "node-<host name>", "admin"."""
        ca, cert, key = self._files(name)
        return ["--cacert", ca, "--cert", cert, "--key", key]


class HostStoreCluster(MizzenCluster):
    """A Mizzen store member per test host: ``h<i>`` on ``<address>:2379`` (Raft on 2380).

    Everything LocalCluster offers (start, kill, restart, status, leader_index,
    stop) works unchanged; members run inside their host's namespace, so
    ``hosts[i].kill_all()`` or ``kill_host(i)`` kills member i with its host.
    """

    CLIENT_PORT = 2379
    RAFT_PORT = 2380

    def __init__(
        self,
        hosts: TestHosts | Sequence[TestHost],
        base_dir: str | os.PathLike[str],
        *,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        python: str | None = None,
        stop_grace: float = 5.0,
        pki: HostPki | None = None,
    ) -> None:
        self.hosts = hosts
        self.pki = pki
        # plaintext on bridge addresses still needs a Raft secret (mizzen store refuses
        # to start without one off loopback): a private one for this cluster
        self.raft_secret = Path(base_dir) / "raft.secret"
        if pki is None:
            self.raft_secret.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.raft_secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
        super().__init__(
            len(hosts),
            base_dir,
            extra_args=extra_args,
            env=env,
            python=python,
            stop_grace=stop_grace,
            credentials=pki.admin if pki else None,
        )

    @property
    def credentials(self) -> ClientCredentials:
        """How a test's clients connect: the admin certificate, or plaintext."""
        return self.pki.admin if self.pki else INSECURE

    def endpoint(self, i: int) -> str:
        return f"{self.hosts[i].address}:{self.CLIENT_PORT}"

    def _argv(self, m: _Member) -> list[str]:
        initial = ",".join(f"h{h.index}={h.address}:{self.RAFT_PORT}" for h in self.hosts)
        host = self.hosts[m.index]
        return [
            self.python, "-m", "mizzen", "store",
            "--name", host.name,
            "--data-dir", str(m.data_dir),
            "--listen-client", f"{host.address}:{self.CLIENT_PORT}",
            "--listen-raft", f"{host.address}:{self.RAFT_PORT}",
            "--initial-cluster", initial,
            *(
                self.pki.store_flags(host)
                if self.pki
                else ["--insecure", "--peer-secret-file", str(self.raft_secret)]
            ),
            *self._extra,
        ]  # fmt: skip

    def _spawn(self, m: _Member) -> None:
        m.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # as the store makes it
        host = self.hosts[m.index]
        m.proc = host.spawn(m.argv, "store", env=self._child_env(), log=m.log_path)
        m.expect_running = True
        m.paused = False

    def kill_host(self, i: int) -> None:
        """Host i dies with every process on it (member i included)."""
        self._members[i].expect_running = False
        self.hosts[i].kill_all()


def store_on_hosts(
    hosts: TestHosts | Sequence[TestHost],
    base_dir: str | os.PathLike[str],
    *,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    start_timeout: float = 30.0,
    secure: bool = True,
    pki: HostPki | None = None,
) -> HostStoreCluster:
    """Start one store member on every host; return once they agree on a leader.

    secure: TLS with ``pki`` (default: certificates made under ``base_dir/pki``
    for these hosts); else plaintext with ``--insecure``, as the bridge
    addresses are not loopback (Raft still encrypted, with a secret made for
    the cluster in ``base_dir/raft.secret``).
    """
    if secure and pki is None:
        pki = HostPki(hosts, Path(base_dir) / "pki")
    if not secure:
        pki = None
    cluster = HostStoreCluster(hosts, base_dir, extra_args=extra_args, env=env, pki=pki)
    return cluster.start(start_timeout)
