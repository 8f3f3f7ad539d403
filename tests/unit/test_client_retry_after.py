"""The SDK and a server's ``retry-after``: wait as told and retry, or say when to.

EndpointPool against scripted fake connections, with an injected clock and
sleep (no real waiting).
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from mizzen.client.endpoints import EndpointPool, Metadata
from mizzen.client.errors import ResourceExhaustedError
from protos import rpc_pb2

QUOTA = "mizzen: too many requests: node:na exceeded its write quota of 100 writes/s"
RATE = "mizzen: rate limit exceeded for node:na: 5 requests/s (burst 10); retry after 0.200 s"


def refused(details: str, seconds: str | None) -> grpc.aio.AioRpcError:
    trailer = grpc.aio.Metadata(*([("retry-after", seconds)] if seconds else []))
    return grpc.aio.AioRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(), trailer, details, None
    )


class Status:
    def __init__(self, member_id: int, leader: int) -> None:
        self.answer = rpc_pb2.StatusResponse(
            header=rpc_pb2.ResponseHeader(member_id=member_id), leader=leader, raftTerm=2
        )

    async def Status(self, request: Any, timeout: float = 0, **_: Any) -> Any:
        return self.answer


class FakeConn:
    def __init__(self, address: str, member_id: int, leader: int) -> None:
        self.address = address
        self.maintenance = Status(member_id, leader)

    async def ready(self, timeout: float) -> bool:
        return True

    async def failure(self, timeout: float = 0.2) -> str | None:
        return None

    async def close(self) -> None:
        pass


class World:
    """A clock that only moves when the pool sleeps, and the sleeps it was asked for."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def pool(world: World, timeout: float = 5.0) -> EndpointPool:
    conns = {"a": FakeConn("a", 1, 2), "b": FakeConn("b", 2, 2)}  # b leads
    return EndpointPool(
        ["a", "b"],
        timeout=timeout,
        connect=conns.__getitem__,  # type: ignore[arg-type]
        clock=world.clock,
        sleep=world.sleep,
    )


def scripted(outcomes: list[Any], calls: list[str]) -> Any:
    async def send(conn: Any, timeout: float, metadata: Metadata) -> Any:
        calls.append(conn.address)
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return send


async def test_a_write_over_quota_waits_as_told_and_retries_on_the_same_member() -> None:
    world, calls = World(), list[str]()
    send = scripted([refused(QUOTA, "0.300"), refused(QUOTA, "0.150"), "ok"], calls)
    assert await pool(world).call(send, mutating=True) == "ok"
    assert world.sleeps == [0.3, 0.15]
    assert calls == ["b", "b", "b"]  # the leader each time: another member has its own quota


async def test_a_wait_past_the_deadline_fails_at_once_saying_when() -> None:
    world, calls = World(), list[str]()
    send = scripted([refused(QUOTA, "0.300"), refused(QUOTA, "9.000")], calls)
    with pytest.raises(ResourceExhaustedError) as err:
        await pool(world, timeout=5.0).call(send, mutating=True)
    assert err.value.retry_after == 9.0
    assert world.sleeps == [0.3]  # no pointless wait for what cannot come in time
    assert "too many requests" in str(err.value)


async def test_a_refusal_that_is_not_retried_carries_its_retry_after() -> None:
    world, calls = World(), list[str]()
    send = scripted([refused(RATE, "0.200")], calls)
    with pytest.raises(ResourceExhaustedError) as err:
        await pool(world).call(send, mutating=False)
    assert err.value.retry_after == 0.2
    assert world.sleeps == [] and calls == ["a"]


async def test_without_a_trailer_the_old_behaviour_holds() -> None:
    world, calls = World(), list[str]()
    send = scripted([refused("etcdserver: too many requests", None), "ok"], calls)
    assert await pool(world).call(send, mutating=True) == "ok"
    assert calls == ["b", "a"]  # moved to the next member at once, as before
