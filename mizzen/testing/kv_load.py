"""Acknowledged-write load on a store, for durability and crash tests.

A write counts as acknowledged only when the store answered it; a write
whose outcome is unknown (timeout, connection lost) is never counted, so
"every acknowledged write is still there" is exactly the store's promise.
"""

from __future__ import annotations

import asyncio
import time

import grpc

from mizzen.keyrange import prefix_end
from protos import rpc_pb2, rpc_pb2_grpc

RPC_TIMEOUT = 2.0


def read_all(endpoint: str, prefix: bytes, timeout: float = 5.0) -> dict[bytes, bytes]:
    """Every key under prefix with its value (a linearizable Range; a soak's writes pass
    gRPC's default 4 MiB message limit)."""
    options = [("grpc.max_receive_message_length", 256 << 20)]
    with grpc.insecure_channel(endpoint, options=options) as channel:
        resp = rpc_pb2_grpc.KVStub(channel).Range(
            rpc_pb2.RangeRequest(key=prefix, range_end=prefix_end(prefix)), timeout=timeout
        )
    return {x.key: x.value for x in resp.kvs}


def missing_writes(stored: dict[bytes, bytes], acked: dict[bytes, bytes]) -> list[bytes]:
    return [k for k, v in acked.items() if stored.get(k) != v]


async def writers_until(
    endpoints: list[str],
    prefix: bytes,
    stop: asyncio.Event,
    n_writers: int,
    *,
    value_size: int = 0,
) -> tuple[dict[bytes, bytes], list[float]]:
    """Concurrent writers over all members until ``stop``; acknowledged writes and ack times."""
    acked: dict[bytes, bytes] = {}
    ack_times: list[float] = []
    channels = [grpc.aio.insecure_channel(e) for e in endpoints]
    stubs = [rpc_pb2_grpc.KVStub(c) for c in channels]

    async def writer(w: int) -> None:
        i = 0
        target = w % len(stubs)
        while not stop.is_set():
            key = b"%s%02d-%05d" % (prefix, w, i)
            value = (b"v%d-" % i).ljust(value_size, b"x")
            try:
                await stubs[target].Put(
                    rpc_pb2.PutRequest(key=key, value=value), timeout=RPC_TIMEOUT
                )
            except grpc.aio.AioRpcError:
                target = (target + 1) % len(stubs)  # outcome unknown: never counted as acked
                await asyncio.sleep(0.02)
                continue
            acked[key] = value
            ack_times.append(time.monotonic())
            i += 1

    try:
        await asyncio.gather(*(writer(w) for w in range(n_writers)))
    finally:
        for c in channels:
            await c.close(None)
    return acked, ack_times
