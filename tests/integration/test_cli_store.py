"""`mizzen up` / `mizzen store` as a user runs them: start, write, Ctrl-C, resume; clear errors.

`mizzen up` serves TLS with client certificates unless ``--insecure``: the
tests here talk to it as the admin whose files it wrote to ``<data-dir>/pki``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import yaml

from mizzen.security.tls import INSECURE, ClientCredentials, CredentialsError
from mizzen.testing.local_cluster import REPO_ROOT, free_ports
from protos import rpc_pb2, rpc_pb2_grpc

pytestmark = pytest.mark.integration


def mizzen(*args: str) -> list[str]:
    return [sys.executable, "-m", "mizzen", "--log-format", "json", *args]


def admin(data: Path) -> ClientCredentials:
    """The admin credentials `mizzen up --data-dir data` made."""
    pki = data / "pki"
    return ClientCredentials(str(pki / "ca.crt"), str(pki / "admin.crt"), str(pki / "admin.key"))


def wait_put(
    endpoint: str,
    key: bytes,
    value: bytes,
    timeout: float = 15.0,
    credentials: ClientCredentials = INSECURE,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:  # the certificates appear a moment after `mizzen up` starts
            with credentials.channel(endpoint) as channel:
                stub = rpc_pb2_grpc.KVStub(channel)
                stub.Put(rpc_pb2.PutRequest(key=key, value=value), timeout=1)
            return
        except (grpc.RpcError, CredentialsError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def get(endpoint: str, key: bytes, credentials: ClientCredentials = INSECURE) -> bytes | None:
    deadline = time.monotonic() + 15
    while True:
        try:
            with credentials.channel(endpoint) as channel:
                stub = rpc_pb2_grpc.KVStub(channel)
                kvs = stub.Range(rpc_pb2.RangeRequest(key=key), timeout=1).kvs
            return kvs[0].value if kvs else None
        except (grpc.RpcError, CredentialsError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _stop(proc: subprocess.Popen[str], timeout: float = 15) -> None:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err


def _closed(endpoint: str) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", int(endpoint.rpartition(":")[2]))) != 0


def _daemons(marker: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True)
    return out.stdout.splitlines()


def test_up_survives_ctrl_c_and_resumes_with_its_data(tmp_path: Path) -> None:
    client, raft = free_ports(2)
    endpoint = f"127.0.0.1:{client}"
    argv = mizzen("up", "--data-dir", str(tmp_path), "--listen-client", endpoint,
                  "--listen-raft", f"127.0.0.1:{raft}", "--no-agent")  # fmt: skip
    ca = b""
    for round_ in range(2):
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
        try:
            if round_ == 0:
                wait_put(endpoint, b"greeting", b"hello", credentials=admin(tmp_path))
                ca = (tmp_path / "pki" / "ca.crt").read_bytes()
            else:
                assert get(endpoint, b"greeting", admin(tmp_path)) == b"hello"
                assert (tmp_path / "pki" / "ca.crt").read_bytes() == ca, "a new CA"
            _stop(proc)
            assert _closed(endpoint) and not _daemons(endpoint), "a daemon survived Ctrl-C"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_second_ctrl_c_while_up_stops_is_no_traceback(tmp_path: Path) -> None:
    client, raft = free_ports(2)
    endpoint = f"127.0.0.1:{client}"
    argv = mizzen("up", "--data-dir", str(tmp_path), "--listen-client", endpoint,
                  "--listen-raft", f"127.0.0.1:{raft}", "--no-agent")  # fmt: skip
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
    try:
        wait_put(endpoint, b"k", b"v", credentials=admin(tmp_path))
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            proc.send_signal(signal.SIGINT)  # an impatient user: Ctrl-C, Ctrl-C, ...
            time.sleep(0.02)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err[-2000:]
        assert "Traceback" not in err
        assert "mizzen up: stopping" in err
        assert _closed(endpoint) and not _daemons(endpoint), "a daemon survived"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_up_insecure_is_plaintext_and_its_data_dir_can_turn_secure(tmp_path: Path) -> None:
    """`up --insecure` as before (no PKI, plaintext); a later `up` adds the PKI to its data."""
    client, raft = free_ports(2)
    endpoint = f"127.0.0.1:{client}"
    argv = mizzen("up", "--data-dir", str(tmp_path), "--listen-client", endpoint,
                  "--listen-raft", f"127.0.0.1:{raft}", "--no-agent")  # fmt: skip
    proc = subprocess.Popen([*argv, "--insecure"], cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
    try:
        wait_put(endpoint, b"greeting", b"plain")
        assert not (tmp_path / "pki").exists()
        assert yaml.safe_load((tmp_path / "config").read_text()) == {"endpoints": [endpoint]}
        _stop(proc)
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
        assert get(endpoint, b"greeting", admin(tmp_path)) == b"plain"
        config = yaml.safe_load((tmp_path / "config").read_text())
        assert config["cert"] == "pki/admin.crt"
        with pytest.raises(grpc.RpcError):  # plaintext is refused now
            get_once(endpoint, b"greeting")
        _stop(proc)
        assert _closed(endpoint) and not _daemons(endpoint)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def get_once(endpoint: str, key: bytes) -> None:
    with grpc.insecure_channel(endpoint) as channel:
        rpc_pb2_grpc.KVStub(channel).Range(rpc_pb2.RangeRequest(key=key), timeout=2)


def test_up_insecure_refuses_non_loopback_addresses(tmp_path: Path) -> None:
    client, raft = free_ports(2)
    out = subprocess.run(
        mizzen("up", "--insecure", "--no-agent", "--data-dir", str(tmp_path),
               "--listen-client", f"0.0.0.0:{client}", "--listen-raft", f"127.0.0.1:{raft}"),
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        "mizzen: up: --insecure serves plaintext, so only on loopback; "
        f"got --listen-client 0.0.0.0:{client}"
    )


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


def test_a_data_dir_that_lost_committed_entries_is_refused_clearly(tmp_path: Path) -> None:
    client, raft = free_ports(2)
    argv = mizzen("store", "--data-dir", str(tmp_path / "d"), "--listen-client",
                  f"127.0.0.1:{client}", "--listen-raft", f"127.0.0.1:{raft}")  # fmt: skip
    proc = subprocess.Popen(
        argv, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_put(f"127.0.0.1:{client}", b"k", b"v")
    finally:
        _stop(proc)
    # what a power loss with --fsync never can leave: a commit index past the log's end
    state = tmp_path / "d" / "raft.state"
    meta = yaml.safe_load(state.read_text())  # JSON
    meta["commit_index"] = 1_000_000
    state.write_text(json.dumps(meta))
    out = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    found = re.match(
        rf"mizzen: {re.escape(str(tmp_path / 'd'))}: the commit index recorded in this data "
        r"directory is 1000000 but its Raft log ends at (\d+): (\d+) committed entries are "
        "missing",
        last,
    )
    assert found and int(found[1]) + int(found[2]) == 1_000_000, last
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
        wait_put(endpoints[2], b"k", b"v", credentials=admin(tmp_path))
        assert get(endpoints[0], b"k", admin(tmp_path)) == b"v"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MIZZEN_")}
        status = subprocess.run(
            mizzen("cluster", "status"),
            capture_output=True, text=True, timeout=30, cwd=REPO_ROOT,
            env={**env, "MIZZEN_CONFIG": str(tmp_path / "config")},
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        rows = status.stdout.splitlines()[1:4]
        assert sorted(line.split()[3] for line in rows) == ["follower", "follower", "leader"]
        assert all("https://" in line for line in rows), rows
        _stop(proc, timeout=30)
        for ep in endpoints:
            assert _closed(ep) and not _daemons(ep)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
