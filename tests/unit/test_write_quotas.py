"""Per-identity write quotas (writes/s and request bytes/s) and the retry-after trailer.

Pure: an injected clock, a fake servicer context; no sleeps.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

import grpc
import pytest

from mizzen import retry_after
from mizzen.cli.errors import UsageError
from mizzen.cli.security_flags import server_security
from mizzen.cli.store_cmd import add_store_parser, check_sizes
from mizzen.security.server_auth import (
    MIB,
    AuthInterceptor,
    Exhausted,
    Identity,
    IdentityLimits,
    Limits,
    TokenBucket,
)
from protos import rpc_pb2

ADMIN = Identity("admin", "admin")
CONTROLLER = Identity("controller", "controller")
NODE_A = Identity("node:na", "node")
NODE_B = Identity("node:nb", "node")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def limits(clock: Clock, **kw: Any) -> IdentityLimits:
    return IdentityLimits(Limits(rate=0, **kw), clock=clock)


def test_a_node_gets_the_node_quota_of_writes_per_second() -> None:
    clock = Clock()
    quotas = limits(clock, node_write_rate=100, node_write_bytes_rate=0)
    for _ in range(200):  # the bucket holds 2 s of the rate
        quotas.write(NODE_A, 100)
    with pytest.raises(Exhausted) as refused:
        quotas.write(NODE_A, 100)
    assert refused.value.retry_after == pytest.approx(0.01)
    assert str(refused.value) == (
        "mizzen: too many requests: node:na exceeded its write quota of 100 writes/s; "
        "retry after 0.010 s"
    )
    quotas.write(NODE_B, 100)  # every identity has its own buckets
    quotas.write(ADMIN, 100)  # and other roles another quota
    clock.now += 0.01
    quotas.write(NODE_A, 100)
    with pytest.raises(Exhausted):
        quotas.write(NODE_A, 100)


def test_bytes_per_second_with_the_wait_until_enough_bytes() -> None:
    clock = Clock()
    quotas = limits(clock, node_write_rate=0, node_write_bytes_rate=MIB)
    quotas.write(NODE_A, 3 * MIB // 2)  # the bucket holds 2 MiB
    with pytest.raises(Exhausted) as refused:
        quotas.write(NODE_A, MIB)
    assert refused.value.retry_after == pytest.approx(0.5)
    assert "write quota of 1 MiB/s; retry after 0.500 s" in str(refused.value)
    clock.now += 0.25
    with pytest.raises(Exhausted) as again:
        quotas.write(NODE_A, MIB)
    assert again.value.retry_after == pytest.approx(0.25)
    clock.now += 0.25
    quotas.write(NODE_A, MIB)


def test_a_refused_write_spends_nothing() -> None:
    clock = Clock()
    quotas = limits(clock, node_write_rate=1, node_write_bytes_rate=MIB)
    quotas.write(NODE_A, 2 * MIB)  # empties the bytes bucket; 1 of 2 writes left
    with pytest.raises(Exhausted, match="of 1 MiB/s"):
        quotas.write(NODE_A, 10)
    clock.now += 0.5  # half a MiB back: the one write left was not spent by the refusal
    quotas.write(NODE_A, 10)
    with pytest.raises(Exhausted, match=re.escape("of 1 writes/s; retry after 0.500 s")):
        quotas.write(NODE_A, 10)


def test_the_longer_wait_of_the_two_buckets_is_given() -> None:
    clock = Clock()
    quotas = limits(clock, node_write_rate=2, node_write_bytes_rate=MIB)
    quotas.write(NODE_A, 2 * MIB)
    quotas.write(NODE_A, 0)
    quotas.write(NODE_A, 0)
    quotas.write(NODE_A, 0)  # 4 writes: the writes bucket (2/s, holds 4) is empty too
    with pytest.raises(Exhausted) as refused:
        quotas.write(NODE_A, MIB)
    assert refused.value.retry_after == pytest.approx(1.0)  # bytes: 1 s, writes: 0.5 s


def test_a_request_larger_than_the_bucket_passes_when_it_is_full() -> None:
    clock = Clock()
    quotas = limits(clock, write_rate=0, write_bytes_rate=100)  # bucket: the 2 MiB minimum
    quotas.write(ADMIN, 3 * MIB)
    with pytest.raises(Exhausted):
        quotas.write(ADMIN, 1)


def test_zero_turns_a_quota_off() -> None:
    clock = Clock()
    quotas = limits(clock, write_rate=0, write_bytes_rate=0)
    for _ in range(10_000):
        quotas.write(CONTROLLER, MIB)


def test_the_default_quotas() -> None:
    default = Limits()
    assert default.write_quota(NODE_A).writes == 100
    assert default.write_quota(NODE_A).bytes == MIB
    assert default.write_quota(CONTROLLER).writes == 2000
    assert default.write_quota(ADMIN).bytes == 32 * MIB


def test_the_request_rate_limit_says_when_to_retry() -> None:
    clock = Clock()
    quotas = IdentityLimits(Limits(rate=4, burst=1), clock=clock)
    quotas.request(ADMIN)
    with pytest.raises(Exhausted, match="rate limit exceeded for admin") as refused:
        quotas.request(ADMIN)
    assert refused.value.retry_after == pytest.approx(0.25)
    assert str(refused.value).endswith("; retry after 0.250 s")


def test_token_bucket_costs() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=20, clock=clock)
    assert bucket.wait_for(15) == 0
    bucket.spend(15)
    assert bucket.wait_for(15) == pytest.approx(1.0)
    assert not bucket.take(15)
    clock.now += 1
    assert bucket.take(15)


def test_retry_after_trailer() -> None:
    assert retry_after.trailer(0.5) == (("retry-after", "0.500"),)
    assert retry_after.seconds_text(0.0001) == "0.001"  # never 0: it means "wait"
    assert retry_after.seconds_text(1.2341) == "1.235"  # rounded up
    assert retry_after.parse((("other", "x"), ("retry-after", "0.25"))) == 0.25
    assert retry_after.parse(None) is None
    assert retry_after.parse((("retry-after", "soon"),)) is None
    assert retry_after.parse((("retry-after", "-1"),)) is None
    assert retry_after.parse((("retry-after", "nan"),)) is None


# ------------------------------------------------------------ the interceptor


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str, Any] | None = None

    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: Any = ()) -> None:
        self.aborted = (code, details, trailing_metadata)
        raise Aborted


class AllowAll:
    async def authorize(self, identity: Identity, method: str, request: Any) -> None:
        return None

    def watch_delta(self, method: str, request: Any) -> int:
        return 0

    def watch_answer(self, method: str, response: Any) -> tuple[str, int] | None:
        return None


async def admit(interceptor: AuthInterceptor, method: str, request: Any, ctx: Any) -> None:
    await interceptor._admit(method, request, ctx, NODE_A)


PUT = "/etcdserverpb.KV/Put"
RANGE = "/etcdserverpb.KV/Range"


async def test_the_interceptor_refuses_writes_over_quota_with_a_retry_after_trailer() -> None:
    clock = Clock()
    interceptor = AuthInterceptor(
        AllowAll(),
        limits=Limits(rate=0, node_write_rate=0, node_write_bytes_rate=MIB),
        write_methods=frozenset({PUT}),
        clock=clock,
    )
    big = rpc_pb2.PutRequest(key=b"k", value=b"v" * (2 * MIB))  # the whole bucket
    ctx = FakeContext()
    await admit(interceptor, PUT, big, ctx)
    assert ctx.aborted is None
    for _ in range(50):  # reads are not writes: no quota
        await admit(interceptor, RANGE, rpc_pb2.RangeRequest(key=b"k"), ctx)
    with pytest.raises(Aborted):
        await admit(interceptor, PUT, rpc_pb2.PutRequest(key=b"k", value=b"v"), ctx)
    assert ctx.aborted is not None
    code, details, trailer = ctx.aborted
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.startswith("mizzen: too many requests: node:na exceeded its write quota")
    seconds = retry_after.parse(trailer)
    assert seconds is not None and seconds > 0
    assert f"retry after {retry_after.seconds_text(seconds)} s" in details
    clock.now += seconds
    ctx = FakeContext()
    await admit(interceptor, PUT, rpc_pb2.PutRequest(key=b"k", value=b"v"), ctx)
    assert ctx.aborted is None


# ------------------------------------------------------------ the store's flags


def store_args(*argv: str) -> Any:
    parser = argparse.ArgumentParser()
    add_store_parser(parser.add_subparsers())
    return parser.parse_args(["store", *argv])


def test_quota_flags_reach_the_limits() -> None:
    args = store_args("--node-write-rate", "5", "--write-bytes-rate", "0")
    limits = server_security(args, {"--listen-client": "127.0.0.1:2379"}).limits
    assert (limits.node_write_rate, limits.write_bytes_rate) == (5, 0)
    assert (limits.write_rate, limits.node_write_bytes_rate) == (2000, MIB)


def test_a_negative_quota_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--node-write-bytes-rate: must be >= 0"):
        server_security(store_args("--node-write-bytes-rate", "-1"), {})


def test_history_and_proposal_sizes_are_checked() -> None:
    check_sizes(store_args("--history-bytes", "0"))
    with pytest.raises(UsageError, match="--history-bytes: must be 0"):
        check_sizes(store_args("--history-bytes", "1000"))
    with pytest.raises(UsageError, match="--proposal-queue-bytes: must be at least 1"):
        check_sizes(store_args("--proposal-queue-bytes", "0"))
