"""What secure mode costs: the same store plaintext vs TLS + client certificate + authorization.

Two one-member stores run side by side on loopback (same flags, one with the
certificates of ``mizzen pki init``); one Python grpc.aio client drives each in
turn, alternating rounds so machine noise hits both alike, and prints the
ratio secure/plaintext for:

* serializable Range (no Raft: the per-call cost of TLS, the auth interceptor
  and the policy) — 1 and 16 concurrent readers;
* Put (through Raft) — 1 and 16 concurrent writers;
* connection setup: a new channel's first call (TLS handshake included).

    .venv/bin/python bench/security_bench.py --seconds 3 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from mizzen.security.pki import init_pki  # noqa: E402
from mizzen.security.tls import INSECURE, ClientCredentials  # noqa: E402
from mizzen.testing import MizzenCluster  # noqa: E402
from protos import rpc_pb2, rpc_pb2_grpc  # noqa: E402


async def drive(
    creds: ClientCredentials, endpoint: str, op: str, workers: int, seconds: float
) -> tuple[float, float]:
    """(operations per second, p50 latency in ms) of workers doing op for seconds."""
    latencies: list[float] = []
    async with creds.aio_channel(endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        await kv.Put(rpc_pb2.PutRequest(key=b"/bench/r", value=b"x" * 64), timeout=10)
        stop = time.monotonic() + seconds

        async def worker(w: int) -> None:
            i = 0
            while time.monotonic() < stop:
                started = time.perf_counter()
                if op == "range":
                    await kv.Range(rpc_pb2.RangeRequest(key=b"/bench/r", serializable=True))
                else:
                    key = b"/bench/%d/%d" % (w, i % 1000)
                    await kv.Put(rpc_pb2.PutRequest(key=key, value=b"x" * 64), timeout=10)
                latencies.append(time.perf_counter() - started)
                i += 1

        began = time.monotonic()
        await asyncio.gather(*(worker(w) for w in range(workers)))
        elapsed = time.monotonic() - began
    return len(latencies) / elapsed, statistics.median(latencies) * 1000


async def first_call_ms(creds: ClientCredentials, endpoint: str, n: int = 20) -> float:
    """Median time of a new channel's first Range (connect + TLS handshake + call)."""
    times = []
    for _ in range(n):
        started = time.perf_counter()
        async with creds.aio_channel(endpoint) as channel:
            await rpc_pb2_grpc.KVStub(channel).Range(
                rpc_pb2.RangeRequest(key=b"/bench/r", serializable=True), timeout=10
            )
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


async def run(opts: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="mizzen-secbench-"))
    pki = root / "pki"
    init_pki(pki, hosts=["127.0.0.1"], nodes=[])
    tls = [
        "--cacert", str(pki / "ca.crt"),
        "--cert", str(pki / "store-127.0.0.1.crt"),
        "--key", str(pki / "store-127.0.0.1.key"),
        "--peer-secret-file", str(pki / "raft.secret"),
        "--rate-limit", "0",
    ]  # fmt: skip
    admin = ClientCredentials(str(pki / "ca.crt"), str(pki / "admin.crt"), str(pki / "admin.key"))
    common = ["--fsync", opts.fsync]
    with (
        MizzenCluster(1, root / "plain", extra_args=common) as plain,
        MizzenCluster(1, root / "secure", extra_args=[*common, *tls], credentials=admin) as secure,
    ):
        targets = {
            "plaintext": (INSECURE, plain.endpoints[0]),
            "secure": (admin, secure.endpoints[0]),
        }
        cases = [("range", 1), ("range", 16), ("put", 1), ("put", 16)]
        results: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
        for r in range(opts.rounds):
            for op, workers in cases:
                order = list(targets) if r % 2 == 0 else list(reversed(targets))
                for mode in order:
                    creds, endpoint = targets[mode]
                    got = await drive(creds, endpoint, op, workers, opts.seconds)
                    results.setdefault((mode, op, workers), []).append(got)
        handshakes = {mode: await first_call_ms(*targets[mode]) for mode in targets}

    print(f"machine: {platform.node()} {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"rounds {opts.rounds} x {opts.seconds:g} s, --fsync {opts.fsync}, medians over rounds\n")
    print("| case | plaintext ops/s (p50 ms) | secure ops/s (p50 ms) | secure/plaintext ops/s |")
    print("|---|---|---|---|")
    for op, workers in cases:
        cells = []
        rates = {}
        for mode in targets:
            runs = results[(mode, op, workers)]
            rate = statistics.median(x[0] for x in runs)
            p50 = statistics.median(x[1] for x in runs)
            rates[mode] = rate
            cells.append(f"{rate:,.0f} ({p50:.2f})")
        ratio = rates["secure"] / rates["plaintext"]
        print(
            f"| {op}, {workers} {'reader' if op == 'range' else 'writer'}(s) | "
            f"{' | '.join(cells)} | {ratio:.2f} |"
        )
    p, s = handshakes["plaintext"], handshakes["secure"]
    print(f"| new channel + first call, ms | {p:.1f} | {s:.1f} | {s / p:.2f}x the time |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fsync", choices=["always", "never"], default="always")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
