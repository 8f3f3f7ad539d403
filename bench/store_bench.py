"""Store benchmark: a Mizzen store against an etcd of the same size, same client, same machine.

Three members each by default; ``--members 1`` compares the embedded default
(what ``mizzen up`` runs) with a one-member etcd (no leader-kill phase then).

One Python grpc.aio client (raw etcd v3 stubs) drives each store in turn and
prints a markdown table (Mizzen, etcd, Mizzen/etcd) for docs/BENCHMARKS.md:

* Put throughput and p50/p99 at 1, 16 and 256 writers (256-byte values), sent to
  the leader only (main rows) and round-robin over all members, with the
  batching factor (client writes per Raft log entry) both computed from the
  commit index and read from the members' Prometheus /metrics;
* linearizable single-key Range, 1 reader and 16 readers (round-robin members);
* watch delivery latency (value carries the send time) with 100 and 1000
  watchers on one prefix, 100 watches per stream, streams spread over members;
* max member RSS after loading --keys keys of 1 KiB;
* leader SIGKILLed under 8 writers: longest gap between acknowledged writes and
  how many acknowledged writes are present afterwards.

Each phase gets a fresh cluster (latency; RSS; leader kill). Everything binds
127.0.0.1, every loop is bounded in time and count, and clusters are stopped on
error, Ctrl-C or SIGTERM.

    .venv/bin/python bench/store_bench.py --only etcd --quick
    .venv/bin/python bench/store_bench.py --json bench/results.json
    .venv/bin/python bench/store_bench.py --members 1 --sections put,range

One file because it is one benchmark script: the phases run against both
stores in turn and print one table, as docs/BENCHMARKS.md quotes it with its
command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import json
import math
import os
import platform
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from mizzen.keyrange import prefix_end

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from mizzen.testing import EtcdCluster, LocalCluster, MizzenCluster  # noqa: E402
from mizzen.testing.local_cluster import HOST, _Member, free_ports  # noqa: E402
from protos import rpc_pb2, rpc_pb2_grpc  # noqa: E402

RPC_TIMEOUT = 5.0
MAX_OPS_PER_LEVEL = 2_000_000
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.use_local_subchannel_pool", 1),
]
STAMP = struct.Struct(">q")
KILL_PUT_TIMEOUT = 0.5


@dataclass
class Options:
    stores: list[str]
    duration: float
    put_levels: list[int]
    range_levels: list[int]
    watch_levels: list[tuple[int, int]]  # (watchers, writes per second)
    watches_per_stream: int
    keys: int
    load_writers: int
    load_timeout: float
    kill_writers: int
    kill_before: float
    kill_after: float
    sections: set[str]
    mizzen_args: list[str]
    base_dir: Path | None
    keep: bool
    start_timeout: float
    members: int = 3


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- statistics ------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(prefix: str, latencies_s: list[float], elapsed: float, errors: int) -> dict[str, Any]:
    ordered = sorted(latencies_s)
    p50 = percentile(ordered, 50)
    p99 = percentile(ordered, 99)
    return {
        f"{prefix}.ops": len(ordered) / elapsed if elapsed > 0 else None,
        f"{prefix}.p50_ms": None if p50 is None else p50 * 1e3,
        f"{prefix}.p99_ms": None if p99 is None else p99 * 1e3,
        f"{prefix}.count": len(ordered),
        f"{prefix}.errors": errors,
    }


# -- clients -----------------------------------------------------------------------


class Clients:
    """One aio channel per member endpoint, with KV and Watch stubs (and /metrics URLs)."""

    def __init__(self, endpoints: list[str], metrics_urls: list[str] | None = None) -> None:
        self.endpoints = endpoints
        self.metrics_urls = metrics_urls or []
        self.channels = [grpc.aio.insecure_channel(e, options=CHANNEL_OPTIONS) for e in endpoints]
        self.kv = [rpc_pb2_grpc.KVStub(c) for c in self.channels]
        self.watch = [rpc_pb2_grpc.WatchStub(c) for c in self.channels]

    async def warm_up(self) -> None:
        for i, kv in enumerate(self.kv):
            await kv.Range(rpc_pb2.RangeRequest(key=b"/bench/warmup"), timeout=RPC_TIMEOUT)
            log(f"  channel {self.endpoints[i]} ready")

    async def close(self) -> None:
        for c in self.channels:
            await c.close(grace=None)


def value_of(size: int, stamp_ns: int = 0) -> bytes:
    return STAMP.pack(stamp_ns) + b"x" * (size - STAMP.size)


async def run_workers(
    n: int, worker: Callable[[int], Coroutine[Any, Any, None]], deadline: float
) -> None:
    """Run n workers; cancel stragglers a little after the deadline."""
    tasks = [asyncio.create_task(worker(w)) for w in range(n)]
    try:
        await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()) + RPC_TIMEOUT + 1)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# -- sections ------------------------------------------------------------------------


async def put_level(
    clients: Clients, writers: int, duration: float, leader: int | None, tag: str
) -> dict[str, Any]:
    """Writers overwrite their own small key set for `duration` seconds."""
    n = len(clients.kv)
    value = value_of(256)
    latencies: list[float] = []
    errors = 0
    start = time.monotonic()
    deadline = start + duration

    async def worker(w: int) -> None:
        nonlocal errors
        seq = 0
        while time.monotonic() < deadline and len(latencies) < MAX_OPS_PER_LEVEL:
            target = leader if leader is not None else (w + seq) % n
            key = f"/bench/put/{w:04d}/{seq % 16:02d}".encode()
            seq += 1
            t0 = time.perf_counter()
            try:
                await clients.kv[target].Put(
                    rpc_pb2.PutRequest(key=key, value=value), timeout=RPC_TIMEOUT
                )
            except grpc.aio.AioRpcError:
                errors += 1
                await asyncio.sleep(0.01)
                continue
            latencies.append(time.perf_counter() - t0)

    index_before = await raft_index(clients)
    counters_before = await batching_counters(clients)
    await run_workers(writers, worker, deadline)
    elapsed = time.monotonic() - start
    out = summarize(f"put.{tag}.{writers}", latencies, elapsed, errors)
    entries = (await raft_index(clients)) - index_before
    if entries > 0:
        # the batching factor: acknowledged client writes per Raft log entry
        out[f"put.{tag}.{writers}.writes_per_entry"] = round(len(latencies) / entries, 2)
    counters_after = await batching_counters(clients)
    if counters_before is not None and counters_after is not None:
        writes = counters_after[0] - counters_before[0]
        proposed = counters_after[1] - counters_before[1]
        if proposed > 0:
            out[f"put.{tag}.{writers}.writes_per_entry_metrics"] = round(writes / proposed, 2)
    return out


WRITE_OPS = {"put", "delete", "txn"}


async def batching_counters(clients: Clients) -> tuple[float, float] | None:
    """(client writes proposed, log entries proposed), summed over every member's /metrics.

    None for a store without /metrics (etcd) or when a member does not answer.
    """
    if not clients.metrics_urls:
        return None
    writes = entries = 0.0
    for url in clients.metrics_urls:
        try:
            text = await asyncio.to_thread(_fetch, url)
        except OSError as exc:
            log(f"  cannot scrape {url}: {exc}")
            return None
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "mizzen_store_proposals_total":
                    if sample.labels.get("op") in WRITE_OPS:
                        writes += sample.value
                elif sample.name == "mizzen_store_raft_entries_proposed_total":
                    entries += sample.value
    return writes, entries


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=RPC_TIMEOUT) as resp:
        body: bytes = resp.read()
    return body.decode()


async def raft_index(clients: Clients) -> int:
    """Highest Raft commit index any member reports (0 if none answers)."""
    best = 0
    for ch in clients.channels:
        try:
            st = await rpc_pb2_grpc.MaintenanceStub(ch).Status(
                rpc_pb2.StatusRequest(), timeout=RPC_TIMEOUT
            )
        except grpc.aio.AioRpcError:
            continue
        best = max(best, st.raftIndex)
    return best


async def range_level(clients: Clients, readers: int, duration: float) -> dict[str, Any]:
    """Linearizable single-key Range, readers round-robin over all members."""
    n = len(clients.kv)
    key = b"/bench/range/key"
    await clients.kv[0].Put(rpc_pb2.PutRequest(key=key, value=value_of(256)), timeout=RPC_TIMEOUT)
    latencies: list[float] = []
    errors = 0
    start = time.monotonic()
    deadline = start + duration

    async def worker(w: int) -> None:
        nonlocal errors
        seq = 0
        while time.monotonic() < deadline and len(latencies) < MAX_OPS_PER_LEVEL:
            target = (w + seq) % n
            seq += 1
            t0 = time.perf_counter()
            try:
                resp = await clients.kv[target].Range(
                    rpc_pb2.RangeRequest(key=key), timeout=RPC_TIMEOUT
                )
            except grpc.aio.AioRpcError:
                errors += 1
                await asyncio.sleep(0.01)
                continue
            if len(resp.kvs) != 1:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    await run_workers(readers, worker, deadline)
    elapsed = time.monotonic() - start
    return summarize(f"range.{readers}", latencies, elapsed, errors)


async def watch_level(
    clients: Clients,
    watchers: int,
    rate: float,
    duration: float,
    per_stream: int,
    leader: int,
) -> dict[str, Any]:
    """Latency from Put send time (stamped in the value) to each watcher's receipt."""
    n = len(clients.kv)
    prefix = f"/bench/watch/{watchers}/".encode()
    create = rpc_pb2.WatchRequest(
        create_request=rpc_pb2.WatchCreateRequest(key=prefix, range_end=prefix_end(prefix))
    )
    n_streams = math.ceil(watchers / per_stream)
    latencies: list[float] = []
    canceled: list[str] = []
    created = [0] * n_streams
    all_created = asyncio.Event()
    total_created = 0
    calls: list[Any] = []

    async def reader(s: int, call: Any) -> None:
        nonlocal total_created
        while True:
            resp = await call.read()
            if resp is grpc.aio.EOF:  # type: ignore[attr-defined]
                return
            now = time.perf_counter_ns()
            if resp.created:
                created[s] += 1
                total_created += 1
                if total_created == watchers:
                    all_created.set()
            if resp.canceled:
                canceled.append(resp.cancel_reason or "canceled")
            for ev in resp.events:
                latencies.append((now - STAMP.unpack_from(ev.kv.value)[0]) / 1e9)

    readers: list[asyncio.Task[None]] = []
    puts: list[asyncio.Task[None]] = []
    acked = 0
    put_errors = 0
    try:
        for s in range(n_streams):
            call = clients.watch[s % n].Watch()
            calls.append(call)
            readers.append(asyncio.create_task(reader(s, call)))
            for _ in range(min(per_stream, watchers - s * per_stream)):
                await call.write(create)
        try:
            await asyncio.wait_for(all_created.wait(), timeout=30)
        except TimeoutError:
            raise RuntimeError(
                f"only {total_created} of {watchers} watches created in 30 s"
            ) from None

        async def put(seq: int) -> None:
            nonlocal acked, put_errors
            key = prefix + f"k{seq % 10}".encode()
            try:
                await clients.kv[leader].Put(
                    rpc_pb2.PutRequest(key=key, value=value_of(256, time.perf_counter_ns())),
                    timeout=RPC_TIMEOUT,
                )
                acked += 1
            except grpc.aio.AioRpcError:
                put_errors += 1

        writes = max(1, int(rate * duration))
        start = time.monotonic()
        for seq in range(writes):
            delay = start + seq / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            puts.append(asyncio.create_task(put(seq)))
        await asyncio.wait(puts, timeout=RPC_TIMEOUT + 1)
        drain_deadline = time.monotonic() + 10
        while (
            len(latencies) < acked * watchers
            and len(canceled) < watchers
            and time.monotonic() < drain_deadline
        ):
            await asyncio.sleep(0.05)
    finally:
        for t in puts:
            t.cancel()
        for call in calls:
            call.cancel()
        for t in readers:
            t.cancel()
        await asyncio.gather(*puts, *readers, return_exceptions=True)

    tag = f"watch.{watchers}"
    ordered = sorted(latencies)
    p50 = percentile(ordered, 50)
    p99 = percentile(ordered, 99)
    return {
        f"{tag}.p50_ms": None if p50 is None else p50 * 1e3,
        f"{tag}.p99_ms": None if p99 is None else p99 * 1e3,
        f"{tag}.max_ms": ordered[-1] * 1e3 if ordered else None,
        f"{tag}.writes": acked,
        f"{tag}.write_errors": put_errors,
        f"{tag}.expected": acked * watchers,
        f"{tag}.delivered": len(latencies),
        f"{tag}.streams": n_streams,
        f"{tag}.canceled": len(canceled),
        f"{tag}.cancel_reasons": sorted(set(canceled))[:3],
    }


def rss_kib(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


async def rss_after_load(
    cluster: LocalCluster, clients: Clients, keys: int, writers: int, timeout: float, leader: int
) -> dict[str, Any]:
    """Load `keys` keys of 1 KiB with many concurrent writers, then read each member's VmRSS."""
    before = [rss_kib(p) for p in cluster.pids]
    value = value_of(1024)
    next_key = 0
    loaded = 0
    errors = 0
    start = time.monotonic()
    deadline = start + timeout

    async def worker(w: int) -> None:
        nonlocal next_key, loaded, errors
        while next_key < keys and time.monotonic() < deadline and errors < 1000:
            i = next_key
            next_key += 1
            try:
                await clients.kv[leader].Put(
                    rpc_pb2.PutRequest(key=f"/bench/rss/{i:08d}".encode(), value=value),
                    timeout=RPC_TIMEOUT,
                )
                loaded += 1
            except grpc.aio.AioRpcError:
                errors += 1

    await run_workers(writers, worker, deadline)
    elapsed = time.monotonic() - start
    await asyncio.sleep(2)
    after = [rss_kib(p) for p in cluster.pids]
    known = [a for a in after if a is not None]
    return {
        "rss.keys_loaded": loaded,
        "rss.load_errors": errors,
        "rss.load_ops": loaded / elapsed if elapsed > 0 else None,
        "rss.before_mib": [None if b is None else b / 1024 for b in before],
        "rss.after_mib": [None if a is None else a / 1024 for a in after],
        "rss.max_mib": max(known) / 1024 if known else None,
    }


async def leader_kill(
    cluster: LocalCluster, clients: Clients, writers: int, before: float, after: float
) -> dict[str, Any]:
    """SIGKILL the leader under load; every acknowledged write must survive.

    Each writer gives a Put KILL_PUT_TIMEOUT seconds, then moves to the next member,
    so the longest gap between acknowledgements measures failover, not a long
    client timeout.
    """
    n = len(clients.kv)
    leader = cluster.leader_index(timeout=15)
    value = value_of(256)
    acked: list[tuple[float, float, bytes]] = []  # (sent, acknowledged, key)
    errors = 0
    start = time.monotonic()
    deadline = start + before + after

    async def worker(w: int) -> None:
        nonlocal errors
        target = w % n
        seq = 0
        while time.monotonic() < deadline and seq < MAX_OPS_PER_LEVEL:
            key = f"/bench/kill/{w:02d}/{seq:08d}".encode()
            seq += 1
            sent = time.monotonic()
            try:
                await clients.kv[target].Put(
                    rpc_pb2.PutRequest(key=key, value=value), timeout=KILL_PUT_TIMEOUT
                )
            except grpc.aio.AioRpcError:
                errors += 1
                target = (target + 1) % n
                await asyncio.sleep(0.02)
                continue
            acked.append((sent, time.monotonic(), key))

    killed_at = math.inf
    tasks = asyncio.create_task(run_workers(writers, worker, deadline))
    try:
        await asyncio.sleep(before)
        killed_at = time.monotonic()
        cluster.kill(leader, signal.SIGKILL)
        log(f"  killed leader {cluster.names[leader]}")
        await tasks
    finally:
        tasks.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tasks
    times = [start, *sorted(t for _, t, _ in acked), deadline]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    recovered = min((t for s, t, _ in acked if s > killed_at), default=None)

    new_leader = cluster.leader_index(timeout=20)
    present: set[bytes] | None = None
    prefix = b"/bench/kill/"
    for attempt in range(5):
        try:
            resp = await clients.kv[new_leader].Range(
                rpc_pb2.RangeRequest(key=prefix, range_end=prefix_end(prefix), keys_only=True),
                timeout=30,
            )
            present = {kv.key for kv in resp.kvs}
            break
        except grpc.aio.AioRpcError as exc:
            log(f"  verify range failed ({exc.code().name}), attempt {attempt + 1}")
            await asyncio.sleep(1)
    if present is None:
        raise RuntimeError("could not read back the written keys after the leader kill")
    acked_keys = {k for _, _, k in acked}
    return {
        "kill.writers": writers,
        "kill.acked": len(acked_keys),
        "kill.present": len(acked_keys & present),
        "kill.lost": len(acked_keys - present),
        "kill.errors": errors,
        "kill.max_gap_s": max(gaps),
        "kill.recovery_s": None if recovered is None else recovered - killed_at,
        "kill.new_leader": cluster.names[new_leader],
    }


# -- orchestration ---------------------------------------------------------------------


class MetricsMizzenCluster(MizzenCluster):
    """Mizzen members that also serve Prometheus /metrics, each on its own port."""

    def __init__(self, n: int, base_dir: Path, **kw: Any) -> None:
        self.metrics_ports = free_ports(n)
        super().__init__(n, base_dir, **kw)

    def _argv(self, m: _Member) -> list[str]:
        port = self.metrics_ports[m.index]
        return [*super()._argv(m), "--metrics-listen", f"{HOST}:{port}"]

    @property
    def metrics_urls(self) -> list[str]:
        return [f"http://{HOST}:{port}/metrics" for port in self.metrics_ports]


def make_cluster(kind: str, base: Path, opts: Options) -> LocalCluster:
    if kind == "etcd":
        return EtcdCluster(opts.members, base)
    return MetricsMizzenCluster(opts.members, base, extra_args=opts.mizzen_args)


async def section(
    results: dict[str, Any], name: str, cluster: LocalCluster, coro: Awaitable[dict[str, Any]]
) -> None:
    """Run one measurement; on failure record the error and the members' log tails."""
    log(f"  {name} ...")
    try:
        got = await coro
    except Exception as exc:
        results.setdefault("errors", []).append(f"{name}: {exc!r}")
        log(f"  {name} FAILED: {exc!r}\n{traceback.format_exc()}")
        for i in range(len(cluster)):
            log(f"--- {cluster.log_path(i)}\n{cluster.log_tail(i, 15)}")
        return
    results.update(got)
    shown = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in got.items()}
    log(f"  {name}: {shown}")


async def with_cluster(
    kind: str,
    root: Path,
    phase: str,
    opts: Options,
    results: dict[str, Any],
    body: Callable[[LocalCluster, Clients], Awaitable[None]],
) -> None:
    base = root / f"{kind}-{phase}"
    cluster = make_cluster(kind, base, opts)
    log(f"{kind} {phase}: starting {opts.members} member(s) in {base}")
    try:
        cluster.start(timeout=opts.start_timeout)
    except Exception as exc:
        cluster.stop()
        results.setdefault("errors", []).append(f"{phase} start: {exc}")
        log(f"{kind} {phase}: cluster did not start: {exc}")
        return
    clients = Clients(cluster.endpoints, getattr(cluster, "metrics_urls", None))
    try:
        await clients.warm_up()
        await body(cluster, clients)
    except Exception as exc:
        results.setdefault("errors", []).append(f"{phase}: {exc!r}")
        log(f"{kind} {phase} FAILED: {exc!r}\n{traceback.format_exc()}")
    finally:
        await clients.close()
        cluster.stop()


async def bench_store(kind: str, root: Path, opts: Options) -> dict[str, Any]:
    results: dict[str, Any] = {}
    want = opts.sections

    async def latency_phase(cluster: LocalCluster, clients: Clients) -> None:
        leader = cluster.leader_index(timeout=15)
        results["leader_member"] = cluster.names[leader]
        if "put" in want:
            tags = (
                (("leader", leader), ("spread", None))
                if opts.members > 1
                else (("leader", leader),)
            )
            for writers in opts.put_levels:
                for tag, target in tags:
                    coro = put_level(clients, writers, opts.duration, target, tag)
                    await section(results, f"put {tag} x{writers}", cluster, coro)
        if "range" in want:
            for readers in opts.range_levels:
                coro2 = range_level(clients, readers, opts.duration)
                await section(results, f"range x{readers}", cluster, coro2)
        if "watch" in want:
            for watchers, rate in opts.watch_levels:
                coro3 = watch_level(
                    clients, watchers, rate, opts.duration, opts.watches_per_stream, leader
                )
                await section(results, f"watch x{watchers} @{rate}/s", cluster, coro3)

    async def rss_phase(cluster: LocalCluster, clients: Clients) -> None:
        leader = cluster.leader_index(timeout=15)
        coro = rss_after_load(
            cluster, clients, opts.keys, opts.load_writers, opts.load_timeout, leader
        )
        await section(results, f"rss after {opts.keys} keys", cluster, coro)

    async def kill_phase(cluster: LocalCluster, clients: Clients) -> None:
        coro = leader_kill(cluster, clients, opts.kill_writers, opts.kill_before, opts.kill_after)
        await section(results, "leader kill", cluster, coro)

    if want & {"put", "range", "watch"}:
        await with_cluster(kind, root, "latency", opts, results, latency_phase)
    if "rss" in want:
        await with_cluster(kind, root, "rss", opts, results, rss_phase)
    if "kill" in want:
        await with_cluster(kind, root, "kill", opts, results, kill_phase)
    return results


# -- report ------------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    key: str
    unit: str  # "ops", "ms", "mib", "s", "count"


def rows_for(opts: Options) -> tuple[list[Row], list[Row]]:
    main: list[Row] = []
    spread: list[Row] = []
    for w in opts.put_levels:
        noun = "writer" if w == 1 else "writers"
        main += [
            Row(f"Put, {w} {noun} → leader: throughput", f"put.leader.{w}.ops", "ops"),
            Row(f"Put, {w} {noun} → leader: p50", f"put.leader.{w}.p50_ms", "ms"),
            Row(f"Put, {w} {noun} → leader: p99", f"put.leader.{w}.p99_ms", "ms"),
            Row(
                f"Put, {w} {noun} → leader: writes per Raft entry",
                f"put.leader.{w}.writes_per_entry",
                "ratio",
            ),
            Row(
                f"Put, {w} {noun} → leader: writes per Raft entry (from /metrics)",
                f"put.leader.{w}.writes_per_entry_metrics",
                "ratio",
            ),
        ]
        spread += [
            Row(f"Put, {w} {noun} → all members: throughput", f"put.spread.{w}.ops", "ops"),
            Row(f"Put, {w} {noun} → all members: p50", f"put.spread.{w}.p50_ms", "ms"),
            Row(f"Put, {w} {noun} → all members: p99", f"put.spread.{w}.p99_ms", "ms"),
        ]
    for r in opts.range_levels:
        noun = "reader" if r == 1 else "readers"
        if r == 1:
            main += [
                Row("Range (linearizable), 1 reader: p50", "range.1.p50_ms", "ms"),
                Row("Range (linearizable), 1 reader: p99", "range.1.p99_ms", "ms"),
            ]
        else:
            main += [
                Row(f"Range (linearizable), {r} {noun}: throughput", f"range.{r}.ops", "ops"),
                Row(f"Range (linearizable), {r} {noun}: p99", f"range.{r}.p99_ms", "ms"),
            ]
    for watchers, rate in opts.watch_levels:
        main += [
            Row(
                f"Watch, {watchers} watchers @ {rate} writes/s: p50",
                f"watch.{watchers}.p50_ms",
                "ms",
            ),
            Row(
                f"Watch, {watchers} watchers @ {rate} writes/s: p99",
                f"watch.{watchers}.p99_ms",
                "ms",
            ),
            Row(
                f"Watch, {watchers} watchers: events delivered / expected",
                f"watch.{watchers}.delivered_of_expected",
                "frac",
            ),
            Row(
                f"Watch, {watchers} watchers: watches canceled by the server",
                f"watch.{watchers}.canceled",
                "count",
            ),
        ]
    main += [
        Row(f"RSS, max member, after {opts.keys:,} keys of 1 KiB", "rss.max_mib", "mib"),
        Row(
            f"Leader SIGKILL under {opts.kill_writers} writers: longest write gap",
            "kill.max_gap_s",
            "s",
        ),
        Row(
            "Leader SIGKILL: first ack of a write sent after the kill",
            "kill.recovery_s",
            "s",
        ),
        Row("Leader SIGKILL: acknowledged writes lost", "kill.lost", "count"),
    ]  # fmt: skip
    return main, spread


def cell(results: dict[str, Any], key: str, unit: str) -> tuple[str, float | None]:
    if key.endswith(".delivered_of_expected"):
        base = key.rsplit(".", 1)[0]
        got, want = results.get(f"{base}.delivered"), results.get(f"{base}.expected")
        if got is None or want is None:
            return "—", None
        return f"{got:,} / {want:,}", None
    v = results.get(key)
    if v is None:
        return "—", None
    if unit == "ops":
        return f"{v:,.0f}/s", float(v)
    if unit == "ms":
        return (f"{v:.2f} ms" if v < 10 else f"{v:,.1f} ms"), float(v)
    if unit == "mib":
        return f"{v:,.0f} MiB", float(v)
    if unit == "s":
        return f"{v:.2f} s", float(v)
    if key == "kill.lost":
        return f"{v:,} of {results.get('kill.acked', 0):,}", None
    return f"{v:,}", float(v)


def table(rows: list[Row], by_store: dict[str, dict[str, Any]]) -> str:
    stores = [s for s in ("mizzen", "etcd") if s in by_store]
    names = {"mizzen": "Mizzen", "etcd": "etcd 3.4"}
    both = len(stores) == 2
    header = ["Benchmark", *(names[s] for s in stores)] + (["Mizzen / etcd"] if both else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [cell(by_store[s], row.key, row.unit) for s in stores]
        out = [row.label, *(c[0] for c in cells)]
        if both:
            m, e = cells[0][1], cells[1][1]
            out.append(f"{m / e:.2f}x" if m is not None and e else "—")
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines)


def machine_note() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    etcd_version = "not installed"
    if shutil.which("etcd"):
        with contextlib.suppress(Exception):
            out = subprocess.run(
                ["etcd", "--version"], capture_output=True, text=True, timeout=10
            ).stdout
            etcd_version = out.splitlines()[0].split(":", 1)[1].strip()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "mem_gib": mem_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "etcd": etcd_version,
    }


def render(machine: dict[str, Any], opts: Options, by_store: dict[str, dict[str, Any]]) -> str:
    main, spread = rows_for(opts)
    note = (
        f"Machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['mem_gib']} GiB, "
        f"Linux {machine['kernel']}; Python {machine['python']}, grpcio {machine['grpcio']}, "
        f"etcd {machine['etcd']}. {machine['date']}."
    )
    setup = (
        f"Each store: {opts.members} member(s) on 127.0.0.1 on this machine, driven by one "
        "Python grpc.aio "
        f"client process (raw etcd v3 stubs). Put/Range levels run {opts.duration:g} s each; "
        "Put values 256 B; watches: one prefix, "
        f"{opts.watches_per_stream} watches per stream, streams spread over members. "
        "Ratio = Mizzen ÷ etcd (for throughput higher is better, for latency, RSS and gap "
        "lower is better). Leader kill: each Put gets "
        f"{KILL_PUT_TIMEOUT:g} s, then the writer moves to the next member."
    )
    parts = [
        f"## Store: Mizzen vs etcd, {opts.members} member(s)",
        "",
        note,
        "",
        setup,
        "",
        table(main, by_store),
    ]
    if opts.members > 1:
        parts += [
            "",
            "Writes spread round-robin over all members (followers forward to the leader):",
            "",
            table(spread, by_store),
        ]
    for s, res in by_store.items():
        for err in res.get("errors", []):
            parts += ["", f"- {s} error: {err}"]
    return "\n".join(parts) + "\n"


# -- command line --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> tuple[Options, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", choices=["mizzen", "etcd"], help="benchmark one store only")
    p.add_argument("--quick", action="store_true", help="short durations and counts (smoke run)")
    p.add_argument("--json", type=Path, help="write all results to this file")
    p.add_argument("--duration", type=float, help="seconds per Put/Range/Watch level (default 5)")
    p.add_argument("--keys", type=int, help="keys of 1 KiB loaded before RSS (default 100000)")
    p.add_argument(
        "--sections",
        default="put,range,watch,rss,kill",
        help="comma list of put,range,watch,rss,kill",
    )
    p.add_argument("--mizzen-args", default="", help="extra args for every mizzen store node")
    p.add_argument("--base-dir", type=Path, help="data dirs and logs here (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep data dirs and logs")
    p.add_argument(
        "--members", type=int, default=3, help="members per store (1: the embedded default)"
    )
    a = p.parse_args(argv)
    quick = a.quick
    sections = {s.strip() for s in a.sections.split(",") if s.strip()}
    unknown = sections - {"put", "range", "watch", "rss", "kill"}
    if unknown:
        p.error(f"unknown sections: {sorted(unknown)}")
    if a.members < 1:
        p.error("--members must be at least 1")
    if a.members == 1:
        sections.discard("kill")  # no leader to fail over to
    opts = Options(
        stores=[a.only] if a.only else ["etcd", "mizzen"],
        duration=a.duration or (1.0 if quick else 5.0),
        put_levels=[1, 16, 256],
        range_levels=[1, 16],
        watch_levels=[(100, 50), (1000, 20)],
        watches_per_stream=100,
        keys=a.keys or (2_000 if quick else 100_000),
        load_writers=64,
        load_timeout=60.0 if quick else 600.0,
        kill_writers=8,
        kill_before=1.0 if quick else 3.0,
        kill_after=4.0 if quick else 7.0,
        sections=sections,
        mizzen_args=shlex.split(a.mizzen_args),
        base_dir=a.base_dir,
        keep=a.keep,
        start_timeout=60.0,
        members=a.members,
    )
    return opts, a


async def amain(opts: Options, root: Path) -> dict[str, dict[str, Any]]:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    by_store: dict[str, dict[str, Any]] = {}
    for kind in opts.stores:
        log(f"=== {kind}")
        by_store[kind] = await bench_store(kind, root, opts)
    return by_store


def main(argv: list[str] | None = None) -> int:
    opts, args = parse_args(argv)
    if "etcd" in opts.stores and shutil.which("etcd") is None:
        print("etcd is not on PATH (apt-get install etcd-server)", file=sys.stderr)
        return 2
    root = opts.base_dir or Path(tempfile.mkdtemp(prefix="mizzen-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    machine = machine_note()
    by_store: dict[str, dict[str, Any]] = {}
    try:
        by_store = asyncio.run(amain(opts, root))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted; clusters stopped")
        return 130
    finally:
        if opts.keep or opts.base_dir:
            log(f"data and logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    report = render(machine, opts, by_store)
    print(report)
    if args.json:
        payload = {
            "machine": machine,
            "options": {
                k: (str(v) if isinstance(v, Path | set) else v) for k, v in asdict(opts).items()
            },
            "results": by_store,
            "markdown": report,
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        log(f"results written to {args.json}")
    failed = any(res.get("errors") for res in by_store.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
