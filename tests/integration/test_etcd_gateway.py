"""etcd's HTTP/JSON gateway: the same HTTP requests to a real etcd 3.4 and to Mizzen.

etcd serves its gateway on the client URL; Mizzen on ``--listen-client-http``
(store/gateway.py). Each scenario sends the same requests to both and compares
status, content type and body field by field, after the differential harness's
normalization (revisions relative to a base, lease ids by order, keys relative
to the test's prefix, cluster/member/term dropped). The last tests take the
clusters' quorum away, so they run last.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from etcd_differential import Trace, assert_same
from security_fixtures import Pki, pki_fixture

from mizzen.testing.local_cluster import HOST, EtcdCluster, MizzenCluster, free_ports

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
__all__ = ["pki_fixture"]

TIMEOUT = 10.0
# JSON syntax errors come from Go's encoding/json on etcd and Python's json on Mizzen
GO_PARSER_TEXT = frozenset({"error", "message"})


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


class GatewayCluster(MizzenCluster):
    """Mizzen members that also serve the HTTP gateway, each on a port of its own."""

    def __init__(self, n: int, base_dir: Path, **kwargs: Any) -> None:
        self.http_ports = free_ports(n)
        super().__init__(n, base_dir, **kwargs)

    def _argv(self, m: Any) -> list[str]:
        port = self.http_ports[m.index]
        return [*super()._argv(m), "--listen-client-http", f"{HOST}:{port}"]

    def http_address(self, i: int) -> str:
        return f"{HOST}:{self.http_ports[i]}"


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    address: str,
    path: str,
    body: Any = None,
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> Answer:
    if context is not None:
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            address, timeout=TIMEOUT, context=context
        )
    else:
        conn = http.client.HTTPConnection(address, timeout=TIMEOUT)
    data = body if isinstance(body, str | bytes) or body is None else json.dumps(body)
    try:
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        return Answer(resp.status, resp.getheader("Content-Type", ""), resp.read())
    finally:
        conn.close()


@dataclass
class HttpTrace:
    """One side's answers, normalized by the gRPC differential's Trace."""

    address: str
    trace: Trace
    entries: list[tuple[str, Any]] = field(default_factory=list)

    def key(self, name: str) -> str:
        return b64(self.trace.key(name))

    def post(
        self,
        what: str,
        path: str,
        body: Any = None,
        *,
        drop: frozenset[str] = frozenset(),
        method: str = "POST",
        headers: dict[str, str] | None = None,
    ) -> Answer:
        answer = request(self.address, path, body, method=method, headers=headers)
        self.record(what, answer, drop)
        return answer

    def record(self, what: str, answer: Answer, drop: frozenset[str] = frozenset()) -> None:
        try:
            body: Any = self.trace.normalize(answer.json(), drop)
        except ValueError:
            body = answer.body.decode(errors="replace")
        self.entries.append((what, {"status": answer.status, "type": answer.content_type}))
        self.entries.append((what + " body", body))

    def put(self, name: str, value: str, **extra: Any) -> Answer:
        return request(self.address, "/v3/kv/put", {"key": self.key(name), "value": b64(value)})


Scenario = Callable[[HttpTrace], None]


@dataclass
class Sides:
    etcd: EtcdCluster
    mizzen: GatewayCluster

    def same(self, scenario: Scenario) -> list[tuple[str, Any]]:
        prefix = f"/gw/{uuid.uuid4().hex[:8]}/".encode()
        traces = []
        for name, address in (
            ("etcd", self.etcd.endpoint(0)),
            ("mizzen", self.mizzen.http_address(0)),
        ):
            side = HttpTrace(address, Trace(channel=cast(Any, None), prefix=prefix, side=name))
            scenario(side)
            traces.append(side.entries)
        assert_same(traces[0], traces[1])
        return traces[0]


@pytest.fixture(scope="module")
def sides(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sides]:
    base = tmp_path_factory.mktemp("gateway")
    etcd = EtcdCluster(3, base / "etcd")
    mizzen = GatewayCluster(3, base / "mizzen")
    try:
        etcd.start()
        mizzen.start()
        yield Sides(etcd, mizzen)
    finally:
        mizzen.stop()
        etcd.stop()


# ------------------------------------------------------------------ KV and leases


def test_kv(sides: Sides) -> None:
    def scenario(t: HttpTrace) -> None:
        first = t.post("put", "/v3/kv/put", {"key": t.key("a"), "value": b64("1")})
        t.trace.base = int(first.json()["header"]["revision"])
        t.post("put prev_kv", "/v3/kv/put", {"key": t.key("a"), "value": b64("2"), "prev_kv": True})
        t.post("put b", "/v3/kv/put", {"key": t.key("b"), "value": b64("x" * 300)})
        t.post("range", "/v3/kv/range", {"key": t.key("a")})
        t.post("range camelCase", "/v3/kv/range", {"key": t.key("a"), "keysOnly": True})
        t.post(
            "range prefix",
            "/v3/kv/range",
            {"key": t.key(""), "range_end": t.key("\xff"), "limit": "1", "sort_order": "DESCEND"},
        )
        count = {"key": t.key(""), "range_end": t.key("c"), "count_only": True}
        t.post("count", "/v3/kv/range", count)
        t.post("missing", "/v3/kv/range", {"key": t.key("zz")})
        t.post("unknown field", "/v3/kv/range", {"key": t.key("a"), "bogus": 1})
        t.post("beta prefix", "/v3beta/kv/range", {"key": t.key("a")})
        compare = {"key": t.key("a"), "result": "EQUAL", "target": "VALUE", "value": b64("2")}
        txn = {
            "compare": [compare],
            "success": [{"request_range": {"key": t.key("a")}}],
            "failure": [{"request_put": {"key": t.key("a"), "value": b64("3")}}],
        }
        t.post("txn success", "/v3/kv/txn", txn)
        compare["value"] = b64("nope")
        t.post("txn failure", "/v3/kv/txn", txn)
        t.post(
            "deleterange",
            "/v3/kv/deleterange",
            {"key": t.key(""), "range_end": t.key("\xff"), "prev_kv": True},
        )
        t.post("future revision", "/v3/kv/range", {"key": t.key("a"), "revision": "99999999"})
        t.post("no key", "/v3/kv/range", {})
        t.post("empty body", "/v3/kv/range", "")
        t.post("null key", "/v3/kv/range", {"key": None})

    sides.same(scenario)


def test_leases(sides: Sides) -> None:
    def scenario(t: HttpTrace) -> None:
        grant = t.post("grant", "/v3/lease/grant", {"TTL": "60"})
        lease = grant.json()["ID"]
        put = t.post("put", "/v3/kv/put", {"key": t.key("l"), "value": b64("v"), "lease": lease})
        t.trace.base = int(put.json()["header"]["revision"])
        ttl = frozenset({"TTL"})
        t.post("ttl", "/v3/lease/timetolive", {"ID": lease, "keys": True}, drop=ttl)
        t.post("ttl alias", "/v3/kv/lease/timetolive", {"ID": lease}, drop=ttl)
        t.post("keepalive", "/v3/lease/keepalive", {"ID": lease})
        t.post("keepalive unknown", "/v3/lease/keepalive", {"ID": "12345"})
        leases = request(t.address, "/v3/lease/leases", {})
        assert leases.status == 200
        assert lease in [x["ID"] for x in leases.json()["leases"]]
        t.post("revoke", "/v3/lease/revoke", {"ID": lease})
        t.post("revoke alias, gone", "/v3/kv/lease/revoke", {"ID": lease})
        t.post("range after revoke", "/v3/kv/range", {"key": t.key("l")})
        t.post("put unknown lease", "/v3/kv/put", {"key": t.key("x"), "lease": "99"})

    sides.same(scenario)


def test_cluster_and_maintenance(sides: Sides) -> None:
    for address in (sides.etcd.endpoint(0), sides.mizzen.http_address(0)):
        members = request(address, "/v3/cluster/member/list", {})
        assert members.status == 200
        assert len(members.json()["members"]) == 3
        status = request(address, "/v3/maintenance/status", {})
        assert status.status == 200 and "leader" in status.json()
        snapshot = request(address, "/v3/maintenance/snapshot", {})
        assert snapshot.status == 200
        lines = snapshot.body.splitlines()
        assert lines and all("blob" in json.loads(x)["result"] for x in lines)
        # Auth is another part's: with no Auth servicer the route answers UNIMPLEMENTED
        users = request(address, "/v3/auth/user/list", {})
        assert users.status == 200 or (users.status == 501 and users.json()["code"] == 12), users


# ------------------------------------------------------------------ errors


def test_errors(sides: Sides) -> None:
    def scenario(t: HttpTrace) -> None:
        for bad in ("YQ", "YQ=", "Y===", "YQ==YQ==", "Zm9v!", "Zm-v", "Zm9", "!!!"):
            t.post(f"base64 {bad}", "/v3/kv/range", {"key": bad})
        t.post("base64 newline", "/v3/kv/range", {"key": t.key("a")[:-2] + "\n" + "=="})
        t.post("base64 in txn", "/v3/kv/txn", {"compare": [{"key": "Zm9v!"}]})
        t.post("bytes as number", "/v3/kv/range", {"key": 1})
        t.post("array body", "/v3/kv/range", "[1]")
        t.post("enum", "/v3/kv/range", {"key": t.key("a"), "sort_order": "NOPE"})
        t.post("nested enum", "/v3/kv/txn", {"compare": [{"result": "BAD"}]})
        t.post("bool as number", "/v3/kv/range", {"key": "YQ==", "count_only": 1})
        t.post("bool as string", "/v3/kv/range", {"key": "YQ==", "count_only": "true"})
        t.post("int64 as bool", "/v3/kv/range", {"key": "YQ==", "limit": True})
        t.post("int64 not a number", "/v3/kv/range", {"key": "YQ==", "limit": "x"})
        t.post("string as number", "/v3/auth/authenticate", {"name": 1})
        t.post("bad json", "/v3/kv/range", "notjson", drop=GO_PARSER_TEXT)
        t.post("fraction", "/v3/kv/range", {"key": "YQ==", "limit": 1.5})
        t.post("unknown route", "/v3/nope", {})
        t.post("no v3alpha", "/v3alpha/kv/range", {"key": t.key("a")})
        t.post("GET a POST route", "/v3/kv/range", method="GET")
        t.post("stream bad json", "/v3/lease/keepalive", "garbage", drop=GO_PARSER_TEXT)
        t.post("stream bad base64", "/v3/watch", {"create_request": {"key": "!!"}})

    sides.same(scenario)


# ------------------------------------------------------------------ watch


def watch_lines(address: str, body: dict[str, Any], after: Callable[[], None], n: int) -> list[Any]:
    """Open a watch stream, run after(), read n JSON lines (each bounded by TIMEOUT)."""
    conn = http.client.HTTPConnection(address, timeout=TIMEOUT)
    try:
        conn.request("POST", "/v3/watch", body=json.dumps(body))
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        assert resp.getheader("Content-Type") == "application/json"
        lines = [json.loads(resp.readline())]  # created
        after()
        lines.extend(json.loads(resp.readline()) for _ in range(n - 1))
        return lines
    finally:
        conn.close()


def test_watch_stream(sides: Sides) -> None:
    def scenario(t: HttpTrace) -> None:
        first = t.put("w", "0")
        t.trace.base = int(first.json()["header"]["revision"])

        def writes() -> None:
            t.put("w", "1")
            t.put("w", "2")
            request(t.address, "/v3/kv/deleterange", {"key": t.key("w")})

        create = {"create_request": {"key": t.key("w"), "prev_kv": True}}
        for i, line in enumerate(watch_lines(t.address, create, writes, 4)):
            t.entries.append((f"watch line {i}", t.trace.normalize(line)))
        # from a past revision
        since = {"create_request": {"key": t.key("w"), "start_revision": str(t.trace.base)}}
        for i, line in enumerate(watch_lines(t.address, since, lambda: None, 2)):
            t.entries.append((f"history {i}", t.trace.normalize(line)))
        # a body of two requests: two watches on one stream
        two = json.dumps({"create_request": {"key": t.key("x")}}) + json.dumps(
            {"create_request": {"key": t.key("y")}}
        )
        conn = http.client.HTTPConnection(t.address, timeout=TIMEOUT)
        try:
            conn.request("POST", "/v3/watch", body=two)
            resp = conn.getresponse()
            lines = [resp.readline(), resp.readline()]
            t.put("y", "1")
            lines.append(resp.readline())
            for i, line in enumerate(lines):
                t.entries.append((f"two watches {i}", t.trace.normalize(json.loads(line))))
        finally:
            conn.close()

    sides.same(scenario)


def test_watch_stream_ends_when_the_client_leaves(sides: Sides) -> None:
    """Mizzen drops the watcher when the HTTP client closes the connection."""
    address = sides.mizzen.http_address(0)

    def watchers() -> float:
        text = request(address, "/metrics", method="GET").body.decode()
        line = next(x for x in text.splitlines() if x.startswith("mizzen_store_watchers "))
        return float(line.split()[1])

    before = watchers()
    key = b64(f"/gw/{uuid.uuid4().hex[:8]}/leave")
    watch_lines(address, {"create_request": {"key": key}}, lambda: None, 1)
    deadline = time.monotonic() + 30
    while watchers() > before:
        assert time.monotonic() < deadline, "the watcher outlived its HTTP client"
        time.sleep(0.1)


# ------------------------------------------------------------------ plain HTTP routes


def test_version_health_metrics(sides: Sides) -> None:
    for address in (sides.etcd.endpoint(0), sides.mizzen.http_address(0)):
        version = request(address, "/version", method="GET")
        assert version.status == 200
        assert set(version.json()) == {"etcdserver", "etcdcluster"}
        health = request(address, "/health", method="GET")
        assert (health.status, health.content_type, health.body) == (
            200,
            "text/plain; charset=utf-8",
            b'{"health":"true"}',
        )
        assert request(address, "/health").status == 405  # POST
        metrics = request(address, "/metrics", method="GET")
        assert metrics.status == 200
        assert metrics.content_type.startswith("text/plain; version=0.0.4")
        assert b"\nprocess_resident_memory_bytes " in metrics.body
    mizzen = request(sides.mizzen.http_address(0), "/version", method="GET").json()
    assert mizzen == {"etcdserver": "3.5.0", "etcdcluster": "3.5.0"}  # as Maintenance.Status


def test_etcdctl_check_datascale(sides: Sides) -> None:
    """etcdctl reads http://<first endpoint>/metrics and writes through the gRPC
    balancer, which skips an endpoint that does not speak gRPC: listing the gateway
    first and the client port second gives it both (docs/store.md)."""
    endpoints = f"http://{sides.mizzen.http_address(0)},{sides.mizzen.endpoint(0)}"
    done = subprocess.run(
        ["etcdctl", "check", "datascale", "--load", "s", "--endpoints", endpoints],
        capture_output=True,
        text=True,
        env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
        timeout=100,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS: Approximate system memory used" in done.stdout


# ------------------------------------------------------------------ a real gateway client


@pytest.mark.parametrize("side", ["etcd", "mizzen"])
def test_etcd3gw_client(sides: Sides, side: str) -> None:
    """etcd3gw (PyPI), unchanged, against etcd's gateway and Mizzen's."""
    from etcd3gw.client import Etcd3Client

    address = sides.etcd.endpoint(0) if side == "etcd" else sides.mizzen.http_address(0)
    host, _, port = address.rpartition(":")
    client = Etcd3Client(host=host, port=int(port), timeout=TIMEOUT)
    assert client.api_path == "/v3/"  # discovered from /version
    prefix = f"/gw3/{uuid.uuid4().hex[:8]}/"
    assert client.status()["header"]["revision"]
    assert len(client.members()) == 3
    assert client.put(prefix + "a", "1")
    assert client.get(prefix + "a") == [b"1"]
    assert client.create(prefix + "a", "2") is False  # exists: the txn fails
    assert client.replace(prefix + "a", "1", "3")
    assert client.get(prefix + "a") == [b"3"]
    client.put(prefix + "b", "4")
    assert sorted(v for v, _ in client.get_prefix(prefix)) == [b"3", b"4"]
    lease = client.lease(ttl=30)
    client.put(prefix + "leased", "x", lease=lease)
    assert lease.keys() == [(prefix + "leased").encode()]
    assert 0 < lease.refresh() <= 30
    with client.lock(id=prefix + "lock", ttl=30) as lock:
        assert lock.is_acquired()
    assert lease.revoke()
    assert client.get(prefix + "leased") == []
    events, cancel = client.watch_prefix(prefix)
    try:
        client.put(prefix + "w", "5")
        event = next(events)
        assert (event["kv"]["key"], event["kv"]["value"]) == ((prefix + "w").encode(), b"5")
    finally:
        cancel()
    assert client.delete_prefix(prefix)
    assert client.get_prefix(prefix) == []


# ------------------------------------------------------------------ secure mode


@dataclass
class SecureGateway:
    pki: Pki
    address: str  # certificates only
    token_address: str  # certificates or Mizzen bearer tokens (the store has --token-listen)

    def context(self, name: str | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.dir / "ca.crt"))
        if name is not None:
            creds = self.pki.creds(name)
            context.load_cert_chain(cast(str, creds.cert), cast(str, creds.key))
        return context


@pytest.fixture(scope="module")
def secure(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureGateway]:
    """Two one-member secure stores: one takes client certificates only, the other
    also bearer tokens (--token-listen), on their gateways as on their gRPC ports."""
    base = tmp_path_factory.mktemp("secure-gateway")
    plain = GatewayCluster(1, base / "certs", extra_args=pki.store_flags())
    token_port = free_ports(1)[0]
    tokens = [
        *pki.store_flags(),
        "--token-file", str(pki.tokens),
        "--token-listen", f"{HOST}:{token_port}",
    ]  # fmt: skip
    with_tokens = GatewayCluster(1, base / "tokens", extra_args=tokens)
    for cluster in (plain, with_tokens):
        cluster.probe_credentials = pki.creds("admin")
    try:
        plain.start()
        with_tokens.start()
        yield SecureGateway(pki, plain.http_address(0), with_tokens.http_address(0))
    finally:
        with_tokens.stop()
        plain.stop()


def test_secure_gateway_needs_a_client_certificate(secure: SecureGateway) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError)):
        request(secure.address, "/v3/kv/range", {"key": b64("a")}, context=secure.context())
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        request(secure.address, "/v3/kv/range", {"key": b64("a")})  # plaintext HTTP
    # a store that takes tokens lets the TLS handshake through, then wants one
    answer = request(
        secure.token_address, "/v3/kv/range", {"key": b64("a")}, context=secure.context()
    )
    assert (answer.status, answer.json()["code"]) == (401, 16), answer
    assert "no client certificate or bearer token" in answer.json()["message"]
    for path in ("/metrics", "/health", "/version"):
        anonymous = request(secure.token_address, path, method="GET", context=secure.context())
        assert anonymous.status == 401, anonymous
        token = {"Authorization": f"Bearer {secure.pki.viewer_token}"}
        with_token = request(
            secure.token_address, path, method="GET", headers=token, context=secure.context()
        )
        assert with_token.status == 200, with_token
        with_cert = request(secure.address, path, method="GET", context=secure.context("vera"))
        assert with_cert.status == 200, with_cert


def test_secure_gateway_authorizes_as_grpc(secure: SecureGateway) -> None:
    put = {"key": b64("/gw/secure"), "value": b64("v")}
    admin = request(secure.address, "/v3/kv/put", put, context=secure.context("admin"))
    assert admin.status == 200, admin
    viewer = request(secure.address, "/v3/kv/put", put, context=secure.context("vera"))
    assert (viewer.status, viewer.json()["code"]) == (403, 7), viewer
    assert "vera (role viewer) may not" in viewer.json()["message"]
    read = {"key": b64("/mizzen/leader/x")}
    leader_keys = request(secure.address, "/v3/kv/range", read, context=secure.context("vera"))
    assert leader_keys.status == 200, leader_keys
    watch = {"create_request": {"key": b64("/gw/secure")}}
    refused = request(secure.address, "/v3/watch", watch, context=secure.context("vera"))
    assert refused.status == 403, refused
    assert refused.json()["error"]["grpc_code"] == 7  # a stream's error, as grpc-gateway's
    # Mizzen bearer tokens on the store that takes them
    for token, status in ((secure.pki.viewer_token, 403), (secure.pki.admin_token, 200)):
        answer = request(
            secure.token_address,
            "/v3/kv/put",
            put,
            headers={"Authorization": f"Bearer {token}"},
            context=secure.context(),
        )
        assert answer.status == status, answer
    wrong = request(
        secure.token_address,
        "/v3/kv/put",
        put,
        headers={"Authorization": "Bearer nope"},
        context=secure.context(),
    )
    assert (wrong.status, wrong.json()["message"]) == (401, "mizzen: invalid bearer token")


# ------------------------------------------------------------------ no leader (runs last)


def test_health_without_a_leader(sides: Sides) -> None:
    """The two followers gone: on the leader, which steps down, /health and a hasleader
    request answer as etcd's do. (A follower left alone says so too:
    tests/integration/test_no_leader.py.)"""
    survivors = []
    for cluster in (sides.etcd, sides.mizzen):
        survivor = cluster.leader_index()
        for i in range(3):
            if i != survivor:
                cluster.kill(i)
        survivors.append(survivor)

    def when_leaderless(address: str) -> tuple[Answer, Answer]:
        deadline = time.monotonic() + 60
        while True:
            health = request(address, "/health", method="GET")
            put = request(
                address,
                "/v3/kv/range",
                {"key": b64("a")},
                headers={"Grpc-Metadata-hasleader": "true"},
            )
            if health.status == 503 and b"no leader" in put.body:
                return health, put
            assert time.monotonic() < deadline, (health, put)
            time.sleep(0.2)

    etcd = when_leaderless(sides.etcd.endpoint(survivors[0]))
    mizzen = when_leaderless(sides.mizzen.http_address(survivors[1]))
    assert etcd == mizzen
    assert etcd[0].body == b'{"health":"false"}\n'
    assert etcd[1].json() == {
        "error": "etcdserver: no leader",
        "message": "etcdserver: no leader",
        "code": 14,
    }
