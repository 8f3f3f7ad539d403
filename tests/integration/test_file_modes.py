"""What a store leaves on disk is private to its user: data dir 0700, files 0600.

The store (like every daemon) sets umask 077 at start, whatever it inherited,
and warns (naming the path and mode) about an existing data directory or file
that other local users can read.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from pathlib import Path

import pytest

from mizzen.client.store_client import StoreClient
from mizzen.testing.local_cluster import MizzenCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def modes(directory: Path) -> dict[str, int]:
    out = {".": stat.S_IMODE(directory.stat().st_mode)}
    for path in directory.rglob("*"):
        out[str(path.relative_to(directory))] = stat.S_IMODE(path.lstat().st_mode)
    return out


async def _write(endpoints: list[str], n: int) -> None:
    async with StoreClient(endpoints, timeout=10.0) as c:
        for i in range(n):
            await c.put(f"/k/{i}", b"secret value")


def warnings_in(log: Path) -> list[dict[str, str]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == "data_dir_mode_loose":
                out.append(record)
    return out


def test_a_store_writes_its_data_dir_0700_and_files_0600(tmp_path: Path) -> None:
    extra = ["--snapshot-entries", "20", "--snapshot-interval", "0.1"]
    old = os.umask(0o022)  # what the store inherits from a usual shell
    try:
        cluster = MizzenCluster(1, tmp_path / "c", extra_args=extra)
        with cluster:
            asyncio.run(_write(cluster.endpoints, 60))
            data = cluster.data_dir(0)
            deadline = time.monotonic() + 30
            while not (data / "raft.snapshot").exists():
                assert time.monotonic() < deadline, "no Raft snapshot was written"
                time.sleep(0.1)
            asyncio.run(_write(cluster.endpoints, 5))
            got = modes(data)
    finally:
        os.umask(old)
    assert {"raft.snapshot", "raft.journal"} <= set(got), got
    assert got.pop(".") == 0o700
    assert got and all(mode == 0o600 for mode in got.values()), got
    assert warnings_in(cluster.log_path(0)) == []


def test_an_existing_world_readable_data_dir_is_warned_about(tmp_path: Path) -> None:
    cluster = MizzenCluster(1, tmp_path / "c")
    data = cluster.data_dir(0)
    data.mkdir(parents=True)
    os.chmod(data, 0o755)
    stale = data / "notes.txt"
    stale.write_text("x")
    os.chmod(stale, 0o644)
    with cluster:
        asyncio.run(_write(cluster.endpoints, 1))
    found = {(w["path"], w["mode"]) for w in warnings_in(cluster.log_path(0))}
    assert found == {(str(data), "0755"), (str(stale), "0644")}
    assert stat.S_IMODE(data.stat().st_mode) == 0o755  # warned about, not changed
