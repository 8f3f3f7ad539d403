"""`mizzen up` / `mizzen store` as a user runs them: start, write, Ctrl-C, resume; clear errors."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from mizzen.testing.local_cluster import REPO_ROOT, free_ports
from protos import rpc_pb2, rpc_pb2_grpc

pytestmark = pytest.mark.integration


def mizzen(*args: str) -> list[str]:
    return [sys.executable, "-m", "mizzen", "--log-format", "json", *args]


def wait_put(endpoint: str, key: bytes, value: bytes, timeout: float = 15.0) -> None:
    stub = rpc_pb2_grpc.KVStub(grpc.insecure_channel(endpoint))
    deadline = time.monotonic() + timeout
    while True:
        try:
            stub.Put(rpc_pb2.PutRequest(key=key, value=value), timeout=1)
            return
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def get(endpoint: str, key: bytes) -> bytes | None:
    stub = rpc_pb2_grpc.KVStub(grpc.insecure_channel(endpoint))
    deadline = time.monotonic() + 15
    while True:
        try:
            kvs = stub.Range(rpc_pb2.RangeRequest(key=key), timeout=1).kvs
            return kvs[0].value if kvs else None
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_up_survives_ctrl_c_and_resumes_with_its_data(tmp_path: Path) -> None:
    client, raft = free_ports(2)
    endpoint = f"127.0.0.1:{client}"
    argv = mizzen("up", "--data-dir", str(tmp_path), "--listen-client", endpoint,
                  "--listen-raft", f"127.0.0.1:{raft}", "--no-agent")  # fmt: skip
    for round_ in range(2):
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
        try:
            if round_ == 0:
                wait_put(endpoint, b"greeting", b"hello")
            else:
                assert get(endpoint, b"greeting") == b"hello"
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=15)
            assert proc.returncode == 0, err[-2000:]
            assert "Traceback" not in err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_bad_initial_cluster_is_one_readable_line(tmp_path: Path) -> None:
    out = subprocess.run(
        mizzen("store", "--data-dir", str(tmp_path), "--initial-cluster", "n1=nohostport"),
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert lines == ["mizzen: --initial-cluster: expected name=host:port, got 'n1=nohostport'"]


def test_raft_port_in_use_is_refused_clearly(tmp_path: Path) -> None:
    client, raft = free_ports(2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", raft))
        taken.listen()
        out = subprocess.run(
            mizzen("store", "--data-dir", str(tmp_path), "--listen-client", f"127.0.0.1:{client}",
                   "--listen-raft", f"127.0.0.1:{raft}"),
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"mizzen: cannot listen on raft address 127.0.0.1:{raft}")
    assert "Traceback" not in out.stderr


def test_client_port_in_use_is_refused_clearly(tmp_path: Path) -> None:
    client, raft = free_ports(2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", client))
        taken.listen()
        out = subprocess.run(
            mizzen("store", "--data-dir", str(tmp_path), "--listen-client", f"127.0.0.1:{client}",
                   "--listen-raft", f"127.0.0.1:{raft}"),
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f"mizzen: cannot listen on 127.0.0.1:{client} (client address in use?)"
    )
    assert "Traceback" not in out.stderr


def _consecutive_free_ports(n: int) -> int:
    """A port p such that p, p+1, ..., p+n-1 were all free a moment ago."""
    for _ in range(50):
        (base,) = free_ports(1)
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no run of free ports")


def test_up_with_three_store_members(tmp_path: Path) -> None:
    base = _consecutive_free_ports(6)
    argv = mizzen("up", "--nodes", "3", "--no-agent", "--data-dir", str(tmp_path),
                  "--listen-client", f"127.0.0.1:{base}",
                  "--listen-raft", f"127.0.0.1:{base + 1}")  # fmt: skip
    endpoints = [f"127.0.0.1:{base + 2 * i}" for i in range(3)]
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
    try:
        wait_put(endpoints[2], b"k", b"v")
        assert get(endpoints[0], b"k") == b"v"
        status = subprocess.run(
            mizzen("cluster", "status", "--endpoints", ",".join(endpoints)),
            capture_output=True, text=True, timeout=30, cwd=REPO_ROOT,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        roles = sorted(line.split()[3] for line in status.stdout.splitlines()[1:4])
        assert roles == ["follower", "follower", "leader"]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err[-2000:]
        assert "Traceback" not in err
        for ep in endpoints:
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", int(ep.rpartition(":")[2]))) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
