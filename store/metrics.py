"""What a store node reports about itself: Prometheus metrics and its health verdict.

Two kinds of metrics, chosen by cost:

* state that is cheap to read when scraped (Raft indexes, term, keys, watchers,
  file sizes, counters the batcher and watch hub keep anyway) comes from a
  custom collector that reads the ``StoreNode`` at scrape time: nothing on
  the request path;
* latencies are histograms observed on the path: one observe per unary RPC
  (by a server interceptor), one per applied batch, one per local snapshot.

Everything lives on a dedicated ``CollectorRegistry`` per node, so several
nodes (or tests) in one process never collide. Names start with
``mizzen_store_``; docs/store.md lists them.

The health verdict (``serving``) is a pure function of ``RaftFacts``: a member
serves only when it knows a leader, sees a quorum, and has applied what the
leader last told it was committed (within ``HEALTH_APPLY_SLACK`` entries).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mizzen.metrics_http import MetricsHttpServer as MetricsHttpServer  # re-exported

from .interceptors import UnaryWrappingInterceptor, unary_handler
from .raft_node import RaftFacts as RaftFacts  # re-exported

if TYPE_CHECKING:
    from .node import StoreNode

log = structlog.get_logger("store.metrics")

PREFIX = "mizzen_store_"
HEALTH_APPLY_SLACK = 100  # log entries a member may be behind the leader's commit and serve
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SNAPSHOT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def serving(facts: RaftFacts, slack: int = HEALTH_APPLY_SLACK) -> bool:
    """True when this member can do its job: a known leader, a quorum, and caught up.

    "Caught up" compares the applied index with the leader's commit index as
    last heard (a follower's own commit index can lag the leader's as much as
    its applied index does, so it would hide a member that is catching up).
    """
    if not (facts.has_leader and facts.has_quorum) or facts.leader_commit_index is None:
        return False
    return facts.applied_index + slack >= facts.leader_commit_index


class SnapshotTimer:
    """Turns samples of "a snapshot is being written" into snapshot durations.

    Sampled on every Raft tick, so a duration is exact to within one tick.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._started: float | None = None

    def sample(self, busy: bool) -> float | None:
        """Record one sample; return the duration of a snapshot that just finished."""
        if busy and self._started is None:
            self._started = self._clock()
        elif not busy and self._started is not None:
            took = self._clock() - self._started
            self._started = None
            return took
        return None


class StoreMetrics:
    """The metrics of one store node: hot-path histograms plus a scrape-time collector."""

    def __init__(
        self,
        node: StoreNode,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node
        self.registry = registry or CollectorRegistry(auto_describe=False)
        self.rpc_duration = Histogram(
            PREFIX + "grpc_request_duration_seconds",
            "Time to answer a unary gRPC request, by service and method (count = requests).",
            ["service", "method"],
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self.rpc_failed = Counter(
            PREFIX + "grpc_requests_failed",
            "Unary gRPC requests that ended with a status other than OK, by status code.",
            ["service", "method", "code"],
            registry=self.registry,
        )
        self.proposal_duration = Histogram(
            PREFIX + "proposal_duration_seconds",
            "Time from proposing a log entry (a batch of commands) until this member "
            "applied it: forwarding, replication, commit and apply.",
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self.snapshot_duration = Histogram(
            PREFIX + "snapshot_duration_seconds",
            "Time to write a local Raft snapshot (pysyncobj's forked child), "
            "measured to within one Raft tick.",
            registry=self.registry,
            buckets=SNAPSHOT_BUCKETS,
        )
        self.serving = False
        self._snapshots = SnapshotTimer(clock)
        self.registry.register(NodeCollector(node, lambda: self.serving))
        ProcessCollector(registry=self.registry)

    def attach(self) -> None:
        """Hook into the started node: batch latencies and snapshot timing."""
        self.node.batcher.on_applied = self.proposal_duration.observe
        self.node.add_raft_tick_hook(self._on_raft_tick)

    def _on_raft_tick(self) -> None:  # pysyncobj's tick thread: must never raise
        try:
            took = self._snapshots.sample(self.node.snapshot_in_progress())
            if took is not None:
                self.snapshot_duration.observe(took)
        except Exception:
            log.exception("snapshot_timing_failed")

    def interceptor(self) -> RpcMetricsInterceptor:
        return RpcMetricsInterceptor(self.rpc_duration, self.rpc_failed)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, value=value)


class NodeCollector(Collector):
    """Reads a StoreNode's state when scraped (any thread: only locked or atomic reads)."""

    def __init__(self, node: StoreNode, serving: Callable[[], bool]) -> None:
        self._node = node
        self._serving = serving

    def describe(self) -> list[Metric]:
        return []  # a dedicated registry: no name clashes to detect up front

    def collect(self) -> Iterator[Metric]:
        node = self._node
        raft = node.raft_facts()
        revision, compacted, keys, leases = node.read(
            lambda sm: (sm.revision, sm.compacted, sm.key_count(), len(sm.leases))
        )
        journal, snapshot = node.file_sizes()
        batcher, hub = node.batcher, node.hub
        yield _gauge("raft_term", "Current Raft term.", raft.term)
        yield _gauge("is_leader", "1 if this member is the Raft leader.", raft.is_leader)
        yield _gauge("has_leader", "1 if this member knows a leader.", raft.has_leader)
        yield _gauge("has_quorum", "1 if this member is connected to a majority.", raft.has_quorum)
        yield _gauge("serving", "1 if the gRPC health service reports SERVING.", self._serving())
        yield _gauge("raft_commit_index", "Highest log index known committed.", raft.commit_index)
        yield _gauge("raft_applied_index", "Highest log index applied here.", raft.applied_index)
        yield _gauge(
            "raft_leader_commit_index",
            "The leader's commit index as last heard (-1 before any).",
            -1 if raft.leader_commit_index is None else raft.leader_commit_index,
        )
        yield _gauge(
            "raft_log_entries", "Log entries kept since the last snapshot.", raft.log_entries
        )
        yield _counter(
            "leader_changes_seen",
            "Times this member saw a new leader (sampled every 100 ms).",
            node.leader_changes_seen,
        )
        yield _counter(
            "raft_entries_proposed",
            "Log entries (batches) this member proposed; proposals / entries = batching factor.",
            batcher.batches_proposed,
        )
        proposals = CounterMetricFamily(
            PREFIX + "proposals",
            "Commands this member proposed, by operation (put, delete, txn, barrier, ...).",
            labels=["op"],
        )
        for op, n in sorted(batcher.proposed_by_op.items()):
            proposals.add_metric([op], n)
        yield proposals
        yield _counter(
            "proposal_resends", "Batches proposed again after no answer.", batcher.resends
        )
        yield _gauge(
            "proposals_pending", "Commands queued or in flight, not yet applied.", batcher.pending
        )
        yield _gauge(
            "proposal_queue_bytes",
            "Bytes of writes queued on this member, not yet proposed (bounded).",
            batcher.queued_bytes,
        )
        yield _counter(
            "proposals_refused",
            "Writes refused unproposed because the proposal queue stayed full.",
            batcher.refused,
        )
        yield _gauge("revision", "Current store revision.", revision)
        yield _gauge("compacted_revision", "Revision below which history is gone.", compacted)
        yield _gauge("keys", "Live keys.", keys)
        yield _gauge("leases", "Live leases.", leases)
        yield _gauge("journal_bytes", "Size of the Raft journal file.", journal)
        yield _gauge("snapshot_bytes", "Size of the Raft snapshot file.", snapshot)
        yield _gauge("watchers", "Active watchers (etcd and Objects API).", hub.watcher_count)
        yield _counter("watch_events_sent", "Events sent to watchers.", hub.events_sent)
        yield _counter(
            "slow_watchers_cancelled",
            "Watchers cancelled because their stream fell too far behind.",
            hub.slow_cancelled,
        )


class RpcMetricsInterceptor(UnaryWrappingInterceptor):
    """Times every unary-unary call; streams pass through untouched.

    The wrapped handler is built once per method and cached, so a call costs
    one dict lookup, two clock reads and one histogram observe.
    """

    def __init__(self, duration: Histogram, failed: Counter) -> None:
        super().__init__()
        self._duration = duration
        self._failed = failed

    def wrap(self, method: str, handler: Any) -> grpc.RpcMethodHandler:
        return self._timed(method, handler)

    def _timed(self, full_method: str, handler: Any) -> grpc.RpcMethodHandler:
        service, _, method = full_method.lstrip("/").rpartition("/")
        service = service.rpartition(".")[2]
        observe = self._duration.labels(service, method).observe
        failed = self._failed
        behavior = handler.unary_unary
        clock = time.perf_counter

        async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = clock()
            try:
                return await behavior(request, context)
            except BaseException:
                code = context.code()
                name = code.name if isinstance(code, grpc.StatusCode) else "CANCELLED"
                failed.labels(service, method, name).inc()
                raise
            finally:
                observe(clock() - start)

        return unary_handler(timed, handler)
