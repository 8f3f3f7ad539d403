"""One identity cannot take the store down (issue 14, item 4).

A secure 3-member store with its default limits. The node identity
``node:na`` floods it for 12 s: three writers creating Events with a 1,300 KiB
random message (what took the store down: elections, a 30 s outage, a member
left behind, gigabytes of RSS), sent to every member in turn, and eight
writers creating small Events as fast as they can on the leader. Meanwhile the viewer ``vera``
reads small objects in a loop. The store must stay available: no election, no
failed read, read p99 under a generous second, RSS bounded; the flooder is
refused as designed (INVALID_ARGUMENT for the oversized Events,
RESOURCE_EXHAUSTED with ``retry-after`` once its write quota is spent).

The figures come from ``mizzen.testing.flood`` (bench/flood_bench.py prints
the same ones).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mizzen.testing.flood import Flooder, run_flood

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

FLOOD_SECONDS = 12.0
READ_P99_BOUND_MS = 1000.0  # generous: the unprotected store stalled reads for ~30 s
RSS_BOUND_MIB = 250.0  # per member; ~65 MiB idle, 1.3-3 GiB after such a flood unprotected


async def test_an_event_flood_does_not_take_the_store_down(tmp_path: Path) -> None:
    big = Flooder("big events", writers=3, size=1300 * 1024, spread=True)
    small = Flooder("small events", writers=8, size=512, spread=False)  # all on the leader
    report = await run_flood(tmp_path, [big, small], seconds=FLOOD_SECONDS)
    shown = f"figures: {report}"

    assert report.terms_after == report.terms_before, f"elections during the flood; {shown}"
    assert report.read_failures == 0, shown
    assert report.reads > 100, shown
    assert report.read_p99_ms < READ_P99_BOUND_MS, shown
    assert max(report.peak_rss_mib) < RSS_BOUND_MIB, shown

    refused_big = report.flooders["big events"].outcomes
    assert refused_big.get("OK", 0) == 0, f"an oversized Event was stored; {shown}"
    assert refused_big.get("INVALID_ARGUMENT", 0) > 0, shown
    assert set(refused_big) <= {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}, shown

    flooder = report.flooders["small events"]
    assert flooder.outcomes.get("OK", 0) > 0, f"small Events are allowed; {shown}"
    assert flooder.outcomes.get("RESOURCE_EXHAUSTED", 0) > 0, f"no quota bit; {shown}"
    assert flooder.retry_after_given > 0 and flooder.retry_after_max > 0, shown
