"""One identity flooding a secure 3-member store while another client reads.

Shared by ``bench/flood_bench.py`` (which prints the figures) and
``tests/integration/test_flood.py`` (which asserts on them). ``run_flood``
starts a secure store (TLS, client certificates, Raft secret), lets the
flooders write for a bounded time while the viewer ``vera`` does linearizable
Get and List calls of small objects in a loop, and measures from outside:

* each flooder's outcomes (gRPC status counts), the bytes the store accepted
  and the ``retry-after`` values it was given;
* the reader's latencies, failures and longest gap between two successful
  reads (the outage a client sees);
* every member's Raft term before and after (a changed term is an election),
  sampled leaders, peak VmRSS, how far the furthest member fell behind and how
  long after the flood the members agreed again;
* the store's own counters, scraped from ``/metrics`` (batch resends, bytes
  refused by the quotas).

A flooder that is told ``retry-after`` waits that long (at most a second), as
the SDK does; any other refusal is followed by a 50 ms pause.

One file because the flooders, the reader and the measurements run in one
bounded experiment; the test and the bench both call ``run_flood``.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from mizzen import retry_after
from mizzen.client import ObjectsClient
from mizzen.client.errors import StoreClientError
from mizzen.security.pki import init_pki, issue
from mizzen.security.tls import ClientCredentials
from mizzen.testing.local_cluster import HOST, MizzenCluster, _Member, free_ports
from protos import objects_api_pb2 as api
from protos import objects_api_pb2_grpc as api_grpc
from protos import objects_pb2 as pb
from protos import rpc_pb2, rpc_pb2_grpc

MIB = 1024 * 1024
FLOOD_NODE = "na"


@dataclass(frozen=True)
class Flooder:
    """``writers`` concurrent loops writing ``size``-byte payloads as ``identity``.

    ``op`` "event": Objects.Create of an Event about Node ``na`` whose message is
    the payload (``identity`` should be ``node-na``, which may record such
    Events); "put": a raw KV Put of the payload (an admin). ``spread`` sends to
    every member in turn (followers forward to the leader), else to the leader.
    """

    label: str
    identity: str = f"node-{FLOOD_NODE}"
    writers: int = 3
    size: int = 1300 * 1024
    op: str = "event"
    spread: bool = False
    random: bool = True


@dataclass
class FloodResult:
    outcomes: dict[str, int] = field(default_factory=dict)
    bytes_accepted: int = 0
    retry_after_max: float = 0.0
    retry_after_given: int = 0
    first_error: str = ""


@dataclass
class Report:
    seconds: float
    flooders: dict[str, FloodResult]
    reads: int
    read_failures: int
    read_failure_kinds: dict[str, int]
    read_p50_ms: float
    read_p99_ms: float
    read_max_ms: float
    longest_read_gap_s: float
    terms_before: list[int]
    terms_after: list[int]
    leaders_seen: int
    peak_rss_mib: list[float]
    baseline_rss_mib: list[float]
    max_lag_entries: int
    catch_up_s: float
    resends: float
    store_args: list[str] = field(default_factory=list)

    @property
    def elections(self) -> int:
        return sum(a - b for a, b in zip(self.terms_after, self.terms_before, strict=True))


def vm_rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def payload(n: int, random: bool) -> bytes:
    """n bytes of text: base64 of random bytes (which zlib in pysyncobj's transport
    cannot shrink) or one letter repeated (which it shrinks to almost nothing)."""
    if not random:
        return b"x" * n
    return base64.b64encode(os.urandom(n * 3 // 4 + 3))[:n]


class FloodCluster(MizzenCluster):
    """A MizzenCluster whose members also serve /metrics, each on its own port."""

    def __init__(self, n: int, base_dir: Path, **kwargs: Any) -> None:
        self.metrics_ports = free_ports(n)
        super().__init__(n, base_dir, **kwargs)

    def _argv(self, m: _Member) -> list[str]:
        return [*super()._argv(m), "--metrics-listen", f"{HOST}:{self.metrics_ports[m.index]}"]


class Monitor(threading.Thread):
    """Samples every member's Status (term, leader, applied index) and RSS in a thread.

    A thread with blocking stubs, so a busy asyncio loop cannot delay the samples.
    """

    def __init__(self, cluster: MizzenCluster, creds: ClientCredentials, period: float) -> None:
        super().__init__(daemon=True)
        self.period = period
        self.channels = [creds.channel(ep) for ep in cluster.endpoints]
        self.stubs = [rpc_pb2_grpc.MaintenanceStub(c) for c in self.channels]
        self.pids = [p for p in cluster.pids if p is not None]
        self.samples: list[list[tuple[float, int, int]]] = [[] for _ in self.stubs]
        self.peak_rss = [0] * len(self.pids)
        self.stop_flag = threading.Event()

    def status(self, i: int, timeout: float = 1.0) -> rpc_pb2.StatusResponse | None:
        try:
            resp: rpc_pb2.StatusResponse = self.stubs[i].Status(
                rpc_pb2.StatusRequest(), timeout=timeout
            )
            return resp
        except grpc.RpcError:
            return None

    def rss(self) -> list[int]:
        return [vm_rss_kib(pid) for pid in self.pids]

    def run(self) -> None:
        while not self.stop_flag.is_set():
            for i in range(len(self.stubs)):
                s = self.status(i, timeout=self.period * 4)
                if s is not None:
                    self.samples[i].append((time.monotonic(), s.leader, s.raftAppliedIndex))
            self.peak_rss = [max(a, b) for a, b in zip(self.peak_rss, self.rss(), strict=True)]
            self.stop_flag.wait(self.period)

    def terms(self, patience: float = 60.0) -> list[int]:
        """Every member's term now, waiting up to ``patience`` for each to answer (-1: none)."""
        out = []
        for i in range(len(self.stubs)):
            deadline = time.monotonic() + patience
            s = self.status(i)
            while s is None and time.monotonic() < deadline:
                time.sleep(0.2)
                s = self.status(i)
            out.append(s.raftTerm if s is not None else -1)
        return out

    def leaders_seen(self) -> int:
        return len({leader for samples in self.samples for _, leader, _ in samples if leader})

    def max_lag(self) -> int:
        """The largest spread of applied indexes between members, sweep by sweep."""
        merged = sorted(
            (at, i, applied) for i, samples in enumerate(self.samples) for at, _, applied in samples
        )
        latest: dict[int, int] = {}
        lag = 0
        for _, i, applied in merged:
            latest[i] = applied
            if len(latest) == len(self.samples):
                lag = max(lag, max(latest.values()) - min(latest.values()))
        return lag

    def caught_up(self) -> bool:
        answers = [self.status(i) for i in range(len(self.stubs))]
        indexes = {a.raftAppliedIndex for a in answers if a is not None}
        return None not in answers and len(indexes) == 1

    def close(self) -> None:
        self.stop_flag.set()
        self.join(timeout=10)
        for c in self.channels:
            c.close()


def scrape(port: int, pki: Path, name: str) -> dict[str, float]:
    """The unlabelled samples of one member's /metrics (HTTPS, client certificate)."""
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / f"{name}.crt"), str(pki / f"{name}.key"))
    with urllib.request.urlopen(f"https://{HOST}:{port}/metrics", context=ctx, timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or "{" in line:
            continue
        parts = line.split()
        if len(parts) == 2:
            out[parts[0]] = float(parts[1])
    return out


def _event(i: int, message: bytes) -> pb.Event:
    ev = pb.Event(metadata=pb.ObjectMeta(name=f"flood-{i}", namespace="default"))
    spec = ev.spec
    spec.involved_object.kind = "Node"
    spec.involved_object.name = FLOOD_NODE
    spec.reason, spec.type, spec.count = "Flood", "Normal", 1
    spec.message = message.decode()
    spec.source.component, spec.source.host = "flood", FLOOD_NODE
    return ev


async def flood(
    spec: Flooder, creds: ClientCredentials, endpoints: list[str], seconds: float
) -> FloodResult:
    """Run one flooder for ``seconds``; its outcomes."""
    result = FloodResult()
    outcomes: Counter[str] = Counter()
    stop = time.monotonic() + seconds
    counter = iter(range(10**9))
    channels = [creds.aio_channel(ep) for ep in endpoints]
    objects = [api_grpc.ObjectsStub(c) for c in channels]
    kv = [rpc_pb2_grpc.KVStub(c) for c in channels]
    tag = os.urandom(4).hex()

    async def one(w: int, n: int) -> int:
        data = payload(spec.size, spec.random)
        if spec.op == "event":
            ev = _event(n, data)
            ev.metadata.name = f"flood-{tag}-{n}"
            req = api.CreateRequest(object=api.Object(event=ev))
            await objects[w % len(objects)].Create(req, timeout=5.0)
            return req.ByteSize()
        put = rpc_pb2.PutRequest(key=b"/flood/%s/%d" % (tag.encode(), n), value=data)
        await kv[w % len(kv)].Put(put, timeout=5.0)
        return put.ByteSize()

    async def writer(w: int) -> None:
        while time.monotonic() < stop:
            try:
                size = await one(w, next(counter))
                result.bytes_accepted += size
                outcomes["OK"] += 1
            except grpc.aio.AioRpcError as err:
                outcomes[err.code().name] += 1
                result.first_error = result.first_error or f"{err.code().name}: {err.details()}"
                wait = retry_after.parse(err.trailing_metadata())
                if wait is not None:
                    result.retry_after_given += 1
                    result.retry_after_max = max(result.retry_after_max, wait)
                await asyncio.sleep(min(wait, 1.0) if wait is not None else 0.05)

    try:
        await asyncio.gather(*(writer(w) for w in range(spec.writers)))
    finally:
        for c in channels:
            await c.close(None)
    result.outcomes = dict(outcomes)
    return result


async def read_loop(
    creds: ClientCredentials, endpoints: list[str], stop: asyncio.Event
) -> tuple[list[float], Counter[str], float]:
    """Linearizable Get and List of small objects until stop: latencies, failures, longest gap."""
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    last_ok = time.monotonic()
    gap = 0.0
    async with ObjectsClient(endpoints, credentials=creds, timeout=30.0) as c:
        i = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                if i % 2:
                    await c.get("nodes", FLOOD_NODE)
                else:
                    await c.list("pods", "default")
                now = time.monotonic()
                latencies.append(now - started)
                gap = max(gap, now - last_ok)
                last_ok = now
            except StoreClientError as err:
                failures[type(err).__name__] += 1
            i += 1
            await asyncio.sleep(0.01)
    return latencies, failures, gap


def make_pki(directory: Path) -> Path:
    init_pki(directory, hosts=[HOST], nodes=[FLOOD_NODE])
    issue(directory, "vera", "viewer")
    return directory


async def run_flood(
    base: Path,
    flooders: Sequence[Flooder],
    *,
    seconds: float,
    store_args: Sequence[str] = (),
    after: float = 1.0,
    pki: Path | None = None,
    on_flood: Callable[[MizzenCluster, int], Any] | None = None,
) -> Report:
    """Start the cluster under ``base``, flood it, measure; stopped before returning.

    ``on_flood(cluster, leader index)`` is called as the flood starts.
    """
    pki = pki or make_pki(base / "pki")

    def creds(name: str) -> ClientCredentials:
        return ClientCredentials(
            str(pki / "ca.crt"), str(pki / f"{name}.crt"), str(pki / f"{name}.key")
        )

    flags = [
        "--cacert", str(pki / "ca.crt"),
        "--cert", str(pki / f"store-{HOST}.crt"),
        "--key", str(pki / f"store-{HOST}.key"),
        "--peer-secret-file", str(pki / "raft.secret"),
        *store_args,
    ]  # fmt: skip
    with FloodCluster(3, base / "store", extra_args=flags, credentials=creds("admin")) as cluster:
        endpoints = cluster.endpoints
        async with ObjectsClient(endpoints, credentials=creds("admin")) as admin:
            await admin.create(pb.Node(metadata=pb.ObjectMeta(name=FLOOD_NODE)))
            for i in range(5):
                p = pb.Pod(metadata=pb.ObjectMeta(name=f"small-{i}", namespace="default"))
                p.spec.processes.add(name="main", command=["sleep", "60"])
                await admin.create(p)
        monitor = Monitor(cluster, creds("admin"), period=0.25)
        baseline = monitor.rss()
        terms_before = monitor.terms()
        monitor.start()
        stop = asyncio.Event()
        reader = asyncio.create_task(read_loop(creds("vera"), endpoints, stop))
        await asyncio.sleep(1.0)  # some reads before the flood
        leader_index = cluster.leader_index()
        leader = endpoints[leader_index]
        if on_flood is not None:
            on_flood(cluster, leader_index)
        results = await asyncio.gather(
            *(
                flood(spec, creds(spec.identity), endpoints if spec.spread else [leader], seconds)
                for spec in flooders
            )
        )
        await asyncio.sleep(after)
        stop.set()
        latencies, failures, gap = await reader
        started = time.monotonic()
        while not await asyncio.to_thread(monitor.caught_up) and time.monotonic() - started < 120:
            await asyncio.sleep(0.2)
        catch_up = time.monotonic() - started
        terms_after = await asyncio.to_thread(monitor.terms)
        monitor.close()
        counters = [
            await asyncio.to_thread(scrape, port, pki, "admin") for port in cluster.metrics_ports
        ]
        return Report(
            seconds=seconds,
            flooders={spec.label: r for spec, r in zip(flooders, results, strict=True)},
            reads=len(latencies),
            read_failures=sum(failures.values()),
            read_failure_kinds=dict(failures),
            read_p50_ms=percentile(latencies, 0.5) * 1000,
            read_p99_ms=percentile(latencies, 0.99) * 1000,
            read_max_ms=max(latencies, default=float("nan")) * 1000,
            longest_read_gap_s=gap,
            terms_before=terms_before,
            terms_after=terms_after,
            leaders_seen=monitor.leaders_seen(),
            peak_rss_mib=[kib / 1024 for kib in monitor.peak_rss],
            baseline_rss_mib=[kib / 1024 for kib in baseline],
            max_lag_entries=monitor.max_lag(),
            catch_up_s=catch_up,
            resends=sum(c.get("mizzen_store_proposal_resends_total", 0.0) for c in counters),
            store_args=list(store_args),
        )
