"""A follower that is behind the leader's log start catches up through a big snapshot.

The snapshot crash test saw a restarted member that never caught up: its
linearizable reads timed out for good. Two pysyncobj behaviours made a
snapshot that takes a few seconds to send never arrive (store/pysyncobj_fixes.py,
fix 6): the follower sends nothing back while it receives one, so the leader
closed the silent connection after ``connectionTimeout`` (2 s) and started
over; and every snapshot the leader took itself (here every second) restarted
each transmission and trimmed the entries the follower would need after it.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path

import grpc
import pytest

from mizzen.testing.kv_load import missing_writes, read_all, writers_until
from mizzen.testing.local_cluster import MizzenCluster
from protos import rpc_pb2, rpc_pb2_grpc

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

BULK_KEYS, BULK_VALUE = 400, 100_000  # ~40 MB: several seconds to send, snapshot or not
STORE_ARGS = ["--snapshot-entries", "300", "--snapshot-interval", "1"]


def test_follower_behind_the_log_catches_up_through_a_big_snapshot(tmp_path: Path) -> None:
    with MizzenCluster(3, tmp_path, extra_args=STORE_ARGS) as cluster:
        leader = cluster.leader_index()
        with grpc.insecure_channel(cluster.endpoint(leader)) as channel:
            stub = rpc_pb2_grpc.KVStub(channel)
            for i in range(BULK_KEYS):
                value = random.Random(i).randbytes(BULK_VALUE)
                stub.Put(rpc_pb2.PutRequest(key=b"bulk/%04d" % i, value=value), timeout=10)
        behind = (leader + 1) % len(cluster)
        pid = cluster.pids[behind]
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            # Enough writes for the leader to snapshot and trim past the stopped member.
            acked, _ = asyncio.run(_write_for([cluster.endpoint(leader)], 5.0))
        finally:
            os.kill(pid, signal.SIGCONT)
        assert len(acked) > 1000
        stored: dict[bytes, bytes] = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                stored = read_all(cluster.endpoint(behind), b"w/", timeout=2)
            except grpc.RpcError:
                stored = {}
            if not missing_writes(stored, acked):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(
                f"member {behind} did not catch up within 90 s "
                f"(it holds {len(acked) - len(missing_writes(stored, acked))} of {len(acked)} "
                f"writes)\n{cluster.log_tail(behind, 30)}"
            )


async def _write_for(
    endpoints: list[str], seconds: float
) -> tuple[dict[bytes, bytes], list[float]]:
    stop = asyncio.Event()
    task = asyncio.create_task(writers_until(endpoints, b"w/", stop, 8, value_size=64))
    await asyncio.sleep(seconds)
    stop.set()
    return await task
