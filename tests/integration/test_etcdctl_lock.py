"""``etcdctl lock`` and ``etcdctl elect`` (Debian's 3.4), on etcd 3.4 and on Mizzen.

etcdctl 3.4 does not call the Lock and Election services: it runs etcd's
client library (clientv3/concurrency) over KV, Lease and Watch. Its keys are
the services' keys (``<name>/<lease id in hex>``), so each test also mixes
etcdctl with the services, which must queue behind each other. Every test runs
against both stores, so what it expects is what etcd does.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator

import grpc
import pytest
from etcd_differential import Pair
from test_etcdctl_compat import Etcdctl, Stream, eventually

from protos import (
    rpc_pb2,
    rpc_pb2_grpc,
    v3election_pb2,
    v3election_pb2_grpc,
    v3lock_pb2,
    v3lock_pb2_grpc,
)

pytestmark = [
    pytest.mark.compat,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        shutil.which("etcdctl") is None, reason="needs Debian etcd-client (etcdctl)"
    ),
]

WAIT = 10.0  # seconds: bound on every wait


class Services:
    """Lock, Election and Lease stubs on one member (plain, blocking gRPC)."""

    def __init__(self, endpoint: str) -> None:
        self.channel = grpc.insecure_channel(endpoint)
        self.lock = v3lock_pb2_grpc.LockStub(self.channel)
        self.election = v3election_pb2_grpc.ElectionStub(self.channel)
        self.lease = rpc_pb2_grpc.LeaseStub(self.channel)

    def grant(self) -> int:
        return int(self.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=30), timeout=WAIT).ID)


@pytest.fixture(params=["etcd", "mizzen"])
def side(request: pytest.FixtureRequest, pair: Pair) -> Iterator[tuple[Etcdctl, Services]]:
    store = getattr(pair, request.param)
    services = Services(store.cluster.endpoint(0))
    try:
        yield Etcdctl(store.endpoints()), services
    finally:
        services.channel.close()


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    return f"/etcdctl-lock/{request.node.name}"


def _keys(ctl: Etcdctl, name: str) -> list[str]:
    return ctl.out("get", "--prefix", "--keys-only", name + "/")[::2]


def _queued(ctl: Etcdctl, name: str, n: int) -> None:
    """Wait until n contenders have their keys under name (the last one is waiting)."""
    eventually(lambda: len(_keys(ctl, name)) == n, WAIT, f"{n} keys under {name}/")


def test_etcdctl_lock_holds_then_a_second_runs_its_command(
    side: tuple[Etcdctl, Services], name: str
) -> None:
    ctl, _ = side
    with ctl.stream("lock", name) as holder:
        key = holder.line()
        assert re.fullmatch(re.escape(name) + r"/[0-9a-f]+", key), key
        assert _keys(ctl, name) == [key]
        with ctl.stream("lock", name, "--", "sh", "-c", "echo ran $ETCD_LOCK_KEY") as second:
            _queued(ctl, name, 2)
            assert second.proc.poll() is None  # still waiting: the holder holds
            holder.close()  # SIGTERM: etcdctl unlocks
            ran = second.line()
            assert ran.startswith(f"ran {name}/") and ran != f"ran {key}"
            assert second.proc.wait(timeout=WAIT) == 0
    assert _keys(ctl, name) == []


def test_etcdctl_lock_and_the_lock_service_queue_behind_each_other(
    side: tuple[Etcdctl, Services], name: str
) -> None:
    ctl, svc = side
    lease = svc.grant()
    held = svc.lock.Lock(v3lock_pb2.LockRequest(name=name.encode(), lease=lease), timeout=WAIT)
    with ctl.stream("lock", name, "--", "echo", "ran") as waiting:
        _queued(ctl, name, 2)
        assert waiting.proc.poll() is None
        svc.lock.Unlock(v3lock_pb2.UnlockRequest(key=held.key), timeout=WAIT)
        assert waiting.line() == "ran"
        assert waiting.proc.wait(timeout=WAIT) == 0
    with ctl.stream("lock", name) as holder:
        key = holder.line()
        pending = svc.lock.Lock.future(
            v3lock_pb2.LockRequest(name=name.encode(), lease=lease), timeout=WAIT * 2
        )
        _queued(ctl, name, 2)
        assert not pending.done()
        holder.close()
        got = pending.result(timeout=WAIT)
        assert got.key.decode() != key and got.key.decode() in _keys(ctl, name)
    svc.lock.Unlock(v3lock_pb2.UnlockRequest(key=got.key), timeout=WAIT)


def _observed(observer: Stream) -> tuple[str, str]:
    key, value = observer.lines(2)
    return key, value


def test_etcdctl_elect_and_observe_with_the_election_service(
    side: tuple[Etcdctl, Services], name: str
) -> None:
    ctl, svc = side
    who = name.encode()
    with ctl.stream("elect", name, "first") as leader, ctl.stream("elect", "-l", name) as watch:
        key, value = leader.lines(2)
        assert value == "first" and key.startswith(name + "/")
        now = svc.election.Leader(v3election_pb2.LeaderRequest(name=who), timeout=WAIT)
        assert (now.kv.key.decode(), now.kv.value) == (key, b"first")
        assert _observed(watch) == (key, "first")
        lease = svc.grant()
        pending = svc.election.Campaign.future(
            v3election_pb2.CampaignRequest(name=who, lease=lease, value=b"second"),
            timeout=WAIT * 2,
        )
        _queued(ctl, name, 2)
        assert not pending.done()
        leader.close()  # SIGTERM: etcdctl resigns
        won = pending.result(timeout=WAIT).leader
        assert _observed(watch) == (won.key.decode(), "second")
        svc.election.Proclaim(
            v3election_pb2.ProclaimRequest(leader=won, value=b"third"), timeout=WAIT
        )
        assert _observed(watch) == (won.key.decode(), "third")
        svc.election.Resign(v3election_pb2.ResignRequest(leader=won), timeout=WAIT)
    assert _keys(ctl, name) == []
