"""v3electionpb.Election: etcd's leader election, served by the store itself.

The same steps as etcd 3.4's clientv3/concurrency Election, on the node's
internal API (see store/lock_service.py for the shared parts):

* **Campaign(name, lease, value)**: the key ``<name>/<lease id in hex>`` is
  created with the value, bound to the lease ("create_revision == 0 → put,
  else get"; a key already there with another value is proclaimed). The
  caller waits until every key under ``<name>/`` with a smaller create
  revision is deleted, then leads: the answer is the Txn's header and
  ``LeaderKey{name, key, rev (its create revision), lease}``.
* **Proclaim(leader, value)**: puts the value if the key's create revision is
  still ``rev``, else UNKNOWN ``election: not leader``.
* **Leader(name)**: the first key under ``<name>/`` by create revision, else
  UNKNOWN ``election: no leader``.
* **Observe(name)**: streams the leader's key-value: the current leader (or
  the first key put when there is none), then every put to that key, and the
  next leader after it is deleted. The stream ends (OK) if a read fails, as
  etcd's does.
* **Resign(leader)**: deletes the key if its create revision is still ``rev``;
  always succeeds.

A missing ``leader`` field is UNKNOWN ``"leader" field must be provided``; a
lease of 0 grants a new 60 s lease, as etcd's session does. A campaign whose
own key disappears while it waits (lease revoked or expired) ends at once with
``election: not leader`` (etcd 3.4 keeps waiting and then answers success for
a key that is gone). A caller that goes away while waiting resigns, as etcd's
server does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from mizzen.keyrange import prefix_end
from protos import kv_pb2, rpc_pb2, v3election_pb2, v3election_pb2_grpc

from .errors import StoreError
from .lock_service import (
    Concurrency,
    HubWatch,
    abort_for,
    etcd_errors,
    failure,
    session_key,
)
from .node import StoreNode

NOT_LEADER = "election: not leader"
NO_LEADER = "election: no leader"
MISSING_LEADER = '"leader" field must be provided'


def _is_leader(key: bytes, rev: int) -> rpc_pb2.Compare:
    return rpc_pb2.Compare(
        key=key,
        target=rpc_pb2.Compare.CREATE,
        result=rpc_pb2.Compare.EQUAL,
        create_revision=rev,
    )


class ElectionService(v3election_pb2_grpc.ElectionServicer):
    def __init__(self, node: StoreNode, conc: Concurrency | None = None) -> None:
        self.node = node
        self.conc = conc or Concurrency(node)

    # ---------------------------------------------------------- the steps

    async def _proclaim(
        self, key: bytes, rev: int, lease: int, value: bytes
    ) -> rpc_pb2.ResponseHeader:
        put = rpc_pb2.PutRequest(key=key, value=value, lease=lease)
        txn = rpc_pb2.TxnRequest(
            compare=[_is_leader(key, rev)], success=[rpc_pb2.RequestOp(request_put=put)]
        )
        resp = await self.conc.txn(txn)
        if not resp.succeeded:
            raise failure(NOT_LEADER)
        return resp.header

    async def _resign(self, key: bytes, rev: int) -> rpc_pb2.ResponseHeader:
        delete = rpc_pb2.DeleteRangeRequest(key=key)
        txn = rpc_pb2.TxnRequest(
            compare=[_is_leader(key, rev)],
            success=[rpc_pb2.RequestOp(request_delete_range=delete)],
        )
        return (await self.conc.txn(txn)).header

    # ------------------------------------------------------------ methods

    @etcd_errors
    async def Campaign(
        self, request: v3election_pb2.CampaignRequest, context: grpc.aio.ServicerContext
    ) -> v3election_pb2.CampaignResponse:
        conc = self.conc
        lease = await conc.session(request.lease)
        prefix = request.name + b"/"
        key = session_key(prefix, lease)
        put = rpc_pb2.PutRequest(key=key, value=request.value, lease=lease)
        txn = rpc_pb2.TxnRequest(
            compare=[_is_leader(key, 0)],
            success=[rpc_pb2.RequestOp(request_put=put)],
            failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key))],
        )
        resp = await conc.txn(txn)
        rev = resp.header.revision
        if not resp.succeeded:
            kv = resp.responses[0].response_range.kvs[0]
            rev = kv.create_revision
            if kv.value != request.value:
                try:
                    await self._proclaim(key, rev, lease, request.value)
                except StoreError:
                    with contextlib.suppress(StoreError):  # etcd ignores it too
                        await self._resign(key, rev)
                    raise
        try:
            await conc.wait_deletes(prefix, key, rev, NOT_LEADER)
        except asyncio.CancelledError:
            conc.detach(self._resign(key, rev), f"resign {key!r}")
            raise
        leader = v3election_pb2.LeaderKey(name=request.name, key=key, rev=rev, lease=lease)
        return v3election_pb2.CampaignResponse(header=resp.header, leader=leader)

    @etcd_errors
    async def Proclaim(
        self, request: v3election_pb2.ProclaimRequest, context: grpc.aio.ServicerContext
    ) -> v3election_pb2.ProclaimResponse:
        if not request.HasField("leader"):
            raise failure(MISSING_LEADER)
        leader = request.leader
        lease = await self.conc.session(leader.lease)
        header = await self._proclaim(leader.key, leader.rev, lease, request.value)
        return v3election_pb2.ProclaimResponse(header=header)

    @etcd_errors
    async def Resign(
        self, request: v3election_pb2.ResignRequest, context: grpc.aio.ServicerContext
    ) -> v3election_pb2.ResignResponse:
        if not request.HasField("leader"):
            raise failure(MISSING_LEADER)
        leader = request.leader
        await self.conc.session(leader.lease)
        header = await self._resign(leader.key, leader.rev)
        return v3election_pb2.ResignResponse(header=header)

    @etcd_errors
    async def Leader(
        self, request: v3election_pb2.LeaderRequest, context: grpc.aio.ServicerContext
    ) -> v3election_pb2.LeaderResponse:
        header, kvs = await self.conc.first(request.name + b"/")
        if not kvs:
            raise failure(NO_LEADER)
        return v3election_pb2.LeaderResponse(header=header, kv=kvs[0])

    async def Observe(
        self, request: v3election_pb2.LeaderRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[v3election_pb2.LeaderResponse]:
        prefix = request.name + b"/"
        while True:
            try:
                header, kvs = await self.conc.first(prefix)
            except StoreError:
                return  # etcd's observer ends its stream when a read fails
            except Exception as exc:
                await abort_for(exc, context, "Observe")
            if kvs:
                kv = kvs[0]
            else:
                found = await self._first_put(prefix, header.revision)
                if found is None:
                    return
                header, kv = found
            yield v3election_pb2.LeaderResponse(header=header, kv=kv)
            async for update in self._updates(kv.key, header.revision + 1):
                yield update

    async def _first_put(
        self, prefix: bytes, revision: int
    ) -> tuple[rpc_pb2.ResponseHeader, kv_pb2.KeyValue] | None:
        """The first key put under prefix from revision on (None: the watch ended)."""
        with HubWatch(self.node) as watch:
            watch.watch(prefix, revision, range_end=prefix_end(prefix))
            while True:
                resp = await watch.next()
                if resp.canceled:
                    return None
                for ev in resp.events:
                    if ev.type == ev.PUT:
                        header = rpc_pb2.ResponseHeader()
                        header.CopyFrom(resp.header)
                        header.revision = ev.kv.mod_revision
                        return header, ev.kv

    async def _updates(
        self, key: bytes, revision: int
    ) -> AsyncIterator[v3election_pb2.LeaderResponse]:
        """Every put to the leader's key from revision on, until it is deleted."""
        with HubWatch(self.node) as watch:
            watch.watch(key, revision)
            while True:
                resp = await watch.next()
                if resp.canceled:
                    return
                for ev in resp.events:
                    if ev.type == ev.DELETE:
                        return
                    yield v3election_pb2.LeaderResponse(header=resp.header, kv=ev.kv)
