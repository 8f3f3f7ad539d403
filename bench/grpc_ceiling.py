"""The Python gRPC ceiling: a KV server whose Put does nothing, driven like store_bench drives Put.

Mizzen's request path is Python grpc.aio; this measures what that layer alone
costs on this machine, so the store's Put figures can be read against it:

    .venv/bin/python bench/grpc_ceiling.py [--duration 5]

It starts one no-op server process on 127.0.0.1, runs 1, 16 and 256 concurrent
writers (256-byte values) for --duration seconds each, and prints throughput,
p50/p99 and the server's CPU use per request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mizzen.testing.local_cluster import free_ports
from protos import rpc_pb2, rpc_pb2_grpc


class NoopKV(rpc_pb2_grpc.KVServicer):
    async def Put(self, request: rpc_pb2.PutRequest, context: object) -> rpc_pb2.PutResponse:
        return rpc_pb2.PutResponse()


async def serve(addr: str) -> None:
    server = grpc.aio.server()
    rpc_pb2_grpc.add_KVServicer_to_server(NoopKV(), server)
    server.add_insecure_port(addr)
    await server.start()
    await server.wait_for_termination()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def level(addr: str, writers: int, duration: float) -> tuple[int, list[float]]:
    async with grpc.aio.insecure_channel(addr) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        await kv.Put(rpc_pb2.PutRequest(key=b"warm", value=b"x"), timeout=5)
        lat: list[float] = []
        deadline = time.monotonic() + duration

        async def worker(w: int) -> None:
            req = rpc_pb2.PutRequest(key=b"k%d" % w, value=b"x" * 256)
            while time.monotonic() < deadline and len(lat) < 1_000_000:
                t = time.perf_counter()
                await kv.Put(req, timeout=5)
                lat.append(time.perf_counter() - t)

        await asyncio.gather(*(worker(w) for w in range(writers)))
        return len(lat), sorted(lat)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        return 0
    addr = f"127.0.0.1:{free_ports(1)[0]}"
    proc = subprocess.Popen([sys.executable, __file__, "--serve", addr])
    try:
        time.sleep(1.0)
        print("| Put to a no-op Python grpc.aio server | throughput | p50 | p99 |", end="")
        print(" server CPU / request |")
        print("|---|---|---|---|---|")
        for writers in (1, 16, 256):
            cpu0 = cpu_seconds(proc.pid)
            n, lat = asyncio.run(level(addr, writers, args.duration))
            cpu = cpu_seconds(proc.pid) - cpu0
            print(
                f"| {writers} writer{'s' if writers > 1 else ''} | {n / args.duration:,.0f}/s "
                f"| {lat[len(lat) // 2] * 1e3:.2f} ms | {lat[int(len(lat) * 0.99)] * 1e3:.2f} ms "
                f"| {cpu / max(n, 1) * 1e6:.0f} µs |"
            )
    finally:
        proc.kill()
        proc.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
