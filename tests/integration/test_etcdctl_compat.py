"""Debian's etcdctl (3.4, API v3) drives a three-member Mizzen store, and its answers are checked.

Every command goes to all three endpoints (etcdctl picks one), except where a
test reads each member on its own. One cluster serves the whole module; every
test writes under its own key prefix. The expected outputs are what etcdctl
prints against a real etcd 3.4 cluster for the same commands.

Long-running commands (watch, lease keep-alive) run as child processes whose
stdout is read line by line with a deadline; every wait in this file is bounded.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from mizzen.testing.local_cluster import MizzenCluster
from mizzen.testing.processes import dies_with_parent
from protos import rpc_pb2, rpc_pb2_grpc

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(
        shutil.which("etcdctl") is None, reason="needs Debian etcd-client (etcdctl)"
    ),
]

COMMAND_TIMEOUT = 20.0  # seconds for one etcdctl invocation
LINE_TIMEOUT = 10.0  # seconds to wait for the next line of a streaming command


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    return env


class Etcdctl:
    """etcdctl bound to the cluster's endpoints."""

    def __init__(self, endpoints: list[str]) -> None:
        self.endpoints = endpoints
        self.env = _env()

    def argv(self, args: tuple[str, ...], endpoints: list[str] | None = None) -> list[str]:
        eps = ",".join(endpoints or self.endpoints)
        return [
            "etcdctl",
            f"--endpoints={eps}",
            "--dial-timeout=5s",
            "--command-timeout=10s",
            *args,
        ]

    def run(
        self,
        *args: str,
        stdin: str | None = None,
        endpoints: list[str] | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.argv(args, endpoints),
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=COMMAND_TIMEOUT,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"etcdctl {' '.join(args)} exited {done.returncode}\n"
                f"stdout: {done.stdout}\nstderr: {done.stderr}"
            )
        return done

    def out(self, *args: str, **kw: Any) -> list[str]:
        """stdout lines of a successful command."""
        return self.run(*args, **kw).stdout.splitlines()

    def json(self, *args: str, **kw: Any) -> Any:
        return json.loads(self.run(*args, "-w", "json", **kw).stdout)

    def fails(self, *args: str, **kw: Any) -> str:
        """Run a command that must fail; return its stderr."""
        done = self.run(*args, check=False, **kw)
        assert done.returncode != 0, f"etcdctl {' '.join(args)} succeeded: {done.stdout}"
        return done.stderr

    def stream(self, *args: str) -> Stream:
        return Stream(self.argv(args), self.env)


class Stream:
    """A long-running etcdctl; its stdout is read by a thread into a queue of lines."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        argv = dies_with_parent(argv)
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._errors: list[str] = []
        self._pumps = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for pump in self._pumps:
            pump.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._errors.append(line)

    def line(self, timeout: float = LINE_TIMEOUT) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no output line within {timeout}s; {self.stderr()}") from None
        if line is None:
            self._lines.put(None)
            raise EOFError(f"etcdctl exited ({self.proc.poll()}); {self.stderr()}")
        return line

    def lines(self, n: int, timeout: float = LINE_TIMEOUT) -> list[str]:
        deadline = time.monotonic() + timeout
        return [self.line(max(0.0, deadline - time.monotonic())) for _ in range(n)]

    def stderr(self) -> str:
        return f"stderr: {''.join(self._errors)[-2000:]!r}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for pump in self._pumps:
            pump.join(timeout=5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def unb64(s: str) -> str:
    return base64.b64decode(s).decode()


def eventually(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll check until true; return the seconds it took, fail after timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout}s")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MizzenCluster]:
    with MizzenCluster(3, tmp_path_factory.mktemp("etcdctl-compat")) as c:
        yield c


@pytest.fixture(scope="module")
def ctl(cluster: MizzenCluster) -> Etcdctl:
    return Etcdctl(cluster.endpoints)


@pytest.fixture
def p(request: pytest.FixtureRequest) -> str:
    """This test's own key prefix."""
    return f"/{request.node.name}/"


def _put_rev(ctl: Etcdctl, key: str, value: str, *flags: str) -> int:
    return int(ctl.json("put", key, value, *flags)["header"]["revision"])


# -- KV -------------------------------------------------------------------------------


def test_put_get(ctl: Etcdctl, p: str) -> None:
    assert ctl.out("put", p + "k", "v1") == ["OK"]
    assert ctl.out("get", p + "k") == [p + "k", "v1"]
    first = ctl.json("get", p + "k")
    (kv,) = first["kvs"]
    assert (unb64(kv["key"]), unb64(kv["value"]), kv["version"]) == (p + "k", "v1", 1)
    assert kv["create_revision"] == kv["mod_revision"] == first["header"]["revision"]
    assert first["count"] == 1

    rev = _put_rev(ctl, p + "k", "v2")
    assert rev == first["header"]["revision"] + 1
    (kv2,) = ctl.json("get", p + "k")["kvs"]
    assert (unb64(kv2["value"]), kv2["version"], kv2["mod_revision"]) == ("v2", 2, rev)
    assert kv2["create_revision"] == kv["create_revision"]
    assert ctl.out("get", p + "k", "--print-value-only") == ["v2"]
    assert ctl.out("get", p + "missing") == []
    assert "kvs" not in ctl.json("get", p + "missing")


def test_get_prefix_keys_only_limit_and_old_revision(ctl: Etcdctl, p: str) -> None:
    for name in ("c", "a", "b"):
        ctl.run("put", p + name, "val-" + name)
    ctl.run("put", p[:-1] + "0", "outside the prefix")

    assert ctl.out("get", p, "--prefix") == [
        p + "a", "val-a", p + "b", "val-b", p + "c", "val-c",
    ]  # fmt: skip
    listed = ctl.json("get", p, "--prefix")
    assert [unb64(kv["key"]) for kv in listed["kvs"]] == [p + "a", p + "b", p + "c"]
    assert listed["count"] == 3 and not listed.get("more", False)

    assert [x for x in ctl.out("get", p, "--prefix", "--keys-only") if x] == [
        p + "a", p + "b", p + "c",
    ]  # fmt: skip
    keys_only = ctl.json("get", p, "--prefix", "--keys-only")
    assert all("value" not in kv for kv in keys_only["kvs"])

    limited = ctl.json("get", p, "--prefix", "--limit=2")
    assert [unb64(kv["key"]) for kv in limited["kvs"]] == [p + "a", p + "b"]
    assert limited["more"] is True and limited["count"] == 3

    old = _put_rev(ctl, p + "a", "second")
    ctl.run("put", p + "a", "third")
    assert ctl.out("get", p + "a", f"--rev={old - 1}") == [p + "a", "val-a"]
    assert ctl.out("get", p + "a", f"--rev={old}") == [p + "a", "second"]
    at_old = ctl.json("get", p, "--prefix", f"--rev={old}")
    assert [unb64(kv["value"]) for kv in at_old["kvs"]] == ["second", "val-b", "val-c"]
    assert at_old["header"]["revision"] == old + 1  # the header is the current revision


def test_serializable_get_on_every_member(ctl: Etcdctl, cluster: MizzenCluster, p: str) -> None:
    rev = _put_rev(ctl, p + "k", "everywhere")
    for ep in cluster.endpoints:
        linear = ctl.json("get", p + "k", "--consistency=l", endpoints=[ep])
        assert [unb64(kv["value"]) for kv in linear["kvs"]] == ["everywhere"], ep

        def caught_up(ep: str = ep) -> bool:
            got = ctl.json("get", p + "k", "--consistency=s", endpoints=[ep])
            return [kv["mod_revision"] for kv in got.get("kvs", [])] == [rev]

        eventually(caught_up, 5.0, f"serializable read on {ep} sees revision {rev}")
        assert ctl.out("get", p + "k", "--consistency=s", endpoints=[ep]) == [
            p + "k",
            "everywhere",
        ]


def test_del_and_del_prefix(ctl: Etcdctl, p: str) -> None:
    for name in ("a", "b", "c", "d"):
        ctl.run("put", p + name, name)
    ctl.run("put", p[:-1] + "0", "outside")
    assert ctl.out("del", p + "a") == ["1"]
    assert ctl.out("del", p + "a") == ["0"]
    assert ctl.out("del", p + "b", "--prev-kv") == ["1", p + "b", "b"]
    before = ctl.json("get", p + "c")["header"]["revision"]
    deleted = ctl.json("del", p, "--prefix")
    assert deleted["deleted"] == 2
    assert deleted["header"]["revision"] == before + 1
    assert ctl.out("get", p, "--prefix") == []
    assert ctl.out("get", p[:-1] + "0") == [p[:-1] + "0", "outside"]
    assert ctl.out("del", p, "--prefix") == ["0"]
    ctl.run("del", p[:-1] + "0")


# -- txn ------------------------------------------------------------------------------


def _txn_script(compares: list[str], success: list[str], failure: list[str]) -> str:
    return "\n".join([*compares, "", *success, "", *failure, ""]) + "\n"


def test_txn_both_outcomes(ctl: Etcdctl, p: str) -> None:
    x = p + "x"
    ctl.run("put", x, "1")

    script = _txn_script(
        [f'value("{x}") = "1"', f'mod("{x}") > "0"'],
        [f"put {p}then yes", f"get {x}"],
        [f"put {p}else no"],
    )
    out = ctl.out("txn", "--interactive", stdin=script)
    assert out == [
        "compares:",
        "success requests (get, put, del):",
        "failure requests (get, put, del):",
        "SUCCESS",
        "",
        "OK",
        "",
        x,
        "1",
    ]

    script = _txn_script(
        [f'value("{x}") = "2"'],
        [f"put {p}then2 yes"],
        [f"put {p}else2 no", f"del {x}", f"get {p}then"],
    )
    answer = ctl.json("txn", stdin=script)
    assert answer.get("succeeded", False) is False
    responses = [r["Response"] for r in answer["responses"]]
    assert [next(iter(r)) for r in responses] == [
        "ResponsePut",
        "ResponseDeleteRange",
        "ResponseRange",
    ]
    assert responses[1]["ResponseDeleteRange"]["deleted"] == 1
    (kv,) = responses[2]["ResponseRange"]["kvs"]
    assert (unb64(kv["key"]), unb64(kv["value"])) == (p + "then", "yes")

    missing = _txn_script([f'version("{p}missing") = "0"'], [f"put {p}created ok"], [])
    assert ctl.out("txn", stdin=missing) == ["SUCCESS", "", "OK"]

    stored = ctl.out("get", p, "--prefix")
    assert stored == [p + "created", "ok", p + "else2", "no", p + "then", "yes"]


def test_txn_nested_responses_carry_revision(ctl: Etcdctl, p: str) -> None:
    script = _txn_script([], [f"put {p}k v", f"get {p}k"], [])
    answer = ctl.json("txn", stdin=script)
    rev = answer["header"]["revision"]
    put, got = (r["Response"] for r in answer["responses"])
    assert put["ResponsePut"].get("header", {}).get("revision") == rev
    assert got["ResponseRange"].get("header", {}).get("revision") == rev


# -- watch ----------------------------------------------------------------------------


def _events(lines: list[str]) -> list[tuple[str, str, str]]:
    """etcdctl's simple watch output: each event is 3 lines (type, key, value)."""
    assert len(lines) % 3 == 0, lines
    return [(lines[i], lines[i + 1], lines[i + 2]) for i in range(0, len(lines), 3)]


def _wait_watching(ctl: Etcdctl, watch: Stream, key: str, timeout: float = 15.0) -> None:
    """Write key until the watch reports it: from then on, the watch is live."""
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        n += 1
        ctl.run("put", key, f"ping{n}")
        try:
            first = watch.line(timeout=1.0)
        except TimeoutError:
            continue
        rest = watch.lines(2)
        assert (first, rest[0]) == ("PUT", key), (first, rest)
        return
    raise AssertionError(f"watch did not report {key} within {timeout}s; {watch.stderr()}")


def test_watch_prefix_streams_events_in_order(ctl: Etcdctl, p: str) -> None:
    ready = p + "0-ready"
    with ctl.stream("watch", "--prefix", p) as watch:
        _wait_watching(ctl, watch, ready)
        ctl.run("put", p + "a", "1")
        ctl.run("put", p + "b", "2")
        ctl.run("put", p[:-1] + "0", "outside the prefix")
        ctl.run("put", p + "a", "3")
        ctl.run("del", p + "b")
        ctl.run("put", p + "c", "last")
        seen: list[tuple[str, str, str]] = []
        while len(seen) < 5:
            (event,) = _events(watch.lines(3))
            if event[1] != ready:  # a late echo of an earlier ping
                seen.append(event)
    assert seen == [
        ("PUT", p + "a", "1"),
        ("PUT", p + "b", "2"),
        ("PUT", p + "a", "3"),
        ("DELETE", p + "b", ""),
        ("PUT", p + "c", "last"),
    ]
    ctl.run("del", p[:-1] + "0")


def test_watch_rev_replays_history(ctl: Etcdctl, p: str) -> None:
    start = _put_rev(ctl, p + "a", "1")
    ctl.run("put", p + "b", "2")
    ctl.run("del", p + "a")
    ctl.run("put", p + "b", "3")
    expected = [
        ("PUT", p + "a", "1"),
        ("PUT", p + "b", "2"),
        ("DELETE", p + "a", ""),
        ("PUT", p + "b", "3"),
    ]
    with ctl.stream("watch", "--prefix", p, f"--rev={start}") as watch:
        assert _events(watch.lines(12)) == expected
        ctl.run("put", p + "c", "live")
        assert _events(watch.lines(3)) == [("PUT", p + "c", "live")]
    with ctl.stream("watch", "--prefix", p, f"--rev={start + 2}", "-w", "json") as watch:
        got: list[tuple[int, str, str]] = []
        while len(got) < 3:
            resp = json.loads(watch.line())
            for ev in resp["Events"]:
                kind = "DELETE" if ev.get("type") == 1 else "PUT"
                got.append((ev["kv"]["mod_revision"], kind, unb64(ev["kv"]["key"])))
    assert got == [
        (start + 2, "DELETE", p + "a"),
        (start + 3, "PUT", p + "b"),
        (start + 4, "PUT", p + "c"),
    ]


# -- leases ---------------------------------------------------------------------------

GRANTED = re.compile(r"^lease ([0-9a-f]+) granted with TTL\((\d+)s\)$")


def _grant(ctl: Etcdctl, ttl: int) -> str:
    (line,) = ctl.out("lease", "grant", str(ttl))
    m = GRANTED.match(line)
    assert m is not None, line
    assert int(m.group(2)) == ttl
    return m.group(1)


def _present(ctl: Etcdctl, key: str) -> bool:
    return bool(ctl.out("get", key))


def test_lease_grant_attach_list_revoke(ctl: Etcdctl, p: str) -> None:
    lease = _grant(ctl, 60)
    assert ctl.out("put", p + "k", "v", f"--lease={lease}") == ["OK"]
    ctl.run("put", p + "other", "no lease")
    (kv,) = ctl.json("get", p + "k")["kvs"]
    assert kv["lease"] == int(lease, 16)

    ttl = ctl.json("lease", "timetolive", lease, "--keys")
    assert ttl["id"] == int(lease, 16) and ttl["granted-ttl"] == 60
    assert 0 < ttl["ttl"] <= 60
    assert [unb64(k) for k in ttl["keys"]] == [p + "k"]
    (line,) = ctl.out("lease", "timetolive", lease, "--keys")
    assert re.fullmatch(
        rf"lease {lease} granted with TTL\(60s\), remaining\((\d+)s\), "
        rf"attached keys\(\[{re.escape(p)}k\]\)",
        line,
    ), line

    listed = ctl.out("lease", "list")
    assert listed[0].startswith("found ") and lease in listed[1:]
    assert int(lease, 16) in [x["id"] for x in ctl.json("lease", "list")["leases"]]

    assert ctl.out("lease", "revoke", lease) == [f"lease {lease} revoked"]
    assert ctl.out("get", p, "--prefix") == [p + "other", "no lease"]
    assert lease not in ctl.out("lease", "list")[1:]
    assert ctl.out("lease", "timetolive", lease) == [f"lease {lease} already expired"]
    assert "requested lease not found" in ctl.fails("lease", "revoke", lease)
    assert "requested lease not found" in ctl.fails("put", p + "k", "v", f"--lease={lease}")


def test_lease_keep_alive_holds_key_past_ttl(ctl: Etcdctl, p: str) -> None:
    lease = _grant(ctl, 2)
    ctl.run("put", p + "k", "kept", f"--lease={lease}")
    with ctl.stream("lease", "keep-alive", lease) as keep:
        assert keep.line() == f"lease {lease} keepalived with TTL(2)"
        until = time.monotonic() + 5.0  # 2.5 TTLs
        while time.monotonic() < until:
            assert _present(ctl, p + "k"), "key vanished while its lease was kept alive"
            time.sleep(0.25)
        assert keep.line() == f"lease {lease} keepalived with TTL(2)"
    took = eventually(lambda: not _present(ctl, p + "k"), 10.0, "key expires after keep-alive")
    assert took > 0.5


def test_lease_not_kept_alive_expires(ctl: Etcdctl, p: str) -> None:
    granted_at = time.monotonic()
    lease = _grant(ctl, 2)
    ctl.run("put", p + "k", "short-lived", f"--lease={lease}")
    assert _present(ctl, p + "k")
    eventually(lambda: not _present(ctl, p + "k"), 12.0, "key of an unrenewed 2 s lease expires")
    assert time.monotonic() - granted_at >= 1.5, "expired well before its TTL"
    assert ctl.out("lease", "timetolive", lease) == [f"lease {lease} already expired"]
    assert lease not in ctl.out("lease", "list")[1:]


# -- compaction -----------------------------------------------------------------------


def test_compaction(ctl: Etcdctl, p: str) -> None:
    r1 = _put_rev(ctl, p + "k", "v1")
    r2 = _put_rev(ctl, p + "k", "v2")
    r3 = _put_rev(ctl, p + "k", "v3")
    assert ctl.out("compact", str(r2)) == [f"compacted revision {r2}"]

    err = ctl.fails("get", p + "k", f"--rev={r1}")
    assert "etcdserver: mvcc: required revision has been compacted" in err
    assert ctl.out("get", p + "k", f"--rev={r2}") == [p + "k", "v2"]
    assert ctl.out("get", p + "k", f"--rev={r3}") == [p + "k", "v3"]
    assert "required revision has been compacted" in ctl.fails("compact", str(r2))
    assert "required revision is a future revision" in ctl.fails("compact", str(r3 + 1000))

    watch = ctl.run("watch", p + "k", f"--rev={r1}", check=False)
    assert watch.returncode != 0
    assert (
        "watch was canceled (etcdserver: mvcc: required revision has been compacted)"
        in watch.stdout + watch.stderr
    )


# -- cluster --------------------------------------------------------------------------


def test_endpoint_status(ctl: Etcdctl, cluster: MizzenCluster) -> None:
    statuses = ctl.json("endpoint", "status")
    assert sorted(s["Endpoint"] for s in statuses) == sorted(cluster.endpoints)
    leaders = {s["Status"]["leader"] for s in statuses}
    assert len(leaders) == 1 and 0 not in leaders
    (leader,) = leaders
    assert leader == cluster.member_id(cluster.leader_index())
    member_ids = {s["Status"]["header"]["member_id"] for s in statuses}
    assert len(member_ids) == 3 and leader in member_ids
    assert len({s["Status"]["header"]["cluster_id"] for s in statuses}) == 1
    for s in statuses:
        st = s["Status"]
        assert st["raftTerm"] > 0 and st["header"]["raft_term"] > 0
        assert st["raftIndex"] > 0 and st["version"]


def test_endpoint_health(ctl: Etcdctl, cluster: MizzenCluster) -> None:
    health = ctl.json("endpoint", "health")
    assert sorted(h["endpoint"] for h in health) == sorted(cluster.endpoints)
    assert all(h["health"] is True for h in health), health
    lines = ctl.run("endpoint", "health").stderr.splitlines()  # etcdctl 3.4 prints to stderr
    assert len(lines) == 3, lines
    for line in lines:
        assert re.fullmatch(
            r"127\.0\.0\.1:\d+ is healthy: successfully committed proposal: took = \S+", line
        ), line


def test_member_list(ctl: Etcdctl, cluster: MizzenCluster) -> None:
    members = ctl.json("member", "list")["members"]
    by_name = {m["name"]: m for m in members}
    assert sorted(by_name) == ["n1", "n2", "n3"]
    for i, name in enumerate(cluster.names):
        m = by_name[name]
        assert m["clientURLs"] == [f"http://{cluster.endpoint(i)}"]
        assert m["peerURLs"] and all(u.startswith("http://127.0.0.1:") for u in m["peerURLs"])
        assert m["ID"] == cluster.member_id(i)
    assert len({m["ID"] for m in members}) == 3

    rows = [line.split(", ") for line in ctl.out("member", "list")]
    assert sorted(r[2] for r in rows) == ["n1", "n2", "n3"]
    for row in rows:
        i = cluster.names.index(row[2])
        assert row[1] == "started" and row[-1] == "false"
        assert int(row[0], 16) == cluster.member_id(i)
        assert row[4] == f"http://{cluster.endpoint(i)}"


def test_alarm_list_and_disarm(ctl: Etcdctl, cluster: MizzenCluster, p: str) -> None:
    """What etcdctl 3.4 prints against etcd 3.4 with a NOSPACE alarm raised by hand."""
    assert ctl.out("alarm", "list") == []
    me = cluster.member_id(0)
    req = rpc_pb2.AlarmRequest
    with grpc.insecure_channel(cluster.endpoint(0)) as ch:
        rpc_pb2_grpc.MaintenanceStub(ch).Alarm(
            req(action=req.ACTIVATE, memberID=me, alarm=rpc_pb2.NOSPACE), timeout=10
        )
    try:
        assert ctl.out("alarm", "list") == [f"memberID:{me} alarm:NOSPACE "]
        assert ctl.json("alarm", "list") == {"alarms": [{"memberID": me, "alarm": 1}]}
        err = ctl.fails("put", p + "k", "v")
        assert "Error: etcdserver: mvcc: database space exceeded" in err
        for row in ctl.out("endpoint", "status"):
            assert row.endswith(f", memberID:{me} alarm:NOSPACE "), row
        assert ctl.out("get", p + "k") == []  # reads pass
    finally:
        disarmed = ctl.out("alarm", "disarm")
    assert disarmed == [f"memberID:{me} alarm:NOSPACE "]
    assert ctl.out("alarm", "list") == []
    assert ctl.out("alarm", "disarm") == []
    assert ctl.out("put", p + "k", "v") == ["OK"]
