"""One identity flooding the store with large writes: does everyone else still get served?

A secure 3-member store (TLS, client certificates, Raft secret) on loopback.
By default the node identity ``node:na`` creates Events with a 1,300 KiB
message (random base64, which pysyncobj's zlib cannot shrink), 3 at a time,
sent to every member in turn, for ``--seconds``; meanwhile the viewer
``vera`` does linearizable Get and List calls of small objects in a loop.
The machinery is ``mizzen.testing.flood`` (tests/integration/test_flood.py
asserts on the same figures). Printed: the flooder's outcomes, the reader's
latencies and longest gap between successful reads, Raft terms before and
after (a changed term is an election), peak RSS per member, how far the
furthest member fell behind and how long it took to catch up, and the store's
batch resends.

    .venv/bin/python bench/flood_bench.py --seconds 30
    .venv/bin/python bench/flood_bench.py --seconds 30 --op put --identity admin
    .venv/bin/python bench/flood_bench.py --seconds 15 --profile /tmp/leader.txt

``--store-args`` adds flags to every member. ``--profile`` runs ``py-spy
record`` (``pip install py-spy``) on the leader during the flood.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from mizzen.testing.flood import Flooder, Report, run_flood  # noqa: E402
from mizzen.testing.local_cluster import MizzenCluster  # noqa: E402


def rows(r: Report) -> list[tuple[str, str]]:
    out = []
    for label, f in r.flooders.items():
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(f.outcomes.items()))
        out.append((f"{label}: outcomes", outcomes))
        out.append((f"{label}: bytes accepted", f"{f.bytes_accepted / 2**20:.1f} MiB"))
        if f.retry_after_given:
            given = f"{f.retry_after_given} times, max {f.retry_after_max:g} s"
            out.append((f"{label}: retry-after given", given))
        if f.first_error:
            out.append((f"{label}: first refusal", f.first_error[:160]))
    latency = f"{r.read_p50_ms:.0f} / {r.read_p99_ms:.0f} / {r.read_max_ms:.0f} ms"
    terms = f"{r.terms_before} -> {r.terms_after} ({r.elections} elections)"
    rss = " / ".join(f"{m:.0f}" for m in r.peak_rss_mib)
    base = " / ".join(f"{m:.0f}" for m in r.baseline_rss_mib)
    out += [
        ("reader: calls (failed)", f"{r.reads} ({r.read_failures})"),
        ("reader: latency p50 / p99 / max", latency),
        ("reader: longest gap between successful reads", f"{r.longest_read_gap_s:.1f} s"),
        ("Raft terms before -> after", terms),
        ("peak RSS per member (before the flood)", f"{rss} MiB ({base})"),
        ("furthest member behind", f"{r.max_lag_entries} entries"),
        ("members equal again after the flood", f"{r.catch_up_s:.1f} s"),
        ("batches proposed again (resends, all members)", f"{r.resends:.0f}"),
    ]
    return out


def print_report(r: Report) -> None:
    print(f"machine: {platform.node()} {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"store args: {shlex.join(r.store_args) or '(defaults)'}\n")
    print("| measure | value |")
    print("|---|---|")
    for measure, value in rows(r):
        print(f"| {measure} | {value} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--writers", type=int, default=3)
    parser.add_argument("--size-kib", type=int, default=1300, help="payload per write")
    parser.add_argument("--op", choices=["event", "put"], default="event")
    parser.add_argument("--identity", default="node-na", help="certificate name in the PKI")
    parser.add_argument("--leader-only", action="store_true", help="send every write to the leader")
    parser.add_argument("--repeat", action="store_true", help="compressible payloads")
    parser.add_argument("--store-args", default="", help="extra flags for every member")
    parser.add_argument("--after", type=float, default=1.0, help="reading goes on this long")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--keep", default=None, help="keep data and logs in this new directory")
    parser.add_argument("--profile", default=None, metavar="FILE", help="py-spy the leader")
    opts = parser.parse_args()
    spec = Flooder(
        label=f"{opts.identity} {opts.op} {opts.size_kib} KiB x{opts.writers}",
        identity=opts.identity,
        writers=opts.writers,
        size=opts.size_kib * 1024,
        op=opts.op,
        spread=not opts.leader_only,
        random=not opts.repeat,
    )
    spies: list[subprocess.Popen[bytes]] = []

    def profile(cluster: MizzenCluster, leader: int) -> Any:
        if opts.profile:
            spy = Path(sys.executable).parent / "py-spy"
            argv = [str(spy), "record", "--pid", str(cluster.pids[leader]), "--duration"]
            argv += [str(int(opts.seconds)), "--format", "raw", "--threads", "--nonblocking"]
            spies.append(subprocess.Popen([*argv, "--output", opts.profile]))

    if opts.keep:
        Path(opts.keep).mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="mizzen-flood-") as tmp:
        report = asyncio.run(
            run_flood(
                Path(opts.keep or tmp),
                [spec],
                seconds=opts.seconds,
                store_args=shlex.split(opts.store_args),
                after=opts.after,
                on_flood=profile,
            )
        )
    for spy in spies:
        spy.wait()
    print_report(report)
    if opts.json:
        Path(opts.json).write_text(json.dumps(asdict(report), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
