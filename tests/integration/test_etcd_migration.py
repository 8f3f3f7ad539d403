"""Leaving Mizzen for etcd: what etcdctl does with a Mizzen snapshot, and the supported path.

A Mizzen snapshot file (``etcdctl snapshot save`` accepts the stream) is not a
bbolt database: ``etcdctl snapshot status`` answers "invalid database" and
``etcdctl snapshot restore`` fails. The supported migration is ``etcdctl
make-mirror`` from a Mizzen store into a running etcd, which copies every key
and then keeps following new writes until it is stopped. ``mizzen snapshot
status/restore`` remain the way to read and restore Mizzen's own snapshots.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mizzen.testing.local_cluster import REPO_ROOT, EtcdCluster, MizzenCluster

pytestmark = [
    pytest.mark.compat,
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("etcdctl") is None, reason="needs Debian etcd-client"),
]

ENV = {"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}
KEYS = {f"/app/config/{i:02d}": f"value-{i}" for i in range(20)} | {
    "/registry/pods/default/web": "opaque-bytes",
}


def etcdctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["etcdctl", "--dial-timeout=5s", "--command-timeout=10s", *args],
        capture_output=True, text=True, env=ENV, timeout=30,
    )  # fmt: skip
    if check:
        assert done.returncode == 0, done.stderr
    return done


def pairs(endpoint: str) -> dict[str, str]:
    lines = etcdctl("--endpoints", endpoint, "get", "--prefix", "/").stdout.splitlines()
    return dict(zip(lines[0::2], lines[1::2], strict=True))


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MizzenCluster, EtcdCluster]]:
    base = tmp_path_factory.mktemp("migration")
    with MizzenCluster(1, base / "mizzen") as mizzen, EtcdCluster(1, base / "etcd") as etcd:
        for key, value in KEYS.items():
            etcdctl("--endpoints", mizzen.endpoint(0), "put", key, value)
        yield mizzen, etcd


def test_etcdctl_cannot_read_a_mizzen_snapshot_but_mizzen_can(
    stores: tuple[MizzenCluster, EtcdCluster], tmp_path: Path
) -> None:
    mizzen, _ = stores
    snap = tmp_path / "mizzen.snap"
    etcdctl("--endpoints", mizzen.endpoint(0), "snapshot", "save", str(snap))
    status = etcdctl("snapshot", "status", str(snap), check=False)
    assert status.returncode == 1 and "Error: invalid database" in status.stderr
    ours = subprocess.run(
        [sys.executable, "-m", "mizzen", "snapshot", "status", str(snap)],
        capture_output=True, text=True, timeout=30, cwd=REPO_ROOT,
    )  # fmt: skip
    assert ours.returncode == 0, ours.stderr
    assert f"{len(KEYS)} keys" in ours.stdout


def test_make_mirror_copies_every_key_into_etcd_and_follows_writes(
    stores: tuple[MizzenCluster, EtcdCluster],
) -> None:
    mizzen, etcd = stores
    mirror = subprocess.Popen(
        ["etcdctl", "--endpoints", mizzen.endpoint(0), "make-mirror", etcd.endpoint(0)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while pairs(etcd.endpoint(0)) != KEYS:
            assert mirror.poll() is None, mirror.communicate()[1]
            assert time.monotonic() < deadline, f"mirrored so far: {pairs(etcd.endpoint(0))}"
            time.sleep(0.2)
        etcdctl("--endpoints", mizzen.endpoint(0), "put", "/app/late", "written-after")
        etcdctl("--endpoints", mizzen.endpoint(0), "del", "/app/config/00")
        want = {k: v for k, v in KEYS.items() if k != "/app/config/00"} | {
            "/app/late": "written-after"
        }
        while pairs(etcd.endpoint(0)) != want:
            assert mirror.poll() is None, mirror.communicate()[1]
            assert time.monotonic() < deadline, f"mirrored so far: {pairs(etcd.endpoint(0))}"
            time.sleep(0.2)
        assert pairs(mizzen.endpoint(0)) == want
    finally:
        mirror.terminate()
        try:
            mirror.wait(timeout=10)
        except subprocess.TimeoutExpired:
            mirror.kill()
            mirror.wait(timeout=10)
        if mirror.stderr is not None:
            mirror.stderr.close()
