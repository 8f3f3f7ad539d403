"""The Raft port: a store refuses to start without a secret unless it is a plaintext
loopback throwaway, and a store with a secret never unpickles what a stranger sends.

pysyncobj frames each message as a native-endian i32 length and the zlib of a
pickle (Fernet-encrypted when it has a password). The tests send such a frame
holding a pickle whose unpickling creates a marker file, wait until the store
has read it and hung up (it disconnects a connection whose first message is
not a peer's), then look for the marker.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from security_fixtures import REPO, Pki, pki_fixture  # noqa: F401 (fixtures)

from mizzen.testing.local_cluster import MizzenCluster, free_ports

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


class _Plant:
    """Unpickling this creates the file at ``path`` (stands for any code a pickle can run)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


def send_pickle_to_raft_port(address: str, marker: Path) -> None:
    """Send one pysyncobj-framed pickle; return once the store closed the connection."""
    payload = zlib.compress(pickle.dumps(_Plant(marker)), 3)
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(struct.pack("i", len(payload)) + payload)
        with contextlib.suppress(ConnectionResetError):  # closed too
            assert sock.recv(1) == b"", "the store answered a stranger"


def raft_address(cluster: MizzenCluster, i: int = 0) -> str:
    argv = cluster.argv(i)
    return argv[argv.index("--listen-raft") + 1]


def store(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    client, raft = free_ports(2)
    full_env = {k: v for k, v in os.environ.items() if k != "MIZZEN_RAFT_PASSWORD"}
    full_env.update(PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run(
        [
            sys.executable, "-m", "mizzen", "store",
            "--listen-client", f"127.0.0.1:{client}", "--listen-raft", f"127.0.0.1:{raft}",
            *args,
        ],
        capture_output=True, text=True, timeout=30, env=full_env,
    )  # fmt: skip


def refused(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    return lines[0]


def test_a_tls_store_without_a_raft_secret_refuses_to_start(pki: Pki, tmp_path: Path) -> None:
    """Even with the default loopback Raft address: any local user could reach it."""
    out = store("--data-dir", str(tmp_path / "d"), *pki.store_flags()[:6])  # no secret
    line = refused(out)
    assert line.startswith("mizzen: refusing to start without a Raft secret (")
    assert "the client port serves TLS" in line and "--peer-secret-file" in line
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("value", ["a", "aaaaaaaaaaaaaaaaaaaaaaaa"])
def test_a_weak_env_secret_is_refused(pki: Pki, tmp_path: Path, value: str) -> None:
    out = store(
        "--data-dir", str(tmp_path / "d"), *pki.store_flags()[:6],
        env={"MIZZEN_RAFT_PASSWORD": value},
    )  # fmt: skip
    line = refused(out)
    assert line.startswith("mizzen: $MIZZEN_RAFT_PASSWORD: Raft secret too ")


def test_a_store_with_a_secret_never_unpickles_a_strangers_message(
    pki: Pki, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    with MizzenCluster(
        1, tmp_path / "c", extra_args=pki.store_flags(), credentials=pki.creds("admin")
    ) as cluster:
        send_pickle_to_raft_port(raft_address(cluster), marker)
        assert cluster.is_running(0)
        assert cluster.status(0) is not None  # still serving
    assert not marker.exists()


def test_only_a_plaintext_loopback_store_runs_without_a_secret_and_it_warns(
    tmp_path: Path,
) -> None:
    """The developer's throwaway store: it starts, logs why that is dangerous — and it is:
    the same message does run code there (which shows the test above can fail)."""
    marker = tmp_path / "ran"
    assert "MIZZEN_RAFT_PASSWORD" not in os.environ
    with MizzenCluster(1, tmp_path / "c") as cluster:
        raft = raft_address(cluster)
        send_pickle_to_raft_port(raft, marker)
        log = cluster.log_path(0).read_text()
    assert marker.exists()
    assert "raft_secret_missing" in log
    assert "any local user can run code as this user through it" in log
    assert raft in log
