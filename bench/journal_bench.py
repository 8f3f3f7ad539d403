"""Raft journal append cost: Mizzen's DurableJournal against pysyncobj's FileJournal.

Side by side in one run, alternating in rounds (the machine is shared):
DurableJournal.add with --fsync always (one O_DSYNC write per record) and
never, and pysyncobj 0.3.17's FileJournal.add (an mmap write, never synced),
for records of a given size. Prints p50/p99 per variant and the ratios.

    .venv/bin/python bench/journal_bench.py [--records 2000] [--size 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pysyncobj import journal as pysyncobj_journal

from store.raft_journal import DurableJournal


def run(add: Callable[[bytes, int, int], None], records: int, size: int) -> list[float]:
    payload = b"x" * size
    times = []
    for idx in range(1, records + 1):
        t = time.perf_counter()
        add(payload, idx, 1)
        times.append(time.perf_counter() - t)
    return times


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--size", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    results: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(dir=".") as d:
            for name in ("durable fsync", "durable no-fsync", "pysyncobj FileJournal"):
                path = str(Path(d) / name.replace(" ", "_"))
                if name.startswith("durable"):
                    j = DurableJournal(path, fsync=name.endswith(" fsync"))
                    results.setdefault(name, []).extend(run(j.add, args.records, args.size))
                    j._destroy()
                else:
                    f = pysyncobj_journal.FileJournal(path)
                    results.setdefault(name, []).extend(run(f.add, args.records, args.size))
                    f._destroy()
    base = statistics.median(results["pysyncobj FileJournal"])
    print(f"{args.records} records of {args.size} bytes x {args.rounds} rounds")
    print(f"{'variant':24} {'p50 ms':>8} {'p99 ms':>8} {'p50 / FileJournal':>18}")
    for name, xs in results.items():
        ratio = statistics.median(xs) / base
        print(f"{name:24} {pct(xs, 0.5):8.3f} {pct(xs, 0.99):8.3f} {ratio:18.1f}")


if __name__ == "__main__":
    main()
