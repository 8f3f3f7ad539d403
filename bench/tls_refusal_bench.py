"""How long a refused client waits for its error: fail fast vs retry until the deadline.

Two one-member stores on loopback (one plaintext, one TLS with client
certificates from ``mizzen pki init``), and a port where nothing listens. For
each kind of client that cannot get in, one ``ObjectsClient.list`` with the
CLI's default timeout (5 s), timed from the call to its UnavailableError, in
two modes alternated round by round so machine noise hits both alike:

* ``fail fast``: the SDK as it is (endpoints refusing in the TLS handshake,
  or refusing the TCP connection because nothing listens, end the call;
  mizzen/client/endpoints.py ``Refusals``);
* ``retry``: the same SDK with that check switched off (``Refusals.everywhere``
  patched to False), i.e. the behaviour before it: retry until the deadline.

    .venv/bin/python bench/tls_refusal_bench.py --rounds 3
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
from unittest import mock

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # gRPC's per-handshake log lines
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from mizzen.client import ObjectsClient  # noqa: E402
from mizzen.client.endpoints import Refusals  # noqa: E402
from mizzen.client.errors import UnavailableError  # noqa: E402
from mizzen.security.pki import init_pki  # noqa: E402
from mizzen.security.tls import INSECURE, ClientCredentials  # noqa: E402
from mizzen.testing import MizzenCluster  # noqa: E402
from mizzen.testing.local_cluster import free_ports  # noqa: E402


async def time_to_error(creds: ClientCredentials, endpoint: str, timeout: float) -> float:
    started = time.perf_counter()
    async with ObjectsClient([endpoint], timeout=timeout, credentials=creds) as client:
        try:
            await client.list("pods", "default")
        except UnavailableError:
            return time.perf_counter() - started
    raise SystemExit(f"bench: a client that should be refused got in at {endpoint}")


async def run(opts: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="mizzen-refusalbench-"))
    pki, other = root / "pki", root / "other"
    init_pki(pki, hosts=["127.0.0.1"], nodes=[])
    init_pki(other, hosts=["127.0.0.1"], nodes=[])
    tls = [
        "--cacert", str(pki / "ca.crt"),
        "--cert", str(pki / "store-127.0.0.1.crt"),
        "--key", str(pki / "store-127.0.0.1.key"),
        "--peer-secret-file", str(pki / "raft.secret"),
    ]  # fmt: skip
    admin = ClientCredentials(str(pki / "ca.crt"), str(pki / "admin.crt"), str(pki / "admin.key"))
    foreign = ClientCredentials(
        str(other / "ca.crt"), str(other / "admin.crt"), str(other / "admin.key")
    )
    nowhere = f"127.0.0.1:{free_ports(1)[0]}"
    with (
        MizzenCluster(1, root / "plain") as plain,
        MizzenCluster(1, root / "secure", extra_args=tls, credentials=admin) as secure,
    ):
        tls_ep, plain_ep = secure.endpoints[0], plain.endpoints[0]
        cases = {
            "certificates of another CA (the store's does not verify)": (foreign, tls_ep),
            "TLS client, plaintext store": (admin, plain_ep),
            "--cacert only, no client certificate": (
                ClientCredentials(str(pki / "ca.crt")),
                tls_ep,
            ),
            "plaintext client, TLS store": (INSECURE, tls_ep),
            "nothing listening (TCP connection refused)": (admin, nowhere),
        }
        times: dict[tuple[str, str], list[float]] = {}
        for r in range(opts.rounds):
            modes = ["fail fast", "retry"] if r % 2 == 0 else ["retry", "fail fast"]
            for name, (creds, endpoint) in cases.items():
                for mode in modes:
                    if mode == "retry":
                        with mock.patch.object(Refusals, "everywhere", lambda self, eps: False):
                            took = await time_to_error(creds, endpoint, opts.timeout)
                    else:
                        took = await time_to_error(creds, endpoint, opts.timeout)
                    times.setdefault((name, mode), []).append(took)

    print(f"machine: {platform.node()} {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"client timeout {opts.timeout:g} s, {opts.rounds} rounds, medians\n")
    print("| client | retry until deadline, ms | fail fast, ms | fail fast / retry |")
    print("|---|---|---|---|")
    for name in cases:
        retry = statistics.median(times[(name, "retry")])
        fast = statistics.median(times[(name, "fail fast")])
        print(f"| {name} | {retry * 1000:,.0f} | {fast * 1000:,.1f} | {fast / retry:.3f} |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=5.0, help="client timeout (CLI: 5 s)")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
