"""Request builders: keys, ranges, and the Compare / Op helpers for transactions.

await client.txn(
    [Compare.mod_revision("/a") == 5, Compare.value("/b") == b"x"],
    [Op.put("/a", b"new")],
    [Op.get("/a")],
)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from mizzen.keyrange import prefix_end
from protos import rpc_pb2

Bytes = str | bytes
"""Keys and values: str is encoded as UTF-8."""
SortOrder = Literal["none", "ascend", "descend"]
SortTarget = Literal["key", "version", "create", "mod", "value"]

_SORT_ORDERS = {"none": 0, "ascend": 1, "descend": 2}
_SORT_TARGETS = {"key": 0, "version": 1, "create": 2, "mod": 3, "value": 4}


def to_bytes(data: Bytes) -> bytes:
    return data.encode() if isinstance(data, str) else bytes(data)


prefix_range_end = prefix_end  # the SDK's public name for it


def key_range(key: Bytes, *, prefix: bool, range_end: Bytes | None) -> tuple[bytes, bytes]:
    """(key, range_end) for a single key, a prefix, or an explicit range."""
    k = to_bytes(key)
    if prefix and range_end is not None:
        raise ValueError("give prefix=True or range_end, not both")
    if prefix:
        return (k or b"\0"), prefix_range_end(k)
    return k, b"" if range_end is None else to_bytes(range_end)


def range_request(
    key: Bytes,
    range_end: Bytes | None = None,
    *,
    prefix: bool = False,
    limit: int = 0,
    revision: int = 0,
    keys_only: bool = False,
    count_only: bool = False,
    serializable: bool = False,
    sort_order: SortOrder = "none",
    sort_target: SortTarget = "key",
    min_mod_revision: int = 0,
    max_mod_revision: int = 0,
    min_create_revision: int = 0,
    max_create_revision: int = 0,
) -> rpc_pb2.RangeRequest:
    k, end = key_range(key, prefix=prefix, range_end=range_end)
    return rpc_pb2.RangeRequest(
        key=k,
        range_end=end,
        limit=limit,
        revision=revision,
        keys_only=keys_only,
        count_only=count_only,
        serializable=serializable,
        sort_order=_SORT_ORDERS[sort_order],  # type: ignore[arg-type]
        sort_target=_SORT_TARGETS[sort_target],  # type: ignore[arg-type]
        min_mod_revision=min_mod_revision,
        max_mod_revision=max_mod_revision,
        min_create_revision=min_create_revision,
        max_create_revision=max_create_revision,
    )


def put_request(
    key: Bytes, value: Bytes, *, lease: int = 0, prev_kv: bool = False
) -> rpc_pb2.PutRequest:
    return rpc_pb2.PutRequest(
        key=to_bytes(key), value=to_bytes(value), lease=lease, prev_kv=prev_kv
    )


def delete_request(
    key: Bytes, *, prefix: bool = False, range_end: Bytes | None = None, prev_kv: bool = False
) -> rpc_pb2.DeleteRangeRequest:
    k, end = key_range(key, prefix=prefix, range_end=range_end)
    return rpc_pb2.DeleteRangeRequest(key=k, range_end=end, prev_kv=prev_kv)


@dataclass(frozen=True, slots=True)
class Compare:
    """One txn guard; build it with ``Compare.<target>(key) <op> operand``."""

    key: bytes
    target: str
    result: str
    operand: int | bytes
    range_end: bytes = b""

    @staticmethod
    def value(key: Bytes, *, range_end: Bytes | None = None) -> CompareTarget:
        return CompareTarget(key, "value", range_end)

    @staticmethod
    def version(key: Bytes, *, range_end: Bytes | None = None) -> CompareTarget:
        """``Compare.version(k) == 0`` holds when k does not exist."""
        return CompareTarget(key, "version", range_end)

    @staticmethod
    def create_revision(key: Bytes, *, range_end: Bytes | None = None) -> CompareTarget:
        return CompareTarget(key, "create_revision", range_end)

    @staticmethod
    def mod_revision(key: Bytes, *, range_end: Bytes | None = None) -> CompareTarget:
        return CompareTarget(key, "mod_revision", range_end)

    @staticmethod
    def lease(key: Bytes, *, range_end: Bytes | None = None) -> CompareTarget:
        return CompareTarget(key, "lease", range_end)

    def to_proto(self) -> rpc_pb2.Compare:
        msg = rpc_pb2.Compare(
            key=self.key,
            range_end=self.range_end,
            result=_RESULTS[self.result],  # type: ignore[arg-type]
            target=_TARGETS[self.target],  # type: ignore[arg-type]
        )
        setattr(msg, self.target, self.operand)
        return msg


_RESULTS = {"==": 0, ">": 1, "<": 2, "!=": 3}
_TARGETS = {"version": 0, "create_revision": 1, "mod_revision": 2, "value": 3, "lease": 4}


class CompareTarget:
    """The left side of a Compare; an operator with the operand makes the Compare."""

    __slots__ = ("_key", "_range_end", "_target")

    def __init__(self, key: Bytes, target: str, range_end: Bytes | None) -> None:
        self._key = to_bytes(key)
        self._target = target
        self._range_end = b"" if range_end is None else to_bytes(range_end)

    def _make(self, result: str, operand: object) -> Compare:
        if self._target == "value":
            if not isinstance(operand, str | bytes):
                raise TypeError(f"Compare.value needs bytes or str, got {operand!r}")
            value: int | bytes = to_bytes(operand)
        else:
            if isinstance(operand, bool) or not isinstance(operand, int):
                raise TypeError(f"Compare.{self._target} needs an int, got {operand!r}")
            value = operand
        return Compare(self._key, self._target, result, value, self._range_end)

    def __eq__(self, other: object) -> Compare:  # type: ignore[override]
        return self._make("==", other)

    def __ne__(self, other: object) -> Compare:  # type: ignore[override]
        return self._make("!=", other)

    def __lt__(self, other: object) -> Compare:
        return self._make("<", other)

    def __gt__(self, other: object) -> Compare:
        return self._make(">", other)

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True, eq=False)
class Op:
    """One operation of a txn branch; build it with Op.put / Op.get / Op.delete / Op.txn."""

    request: rpc_pb2.RequestOp

    @staticmethod
    def put(key: Bytes, value: Bytes, *, lease: int = 0, prev_kv: bool = False) -> Op:
        req = put_request(key, value, lease=lease, prev_kv=prev_kv)
        return Op(rpc_pb2.RequestOp(request_put=req))

    @staticmethod
    def get(
        key: Bytes,
        *,
        prefix: bool = False,
        range_end: Bytes | None = None,
        limit: int = 0,
        revision: int = 0,
        keys_only: bool = False,
        count_only: bool = False,
    ) -> Op:
        req = range_request(
            key,
            range_end,
            prefix=prefix,
            limit=limit,
            revision=revision,
            keys_only=keys_only,
            count_only=count_only,
        )
        return Op(rpc_pb2.RequestOp(request_range=req))

    @staticmethod
    def delete(
        key: Bytes, *, prefix: bool = False, range_end: Bytes | None = None, prev_kv: bool = False
    ) -> Op:
        req = delete_request(key, prefix=prefix, range_end=range_end, prev_kv=prev_kv)
        return Op(rpc_pb2.RequestOp(request_delete_range=req))

    @staticmethod
    def txn(compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> Op:
        return Op(rpc_pb2.RequestOp(request_txn=txn_request(compares, success, failure)))

    @property
    def mutating(self) -> bool:
        return request_op_mutates(self.request)


def txn_request(
    compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]
) -> rpc_pb2.TxnRequest:
    return rpc_pb2.TxnRequest(
        compare=[c.to_proto() for c in compares],
        success=[op.request for op in success],
        failure=[op.request for op in failure],
    )


def request_op_mutates(op: rpc_pb2.RequestOp) -> bool:
    which = op.WhichOneof("request")
    if which == "request_range":
        return False
    if which == "request_txn":
        return txn_mutates(op.request_txn)
    return True


def txn_mutates(txn: rpc_pb2.TxnRequest) -> bool:
    """A txn whose branches hold only Range ops is a read and may be retried freely."""
    return any(request_op_mutates(op) for op in [*txn.success, *txn.failure])
