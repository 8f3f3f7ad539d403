"""etcdserverpb.KV: Range, Put, DeleteRange, Txn, Compact."""

from __future__ import annotations

import grpc

from protos import rpc_pb2, rpc_pb2_grpc

from .errors import REQUEST_TOO_LARGE, Code, StoreError
from .grpc_errors import grpc_errors
from .node import StoreNode
from .requests import check_key, check_txn

MAX_REQUEST_BYTES = 1536 * 1024  # etcd's default --max-request-bytes (1.5 MiB)
# etcd applies the limit to the whole Raft entry: the request plus its request header
RAFT_ENTRY_OVERHEAD = 18


def check_size(req: object) -> None:
    if req.ByteSize() + RAFT_ENTRY_OVERHEAD > MAX_REQUEST_BYTES:  # type: ignore[attr-defined]
        raise StoreError(Code.INVALID_ARGUMENT, REQUEST_TOO_LARGE)


class KVService(rpc_pb2_grpc.KVServicer):
    def __init__(self, node: StoreNode) -> None:
        self.node = node

    @grpc_errors
    async def Range(
        self, request: rpc_pb2.RangeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.RangeResponse:
        check_key(request.key)
        if not request.serializable:
            await self.node.barrier()
        resp = self.node.read(lambda sm: _with_revision(sm.range(request), sm.revision))
        return self.node.fill_header(resp)

    @grpc_errors
    async def Put(
        self, request: rpc_pb2.PutRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.PutResponse:
        check_size(request)
        check_key(request.key)
        resp = await self.node.propose(("put", request.SerializeToString()))
        return self.node.fill_header(resp)

    @grpc_errors
    async def DeleteRange(
        self, request: rpc_pb2.DeleteRangeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DeleteRangeResponse:
        check_size(request)
        check_key(request.key)
        resp = await self.node.propose(("delete", request.SerializeToString()))
        return self.node.fill_header(resp)

    @grpc_errors
    async def Txn(
        self, request: rpc_pb2.TxnRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.TxnResponse:
        check_size(request)
        check_txn(request)
        resp = await self.node.propose(("txn", request.SerializeToString()))
        return self.node.fill_header(resp)

    @grpc_errors
    async def Compact(
        self, request: rpc_pb2.CompactionRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.CompactionResponse:
        resp = await self.node.propose(("compact", request.revision))
        return self.node.fill_header(resp)


def _with_revision(resp: rpc_pb2.RangeResponse, revision: int) -> rpc_pb2.RangeResponse:
    resp.header.revision = revision
    return resp
