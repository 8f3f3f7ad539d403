"""Side by side: the same etcd v3 scenario against a Debian etcd 3.4 and a Mizzen store.

A differential test runs one scenario (an async function of a gRPC channel) on
both stores and compares what each answered, field by field, after making the
answers comparable:

- the two stores number revisions differently (Mizzen's own records move its
  revision too), so every revision field is rewritten relative to a base
  revision the scenario records first (``Trace.base``);
- a header's cluster, member and term identify the store, not the answer, and
  are dropped;
- lease ids are chosen by each store and are replaced by the order in which
  the trace first saw them (``lease#1``, ...);
- a failure is recorded as its gRPC status code and message.

Usage (see tests/integration/test_etcd_differential_*.py)::

    async def scenario(trace: Trace) -> None:
        kv = rpc_pb2_grpc.KVStub(trace.channel)
        put = await kv.Put(rpc_pb2.PutRequest(key=trace.key("a"), value=b"1"))
        trace.base = put.header.revision
        trace.record("put", put)
        await trace.call("range", kv.Range(rpc_pb2.RangeRequest(key=trace.key("a"))))

    async def test_something(pair: Pair) -> None:
        await pair.same(scenario)

Every test gets its own key prefix, so scenarios in one module share a pair
of clusters (module scope; started once, stopped even on failure).
"""

from __future__ import annotations

import base64
import difflib
import json
import pprint
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from mizzen.testing.local_cluster import EtcdCluster, LocalCluster, MizzenCluster

# Fields that hold a store revision, wherever they appear in a response.
REVISION_FIELDS = frozenset(
    {"revision", "create_revision", "mod_revision", "compact_revision", "rev"}
)
# Fields that identify the answering store rather than the answer.
IDENTITY_FIELDS = frozenset({"cluster_id", "member_id", "raft_term"})
LEASE_FIELDS = frozenset({"lease", "ID", "id"})
# Fields that hold a key (base64 in JSON): shown relative to the test's prefix.
KEY_FIELDS = frozenset({"key", "range_end", "keys", "name"})


@dataclass
class Trace:
    """What one store answered during a scenario, made comparable (see the module doc)."""

    channel: grpc.aio.Channel
    prefix: bytes
    side: str
    base: int = 0
    entries: list[tuple[str, Any]] = field(default_factory=list)
    _leases: dict[int, str] = field(default_factory=dict)

    def key(self, name: str | bytes) -> bytes:
        """A key under this test's prefix (the same relative key on both stores)."""
        return self.prefix + (name.encode() if isinstance(name, str) else name)

    def lease_name(self, lease_id: int) -> str:
        if lease_id == 0:
            return "0"
        return self._leases.setdefault(lease_id, f"lease#{len(self._leases) + 1}")

    def normalize(self, msg: Message | Any, drop: frozenset[str] = frozenset()) -> Any:
        if isinstance(msg, Message):
            raw = json_format.MessageToDict(
                msg,
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
            )
        else:
            raw = msg
        return self._walk(raw, "", IDENTITY_FIELDS | drop)

    def _walk(self, value: Any, name: str, drop: frozenset[str]) -> Any:
        if isinstance(value, dict):
            return {k: self._walk(v, k, drop) for k, v in sorted(value.items()) if k not in drop}
        if isinstance(value, list):
            return [self._walk(v, name, drop) for v in value]
        if (
            name in REVISION_FIELDS
            and isinstance(value, str | int)
            and str(value).lstrip("-").isdigit()
        ):
            n = int(value)
            return f"base{n - self.base:+d}" if n > 0 and self.base else n
        if (
            name in LEASE_FIELDS
            and isinstance(value, str | int)
            and str(value).lstrip("-").isdigit()
        ):
            return self.lease_name(int(value))
        if name in KEY_FIELDS and isinstance(value, str):
            return self._relative_key(value)
        return value

    def _relative_key(self, b64: str) -> str:
        try:
            raw = base64.b64decode(b64, validate=True)
        except ValueError:
            return b64
        if raw.startswith(self.prefix):
            return "<prefix>" + raw[len(self.prefix) :].decode(errors="replace")
        return b64

    def record(self, what: str, msg: Message | Any, drop: frozenset[str] = frozenset()) -> None:
        """Record an answer (a message, or any JSON-like value) without the fields named
        in drop (those that depend on timing, such as a lease's remaining TTL)."""
        self.entries.append((what, self.normalize(msg, drop)))

    def error(self, what: str, err: grpc.aio.AioRpcError | grpc.RpcError) -> None:
        """Record a failure as (code, message)."""
        code = err.code()
        self.entries.append((what, {"code": code.name if code else None, "details": err.details()}))

    async def call(
        self, what: str, pending: Awaitable[Message], drop: frozenset[str] = frozenset()
    ) -> Message | None:
        """Await one unary call and record its answer (see record) or its failure."""
        try:
            answer = await pending
        except grpc.aio.AioRpcError as err:
            self.error(what, err)
            return None
        self.record(what, answer, drop)
        return answer


Scenario = Callable[[Trace], Awaitable[None]]


@dataclass
class Side:
    name: str
    cluster: LocalCluster

    def endpoints(self) -> list[str]:
        return self.cluster.endpoints

    def channel(self, member: int = 0) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.cluster.endpoint(member))


@dataclass
class Pair:
    """A 3-member etcd 3.4 and a 3-member Mizzen store, running side by side."""

    etcd: Side
    mizzen: Side

    async def run(self, side: Side, scenario: Scenario, prefix: bytes) -> Trace:
        async with side.channel() as channel:
            trace = Trace(channel=channel, prefix=prefix, side=side.name)
            await scenario(trace)
            return trace

    async def same(self, scenario: Scenario) -> list[tuple[str, Any]]:
        """Run the scenario on both stores; fail with a readable diff unless they agree.

        Returns etcd's normalized trace (for further assertions)."""
        prefix = f"/diff/{uuid.uuid4().hex[:8]}/".encode()
        etcd = await self.run(self.etcd, scenario, prefix)
        mizzen = await self.run(self.mizzen, scenario, prefix)
        assert_same(etcd.entries, mizzen.entries)
        return etcd.entries


def _lines(entries: list[tuple[str, Any]]) -> list[str]:
    out: list[str] = []
    for what, value in entries:
        out.append(f"== {what}")
        out.extend(pprint.pformat(value, width=100, sort_dicts=True).splitlines())
    return out


def assert_same(etcd: list[tuple[str, Any]], mizzen: list[tuple[str, Any]]) -> None:
    if json.dumps(etcd, sort_keys=True) == json.dumps(mizzen, sort_keys=True):
        return
    diff = difflib.unified_diff(_lines(etcd), _lines(mizzen), "etcd 3.4", "mizzen", lineterm="")
    raise AssertionError("the stores answered differently:\n" + "\n".join(diff))


def start_pair(
    base: Path, *, etcd_args: tuple[str, ...] = (), mizzen_args: tuple[str, ...] = ()
) -> Iterator[Pair]:
    """Start both clusters (3 members each); stop both even on failure."""
    etcd = EtcdCluster(3, base / "etcd", extra_args=etcd_args)
    mizzen = MizzenCluster(3, base / "mizzen", extra_args=mizzen_args)
    try:
        etcd.start()
        mizzen.start()
        yield Pair(Side("etcd", etcd), Side("mizzen", mizzen))
    finally:
        mizzen.stop()
        etcd.stop()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Both clusters with their defaults, shared by a module's scenarios."""
    yield from start_pair(tmp_path_factory.mktemp("pair"))
