"""aetcd (PyPI, async) watches an etcd 3.4 and a Mizzen store, unchanged.

Each scenario (tests/integration/aetcd_watch_client.py, run in a child process:
aetcd's protos cannot share an interpreter with Mizzen's, see there) runs
against both stores of the module's pair — etcd proves the scenario, Mizzen
must pass it. Every await in a scenario is bounded, and the child process too,
so a client that hangs — as aetcd did on Mizzen's old one-response answer to a
watch from a compacted revision — fails instead of blocking.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from etcd_differential import Pair

pytestmark = [pytest.mark.compat, pytest.mark.timeout(180)]

SCRIPT = Path(__file__).with_name("aetcd_watch_client.py")
PROCESS_WAIT = 60.0  # seconds for one scenario's process (each await in it is bounded by 10 s)


def run_scenario(scenario: str, endpoint: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), scenario, endpoint],
        capture_output=True,
        text=True,
        timeout=PROCESS_WAIT,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (
        f"aetcd scenario {scenario} against {endpoint} failed:\n{proc.stderr[-3000:]}"
    )


@pytest.mark.parametrize("side", ["etcd", "mizzen"])
@pytest.mark.parametrize("scenario", ["compacted", "put_delete_cancel", "two_watches"])
def test_aetcd_watch(pair: Pair, side: str, scenario: str) -> None:
    """compacted: a watch from a compacted revision raises aetcd's RevisionCompactedError
    (it hung on Mizzen before issue 19); put_delete_cancel: events with prev_kv, then
    cancel; two_watches: a delete-only watch beside a second one on the same stream."""
    run_scenario(scenario, getattr(pair, side).endpoints()[0])
