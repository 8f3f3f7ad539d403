"""v3lockpb.Lock: etcd's distributed lock, served by the store itself.

etcd 3.4 serves Lock (and Election, store/election_service.py) with its own
client library (clientv3/concurrency) running inside the server. This module
does the same steps on the node's internal API (propose, barrier, read, the
watch hub), with the same keys, revisions, headers and errors:

* **Lock(name, lease)**: the key ``<name>/<lease id in hex>`` is created bound
  to the lease by one Txn "create_revision == 0 → put, else get" that also
  reads the first key under ``<name>/`` by create revision. If that key is
  ours, the caller holds the lock; otherwise it waits until every key under
  the prefix with a smaller create revision is deleted, watching the newest
  of them (etcd's waitDeletes) and reading again after each deletion. The
  answer carries the key and the header of the Txn (held at once) or of the
  last read (held after waiting). Lease 0 means what it means to etcd: a new
  lease of 60 s (etcd's session TTL) is granted, never kept alive.
* **Unlock(key)**: deletes the key.

Differences from etcd 3.4, both deliberate:

* If the caller's own key disappears while it waits (its lease revoked or
  expired, or the key deleted), the wait ends at once with UNKNOWN
  ``mutex: session is expired`` (etcd 3.5's error). etcd 3.4 keeps waiting
  for the earlier keys and then answers success with a key that no longer
  exists: a lock held by nobody.
* Errors of the underlying operations come back as etcd's server sends them
  (status UNKNOWN, etcd's message), except the transient ones (UNAVAILABLE,
  DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED), which keep their code so that a
  client's retry policy still applies.

A caller that goes away while waiting (cancel, deadline, disconnect) has its
key deleted, as etcd's server does (it unlocks with its own context); a
member that dies leaves the key to its lease.

A waiting call holds no thread: it awaits the watch hub.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import grpc
import structlog

from mizzen import retry_after
from mizzen.grpc_errors import ErrorMapper, Status
from mizzen.keyrange import prefix_end
from protos import rpc_pb2, v3lock_pb2, v3lock_pb2_grpc

from .errors import Code, StoreError
from .kv_service import check_size
from .node import StoreNode
from .requests import check_key, check_txn
from .watch_hub import WatchStream

log = structlog.get_logger("store.lock")

SESSION_TTL = 60  # etcd's concurrency.defaultSessionTTL: the lease granted for lease 0
SESSION_EXPIRED = "mutex: session is expired"
TRANSIENT = frozenset({Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.RESOURCE_EXHAUSTED})

CREATE = rpc_pb2.RangeRequest.CREATE


def _status_for(exc: Exception) -> Status | None:
    """etcd's server returns its client library's errors: UNKNOWN with the message."""
    if not isinstance(exc, StoreError):
        return None
    if exc.code not in TRANSIENT:
        return grpc.StatusCode.UNKNOWN, exc.message
    if exc.retry_after is not None:
        return exc.code.grpc, exc.message, retry_after.trailer(exc.retry_after)
    return exc.code.grpc, exc.message


_mapper = ErrorMapper(_status_for, log=log, internal_prefix="mizzen")
etcd_errors = _mapper.unary
"""Wrap a Lock or Election unary method: StoreError -> UNKNOWN (or its transient code)."""
abort_for = _mapper.abort


def failure(message: str) -> StoreError:
    """One of etcd's plain errors (sent as UNKNOWN with this message)."""
    return StoreError(Code.FAILED_PRECONDITION, message)


class _Sink:
    """Watch responses for one waiting call, decoded when taken."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def send(self, resp: bytes) -> None:
        self.queue.put_nowait(resp)

    def pending(self) -> int:
        return self.queue.qsize()


class HubWatch:
    """Watchers on the node's watch hub for one call; closing removes them."""

    def __init__(self, node: StoreNode) -> None:
        self._hub = node.hub
        self._sink = _Sink()
        self._stream = WatchStream(self._sink)

    def watch(self, key: bytes, start_revision: int, range_end: bytes = b"") -> None:
        """Watch key (or [key, range_end)) from start_revision; synchronous, like a read."""
        req = rpc_pb2.WatchCreateRequest(
            key=key, range_end=range_end, start_revision=start_revision
        )
        self._hub.create(self._stream, req)

    async def next(self) -> rpc_pb2.WatchResponse:
        """The next response that is not a creation notice."""
        while True:
            resp = rpc_pb2.WatchResponse.FromString(await self._sink.queue.get())
            if resp.canceled or not resp.created:
                return resp

    async def deleted(self) -> None:
        """Return at the first DELETE event (or a cancelled watch: read again)."""
        while True:
            resp = await self.next()
            if resp.canceled or any(ev.type == ev.DELETE for ev in resp.events):
                return

    def close(self) -> None:
        self._hub.remove_stream(self._stream)

    def __enter__(self) -> HubWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def first_created(prefix: bytes, max_create_revision: int = 0) -> rpc_pb2.RangeRequest:
    """etcd's WithFirstCreate (or, with a bound, WithLastCreate + WithMaxCreateRev)."""
    if max_create_revision:
        return rpc_pb2.RangeRequest(
            key=prefix,
            range_end=prefix_end(prefix),
            sort_target=CREATE,
            sort_order=rpc_pb2.RangeRequest.DESCEND,
            limit=1,
            max_create_revision=max_create_revision,
        )
    return rpc_pb2.RangeRequest(
        key=prefix,
        range_end=prefix_end(prefix),
        sort_target=CREATE,
        sort_order=rpc_pb2.RangeRequest.ASCEND,
        limit=1,
    )


def session_key(prefix: bytes, lease: int) -> bytes:
    """``<prefix><lease id in hex>`` (Go's %x of the int64 lease id)."""
    return prefix + f"{lease:x}".encode()


class Concurrency:
    """etcd's clientv3/concurrency steps on the node: sessions, Txns and waitDeletes."""

    def __init__(self, node: StoreNode) -> None:
        self.node = node
        self._cleanups: set[asyncio.Task[Any]] = set()

    async def session(self, lease: int) -> int:
        """The session's lease: the given one, or (0) a new one of SESSION_TTL seconds."""
        if lease != 0:
            return lease
        resp = await self.node.propose(("lease_grant", self.node.new_lease_id(), SESSION_TTL))
        return int(resp.ID)

    async def txn(self, req: rpc_pb2.TxnRequest) -> rpc_pb2.TxnResponse:
        check_size(req)
        check_txn(req)
        resp: rpc_pb2.TxnResponse = await self.node.propose(("txn", req.SerializeToString()))
        return self.node.fill_header(resp)

    async def delete(self, key: bytes) -> rpc_pb2.DeleteRangeResponse:
        check_key(key)
        req = rpc_pb2.DeleteRangeRequest(key=key)
        resp = await self.node.propose(("delete", req.SerializeToString()))
        return self.node.fill_header(resp)

    async def first(self, prefix: bytes) -> tuple[rpc_pb2.ResponseHeader, list[Any]]:
        """A linearizable read of the first key under prefix by create revision."""
        await self.node.barrier()
        rev, resp = self.node.read(lambda sm: (sm.revision, sm.range(first_created(prefix))))
        return self.node.header(rev), list(resp.kvs)

    async def wait_deletes(
        self, prefix: bytes, own_key: bytes, own_rev: int, lost: str
    ) -> rpc_pb2.ResponseHeader:
        """Wait until no key under prefix has a create revision below own_rev.

        Each round is a linearizable read of the newest such key, then a wait for
        the deletion of that key or of our own (etcd's waitDeletes). The watch is
        registered in the same step of the loop as the read, from the revision
        after it, so no deletion falls between them. Our own key gone (its lease
        ended) → StoreError(lost).
        """
        older = first_created(prefix, max_create_revision=own_rev - 1)
        while True:
            await self.node.barrier()
            with HubWatch(self.node) as watch:
                rev, resp, own = self.node.read(
                    lambda sm: (sm.revision, sm.range(older), sm.get(own_key))
                )
                if own is None or own.create_revision != own_rev:
                    raise failure(lost)
                if not resp.kvs:
                    return self.node.header(rev)
                watch.watch(resp.kvs[0].key, rev + 1)
                watch.watch(own_key, rev + 1)
                await watch.deleted()

    def detach(self, coro: Coroutine[Any, Any, Any], what: str) -> None:
        """Run a clean-up that must outlive the cancelled call (etcd: the server's context)."""

        async def run() -> None:
            try:
                await coro
            except Exception as err:  # the lease will clean up; say so
                log.info("lock_cleanup_failed", what=what, error=str(err))

        task = asyncio.get_running_loop().create_task(run())
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)


class LockService(v3lock_pb2_grpc.LockServicer):
    def __init__(self, node: StoreNode, conc: Concurrency | None = None) -> None:
        self.node = node
        self.conc = conc or Concurrency(node)

    @etcd_errors
    async def Lock(
        self, request: v3lock_pb2.LockRequest, context: grpc.aio.ServicerContext
    ) -> v3lock_pb2.LockResponse:
        conc = self.conc
        lease = await conc.session(request.lease)
        prefix = request.name + b"/"
        key = session_key(prefix, lease)
        owner = rpc_pb2.RequestOp(request_range=first_created(prefix))
        txn = rpc_pb2.TxnRequest(
            compare=[
                rpc_pb2.Compare(
                    key=key,
                    target=rpc_pb2.Compare.CREATE,
                    result=rpc_pb2.Compare.EQUAL,
                    create_revision=0,
                )
            ],
            success=[
                rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, lease=lease)),
                owner,
            ],
            failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key)), owner],
        )
        resp = await conc.txn(txn)
        my_rev = resp.header.revision
        if not resp.succeeded:
            my_rev = resp.responses[0].response_range.kvs[0].create_revision
        holder = resp.responses[1].response_range.kvs
        if not holder or holder[0].create_revision == my_rev:
            return v3lock_pb2.LockResponse(header=resp.header, key=key)
        try:
            header = await conc.wait_deletes(prefix, key, my_rev, SESSION_EXPIRED)
        except asyncio.CancelledError:
            conc.detach(conc.delete(key), f"unlock {key!r}")
            raise
        except StoreError as err:
            if err.message != SESSION_EXPIRED:
                conc.detach(conc.delete(key), f"unlock {key!r}")
            raise
        return v3lock_pb2.LockResponse(header=header, key=key)

    @etcd_errors
    async def Unlock(
        self, request: v3lock_pb2.UnlockRequest, context: grpc.aio.ServicerContext
    ) -> v3lock_pb2.UnlockResponse:
        resp = await self.conc.delete(request.key)
        return v3lock_pb2.UnlockResponse(header=resp.header)
