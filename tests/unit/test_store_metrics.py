"""Store metrics: health verdict, snapshot timing, the scrape-time collector, the interceptor.

The collector is fed by a fake node built from the real parts it reads (a
StateMachine, a Batcher over a fake Raft, a WatchHub), so what is checked is
what a scrape of a real node reports.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, cast

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from protos import rpc_pb2
from store.batcher import SUCCESS, Batcher
from store.metrics import (
    MetricsHttpServer,
    RaftFacts,
    SnapshotTimer,
    StoreMetrics,
    serving,
)
from store.node import StoreNode
from store.state_machine import Event, StateMachine
from store.watch_hub import WatchHub, WatchStream

HEALTHY = RaftFacts(
    term=3,
    is_leader=True,
    has_leader=True,
    has_quorum=True,
    commit_index=40,
    applied_index=40,
    leader_commit_index=40,
    log_entries=40,
)


class StepClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- health ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (HEALTHY, True),
        (replace(HEALTHY, has_leader=False), False),
        (replace(HEALTHY, has_quorum=False), False),
        (replace(HEALTHY, leader_commit_index=None), False),
        (replace(HEALTHY, is_leader=False, applied_index=30), True),  # within the slack
        (replace(HEALTHY, is_leader=False, applied_index=29), False),  # beyond it
    ],
)
def test_serving_needs_leader_quorum_and_caught_up(facts: RaftFacts, expected: bool) -> None:
    assert serving(facts, slack=10) is expected


def test_snapshot_timer_measures_busy_periods() -> None:
    clock = StepClock()
    timer = SnapshotTimer(clock)
    assert timer.sample(False) is None
    assert timer.sample(True) is None
    clock.now += 1.5
    assert timer.sample(True) is None  # still writing
    clock.now += 0.5
    assert timer.sample(False) == pytest.approx(2.0)
    assert timer.sample(False) is None  # reported once
    assert timer.sample(True) is None
    clock.now += 0.25
    assert timer.sample(False) == pytest.approx(0.25)


# -- collector --------------------------------------------------------------------------


class ListSink:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, resp: bytes) -> None:
        self.sent.append(resp)

    def pending(self) -> int:
        return len(self.sent)


@dataclass
class FakeNode:
    """The attributes of StoreNode that StoreMetrics reads, over real store parts."""

    clock: StepClock

    def __post_init__(self) -> None:
        self.sm = StateMachine()
        self.submitted: list[tuple[tuple[Any, ...], Callable[[Any, Any], None]]] = []
        self.batcher = Batcher(self._submit, clock=self.clock)
        self.hub = WatchHub(self._history, self._header, clock=self.clock)
        self.hub.delivered = self.sm.revision
        self.facts = HEALTHY
        self.leader_changes_seen = 2
        self.snapshotting = False
        self.tick_hooks: list[Callable[[], None]] = []

    def _submit(self, batch: tuple[Any, ...], callback: Callable[[Any, Any], None]) -> None:
        self.submitted.append((batch, callback))

    def apply_next(self) -> None:
        batch, callback = self.submitted.pop(0)
        before = self.sm.revision
        results = self.sm.apply_batch(*batch)
        self.hub.on_events(self.sm.events_after(before))
        callback(results, SUCCESS)

    def _history(self, after: int) -> tuple[list[Event], int]:
        return list(self.sm.events_after(after)), self.sm.compacted

    def _header(self, rev: int) -> rpc_pb2.ResponseHeader:
        return rpc_pb2.ResponseHeader(revision=rev)

    def raft_facts(self) -> RaftFacts:
        return self.facts

    def read(self, fn: Callable[[StateMachine], Any]) -> Any:
        return fn(self.sm)

    def file_sizes(self) -> tuple[int, int]:
        return 4096, 512

    def snapshot_in_progress(self) -> bool:
        return self.snapshotting

    def add_raft_tick_hook(self, hook: Callable[[], None]) -> None:
        self.tick_hooks.append(hook)


def make(clock: StepClock | None = None) -> tuple[FakeNode, StoreMetrics]:
    clock = clock or StepClock()
    node = FakeNode(clock)
    metrics = StoreMetrics(cast(StoreNode, node), clock=clock)
    metrics.attach()
    return node, metrics


def value(metrics: StoreMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def put(key: bytes) -> tuple[str, bytes]:
    return ("put", rpc_pb2.PutRequest(key=key, value=b"v").SerializeToString())


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_collector_reports_raft_state_and_batching() -> None:
    node, metrics = make()
    assert value(metrics, "mizzen_store_raft_term") == 3
    assert value(metrics, "mizzen_store_is_leader") == 1
    assert value(metrics, "mizzen_store_raft_applied_index") == 40
    assert value(metrics, "mizzen_store_leader_changes_seen_total") == 2
    assert value(metrics, "mizzen_store_journal_bytes") == 4096
    assert value(metrics, "mizzen_store_serving") == 0  # until the health loop says so
    metrics.serving = True
    assert value(metrics, "mizzen_store_serving") == 1

    first = asyncio.create_task(node.batcher.propose(put(b"/a"), 5))
    await settle()
    rest = [asyncio.create_task(node.batcher.propose(put(b"/k%d" % i), 5)) for i in range(9)]
    barrier = asyncio.create_task(node.batcher.propose(("barrier",), 5))
    await settle()
    assert value(metrics, "mizzen_store_proposals_pending") == 11
    node.clock.now += 0.25
    node.apply_next()
    await settle()
    node.clock.now += 0.5
    node.apply_next()
    await asyncio.gather(first, *rest, barrier)

    assert value(metrics, "mizzen_store_proposals_total", op="put") == 10
    assert value(metrics, "mizzen_store_proposals_total", op="barrier") == 1
    assert value(metrics, "mizzen_store_raft_entries_proposed_total") == 2
    assert value(metrics, "mizzen_store_proposals_pending") == 0
    assert value(metrics, "mizzen_store_keys") == 10
    assert value(metrics, "mizzen_store_revision") == 11
    # batch 1 proposed at t=100 and applied at t=100.25; batch 2 proposed then, applied at 100.75
    assert value(metrics, "mizzen_store_proposal_duration_seconds_count") == 2
    assert value(metrics, "mizzen_store_proposal_duration_seconds_sum") == pytest.approx(0.75)


def test_collector_counts_watchers_and_events() -> None:
    node, metrics = make()
    sink = ListSink()
    stream = WatchStream(sink)
    node.hub.create(stream, rpc_pb2.WatchCreateRequest(key=b"/w", range_end=b"/x"))
    assert value(metrics, "mizzen_store_watchers") == 1
    before = node.sm.revision
    node.sm.apply(put(b"/w/1"))
    node.sm.apply(put(b"/w/2"))
    node.hub.on_events(node.sm.events_after(before))
    assert value(metrics, "mizzen_store_watch_events_sent_total") == 2
    node.hub.remove_stream(stream)
    assert value(metrics, "mizzen_store_watchers") == 0


def test_snapshot_duration_is_observed_from_raft_ticks() -> None:
    node, metrics = make()
    (tick,) = node.tick_hooks
    tick()
    node.snapshotting = True
    tick()
    node.clock.now += 3.0
    tick()
    node.snapshotting = False
    tick()
    assert value(metrics, "mizzen_store_snapshot_duration_seconds_count") == 1
    assert value(metrics, "mizzen_store_snapshot_duration_seconds_sum") == pytest.approx(3.0)


def test_exposition_parses_and_has_the_documented_series() -> None:
    _, metrics = make()
    families = {f.name for f in text_string_to_metric_families(metrics.exposition().decode())}
    for name in (
        "mizzen_store_raft_term",
        "mizzen_store_raft_commit_index",
        "mizzen_store_proposals",
        "mizzen_store_raft_entries_proposed",
        "mizzen_store_grpc_request_duration_seconds",
        "mizzen_store_proposal_duration_seconds",
        "mizzen_store_snapshot_duration_seconds",
        "mizzen_store_watchers",
        "mizzen_store_watch_events_sent",
        "mizzen_store_slow_watchers_cancelled",
        "mizzen_store_keys",
        "mizzen_store_journal_bytes",
        "process_resident_memory_bytes",
    ):
        assert name in families, name


def test_two_nodes_in_one_process_do_not_collide() -> None:
    _, a = make()
    _, b = make()
    a.proposal_duration.observe(1.0)
    assert value(a, "mizzen_store_proposal_duration_seconds_count") == 1
    assert value(b, "mizzen_store_proposal_duration_seconds_count") == 0


# -- interceptor ----------------------------------------------------------------------------


class CallDetails(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata: tuple[Any, ...] = ()


class FakeContext:
    def __init__(self) -> None:
        self._code: grpc.StatusCode | None = None

    def code(self) -> grpc.StatusCode | None:
        return self._code


async def call(handler: grpc.RpcMethodHandler) -> Any:
    behavior: Any = handler.unary_unary
    return await behavior(b"req", FakeContext())


async def test_interceptor_times_unary_calls_and_counts_failures() -> None:
    _, metrics = make()
    interceptor = metrics.interceptor()
    lookups: list[str] = []

    async def put_ok(request: Any, context: Any) -> str:
        return "done"

    async def put_bad(request: Any, context: FakeContext) -> str:
        context._code = grpc.StatusCode.INVALID_ARGUMENT
        raise RuntimeError("aborted")

    behaviors = {"/etcdserverpb.KV/Put": put_ok, "/mizzen.v1.Objects/Create": put_bad}

    async def continuation(details: Any) -> grpc.RpcMethodHandler:
        lookups.append(details.method)
        return grpc.unary_unary_rpc_method_handler(behaviors[details.method])

    for _ in range(3):
        handler = await interceptor.intercept_service(
            continuation, CallDetails("/etcdserverpb.KV/Put")
        )
        assert await call(handler) == "done"
    handler = await interceptor.intercept_service(
        continuation, CallDetails("/mizzen.v1.Objects/Create")
    )
    with pytest.raises(RuntimeError):
        await call(handler)

    assert lookups == ["/etcdserverpb.KV/Put", "/mizzen.v1.Objects/Create"]  # cached per method
    hist = "mizzen_store_grpc_request_duration_seconds_count"
    assert value(metrics, hist, service="KV", method="Put") == 3
    assert value(metrics, hist, service="Objects", method="Create") == 1
    failed = "mizzen_store_grpc_requests_failed_total"
    assert value(metrics, failed, service="Objects", method="Create", code="INVALID_ARGUMENT") == 1
    assert value(metrics, failed, service="KV", method="Put", code="INVALID_ARGUMENT") is None


async def test_interceptor_leaves_streams_alone() -> None:
    _, metrics = make()

    async def watch(request_iterator: Any, context: Any) -> None:
        return None

    stream = grpc.stream_stream_rpc_method_handler(watch)

    async def continuation(details: Any) -> grpc.RpcMethodHandler:
        return stream

    got = await metrics.interceptor().intercept_service(
        continuation, CallDetails("/etcdserverpb.Watch/Watch")
    )
    assert got is stream


# -- HTTP ---------------------------------------------------------------------------------------


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_http_server_serves_metrics_and_health() -> None:
    _, metrics = make()
    http = MetricsHttpServer("127.0.0.1:0", metrics)
    http.start()
    try:
        base = f"http://127.0.0.1:{http.port}"
        status, body = fetch(base + "/metrics")
        assert status == 200 and b"mizzen_store_raft_term 3.0" in body
        assert fetch(base + "/healthz")[0] == 503
        metrics.serving = True
        assert fetch(base + "/healthz") == (200, b"ok\n")
        assert fetch(base + "/other")[0] == 404
    finally:
        http.stop()


def test_http_server_rejects_a_bad_address() -> None:
    _, metrics = make()
    with pytest.raises(ValueError):
        MetricsHttpServer("9100", metrics)
