"""Cluster-test fixtures: hosts in network namespaces, a store on them, the chaos seed.

Every fixture here cleans up what it made (processes, namespaces, links,
cgroups) even when the test fails; tests skip with the reason when this
machine cannot build test hosts (not root, no ``ip netns`` or ``iptables``).
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from mizzen.testing.host_cluster import HostStoreCluster, store_on_hosts
from mizzen.testing.hosts import DEFAULT_SUBNET, TestHosts, unavailable_reason

SEED_ENV = "MIZZEN_CHAOS_SEED"
SUBNET_ENV = "MIZZEN_TEST_SUBNET"


@functools.cache
def _hosts_unavailable() -> str | None:
    return unavailable_reason()


def require_test_hosts() -> None:
    reason = _hosts_unavailable()
    if reason is not None:
        pytest.skip(reason)


_SEED_KEY = pytest.StashKey[int]()


@pytest.fixture
def chaos_seed(request: pytest.FixtureRequest) -> int:
    """The schedule's seed: ``MIZZEN_CHAOS_SEED`` to replay a failure, else a fresh one.

    Whatever makes the test fail (an assertion or an exception), its report
    carries a "chaos seed" section with the line that replays it.
    """
    text = os.environ.get(SEED_ENV)
    seed = int(text) if text else random.SystemRandom().randrange(1, 2**31)
    request.node.stash[_SEED_KEY] = seed
    return seed


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    seed = item.stash.get(_SEED_KEY, None)
    if report.failed and seed is not None:
        report.sections.append(("chaos seed", f"replay: {SEED_ENV}={seed} pytest {item.nodeid}"))
    return report


@pytest.fixture
def hosts3(tmp_path: Path) -> Iterator[TestHosts]:
    """Three fresh hosts (``MIZZEN_TEST_SUBNET`` picks another subnet than 198.18.0.0/24)."""
    require_test_hosts()
    subnet = os.environ.get(SUBNET_ENV, DEFAULT_SUBNET)
    with TestHosts(3, tmp_path / "hosts", subnet=subnet) as hosts:
        yield hosts


@pytest.fixture
def store3(hosts3: TestHosts, tmp_path: Path) -> Iterator[HostStoreCluster]:
    """A 3-member store, one member per host; ``--request-timeout 2`` so a write
    that cannot commit is answered (as timed out) before the client gives up."""
    cluster = store_on_hosts(
        hosts3, tmp_path / "store", extra_args=["--request-timeout", "2"], start_timeout=40
    )
    try:
        yield cluster
    finally:
        cluster.stop()
