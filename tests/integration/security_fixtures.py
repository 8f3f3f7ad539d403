"""Fixtures of the security tests: a cluster PKI and one secure store per module.

A test module imports the fixture functions (``pki_fixture`` ...); tests ask for
``pki``, ``store`` and ``admin``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mizzen.client import ObjectsClient
from mizzen.security.pki import init_pki, issue
from mizzen.security.tls import ClientCredentials
from mizzen.security.tokens import add_token
from mizzen.testing.local_cluster import MizzenCluster, free_ports
from protos import objects_pb2 as pb

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Pki:
    dir: Path
    other: Path  # a second, unrelated CA
    tokens: Path
    viewer_token: str
    admin_token: str

    def creds(self, name: str, *, other_ca: bool = False) -> ClientCredentials:
        d = self.other if other_ca else self.dir
        return ClientCredentials(
            str(self.dir / "ca.crt"), str(d / f"{name}.crt"), str(d / f"{name}.key")
        )

    def token(self, token: str | None) -> ClientCredentials:
        return ClientCredentials(str(self.dir / "ca.crt"), token=token)

    @property
    def ca_only(self) -> ClientCredentials:
        return ClientCredentials(str(self.dir / "ca.crt"))

    def store_flags(self) -> list[str]:
        d = self.dir
        return [
            "--cacert", str(d / "ca.crt"),
            "--cert", str(d / "store-127.0.0.1.crt"),
            "--key", str(d / "store-127.0.0.1.key"),
            "--peer-secret-file", str(d / "raft.secret"),
            "--encryption-key-file", str(d / "encryption.yaml"),
        ]  # fmt: skip


@pytest.fixture(scope="module", name="pki")
def pki_fixture(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    init_pki(base / "pki", hosts=["127.0.0.1"], nodes=["na", "nb", "nc"])
    issue(base / "pki", "vera", "viewer")
    now = dt.datetime.now(dt.UTC)
    issue(
        base / "pki",
        "old",
        "admin",
        not_before=now - dt.timedelta(days=2),
        not_after=now - dt.timedelta(hours=1),
    )
    init_pki(base / "other", hosts=["127.0.0.1"], nodes=[])
    tokens = base / "tokens"
    viewer = add_token(tokens, "tina", "viewer")
    admin = add_token(tokens, "adam", "admin")
    return Pki(base / "pki", base / "other", tokens, viewer, admin)


@dataclass
class Store:
    cluster: MizzenCluster
    endpoint: str
    token_endpoint: str

    def log(self) -> str:
        return self.cluster.log_path(0).read_text(errors="replace")


@pytest.fixture(scope="module", name="store")
def store_fixture(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    token_port = free_ports(1)[0]
    extra = [
        *pki.store_flags(),
        "--token-file", str(pki.tokens),
        "--token-listen", f"127.0.0.1:{token_port}",
    ]  # fmt: skip
    base = tmp_path_factory.mktemp("secure-store")
    with MizzenCluster(1, base, extra_args=extra, credentials=pki.creds("admin")) as cluster:
        yield Store(cluster, cluster.endpoints[0], f"127.0.0.1:{token_port}")


@pytest.fixture(name="admin")
async def admin_fixture(pki: Pki, store: Store) -> AsyncIterator[ObjectsClient]:
    async with ObjectsClient([store.endpoint], credentials=pki.creds("admin")) as client:
        yield client


def pod(name: str, node: str = "") -> pb.Pod:
    p = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace="default"))
    p.spec.processes.add(name="main", command=["sleep", "60"])
    p.spec.node_name = node
    return p


def node_obj(name: str) -> pb.Node:
    return pb.Node(metadata=pb.ObjectMeta(name=name))
