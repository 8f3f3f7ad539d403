"""Store /metrics and health against a real 3-node Mizzen store.

Each member serves /metrics on its own port and snapshots every 50 entries.
The tests scrape, act through the etcd API, scrape again and check the series
moved. The quorum test runs last: it kills two members, expects the survivor
to report NOT_SERVING (gRPC health and /healthz), restarts them and expects
SERVING again.
"""

from __future__ import annotations

import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from mizzen.testing.local_cluster import HOST, MizzenCluster, _Member, free_ports
from protos import rpc_pb2, rpc_pb2_grpc

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class MetricsCluster(MizzenCluster):
    """MizzenCluster whose member i also serves /metrics on metrics_ports[i]."""

    def __init__(self, n: int, base_dir: Path, **kw: Any) -> None:
        self.metrics_ports = free_ports(n)
        super().__init__(n, base_dir, **kw)

    def _argv(self, m: _Member) -> list[str]:
        port = self.metrics_ports[m.index]
        return [*super()._argv(m), "--metrics-listen", f"{HOST}:{port}"]

    def metrics_url(self, i: int, path: str = "/metrics") -> str:
        return f"http://{HOST}:{self.metrics_ports[i]}{path}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricsCluster]:
    base: Path = tmp_path_factory.mktemp("metrics")
    # a snapshot after 50 log entries, so the 100 Puts below make one
    args = ["--fsync", "never", "--snapshot-entries", "50"]
    with MetricsCluster(3, base, extra_args=args) as c:
        yield c


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def scrape(cluster: MetricsCluster, i: int) -> Samples:
    status, body = http_get(cluster.metrics_url(i))
    assert status == 200, body
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for(what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def health(endpoint: str) -> int | None:
    try:
        with grpc.insecure_channel(endpoint) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="etcdserverpb.KV"), timeout=1.0
            )
            return int(reply.status)
    except grpc.RpcError:
        return None


def test_writes_move_proposals_entries_and_latency(cluster: MetricsCluster) -> None:
    leader = cluster.leader_index()
    before = scrape(cluster, leader)
    with grpc.insecure_channel(cluster.endpoint(leader)) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        for i in range(100):
            kv.Put(rpc_pb2.PutRequest(key=b"/metrics/k%03d" % i, value=b"v"), timeout=10)
        kv.Range(rpc_pb2.RangeRequest(key=b"/metrics/k000"), timeout=10)
    after = scrape(cluster, leader)

    def delta(name: str, **labels: str) -> float:
        return get(after, name, **labels) - get(before, name, **labels)

    assert get(after, "mizzen_store_is_leader") == 1
    # serving needs a quorum *connected right now*: on a loaded machine a
    # heartbeat can be late for a moment, so allow it a few seconds
    deadline = time.monotonic() + 5
    while get(scrape(cluster, leader), "mizzen_store_serving") != 1:
        assert time.monotonic() < deadline, "the leader never reported serving"
        time.sleep(0.2)
    assert get(after, "mizzen_store_raft_term") >= 1
    assert delta("mizzen_store_proposals_total", op="put") == 100
    entries = delta("mizzen_store_raft_entries_proposed_total")
    # every entry carries at least one proposal: the 100 puts, the barrier, and
    # whatever else this member proposed meanwhile (its member record at boot)
    proposals = sum(
        value - get(before, name, **dict(labels))
        for (name, labels), value in after.items()
        if name == "mizzen_store_proposals_total"
    )
    assert 1 <= entries <= proposals
    assert delta("mizzen_store_raft_commit_index") >= entries
    put_count = "mizzen_store_grpc_request_duration_seconds_count"
    assert delta(put_count, service="KV", method="Put") == 100
    assert delta(put_count, service="KV", method="Range") == 1
    assert delta("mizzen_store_proposal_duration_seconds_count") == entries
    assert get(after, "mizzen_store_keys") >= 100
    assert get(after, "mizzen_store_journal_bytes") > 0
    assert get(after, "mizzen_store_leader_changes_seen_total") >= 1

    commit = get(after, "mizzen_store_raft_commit_index")
    for i in range(len(cluster)):

        def caught_up(i: int = i) -> bool:
            return get(scrape(cluster, i), "mizzen_store_raft_applied_index") >= commit

        wait_for(f"member {i} applies up to {commit}", caught_up)
        # the verdict is recomputed every HEALTH_INTERVAL (0.5 s): the one
        # /healthz shows may predate the catch-up just observed

        def healthy(i: int = i) -> bool:
            return http_get(cluster.metrics_url(i, "/healthz")) == (200, b"ok\n")

        wait_for(f"member {i} /healthz to say ok", healthy)
        assert health(cluster.endpoint(i)) == SERVING
    wait_for(
        "a snapshot to be timed",
        lambda: get(scrape(cluster, leader), "mizzen_store_snapshot_duration_seconds_count") >= 1,
    )


def test_watch_moves_watchers_and_events_sent(cluster: MetricsCluster) -> None:
    member = (cluster.leader_index() + 1) % len(cluster)  # a follower: watches work anywhere
    key = b"/metrics/watched"
    baseline = scrape(cluster, member)
    requests: queue.Queue[rpc_pb2.WatchRequest | None] = queue.Queue()
    responses: queue.Queue[rpc_pb2.WatchResponse] = queue.Queue()

    def request_iter() -> Iterator[rpc_pb2.WatchRequest]:
        while (req := requests.get()) is not None:
            yield req

    with grpc.insecure_channel(cluster.endpoint(member)) as ch:
        call = rpc_pb2_grpc.WatchStub(ch).Watch(request_iter(), timeout=30)

        def pump() -> None:
            try:
                for resp in call:
                    responses.put(resp)
            except grpc.RpcError:
                pass

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            requests.put(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=key)))
            assert responses.get(timeout=10).created
            watchers = get(baseline, "mizzen_store_watchers") + 1
            assert get(scrape(cluster, member), "mizzen_store_watchers") == watchers
            kv = rpc_pb2_grpc.KVStub(ch)
            for n in range(3):
                kv.Put(rpc_pb2.PutRequest(key=key, value=b"%d" % n), timeout=10)
            got = 0
            while got < 3:
                got += len(responses.get(timeout=10).events)
            sent = "mizzen_store_watch_events_sent_total"
            assert get(scrape(cluster, member), sent) - get(baseline, sent) == 3
        finally:
            requests.put(None)
            call.cancel()
            reader.join(timeout=10)
    wait_for(
        "the watcher to go away",
        lambda: get(scrape(cluster, member), "mizzen_store_watchers") == watchers - 1,
    )


def test_health_follows_quorum(cluster: MetricsCluster) -> None:
    survivor = 0
    others = [i for i in range(len(cluster)) if i != survivor]
    wait_for("the survivor to serve", lambda: health(cluster.endpoint(survivor)) == SERVING)
    try:
        for i in others:
            cluster.kill(i)
        wait_for(
            "NOT_SERVING without quorum",
            lambda: health(cluster.endpoint(survivor)) == NOT_SERVING,
            timeout=8,
        )
        assert http_get(cluster.metrics_url(survivor, "/healthz"))[0] == 503
        samples = scrape(cluster, survivor)
        assert get(samples, "mizzen_store_serving") == 0
        assert get(samples, "mizzen_store_has_quorum") == 0
    finally:
        for i in others:
            if not cluster.is_running(i):
                cluster.restart(i)
    wait_for(
        "SERVING after quorum returns",
        lambda: health(cluster.endpoint(survivor)) == SERVING,
        timeout=20,
    )
    assert http_get(cluster.metrics_url(survivor, "/healthz"))[0] == 200
    cluster.leader_index(timeout=15)
    for i in others:

        def serves(i: int = i) -> bool:
            return health(cluster.endpoint(i)) == SERVING

        wait_for(f"member {i} to serve again", serves)
