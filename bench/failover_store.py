"""Store leader failover on test hosts: writes under load while the leader dies.

Each round runs ``writers`` concurrent writers (one ``StoreClient`` holding the
three members' endpoints, default settings; every write a fresh key), waits
2-3 s, finds the leader through Maintenance.Status and kills it: SIGKILL of the
store process, or (``whole_host``) the whole leader host — its link cut first
(so no RST reaches anyone, like a machine losing power) and then every process
in it SIGKILLed. ``observe`` seconds later (at least 15 s for a whole host)
the writers stop and the member (and, for a whole host, the host's manager)
is started again. Measured from the kill:

* ``resume_s``: the first acknowledgment of a write *sent* after the kill;
* ``longest_gap_s``: the longest time without any acknowledgment;
* ``steady_s``: the first moment from which a whole second holds at least 80%
  of the acknowledgments of the second before the kill;
* lost: acknowledged keys missing when every key is read back at the end.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import random
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from failover_hosts import Plane, background, say, summarize

from mizzen.client import AmbiguousWriteError, StoreClient, StoreClientError

PREFIX = "/bench/failover/"
RESUME_TARGET_S = 2.0
STEADY_SHARE = 0.8
HOST_OBSERVE_S = 15.0  # a silent dead leader can hold a client's writes for its leader TTL


@dataclass
class Writes:
    """What the writers of one round saw: (sent, acked) per acknowledged write."""

    acks: list[tuple[float, float]] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    errors: int = 0
    ambiguous: int = 0


async def writer(store: StoreClient, prefix: str, w: int, writes: Writes) -> None:
    seq = 0
    while True:
        key = f"{prefix}{w:02d}/{seq:08d}".encode()
        seq += 1
        sent = time.monotonic()
        try:
            await store.put(key, b"v" * 64)
        except AmbiguousWriteError:
            writes.ambiguous += 1
            continue
        except StoreClientError:
            writes.errors += 1
            await asyncio.sleep(0.01)
            continue
        writes.acks.append((sent, time.monotonic()))
        writes.keys.append(key)


def measure(writes: Writes, killed: float, end: float) -> dict[str, Any]:
    """The round's figures from its acknowledgments (see the module docstring)."""
    acked = sorted(at for _, at in writes.acks)
    before = bisect.bisect_left(acked, killed) - bisect.bisect_left(acked, killed - 1.0)
    after = acked[bisect.bisect_left(acked, killed) :]
    resume = min((at for sent, at in writes.acks if sent > killed), default=None)
    around = [killed, *after, end]
    last_before = bisect.bisect_left(acked, killed) - 1
    if last_before >= 0:
        around[0] = acked[last_before]
    steady = None
    for i, t in enumerate(after):
        if bisect.bisect_left(after, t + 1.0) - i >= STEADY_SHARE * before:
            steady = t
            break
    tail = bisect.bisect_left(acked, end) - bisect.bisect_left(acked, end - 2.0)
    return {
        "resume_s": None if resume is None else round(resume - killed, 3),
        "longest_gap_s": round(max(b - a for a, b in itertools.pairwise(around)), 3),
        "steady_s": None if steady is None else round(steady - killed, 3),
        "acks_per_s_before": before,
        "acks_per_s_end": round(tail / 2.0, 1),
        "acked": len(writes.acks),
        "errors": writes.errors,
        "ambiguous": writes.ambiguous,
    }


async def store_round(
    plane: Plane,
    store: StoreClient,
    n: int,
    writers: int,
    whole_host: bool,
    observe: float,
    all_keys: list[bytes],
) -> dict[str, Any]:
    cluster = plane.store
    writes = Writes()
    prefix = f"{PREFIX}r{n:02d}/"
    async with background(*(writer(store, prefix, w, writes) for w in range(writers))):
        await asyncio.sleep(2.0 + random.uniform(0, 1))
        leader = await asyncio.to_thread(cluster.leader_index, 10.0)
        host = plane.control[leader]
        killed = time.monotonic()
        if whole_host:
            host.partition()
            cluster.kill_host(leader)
        else:
            cluster.kill(leader, signal.SIGKILL)
        await asyncio.sleep(max(observe, HOST_OBSERVE_S) if whole_host else observe)
        end = time.monotonic()
    all_keys += writes.keys
    row = {"round": n, "killed": f"{'host' if whole_host else 'store'} {host.name}"}
    row.update(measure(writes, killed, end))
    row["new_leader"] = plane.control[await asyncio.to_thread(cluster.leader_index, 10.0)].name
    if whole_host:
        host.heal()
    cluster.restart(leader, wait=False)
    if not host.running("cm"):
        plane.start_manager(host)
    await asyncio.to_thread(cluster.leader_index, 30.0)
    return row


async def store_failover(
    plane: Plane, rounds: int, writers: int, whole_host: bool, observe: float
) -> dict[str, Any]:
    """rounds leader-process kills (and one whole-host kill); every acked key read back."""
    rows: list[dict[str, Any]] = []
    keys: list[bytes] = []
    async with StoreClient(plane.endpoints, credentials=plane.credentials) as store:
        plan = [False] * rounds + ([True] if whole_host else [])
        for n, host_kill in enumerate(plan, 1):
            rows.append(await store_round(plane, store, n, writers, host_kill, observe, keys))
            say("store round " + " ".join(f"{k}={v}" for k, v in rows[-1].items()))
            await asyncio.sleep(1.0)
        found, _, _ = await store.get_prefix(PREFIX, keys_only=True)
    present = {kv.key for kv in found}
    process_rows = [r for r in rows if r["killed"].startswith("store")]
    report: dict[str, Any] = {
        "writers": writers,
        "rounds": rows,
        "process_kill": summarize(process_rows),
        "acked": len(keys),
        "lost": sum(1 for k in keys if k not in present),
        "target_s": RESUME_TARGET_S,
    }
    return report
