"""KV and lease basics, side by side with etcd 3.4 (tests/integration/etcd_differential.py).

These pass today; they keep the differential harness itself honest (a scenario
whose answers differ must fail: see test_the_harness_sees_a_difference).
"""

from __future__ import annotations

import pytest
from etcd_differential import Pair, Trace, assert_same

from protos import rpc_pb2, rpc_pb2_grpc

pytestmark = [pytest.mark.compat, pytest.mark.timeout(120)]


async def kv_basics(trace: Trace) -> None:
    kv = rpc_pb2_grpc.KVStub(trace.channel)
    first = await kv.Put(rpc_pb2.PutRequest(key=trace.key("a"), value=b"1"))
    trace.base = first.header.revision
    trace.record("put a", first)
    await trace.call(
        "put a again", kv.Put(rpc_pb2.PutRequest(key=trace.key("a"), value=b"2", prev_kv=True))
    )
    await trace.call("put b", kv.Put(rpc_pb2.PutRequest(key=trace.key("b"), value=b"3")))
    await trace.call(
        "range prefix",
        kv.Range(rpc_pb2.RangeRequest(key=trace.key(""), range_end=trace.key("~"))),
    )
    await trace.call(
        "range limit 1",
        kv.Range(rpc_pb2.RangeRequest(key=trace.key("a"), range_end=trace.key("z"), limit=1)),
    )
    await trace.call(
        "range count only",
        kv.Range(
            rpc_pb2.RangeRequest(key=trace.key("a"), range_end=trace.key("z"), count_only=True)
        ),
    )
    await trace.call(
        "delete a with prev",
        kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=trace.key("a"), prev_kv=True)),
    )
    await trace.call(
        "put with unknown lease", kv.Put(rpc_pb2.PutRequest(key=trace.key("c"), lease=12345))
    )
    lease = rpc_pb2_grpc.LeaseStub(trace.channel)
    grant = await trace.call("grant", lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=30)))
    assert isinstance(grant, rpc_pb2.LeaseGrantResponse)
    await trace.call(
        "put with lease", kv.Put(rpc_pb2.PutRequest(key=trace.key("d"), lease=grant.ID))
    )
    await trace.call(
        "ttl with keys",
        lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=grant.ID, keys=True)),
        drop=frozenset({"TTL"}),  # the remaining seconds depend on timing
    )
    await trace.call("revoke", lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=grant.ID)))
    await trace.call("range d after revoke", kv.Range(rpc_pb2.RangeRequest(key=trace.key("d"))))


async def test_kv_and_lease_basics_answer_as_etcd(pair: Pair) -> None:
    await pair.same(kv_basics)


def test_the_harness_sees_a_difference() -> None:
    with pytest.raises(AssertionError, match="answered differently"):
        assert_same([("x", {"a": 1})], [("x", {"a": 2})])
