"""Snapshot save -> restore -> a new store starts with exactly the saved state.

Drives the `mizzen snapshot` commands' parsers and handlers (the same code
`python -m mizzen snapshot ...` runs) against real store processes.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from mizzen.cli.errors import CommandError, UsageError
from mizzen.cli.snapshot_cmd import add_snapshot_parsers
from mizzen.client.store_client import StoreClient
from mizzen.testing.local_cluster import MizzenCluster
from protos import rpc_pb2, rpc_pb2_grpc
from store import snapshot
from store.state_machine import StateMachine

pytestmark = pytest.mark.timeout(120)


def _cli(*argv: str) -> int:
    p = argparse.ArgumentParser(prog="mizzen")
    add_snapshot_parsers(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(list(argv))
    return int(args.func(args))


async def _dump(endpoints: list[str]) -> tuple[int, list[tuple[bytes, bytes, int, int, int, int]]]:
    async with StoreClient(endpoints, timeout=10.0) as c:
        kvs, revision, _ = await c.get_prefix(b"/")
        rows = [
            (k.key, k.value, k.create_revision, k.mod_revision, k.version, k.lease) for k in kvs
        ]
        return revision, rows


async def _fill(endpoints: list[str]) -> int:
    async with StoreClient(endpoints, timeout=10.0) as c:
        lease, _ = await c.lease_grant(600)
        for i in range(50):
            await c.put(f"/k/{i:03d}", f"v{i}".encode())
        await c.put("/k/001", b"again")
        await c.delete("/k/002")
        await c.put("/leased", b"x", lease=lease)
        return lease


def _history(endpoint: str, until: int) -> list[tuple[int, bytes, bytes, int, bytes, int]]:
    """Every event from revision 2 to ``until`` as a watch with prev_kv sees it."""
    create = rpc_pb2.WatchCreateRequest(key=b"/", range_end=b"0", start_revision=2, prev_kv=True)
    done = threading.Event()

    def requests() -> Iterator[rpc_pb2.WatchRequest]:
        yield rpc_pb2.WatchRequest(create_request=create)
        done.wait(30)

    out = []
    with grpc.insecure_channel(endpoint) as channel:
        call = rpc_pb2_grpc.WatchStub(channel).Watch(requests(), timeout=20)
        try:
            for resp in call:
                for ev in resp.events:
                    kv, prev = ev.kv, ev.prev_kv
                    out.append(
                        (ev.type, kv.key, kv.value, kv.mod_revision, prev.value, prev.mod_revision)
                    )
                if out and out[-1][3] >= until:
                    break
        finally:
            done.set()
            call.cancel()
    return out


@pytest.mark.parametrize("members", [1, 3])
def test_save_restore_start_continue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], members: int
) -> None:
    snap = tmp_path / "backup.snap"
    with MizzenCluster(1, tmp_path / "old") as old:
        lease = asyncio.run(_fill(old.endpoints))
        before = asyncio.run(_dump(old.endpoints))
        history = _history(old.endpoints[0], before[0])
        assert len(history) == before[0] - 1  # one event per write since revision 2
        assert _cli("snapshot", "save", str(snap), "--endpoints", old.endpoints[0]) == 0
    out = capsys.readouterr().out
    assert f"revision {before[0]}" in out and "sha256" in out
    assert _cli("snapshot", "status", str(snap)) == 0
    assert f"revision {before[0]}, 50 keys, 1 leases" in capsys.readouterr().out

    new = MizzenCluster(members, tmp_path / "new")  # not started until restored
    argv = new.argv(0)
    initial = argv[argv.index("--initial-cluster") + 1]
    for i, name in enumerate(new.names):
        assert _cli("snapshot", "restore", str(snap), "--data-dir", str(new.data_dir(i)),
                    "--name", name, "--initial-cluster", initial) == 0  # fmt: skip
    data_dir = str(new.data_dir(0))
    # a second restore into the now non-empty directory is refused
    with pytest.raises(UsageError, match="not empty"):
        _cli("snapshot", "restore", str(snap), "--data-dir", data_dir,
             "--name", new.names[0], "--initial-cluster", initial)  # fmt: skip
    with new:
        for endpoint in new.endpoints:
            assert asyncio.run(_dump([endpoint])) == before
            # watches resume from the same revisions, with the same events and prev_kv
            assert _history(endpoint, before[0]) == history

        async def continue_writing() -> tuple[int, list[int]]:
            async with StoreClient(new.endpoints, timeout=10.0) as c:
                revision, _ = await c.put("/after", b"y")
                return revision, await c.leases()

        rev, leases = asyncio.run(continue_writing())
        assert rev == before[0] + 1
        assert leases == [lease]
        new.restart(0)
        after = asyncio.run(_dump([new.endpoints[0]]))
        assert after[0] == rev
        assert after[1] == sorted([*before[1], (b"/after", b"y", rev, rev, 1, 0)])


def test_corrupted_snapshot_is_refused(tmp_path: Path) -> None:
    data = bytearray(snapshot.encode(StateMachine()))
    data[10] ^= 1
    bad = tmp_path / "bad.snap"
    bad.write_bytes(bytes(data))
    with pytest.raises(CommandError, match="checksum"):
        _cli("snapshot", "status", str(bad))
    with pytest.raises(CommandError, match="checksum"):
        _cli("snapshot", "restore", str(bad), "--data-dir", str(tmp_path / "d"),
             "--name", "a", "--initial-cluster", "a=127.0.0.1:1")  # fmt: skip
    assert not (tmp_path / "d").exists()


@pytest.mark.skipif(shutil.which("etcdctl") is None, reason="etcdctl not installed")
def test_etcdctl_snapshot_save_accepts_the_stream(tmp_path: Path) -> None:
    with MizzenCluster(1, tmp_path / "c") as c:
        asyncio.run(_fill(c.endpoints))
        out = tmp_path / "etcdctl.snap"
        proc = subprocess.run(
            ["etcdctl", "--endpoints", c.endpoints[0], "snapshot", "save", str(out)],
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 0, proc.stderr
    info = snapshot.info(out.read_bytes())
    assert info.keys == 50
