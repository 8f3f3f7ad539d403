"""mizzen.client.StoreClient against real store clusters, plus its retry policy against fakes.

The backend fixture runs every cluster test on etcd and on Mizzen (skipped
until ``python -m mizzen store --help`` works). The fake-stub tests at the end
need no server: they pin down when a failed write is retried and when it is
reported as ambiguous, and how a watch resumes.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from mizzen.client import (
    AmbiguousWriteError,
    CompactedError,
    Compare,
    EventType,
    InvalidArgumentError,
    LeaseExpiredError,
    Op,
    StoreClient,
    StoreClientError,
    UnavailableError,
)
from mizzen.client.retry_policy import Verdict, classify
from mizzen.testing.local_cluster import REPO_ROOT, EtcdCluster, LocalCluster, MizzenCluster
from protos import kv_pb2, rpc_pb2

pytestmark = pytest.mark.integration

Make = Callable[[int], LocalCluster]


@functools.cache
def _mizzen_store_missing() -> str | None:
    """Why the Mizzen backend cannot run yet, or None when it can."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "mizzen", "store", "--help"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"`python -m mizzen store --help` failed: {err}"
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
        return f"`python -m mizzen store --help` exited {done.returncode}: {tail}"
    return None


@pytest.fixture(params=["etcd", "mizzen"])
def backend(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    if name == "etcd" and shutil.which("etcd") is None:
        pytest.skip("etcd not on PATH (apt-get install etcd-server)")
    if name == "mizzen" and (reason := _mizzen_store_missing()) is not None:
        pytest.skip(f"Mizzen store not runnable yet: {reason}")
    return name


@pytest.fixture
def make_cluster(backend: str, tmp_path: Path) -> Iterator[Make]:
    """Start an n-member cluster of the backend; every one is stopped at teardown."""
    started: list[LocalCluster] = []

    def make(n: int) -> LocalCluster:
        kind = EtcdCluster if backend == "etcd" else MizzenCluster
        cluster = kind(n, tmp_path / f"{backend}{len(started)}")
        started.append(cluster)
        return cluster.start()

    yield make
    for cluster in started:
        cluster.stop()


async def _put_resolved(client: StoreClient, key: str, value: bytes, notes: list[str]) -> int:
    """Put, resolving an ambiguous outcome by reading back; the put's revision."""
    while True:
        try:
            revision, _ = await client.put(key, value)
            return revision
        except UnavailableError:
            notes.append(f"unavailable {key}")  # nothing was proposed: write again
        except AmbiguousWriteError:
            notes.append(f"ambiguous {key}")
            kv = await client.get(key)
            if kv is not None:
                return kv.mod_revision


# -- KV -------------------------------------------------------------------------------


async def test_crud(make_cluster: Make) -> None:
    cluster = make_cluster(1)
    async with StoreClient(cluster.endpoints) as c:
        assert await c.get("/crud/a") is None
        rev1, prev = await c.put("/crud/a", b"1", prev_kv=True)
        assert prev is None
        rev2, prev = await c.put("/crud/a", "2", prev_kv=True)
        assert rev2 > rev1
        assert prev is not None and prev.value == b"1" and prev.mod_revision == rev1
        kv = await c.get(b"/crud/a")
        assert kv is not None
        assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) == (
            b"/crud/a",
            b"2",
            rev1,
            rev2,
            2,
        )
        old = await c.get("/crud/a", revision=rev1)
        assert old is not None and old.value == b"1"
        await c.put("/crud/b", b"x")
        deleted, prevs, rev3 = await c.delete("/crud/a", prev_kv=True)
        assert deleted == 1 and [p.value for p in prevs] == [b"2"] and rev3 > rev2
        assert await c.get("/crud/a") is None
        deleted, _, _ = await c.delete("/crud/", prefix=True)
        assert deleted == 1
        assert (await c.delete("/crud/missing"))[0] == 0


async def test_prefix_listing_with_limit_and_more(make_cluster: Make) -> None:
    cluster = make_cluster(1)
    async with StoreClient(cluster.endpoints) as c:
        for i in range(10):
            await c.put(f"/list/{i:02d}", f"v{i}")
        await c.put("/listx", b"outside the prefix")
        page, rev, more = await c.get_prefix("/list/", limit=4)
        assert [kv.key for kv in page] == [f"/list/{i:02d}".encode() for i in range(4)]
        assert more and rev >= 11
        keys: list[bytes] = []
        start: bytes = b"/list/"
        while True:
            result = await c.range(start, b"/list0", limit=3, revision=rev)
            keys += [kv.key for kv in result.kvs]
            if not result.more:
                break
            start = result.kvs[-1].key + b"\0"
        assert keys == [f"/list/{i:02d}".encode() for i in range(10)]
        everything, _, more = await c.get_prefix("/list/", keys_only=True, serializable=True)
        assert len(everything) == 10 and not more and all(kv.value == b"" for kv in everything)
        counted = await c.range("/list/", prefix=True, count_only=True)
        assert counted.count == 10 and counted.kvs == ()
        newest = await c.range("/list/", prefix=True, limit=1, sort_order="descend")
        assert [kv.key for kv in newest.kvs] == [b"/list/09"]


async def test_txn_compare_and_swap(make_cluster: Make) -> None:
    cluster = make_cluster(1)
    async with StoreClient(cluster.endpoints) as c:
        ok, results, rev = await c.txn(
            [Compare.version("/cas") == 0], [Op.put("/cas", b"a")], [Op.get("/cas")]
        )
        assert ok and len(results) == 1
        kv = await c.get("/cas")
        assert kv is not None and kv.mod_revision == rev

        ok, results, _ = await c.txn(
            [Compare.mod_revision("/cas") == kv.mod_revision, Compare.value("/cas") == b"a"],
            [Op.put("/cas", b"b", prev_kv=True), Op.get("/cas")],
            [Op.get("/cas")],
        )
        assert ok
        assert getattr(results[0], "prev_kv").value == b"a"  # noqa: B009
        assert [k.value for k in getattr(results[1], "kvs")] == [b"b"]  # noqa: B009

        ok, results, _ = await c.txn(
            [Compare.mod_revision("/cas") == kv.mod_revision],
            [Op.put("/cas", b"lost update")],
            [Op.get("/cas")],
        )
        assert not ok
        assert [k.value for k in getattr(results[0], "kvs")] == [b"b"]  # noqa: B009
        final = await c.get("/cas")
        assert final is not None and final.value == b"b"

        ok, _, _ = await c.txn(
            [Compare.value("/cas") != b"b"], [Op.delete("/cas")], [Op.delete("/cas")]
        )
        assert not ok and await c.get("/cas") is None


async def test_compacted_revision_raises_compacted_error(make_cluster: Make) -> None:
    cluster = make_cluster(1)
    async with StoreClient(cluster.endpoints) as c:
        revs = [(await c.put("/cmp/k", str(i)))[0] for i in range(5)]
        await c.compact(revs[3])
        with pytest.raises(CompactedError) as info:
            async with asyncio.timeout(10):
                async for _ in c.watch("/cmp/", prefix=True, start_revision=revs[0]):
                    pass
        assert info.value.compact_revision == revs[3]
        with pytest.raises(CompactedError):
            await c.get("/cmp/k", revision=revs[1])
        kv = await c.get("/cmp/k", revision=revs[3])
        assert kv is not None and kv.value == b"3"


# -- Watch ----------------------------------------------------------------------------


async def test_watch_delivers_events_in_order(make_cluster: Make) -> None:
    cluster = make_cluster(1)
    async with StoreClient(cluster.endpoints) as c:
        start = (await c.put("/other", b"x"))[0] + 1
        written = []
        for i in range(30):
            written.append(("put", (await c.put(f"/wo/{i % 7}", str(i)))[0]))
            if i % 5 == 4:
                written.append(("delete", (await c.delete(f"/wo/{i % 7}"))[2]))
        seen: list[tuple[str, int]] = []
        async with c.watch("/wo/", prefix=True, start_revision=start, prev_kv=True) as w:
            async with asyncio.timeout(10):
                async for batch in w:
                    for ev in batch.events:
                        assert ev.kv.key.startswith(b"/wo/")
                        seen.append(("put" if ev.type is EventType.PUT else "delete", ev.revision))
                    if len(seen) >= len(written):
                        break
        assert seen == written
        async with c.watch("/wo/0") as w:
            rev, _ = await c.put("/wo/0", b"live")
            async with asyncio.timeout(10):
                batch = await anext(w)
            assert [(e.kv.value, e.revision) for e in batch.events] == [(b"live", rev)]


async def test_closing_the_client_ends_its_watches_with_an_error(make_cluster: Make) -> None:
    cluster = make_cluster(1)
    c = StoreClient(cluster.endpoints)
    watcher = await c.watch("/closing", prefix=True).__aenter__()
    consumer = asyncio.create_task(anext(watcher))
    await asyncio.sleep(0.2)
    await c.close()
    with pytest.raises(StoreClientError, match="closed"):
        async with asyncio.timeout(5):
            await consumer


@pytest.mark.parametrize("victim", ["follower", "leader"])
async def test_watch_resumes_after_serving_member_is_killed(
    make_cluster: Make, victim: str
) -> None:
    cluster = make_cluster(3)
    leader = await asyncio.to_thread(cluster.leader_index)
    target = leader if victim == "leader" else (leader + 1) % 3
    eps = cluster.endpoints
    watch_eps = [eps[target]] + [e for i, e in enumerate(eps) if i != target]
    notes: list[str] = []
    async with (
        StoreClient(eps, timeout=15) as writer,
        StoreClient(watch_eps, timeout=15) as reader,
    ):
        start = (await writer.put("/w-start", b""))[0] + 1
        watcher = reader.watch("/w/", prefix=True, start_revision=start)
        seen: list[int] = []

        async def consume() -> None:
            async for batch in watcher:
                seen.extend(ev.revision for ev in batch.events)

        async with asyncio.TaskGroup() as tg:
            consumer = tg.create_task(consume())
            async with asyncio.timeout(10):
                while watcher.endpoint != eps[target]:
                    await asyncio.sleep(0.01)
            written: list[int] = []
            killer: asyncio.Task[None] | None = None
            for i in range(200):
                if i == 60:
                    killer = tg.create_task(asyncio.to_thread(cluster.kill, target))
                written.append(await _put_resolved(writer, f"/w/{i:04d}", b"v", notes))
                if i == 60:
                    await asyncio.sleep(0.05)
            assert killer is not None
            await killer
            async with asyncio.timeout(30):
                while watcher.last_revision < max(written):
                    await asyncio.sleep(0.05)
            consumer.cancel()
        await watcher.aclose()
        assert watcher.resumes >= 1

        reference: list[int] = []
        async with writer.watch("/w/", prefix=True, start_revision=start) as fresh:
            async with asyncio.timeout(10):
                async for batch in fresh:
                    reference.extend(ev.revision for ev in batch.events)
                    if reference and reference[-1] >= max(written):
                        break
    assert seen == reference, notes
    assert len(set(seen)) == len(seen)
    if not any(n.startswith("ambiguous") for n in notes):
        assert seen == sorted(written)
    else:
        assert set(written) <= set(seen)


# -- Leases ---------------------------------------------------------------------------


async def test_lease_keep_alive_and_revoke(make_cluster: Make) -> None:
    cluster = make_cluster(1)
    async with StoreClient(cluster.endpoints) as c:
        lease, ttl = await c.lease_grant(2)
        assert ttl >= 2 and lease in await c.leases()
        await c.put("/lease/k", b"v", lease=lease)
        async with c.keep_alive(lease) as ka:
            await asyncio.sleep(ttl * 2 + 1)
            assert not ka.lost.is_set() and ka.renewals >= 3
            kv = await c.get("/lease/k")
            assert kv is not None and kv.lease == lease
            info = await c.lease_time_to_live(lease, keys=True)
            assert info.exists and info.granted_ttl == ttl and info.keys == (b"/lease/k",)

            await c.lease_revoke(lease)
            assert await c.get("/lease/k") is None
            async with asyncio.timeout(ttl + 3):
                await ka.lost.wait()
            assert "TTL" in ka.lost_reason
            with pytest.raises(LeaseExpiredError):
                ka.check()
        assert (await c.lease_time_to_live(lease)).ttl == -1
        with pytest.raises(LeaseExpiredError):
            async with c.keep_alive(lease):
                pass

        short, ttl = await c.lease_grant(2)
        await c.put("/lease/expiring", b"v", lease=short)
        async with asyncio.timeout(ttl + 8):
            while await c.get("/lease/expiring") is not None:
                await asyncio.sleep(0.2)


async def test_keep_alive_survives_killed_endpoint(make_cluster: Make) -> None:
    cluster = make_cluster(3)
    leader = await asyncio.to_thread(cluster.leader_index)
    async with StoreClient(cluster.endpoints, timeout=10) as c:
        # TTL 6 s: on a loaded 2-CPU machine etcd's own re-election plus the
        # client's failover can take more than 4 s
        lease, ttl = await c.lease_grant(6)
        await c.put("/lease/ha", b"v", lease=lease)
        async with c.keep_alive(lease) as ka:
            assert ka.endpoint == cluster.endpoints[leader]
            await asyncio.to_thread(cluster.kill, leader)
            await asyncio.sleep(ttl + 3)
            assert not ka.lost.is_set(), ka.lost_reason
            assert ka.endpoint not in (None, cluster.endpoints[leader])
            assert await c.get("/lease/ha") is not None
        await c.lease_revoke(lease)


# -- Leader following -----------------------------------------------------------------


async def test_writes_follow_the_leader(make_cluster: Make) -> None:
    cluster = make_cluster(3)
    leader = await asyncio.to_thread(cluster.leader_index)
    eps = cluster.endpoints
    follower_first = [eps[(leader + 1) % 3], eps[(leader + 2) % 3], eps[leader]]
    async with StoreClient(follower_first) as c:
        await c.put("/lf/a", b"1")
        assert c.leader_endpoint == eps[leader]
        assert c.last_endpoint == eps[leader]
        status = await c.status(c.last_endpoint)
        assert status.is_leader

        await c.get("/lf/a")
        assert c.last_endpoint == follower_first[0]  # reads stay where they started

        await asyncio.to_thread(cluster.kill, leader)
        new_leader = await asyncio.to_thread(cluster.leader_index, 15.0)
        async with asyncio.timeout(20):
            while True:
                await c.put("/lf/b", b"2")
                if c.last_endpoint == c.leader_endpoint == eps[new_leader]:
                    break
                await asyncio.sleep(0.2)
        assert c.leader_endpoint == eps[new_leader]
        assert (await c.status(eps[new_leader])).is_leader
        members = await c.member_list()
        assert len(members) == 3


# -- Retry policy against fake stubs (no server) --------------------------------------


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)


class _FakeUnary:
    """Awaitable stub method: pops a scripted outcome (exception or response) per call."""

    def __init__(self, calls: list[str], name: str, script: list[Any], default: Any) -> None:
        self.calls, self.name, self.script, self.default = calls, name, script, default

    async def __call__(
        self, request: Any, timeout: float | None = None, metadata: Any = None
    ) -> Any:
        self.calls.append(self.name)
        outcome = self.script.pop(0) if self.script else self.default
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


class _FakeWatchCall:
    def __init__(self, conn: _FakeConnection, script: list[Any]) -> None:
        self.conn, self.script = conn, script

    async def write(self, request: rpc_pb2.WatchRequest) -> None:
        self.conn.watch_starts.append(request.create_request.start_revision)

    async def read(self) -> Any:
        if not self.script:
            await asyncio.Event().wait()
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> bool:
        return True


class _FakeConnection:
    """Stands in for endpoints.Connection: scripted KV/Maintenance/Watch, a ready flag."""

    def __init__(self, address: str, member_id: int, leader_id: int, *, ready: bool = True):
        self.address, self._ready = address, ready
        self.calls: list[str] = []
        self.put_script: list[Any] = []
        self.range_script: list[Any] = []
        self.txn_script: list[Any] = []
        self.watch_scripts: list[list[Any]] = []
        self.watch_starts: list[int] = []
        header = rpc_pb2.ResponseHeader(member_id=member_id, revision=7)
        status = rpc_pb2.StatusResponse(header=header, leader=leader_id)
        self.kv = type("KV", (), {})()
        self.kv.Put = _FakeUnary(
            self.calls, "Put", self.put_script, rpc_pb2.PutResponse(header=header)
        )
        self.kv.Range = _FakeUnary(
            self.calls, "Range", self.range_script, rpc_pb2.RangeResponse(header=header)
        )
        self.kv.Txn = _FakeUnary(
            self.calls, "Txn", self.txn_script, rpc_pb2.TxnResponse(header=header)
        )
        self.maintenance = type("M", (), {})()
        self.maintenance.Status = _FakeUnary([], "Status", [], status)
        self.watch = type("W", (), {})()
        self.watch.Watch = lambda metadata=None: _FakeWatchCall(self, self.watch_scripts.pop(0))

    async def ready(self, timeout: float) -> bool:
        if not self._ready:
            self.calls.append("not-ready")
        return self._ready

    async def failure(self, timeout: float = 0.2) -> str | None:
        return None if self._ready else "Failed to connect to remote host: Connection refused"

    async def close(self) -> None:
        pass


def _fake_client(*conns: _FakeConnection, timeout: float = 1.0) -> StoreClient:
    by_address = {c.address: c for c in conns}
    return StoreClient(list(by_address), timeout=timeout, connect=by_address.__getitem__)  # type: ignore[arg-type]


def _pair(*, a_ready: bool = True) -> tuple[_FakeConnection, _FakeConnection]:
    """Two endpoints; b (listed second) is the leader, so writes try b first."""
    return _FakeConnection("a", 1, 2, ready=a_ready), _FakeConnection("b", 2, 2)


@pytest.mark.parametrize(
    ("code", "details", "mutating", "verdict"),
    [
        (
            grpc.StatusCode.UNAVAILABLE,
            "failed to connect to all addresses; ...",
            True,
            Verdict.RETRY,
        ),
        (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader", True, Verdict.RETRY),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: too many requests", True, Verdict.RETRY),
        (grpc.StatusCode.UNAVAILABLE, "Socket closed", True, Verdict.AMBIGUOUS),
        (grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out", True, Verdict.AMBIGUOUS),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", True, Verdict.AMBIGUOUS),
        (grpc.StatusCode.UNKNOWN, "boom", True, Verdict.AMBIGUOUS),
        (grpc.StatusCode.INVALID_ARGUMENT, "bad", True, Verdict.FAIL),
        (grpc.StatusCode.UNAVAILABLE, "Socket closed", False, Verdict.RETRY),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "", False, Verdict.RETRY),
        (
            grpc.StatusCode.OUT_OF_RANGE,
            "mvcc: required revision has been compacted",
            False,
            Verdict.FAIL,
        ),
    ],
)
def test_retry_policy_table(
    code: grpc.StatusCode, details: str, mutating: bool, verdict: Verdict
) -> None:
    assert classify(code, details, mutating=mutating) is verdict


async def test_write_after_send_failure_is_ambiguous_and_not_retried() -> None:
    a, b = _pair()
    b.put_script.append(_rpc_error(grpc.StatusCode.UNAVAILABLE, "Socket closed"))
    async with _fake_client(a, b) as c:
        with pytest.raises(AmbiguousWriteError):
            await c.put("k", b"v")
    assert b.calls == ["Put"] and a.calls == []


async def test_write_deadline_is_ambiguous() -> None:
    a, b = _pair()
    b.put_script.append(_rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
    async with _fake_client(a, b) as c:
        with pytest.raises(AmbiguousWriteError):
            await c.put("k", b"v")
    assert a.calls == []


@pytest.mark.parametrize(
    "details", ["failed to connect to all addresses; Connection refused", "etcdserver: no leader"]
)
async def test_write_never_proposed_is_retried_on_next_endpoint(details: str) -> None:
    a, b = _pair()
    b.put_script.append(_rpc_error(grpc.StatusCode.UNAVAILABLE, details))
    async with _fake_client(a, b) as c:
        revision, _ = await c.put("k", b"v")
        assert revision == 7 and c.last_endpoint == "a"
    assert b.calls == ["Put"] and a.calls == ["Put"]


async def test_write_skips_an_endpoint_that_never_connected() -> None:
    a, b = _FakeConnection("a", 1, 1, ready=False), _FakeConnection("b", 2, 1)
    async with _fake_client(a, b) as c:
        await c.put("k", b"v")
        assert c.last_endpoint == "b"
    assert a.calls.count("Put") == 0 and b.calls == ["Put"]


async def test_definite_errors_are_translated_not_retried() -> None:
    a, b = _pair()
    b.put_script.append(
        _rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided")
    )
    async with _fake_client(a, b) as c:
        with pytest.raises(InvalidArgumentError):
            await c.put("", b"v")
    assert a.calls == []


async def test_reads_and_read_only_txns_retry_after_any_unavailable() -> None:
    a, b = _pair()
    a.range_script.append(_rpc_error(grpc.StatusCode.UNAVAILABLE, "Socket closed"))
    b.txn_script.append(_rpc_error(grpc.StatusCode.UNAVAILABLE, "Socket closed"))
    async with _fake_client(a, b) as c:
        assert await c.get("k") is None
        assert c.last_endpoint == "b"
        await c.txn([Compare.version("k") == 0], [Op.get("k")])
        assert c.last_endpoint == "a"
        b.txn_script.append(_rpc_error(grpc.StatusCode.UNAVAILABLE, "Socket closed"))
        with pytest.raises(AmbiguousWriteError):
            await c.txn([Compare.version("k") == 0], [Op.put("k", b"v")])


async def test_unavailable_when_no_endpoint_ever_connects() -> None:
    a, b = _FakeConnection("a", 1, 0, ready=False), _FakeConnection("b", 2, 0, ready=False)
    async with _fake_client(a, b, timeout=0.3) as c:
        with pytest.raises(UnavailableError):
            await c.put("k", b"v")


def _watch_response(*revisions: int, created: bool = False, **extra: Any) -> rpc_pb2.WatchResponse:
    events = [
        kv_pb2.Event(kv=kv_pb2.KeyValue(key=b"/k", mod_revision=r, value=str(r).encode()))
        for r in revisions
    ]
    header = rpc_pb2.ResponseHeader(revision=max(revisions, default=10))
    return rpc_pb2.WatchResponse(header=header, created=created, events=events, **extra)


async def test_watch_resumes_without_gaps_or_duplicates() -> None:
    a, b = _pair()
    a.watch_scripts.append(
        [
            _watch_response(created=True),
            _watch_response(11, 12),
            _watch_response(13),
            _rpc_error(grpc.StatusCode.UNAVAILABLE, "Socket closed"),
        ]
    )
    b.watch_scripts.append(
        [
            _watch_response(created=True),
            _watch_response(12, 13, 14),
            _watch_response(canceled=True, cancel_reason="slow watcher"),
        ]
    )
    b.watch_scripts.append([_watch_response(created=True), _watch_response(15)])
    seen: list[int] = []
    async with _fake_client(a, b) as c, c.watch("/k", start_revision=11) as w:
        async with asyncio.timeout(5):
            async for batch in w:
                seen += [e.revision for e in batch.events]
                if seen[-1] == 15:
                    break
    assert seen == [11, 12, 13, 14, 15]
    assert a.watch_starts == [11] and b.watch_starts == [14, 15]


async def test_watch_compacted_raises() -> None:
    a, b = _pair()
    a.watch_scripts.append(
        [_watch_response(created=True), _watch_response(canceled=True, compact_revision=9)]
    )
    async with _fake_client(a, b) as c:
        with pytest.raises(CompactedError) as info:
            async for _ in c.watch("/k", start_revision=3):
                pass
    assert info.value.compact_revision == 9


async def test_watch_progress_notification_advances_the_resume_point() -> None:
    a, b = _pair()
    a.watch_scripts.append(
        [
            _watch_response(created=True),
            _watch_response(11),
            rpc_pb2.WatchResponse(header=rpc_pb2.ResponseHeader(revision=20)),
            _rpc_error(grpc.StatusCode.UNAVAILABLE, "Socket closed"),
        ]
    )
    b.watch_scripts.append([_watch_response(created=True), _watch_response(21)])
    batches = []
    async with _fake_client(a, b) as c, c.watch("/k", start_revision=11, progress_notify=True) as w:
        async with asyncio.timeout(5):
            async for batch in w:
                batches.append(([e.revision for e in batch.events], batch.revision))
                if len(batches) == 3:
                    break
        assert w.last_revision == 21
    assert batches == [([11], 11), ([], 20), ([21], 21)]
    assert b.watch_starts == [21]
