"""What the store checks of a write request before it is proposed, and what it costs.

etcd's static checks of Put and Txn requests (``check_key``, ``check_put``,
``check_txn``: a key given, no value or lease with its ignore flag, at most
``MAX_TXN_OPS`` operations, no key written twice in one branch), run by the
services before a proposal and again by the state machine when it applies one;
and etcd's quota cost of a write (``put_cost``, ``txn_cost``), which
``--quota-backend-bytes`` compares. Pure functions of the request.
"""

from __future__ import annotations

from typing import Any

from protos import rpc_pb2

from .errors import Code, StoreError
from .keyspace import in_range

MAX_TXN_OPS = 128


def check_key(key: bytes) -> None:
    if not key:
        raise StoreError(Code.INVALID_ARGUMENT, "etcdserver: key is not provided")


def check_put(req: rpc_pb2.PutRequest) -> None:
    check_key(req.key)
    if req.ignore_value and req.value:
        raise StoreError(Code.INVALID_ARGUMENT, "etcdserver: value is provided")
    if req.ignore_lease and req.lease:
        raise StoreError(Code.INVALID_ARGUMENT, "etcdserver: lease is provided")


def check_txn(req: rpc_pb2.TxnRequest, max_ops: int = MAX_TXN_OPS, nested: bool = False) -> None:
    """etcd's static txn checks: op count, well-formed ops, no key written twice in one branch.

    A nested txn gets the op budget its parent leaves (etcd's checkTxnRequest).
    """
    opc = max(len(req.compare), len(req.success), len(req.failure))
    if opc > max_ops:
        raise StoreError(Code.INVALID_ARGUMENT, "etcdserver: too many operations in txn request")
    for c in req.compare:
        check_key(c.key)
    for op in (*req.success, *req.failure):
        which = op.WhichOneof("request")
        if which == "request_put":
            check_put(op.request_put)
        elif which == "request_delete_range":
            check_key(op.request_delete_range.key)
        elif which == "request_range":
            check_key(op.request_range.key)
        elif which == "request_txn":
            check_txn(op.request_txn, max_ops - opc, nested=True)
        else:
            raise StoreError(Code.INVALID_ARGUMENT, "etcdserver: key not found")
    if not nested:
        _check_branch(req.success)
        _check_branch(req.failure)


def _check_branch(ops: Any) -> tuple[set[bytes], list[tuple[bytes, bytes]]]:
    """etcd's checkIntervals: the keys put and ranges deleted by ops, at this level and below.

    A key may not be put twice, nor put and deleted, except that the two
    branches of a nested txn are exclusive and may put the same key.
    """
    dup = StoreError(Code.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request")
    dels = [
        (op.request_delete_range.key, op.request_delete_range.range_end)
        for op in ops
        if op.WhichOneof("request") == "request_delete_range"
    ]

    def deleted(k: bytes) -> bool:
        return any(in_range(k, lo, hi) for lo, hi in dels)

    puts: set[bytes] = set()
    for op in ops:
        if op.WhichOneof("request") != "request_txn":
            continue
        puts_then, dels_then = _check_branch(op.request_txn.success)
        puts_else, dels_else = _check_branch(op.request_txn.failure)
        for k in puts_then:
            if k in puts or deleted(k):
                raise dup
            puts.add(k)
        for k in puts_else:
            if (k in puts and k not in puts_then) or deleted(k):
                raise dup
            puts.add(k)
        dels += dels_then + dels_else
    for op in ops:
        if op.WhichOneof("request") == "request_put":
            k = op.request_put.key
            if k in puts or deleted(k):
                raise dup
            puts.add(k)
    return puts, dels


def put_cost(req: rpc_pb2.PutRequest) -> int:
    """What a Put adds to the store's size, as the quota counts it."""
    return len(req.key) + len(req.value)


def txn_cost(req: rpc_pb2.TxnRequest) -> int:
    """etcd's quota cost of a Txn: the larger branch's top-level Puts (nested txns
    and deletes cost nothing, as in etcd 3.4)."""

    def branch(ops: Any) -> int:
        return sum(
            put_cost(op.request_put) for op in ops if op.WhichOneof("request") == "request_put"
        )

    return max(branch(req.success), branch(req.failure))


def txn_is_read_only(req: rpc_pb2.TxnRequest) -> bool:
    """etcd's isTxnReadonly: only Range ops, at the top level."""
    return all(op.WhichOneof("request") == "request_range" for op in (*req.success, *req.failure))
