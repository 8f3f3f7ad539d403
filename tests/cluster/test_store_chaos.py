"""Store chaos on 3 test hosts: history linearizable, acknowledged writes kept, no split brain.

Scenario 1: clients in the root namespace write and compare-and-swap a few keys
while a seeded schedule SIGKILLs and restarts members (the leader included) and
partitions a minority host. Afterwards: the recorded history is linearizable
(per-key register model), every acknowledged write is in the store's history
at the revision it was acknowledged with, and all members converge.

Scenario 5: one host is partitioned. The majority keeps accepting writes; the
isolated member refuses writes and linearizable reads and still serves
serializable (stale) reads; after healing everyone converges and no refused
write ever appears. A write that merely timed out on the isolated member is
ambiguous: it may still apply after healing (with today's store it does).

Replay a failure with ``MIZZEN_CHAOS_SEED=<seed>`` (printed in every assertion
message). The seed fixes the fault schedule and each client's choice of
operations; thread timing still varies, so a replay is close, not identical.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from linearizability import NOT_READ, NotRead, Outcome, check
from linearizability import Op as HistoryOp

from mizzen.client import (
    AmbiguousWriteError,
    Compare,
    Op,
    RangeResult,
    StoreClient,
    StoreClientError,
    UnavailableError,
)
from mizzen.security.tls import INSECURE, ClientCredentials
from mizzen.testing.host_cluster import HostStoreCluster
from mizzen.testing.hosts import HostsError, TestHost, TestHosts
from protos import rpc_pb2, rpc_pb2_grpc

pytestmark = pytest.mark.cluster
T = TypeVar("T")

KEYS = [f"/chaos/k{i}" for i in range(3)]
CLIENTS = 4
DURATION = 40.0


@dataclass(frozen=True)
class Fault:
    """At ``at`` s: SIGKILL the member ("kill") or every process on its host
    ("kill_host") and restart it, or partition its host and heal, after ``hold`` s.

    ``target`` is "leader" (resolved when the fault fires) or a member index.
    """

    at: float
    action: str
    target: str
    hold: float


def chaos_schedule(rng: random.Random, duration: float, members: int) -> list[Fault]:
    faults: list[Fault] = []
    t = rng.uniform(2.0, 4.0)
    while t < duration - 6.0:
        action = rng.choice(["kill", "kill", "kill_host", "partition"])
        target = "leader" if rng.random() < 0.5 else str(rng.randrange(members))
        hold = round(rng.uniform(1.5, 5.0), 2)
        faults.append(Fault(round(t, 2), action, target, hold))
        t += hold + rng.uniform(1.5, 4.0)
    return faults


@dataclass
class Ack:
    key: str
    value: str
    revision: int


@dataclass
class Recorder:
    """Shared by the client tasks (one asyncio thread); read after they stopped."""

    history: list[HistoryOp] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    crash: BaseException | None = None

    def note_error(self, err: BaseException) -> None:
        name = type(err).__name__
        self.errors[name] = self.errors.get(name, 0) + 1


def _outcome(err: BaseException, *, write: bool) -> Outcome:
    """UnavailableError is definite for writes (the client's contract); the rest is ambiguous."""
    if isinstance(err, UnavailableError) or not write:
        return "fail"
    return "unknown"


def _value(kv_value: bytes | None) -> str | None:
    return None if kv_value is None else kv_value.decode()


def _count(value: str | None) -> int:
    return int(value.split(":", 1)[0]) if value else 0


# The store runs secure (TLS, client certificates): tests set the admin's here.
CREDENTIALS: list[ClientCredentials] = [INSECURE]


def client(endpoints: list[str], timeout: float, connect_timeout: float = 1.0) -> StoreClient:
    return StoreClient(
        endpoints, timeout=timeout, connect_timeout=connect_timeout, credentials=CREDENTIALS[0]
    )


async def _timed(
    rec: Recorder, base: HistoryOp, call: Callable[[], Awaitable[T]], *, write: bool
) -> tuple[T, float, float] | None:
    """Run call; on failure record base with its interval and outcome and return None,
    else return the result and the interval (the caller records the op with its result)."""
    invoke = time.monotonic()
    try:
        result = await call()
    except (StoreClientError, TimeoutError) as err:
        rec.note_error(err)
        outcome = _outcome(err, write=write)
        rec.history.append(
            dataclasses.replace(base, invoke=invoke, complete=time.monotonic(), outcome=outcome)
        )
        return None
    return result, invoke, time.monotonic()


async def _read(c: StoreClient, rec: Recorder, proc: str, key: str) -> tuple[bool, str | None]:
    got = await _timed(
        rec, HistoryOp(proc, key, "read", 0, 0, "fail"), lambda: c.get(key), write=False
    )
    if got is None:
        return False, None
    kv, t0, t1 = got
    value = _value(kv.value) if kv is not None else None
    rec.history.append(HistoryOp(proc, key, "read", t0, t1, "ok", value=value))
    return True, value


async def _write(c: StoreClient, rec: Recorder, proc: str, key: str, value: str) -> None:
    base = HistoryOp(proc, key, "write", 0, 0, "fail", value=value)
    got = await _timed(rec, base, lambda: c.put(key, value), write=True)
    if got is not None:
        (revision, _), t0, t1 = got
        rec.history.append(HistoryOp(proc, key, "write", t0, t1, "ok", value=value))
        rec.acks.append(Ack(key, value, int(revision)))


async def _cas(
    c: StoreClient, rec: Recorder, proc: str, key: str, expected: str | None, new: str
) -> None:
    """Txn: if key holds expected (absent: version 0) put new, else read the key."""
    compare = (
        Compare.version(key) == 0 if expected is None else Compare.value(key) == expected.encode()
    )
    base = HistoryOp(proc, key, "cas", 0, 0, "fail", value=new, expected=expected)
    got = await _timed(
        rec, base, lambda: c.txn([compare], [Op.put(key, new)], [Op.get(key)]), write=True
    )
    if got is None:
        return
    (succeeded, responses, revision), t0, t1 = got
    if succeeded:
        rec.acks.append(Ack(key, new, int(revision)))
        seen: str | NotRead | None = NOT_READ
    else:
        (current,) = responses
        assert isinstance(current, RangeResult)
        seen = _value(current.kvs[0].value) if current.kvs else None
    op = HistoryOp(proc, key, "cas", t0, t1, "ok", new, expected, succeeded, seen)
    rec.history.append(op)


async def _client(
    cid: int, endpoints: list[str], seed: int, stop: threading.Event, rec: Recorder
) -> None:
    rng = random.Random(seed * 1000 + cid)
    proc = f"c{cid}"
    async with client(endpoints, timeout=3.0, connect_timeout=0.5) as c:
        n = 0
        while not stop.is_set():
            n += 1
            key = rng.choice(KEYS)
            roll = rng.random()
            if roll < 0.3:
                await _read(c, rec, proc, key)
            elif roll < 0.55:
                await _write(c, rec, proc, key, f"0:{proc}-{n}")
            else:
                ok, current = await _read(c, rec, proc, key)
                if ok:
                    await _cas(c, rec, proc, key, current, f"{_count(current) + 1}:{proc}-{n}")
            await asyncio.sleep(rng.uniform(0.0, 0.02))


def _run_clients(endpoints: list[str], seed: int, stop: threading.Event, rec: Recorder) -> None:
    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            for cid in range(CLIENTS):
                tg.create_task(_client(cid, endpoints, seed, stop, rec))

    try:
        asyncio.run(main())
    except BaseException as err:  # surfaced by the test, not lost in the thread
        rec.crash = err


# -- cluster probes -------------------------------------------------------------------


def leader_of(cluster: HostStoreCluster) -> int | None:
    """Index of the member claiming leadership with the highest term, among those answering."""
    claims = []
    for i in range(len(cluster)):
        status = cluster.status(i, timeout=0.5)
        if status is not None and status.leader and status.leader == status.header.member_id:
            claims.append((int(status.raftTerm), i))
    return max(claims)[1] if claims else None


def hashes(cluster: HostStoreCluster) -> list[tuple[int, int] | None]:
    """(hash_revision, hash) of every member, None where it does not answer."""
    out: list[tuple[int, int] | None] = []
    for i in range(len(cluster)):
        try:
            with cluster.credentials.channel(cluster.endpoint(i)) as channel:
                r = rpc_pb2_grpc.MaintenanceStub(channel).HashKV(rpc_pb2.HashKVRequest(), timeout=2)
                out.append((int(r.hash_revision), int(r.hash)))
        except grpc.RpcError:
            out.append(None)
    return out


def wait_converged(cluster: HostStoreCluster, timeout: float) -> list[tuple[int, int] | None]:
    """Poll HashKV until every member reports the same revision and hash; the last answers."""
    deadline = time.monotonic() + timeout
    while True:
        seen = hashes(cluster)
        if None not in seen and len(set(seen)) == 1:
            return seen
        if time.monotonic() > deadline:
            return seen
        time.sleep(0.3)


# -- scenario 1 -----------------------------------------------------------------------


class Nemesis:
    """Applies a schedule in the calling thread; remembers what it did and when."""

    def __init__(self, cluster: HostStoreCluster, start: float) -> None:
        self.cluster = cluster
        self.start = start
        self.log: list[str] = []

    def note(self, text: str) -> None:
        self.log.append(f"t={time.monotonic() - self.start:6.2f}s {text}")

    def run(self, schedule: list[Fault], duration: float) -> None:
        for fault in schedule:
            self._sleep_until(fault.at)
            target = leader_of(self.cluster) if fault.target == "leader" else int(fault.target)
            if target is None:
                self.note(f"{fault.action} leader: no leader right now, skipped")
                continue
            name = self.cluster.hosts[target].name
            if fault.action in ("kill", "kill_host"):
                if fault.action == "kill":
                    self.cluster.kill(target)
                else:
                    self.cluster.kill_host(target)
                self.note(f"{fault.action} {name} ({fault.target})")
                time.sleep(fault.hold)
                self.cluster.restart(target, timeout=20)
                self.note(f"restarted {name}")
            else:
                self.cluster.hosts[target].partition()
                self.note(f"partitioned {name} ({fault.target})")
                time.sleep(fault.hold)
                self.cluster.hosts[target].heal()
                self.note(f"healed {name}")
        self._sleep_until(duration)

    def _sleep_until(self, at: float) -> None:
        time.sleep(max(0.0, self.start + at - time.monotonic()))

    def recover(self) -> None:
        """Heal every host and restart every member that is down."""
        for i, host in enumerate(self.cluster.hosts):
            if host.partitioned:
                host.heal()
                self.note(f"recovery: healed {host.name}")
            if not self.cluster.is_running(i):
                self.cluster.restart(i, timeout=20)
                self.note(f"recovery: restarted {host.name}")


def _save(path: Path, rec: Recorder) -> None:
    with path.open("w") as f:
        for op in rec.history:
            f.write(json.dumps(dataclasses.asdict(op), default=str) + "\n")


@pytest.mark.timeout(180)
def test_store_chaos_linearizable(
    store3: HostStoreCluster, chaos_seed: int, tmp_path: Path
) -> None:
    seed = chaos_seed
    schedule = chaos_schedule(random.Random(seed), DURATION, len(store3))
    rec = Recorder()
    stop = threading.Event()
    endpoints = store3.endpoints
    CREDENTIALS[0] = store3.credentials
    start = time.monotonic()
    nemesis = Nemesis(store3, start)
    clients = threading.Thread(
        target=_run_clients, args=(endpoints, seed, stop, rec), name="chaos-clients", daemon=True
    )
    clients.start()
    try:
        nemesis.run(schedule, DURATION)
    finally:
        nemesis.recover()
        stop.set()
        clients.join(timeout=30)
    chaos_done = time.monotonic()
    history_file = tmp_path / "history.jsonl"

    def context() -> str:
        return (
            f"\nseed={seed} (replay: MIZZEN_CHAOS_SEED={seed})\nschedule={schedule}\n"
            + "\n".join(nemesis.log)
            + f"\nerrors={rec.errors}\nhistory={history_file}\nlogs={store3.base_dir}"
        )

    assert not clients.is_alive(), "client tasks did not stop" + context()
    assert rec.crash is None, f"client tasks crashed: {rec.crash!r}" + context()
    store3.leader_index(timeout=30)
    asyncio.run(_final_reads(endpoints, rec))
    _save(history_file, rec)

    ok_writes = [op for op in rec.history if op.kind != "read" and op.outcome == "ok"]
    assert len(ok_writes) >= 100, f"too few acknowledged writes ({len(ok_writes)})" + context()
    assert len(nemesis.log) >= 2, "the nemesis did nothing" + context()

    report = check(rec.history)
    assert report.ok, report.summary() + context()

    missing = asyncio.run(_missing_acks(endpoints, rec.acks))
    assert not missing, "acknowledged writes missing:\n" + "\n".join(missing) + context()
    revisions = [a.revision for a in rec.acks]
    assert len(set(revisions)) == len(revisions), "two acks share a revision" + context()

    converged = wait_converged(store3, timeout=20)
    assert None not in converged and len(set(converged)) == 1, (
        f"members did not converge: (revision, hash) {converged}" + context()
    )
    print(
        f"\nchaos seed={seed}: {len(rec.history)} ops, {len(ok_writes)} acked writes, "
        f"{len(nemesis.log)} nemesis events, errors={rec.errors}, "
        f"chaos {chaos_done - start:.1f}s, total {time.monotonic() - start:.1f}s; "
        + report.summary()
        + "\n"
        + "\n".join(nemesis.log)
    )


async def _final_reads(endpoints: list[str], rec: Recorder) -> None:
    async with client(endpoints, timeout=10.0) as c:
        for key in KEYS:
            ok, _ = await _read(c, rec, "final", key)
            assert ok, f"final read of {key} failed"


async def _missing_acks(endpoints: list[str], acks: list[Ack]) -> list[str]:
    """Each ack must be in the store's history: the key held its value at its revision."""
    missing: list[str] = []
    limit = asyncio.Semaphore(32)
    async with client(endpoints, timeout=10.0) as c:

        async def verify(ack: Ack) -> None:
            async with limit:
                kv = await c.get(ack.key, revision=ack.revision)
            if kv is None or kv.value.decode() != ack.value or kv.mod_revision != ack.revision:
                found = None if kv is None else (kv.value.decode(), kv.mod_revision)
                missing.append(f"{ack} -> store has {found}")

        async with asyncio.TaskGroup() as tg:
            for ack in acks:
                tg.create_task(verify(ack))
    return missing


# -- scenario 5 -----------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_minority_partition_no_split_brain(store3: HostStoreCluster, chaos_seed: int) -> None:
    seed = chaos_seed
    CREDENTIALS[0] = store3.credentials
    rng = random.Random(seed)
    start = time.monotonic()
    leader = leader_of(store3)
    assert leader is not None
    victim = leader if rng.random() < 0.5 else rng.choice([i for i in range(3) if i != leader])
    majority = [store3.endpoint(i) for i in range(3) if i != victim]
    minority = store3.endpoint(victim)
    ctx = f"\nseed={seed} (replay: MIZZEN_CHAOS_SEED={seed}); victim={victim} leader={leader}"
    outcome = asyncio.run(_partition_scenario(store3, victim, majority, minority))
    assert outcome.majority_writes == 20, f"majority side stopped serving: {outcome}" + ctx
    assert outcome.minority_write_ok == 0, f"SPLIT BRAIN: minority accepted writes {outcome}" + ctx
    assert outcome.minority_lin_read_ok == 0, f"minority served linearizable reads {outcome}" + ctx
    assert outcome.minority_serializable == "before", f"stale read expected: {outcome}" + ctx
    seen = outcome.values_seen_after_heal
    assert not set(seen) & set(outcome.minority_refused), (
        f"a refused minority write was applied: {outcome}" + ctx
    )
    assert [v for v in seen if v not in outcome.minority_ambiguous] == [
        f"maj-{i}" for i in range(20)
    ], f"history of the key after healing is wrong: {outcome}" + ctx
    converged = wait_converged(store3, timeout=20)
    assert None not in converged and len(set(converged)) == 1, f"no convergence {converged}" + ctx
    print(f"\npartition seed={seed} victim={victim}: {outcome}, {time.monotonic() - start:.1f}s")


@dataclass
class PartitionOutcome:
    majority_writes: int = 0
    first_majority_write_s: float = 0.0
    minority_write_ok: int = 0
    minority_refused: list[str] = field(default_factory=list)
    minority_ambiguous: list[str] = field(default_factory=list)
    minority_lin_read_ok: int = 0
    minority_serializable: str | None = None
    healed_minority_caught_up_s: float = 0.0
    values_seen_after_heal: list[str] = field(default_factory=list)


async def _partition_scenario(
    cluster: HostStoreCluster, victim: int, majority: list[str], minority: str
) -> PartitionOutcome:
    out = PartitionOutcome()
    key = "/partition/k"
    async with client(cluster.endpoints, timeout=10.0) as c:
        first_rev, _ = await c.put(key, "before")
    async with client([minority], timeout=5.0) as mino:
        while (await mino.get(key, serializable=True)) is None:
            await asyncio.sleep(0.05)
    cluster.hosts[victim].partition(except_gateway=True)
    t0 = time.monotonic()
    try:
        async with client(majority, timeout=15.0, connect_timeout=0.5) as maj:
            for i in range(20):
                last_rev, _ = await maj.put(key, f"maj-{i}")
                out.majority_writes += 1
                if i == 0:
                    out.first_majority_write_s = round(time.monotonic() - t0, 2)
        async with client([minority], timeout=3.0, connect_timeout=0.5) as mino:
            for i in range(3):
                try:
                    await mino.put(key, f"minority-{i}")
                    out.minority_write_ok += 1
                except UnavailableError:
                    out.minority_refused.append(f"minority-{i}")
                except AmbiguousWriteError:
                    out.minority_ambiguous.append(f"minority-{i}")
            try:
                await mino.get(key)
                out.minority_lin_read_ok += 1
            except UnavailableError:
                pass
            kv = await mino.get(key, serializable=True)
            out.minority_serializable = None if kv is None else kv.value.decode()
    finally:
        cluster.hosts[victim].heal()
    t1 = time.monotonic()
    async with client([minority], timeout=5.0) as mino:
        while time.monotonic() - t1 < 20:
            if (await mino.range(key, serializable=True)).revision >= last_rev:
                out.healed_minority_caught_up_s = round(time.monotonic() - t1, 2)
                break
            await asyncio.sleep(0.1)
    async with client(cluster.endpoints, timeout=10.0) as c:
        last = (await c.range(key)).revision
        for rev in range(first_rev + 1, last + 1):
            kv = await c.get(key, revision=rev)
            if kv is not None and kv.mod_revision == rev:
                out.values_seen_after_heal.append(kv.value.decode())
    return out


# -- the test hosts the scenarios stand on ----------------------------------------------


def _reaches(src: TestHost, dst: str, port: int) -> bool:
    probe = f"import socket; socket.create_connection(({dst!r}, {port}), 1).close()"
    try:
        src.exec(sys.executable, "-c", probe, timeout=10)
    except HostsError:
        return False
    return True


@pytest.mark.timeout(90)
def test_hosts_partition_is_symmetric_and_cleanup_is_complete(hosts3: TestHosts) -> None:
    """A partition cuts a host off both ways but not from itself; stop() leaves nothing."""
    h1, h2, h3 = hosts3
    server = "import socket,sys,time; s=socket.create_server((sys.argv[1], 8000)); time.sleep(600)"
    for h in hosts3:
        h.spawn([sys.executable, "-c", server, h.address], "listener")
    deadline = time.monotonic() + 10
    while not all(_reaches(h1, h.address, 8000) for h in hosts3):
        assert time.monotonic() < deadline, "listeners did not come up"
    h2.partition()
    assert not _reaches(h1, h2.address, 8000) and not _reaches(h2, h3.address, 8000)
    assert _reaches(h2, h2.address, 8000) and _reaches(h1, h3.address, 8000)
    with pytest.raises(OSError):
        socket.create_connection((h2.address, 8000), 1).close()
    h2.partition(except_gateway=True)
    socket.create_connection((h2.address, 8000), 1).close()
    assert not _reaches(h3, h2.address, 8000)
    h2.heal()
    assert _reaches(h3, h2.address, 8000)

    h3.kill("listener")
    assert not h3.running("listener") and h1.running("listener")
    stray = subprocess.Popen(["ip", "netns", "exec", h1.netns, "sleep", "600"])
    cgroup = _make_cgroup(h1.cgroup_parent)
    pinned = subprocess.Popen(["sleep", "600"])
    (cgroup / "cgroup.procs").write_text(str(pinned.pid))
    h1.kill_all()
    assert stray.wait(timeout=10) == -signal.SIGKILL and h1.netns_pids() == []

    hosts3.stop()
    assert pinned.wait(timeout=10) == -signal.SIGKILL and not cgroup.exists()
    assert stray.poll() is not None
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert not any(h.netns in names for h in hosts3)
    assert hosts3.bridge not in links and not any(h.veth in links for h in hosts3)


def _make_cgroup(parent: str) -> Path:
    """A cgroup <parent>/pod under the v2 root or the v1 pids hierarchy."""
    root = Path("/sys/fs/cgroup")
    if not (root / "cgroup.controllers").exists():
        root = root / "pids"
    path = root / parent / "pod"
    path.mkdir(parents=True)
    return path
