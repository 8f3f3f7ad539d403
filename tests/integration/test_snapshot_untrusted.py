"""Snapshot files and snapshot streams are untrusted input: nothing in them may run.

A file (or a Maintenance.Snapshot stream) whose body is a pickle that would
create a marker file when unpickled must be refused by ``mizzen snapshot
status``, ``restore`` and ``save`` with one line and a non-zero exit, and the
marker must not exist afterwards. ``snapshot save`` must also refuse a server
that is not a store member, even one holding a certificate of the cluster CA.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from mizzen.security.pki import init_pki
from mizzen.testing.local_cluster import REPO_ROOT, free_ports
from protos import rpc_pb2, rpc_pb2_grpc
from store import snapshot

pytestmark = pytest.mark.timeout(60)


class _Plant:
    """Unpickling this creates the file at ``path`` (stands for any code a pickle can run)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


def pickle_snapshot(marker: Path, version: int = snapshot.FORMAT_VERSION) -> bytes:
    """A file framed like a snapshot (header, padding, valid sha256) with a pickle body."""
    body = pickle.dumps({"revision": 1, "x": _Plant(marker)})
    head = struct.pack(">8sIIQQ", snapshot.MAGIC, version, 0, 1, len(body))
    data = head + body
    data += b"\0" * (-len(data) % 512)
    return data + hashlib.sha256(data).digest()


def mizzen(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mizzen", *args],
        capture_output=True,
        text=True,
        timeout=40,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
    )


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode != 0, out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("mizzen: ")
    return lines[0]


def test_the_marker_pickle_really_runs_code(tmp_path: Path) -> None:
    """The payload is live: unpickling it creates the marker (so the tests below mean it)."""
    marker = tmp_path / "ran"
    body = pickle_snapshot(marker)[32:-32].rstrip(b"\0")
    pickle.loads(body)
    assert marker.exists()


@pytest.mark.parametrize("version", [1, snapshot.FORMAT_VERSION])
def test_status_and_restore_refuse_a_pickle_body(tmp_path: Path, version: int) -> None:
    """Version 1 was Mizzen's old pickle format; the current version must not unpickle either."""
    marker = tmp_path / "ran"
    path = tmp_path / "evil.snap"
    path.write_bytes(pickle_snapshot(marker, version))
    line = one_line_error(mizzen("snapshot", "status", str(path)))
    assert str(path) in line
    assert not marker.exists()
    data_dir = tmp_path / "restored"
    restore = ["snapshot", "restore", str(path), "--data-dir", str(data_dir), "--name", "a"]
    line = one_line_error(mizzen(*restore, "--initial-cluster", "a=127.0.0.1:1"))
    assert str(path) in line
    assert not marker.exists()
    assert not data_dir.exists() or not any(data_dir.iterdir())


# ------------------------------------------------------- a fake Maintenance server


class _FakeMaintenance(rpc_pb2_grpc.MaintenanceServicer):
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.calls = 0

    def Snapshot(
        self, request: rpc_pb2.SnapshotRequest, context: grpc.ServicerContext
    ) -> Iterator[rpc_pb2.SnapshotResponse]:
        self.calls += 1
        for blob, remaining in snapshot.chunks(self.data, 1000):
            yield rpc_pb2.SnapshotResponse(blob=blob, remaining_bytes=remaining)


@pytest.fixture(scope="module", name="pki")
def pki_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    init_pki(d, hosts=["127.0.0.1"], nodes=["n1=127.0.0.1"])
    return d


def _serve(pki: Path, stem: str, data: bytes) -> tuple[grpc.Server, str, _FakeMaintenance]:
    servicer = _FakeMaintenance(data)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    rpc_pb2_grpc.add_MaintenanceServicer_to_server(servicer, server)
    creds = grpc.ssl_server_credentials(
        [((pki / f"{stem}.key").read_bytes(), (pki / f"{stem}.crt").read_bytes())],
        root_certificates=(pki / "ca.crt").read_bytes(),
        require_client_auth=True,
    )
    address = f"127.0.0.1:{free_ports(1)[0]}"
    assert server.add_secure_port(address, creds)
    server.start()
    return server, address, servicer


def _save(pki: Path, address: str, out: Path) -> subprocess.CompletedProcess[str]:
    return mizzen(
        "snapshot", "save", str(out), "--endpoints", address,
        "--cacert", str(pki / "ca.crt"),
        "--cert", str(pki / "admin.crt"), "--key", str(pki / "admin.key"),
    )  # fmt: skip


def test_save_refuses_a_pickle_streamed_by_a_store(pki: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    server, address, servicer = _serve(pki, "store-127.0.0.1", pickle_snapshot(marker))
    try:
        out = tmp_path / "backup.snap"
        line = one_line_error(_save(pki, address, out))
        assert servicer.calls == 1  # it was streamed, and refused on its content
        assert "snapshot" in line
        assert not marker.exists()
        assert not out.exists()
    finally:
        server.stop(None)


@pytest.mark.parametrize("stem", ["node-n1", "admin", "controller"])
def test_save_refuses_a_server_that_is_not_a_store_member(
    pki: Path, tmp_path: Path, stem: str
) -> None:
    """Any holder of a cluster-CA certificate can serve TLS; only a store may serve snapshots."""
    marker = tmp_path / "ran"
    server, address, servicer = _serve(pki, stem, pickle_snapshot(marker))
    try:
        out = tmp_path / "backup.snap"
        line = one_line_error(_save(pki, address, out))
        assert "store" in line
        assert servicer.calls == 0
        assert not marker.exists()
        assert not out.exists()
    finally:
        server.stop(None)


def test_save_from_a_real_secure_store_is_written_0600(pki: Path, tmp_path: Path) -> None:
    """The store's own certificate (from pki) names the store: save works, and the file
    is private to its owner whatever the umask."""
    from mizzen.security.tls import ClientCredentials
    from mizzen.testing.local_cluster import MizzenCluster

    flags = [
        "--cacert", str(pki / "ca.crt"),
        "--cert", str(pki / "store-127.0.0.1.crt"), "--key", str(pki / "store-127.0.0.1.key"),
        "--peer-secret-file", str(pki / "raft.secret"),
    ]  # fmt: skip
    admin = ClientCredentials(str(pki / "ca.crt"), str(pki / "admin.crt"), str(pki / "admin.key"))
    out = tmp_path / "backup.snap"
    old = os.umask(0o022)
    try:
        with MizzenCluster(1, tmp_path / "c", extra_args=flags, credentials=admin) as cluster:
            result = _save(pki, cluster.endpoints[0], out)
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    assert "snapshot saved" in result.stdout
    assert out.stat().st_mode & 0o777 == 0o600
    assert snapshot.info(out.read_bytes()).revision >= 1


def test_unwritable_destinations_are_one_line_errors(pki: Path, tmp_path: Path) -> None:
    from store.state_machine import StateMachine

    good = snapshot.encode(StateMachine())
    server, address, _ = _serve(pki, "store-127.0.0.1", good)
    try:
        line = one_line_error(_save(pki, address, tmp_path / "missing" / "backup.snap"))
        assert "missing/backup.snap" in line and "No such file or directory" in line
    finally:
        server.stop(None)
    path = tmp_path / "good.snap"
    path.write_bytes(good)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    restore = ["snapshot", "restore", str(path), "--data-dir", str(blocker / "d"), "--name", "a"]
    line = one_line_error(mizzen(*restore, "--initial-cluster", "a=127.0.0.1:1"))
    assert str(blocker / "d") in line
