"""etcdserverpb.Watch: one bidirectional stream multiplexing many watches."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import structlog

from protos import rpc_pb2, rpc_pb2_grpc

from .node import StoreNode
from .watch_hub import WatchStream

log = structlog.get_logger("store.watch")


class QueueSink:
    """Responses waiting to be written to one stream; None ends the stream."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def send(self, resp: bytes) -> None:
        self.queue.put_nowait(resp)

    def pending(self) -> int:
        return self.queue.qsize()


class WatchService(rpc_pb2_grpc.WatchServicer):
    def __init__(self, node: StoreNode) -> None:
        self.node = node

    async def Watch(
        self,
        request_iterator: AsyncIterator[rpc_pb2.WatchRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[bytes]:
        """Responses are pre-serialized WatchResponse bytes (see add_watch_service)."""
        sink = QueueSink()
        stream = WatchStream(sink, from_compaction_revision=True)
        hub = self.node.hub
        failed: list[Exception] = []

        async def read_requests() -> None:
            # The client closing its side of the stream ends nothing: like etcd, the
            # watchers go on until the call is cancelled (the HTTP gateway and
            # one-shot clients send their create request and half-close).
            try:
                async for req in request_iterator:
                    which = req.WhichOneof("request_union")
                    if which == "create_request":
                        hub.create(stream, req.create_request)
                    elif which == "cancel_request":
                        hub.cancel(stream, req.cancel_request.watch_id)
                    elif which == "progress_request":
                        hub.progress(stream)
            except asyncio.CancelledError:
                pass
            except Exception as exc:  # the client went away (RpcError), or an
                # interceptor refused a request (context.abort): the stream ends
                failed.append(exc)
                sink.queue.put_nowait(None)

        reader = asyncio.create_task(read_requests())
        try:
            while True:
                resp = await sink.queue.get()
                if resp is None:
                    if failed and not isinstance(failed[0], grpc.RpcError):
                        raise failed[0]  # an abort: the status it set ends the call
                    break
                yield resp
        finally:
            hub.remove_stream(stream)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


def add_watch_service(servicer: WatchService, server: grpc.aio.Server) -> None:
    """Register Watch with a pass-through serializer: the hub sends WatchResponse bytes."""
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.Watch,
        request_deserializer=rpc_pb2.WatchRequest.FromString,
        response_serializer=None,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("etcdserverpb.Watch", {"Watch": handler}),)
    )
