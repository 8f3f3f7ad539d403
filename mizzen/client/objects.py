"""ObjectsClient: the asyncio client of the typed Objects API (mizzen.v1.Objects).

It takes and returns kind messages (``pb.Pod``, ``pb.Deployment``, ...) and
hides the ``Object`` envelope. Endpoint handling is ``EndpointPool``'s, so the
retry policy is the store client's (``retry_policy``): reads move to the next
endpoint on UNAVAILABLE, writes only when nothing can have been sent. A
server's definite answer is translated once, by ``errors.translate``, into
NotFoundError, AlreadyExistsError, ConflictError (ABORTED), InvalidArgumentError
(the server's message, naming every invalid field path) and so on; the policy
never sees it, so an ABORTED write is a conflict, not an ambiguous write.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import grpc

from mizzen.api.kinds import KindInfo, lookup
from mizzen.client import retry_policy
from mizzen.client.endpoints import ConnectFn, Connection, EndpointPool, Metadata
from mizzen.client.errors import StoreClientError, UnavailableError, translate
from mizzen.security.tls import INSECURE, ClientCredentials
from protos import objects_api_pb2 as api
from protos import objects_api_pb2_grpc as api_grpc

T = TypeVar("T")

_ONEOF = api.Object.DESCRIPTOR.oneofs_by_name["object"]
_FIELD_BY_MESSAGE: dict[str, str] = {
    f.message_type.full_name: f.name for f in _ONEOF.fields if f.message_type is not None
}

DEFINITE: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
"""Statuses that are a server's answer about the object, never a transport failure."""


def wrap(obj: Any) -> api.Object:
    """The Object envelope holding obj (a message of a registered kind)."""
    field = _FIELD_BY_MESSAGE.get(obj.DESCRIPTOR.full_name)
    if field is None:
        raise TypeError(f"{obj.DESCRIPTOR.full_name} is not an object kind")
    out = api.Object()
    getattr(out, field).CopyFrom(obj)
    return out


def unwrap(envelope: api.Object) -> Any:
    """The message inside an envelope; StoreClientError when the server sent none."""
    which = envelope.WhichOneof("object")
    if which is None:
        raise StoreClientError("the server returned an empty object")
    return getattr(envelope, which)


@dataclass(frozen=True)
class ListResult:
    items: list[Any]
    # The store revision the list was read at: start a watch from here.
    resource_version: str
    # Non-empty when a limit was given and more objects may follow.
    continue_token: str = ""
    # Keys whose stored value does not decode as the kind: skipped by the store.
    undecodable_keys: list[str] = field(default_factory=list)


def _kind_name(kind: str | KindInfo) -> str:
    return kind.kind if isinstance(kind, KindInfo) else lookup(kind).kind


async def _answer(call: Awaitable[T]) -> T:
    """Await a unary call; a definite status leaves as a domain error right here."""
    try:
        return await call
    except grpc.aio.AioRpcError as err:
        if err.code() in DEFINITE:
            raise translate(err.code(), err.details()) from None
        raise


class ObjectsClient:
    """``async with ObjectsClient(["127.0.0.1:2379"]) as c: await c.get("pods", "web", "default")``.

    ``timeout`` bounds each call including its retries on other endpoints.
    Kinds may be given as any name ``kinds.lookup`` accepts or as a KindInfo.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 5.0,
        connect_timeout: float = 1.0,
        connect: ConnectFn | None = None,
        clock: Callable[[], float] = time.monotonic,
        credentials: ClientCredentials | None = None,
    ) -> None:
        self._pool = EndpointPool(
            [e.removeprefix("http://").removeprefix("https://") for e in endpoints],
            timeout=timeout,
            connect_timeout=connect_timeout,
            connect=connect or Connection.opener(credentials),
            clock=clock,
        )
        self._stubs: dict[str, api_grpc.ObjectsStub] = {}
        self._write_metadata: Metadata = ()
        self._owns_pool = True
        # For reaching other Mizzen servers (node agents) as the same identity.
        self.credentials = credentials or INSECURE

    def fenced(self, key: bytes, create_revision: int) -> ObjectsClient:
        """A client sharing this one's connections whose writes need the fence to hold.

        Every mutating call carries the fence; the store applies the write only
        if ``key`` still has this create_revision (in the same Txn), else it
        raises FencedError. Closing the fenced client leaves the pool open.
        """
        other = ObjectsClient.__new__(ObjectsClient)
        other._pool = self._pool
        other._stubs = self._stubs
        other._owns_pool = False
        other.credentials = self.credentials
        other._write_metadata = (
            ("mizzen-fence-key", key.decode()),
            ("mizzen-fence-revision", str(create_revision)),
        )
        return other

    async def __aenter__(self) -> ObjectsClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if not self._owns_pool:
            return
        self._stubs.clear()
        await self._pool.close()

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self._pool.endpoints

    def _stub(self, conn: Connection) -> api_grpc.ObjectsStub:
        stub = self._stubs.get(conn.address)
        if stub is None:
            stub = self._stubs[conn.address] = api_grpc.ObjectsStub(conn.channel)
        return stub

    async def _call(
        self,
        method: str,
        request: Any,
        *,
        mutating: bool,
    ) -> Any:
        extra = self._write_metadata if mutating else ()

        async def send(conn: Connection, t: float, md: Metadata) -> Any:
            rpc = getattr(self._stub(conn), method)
            return await _answer(rpc(request, timeout=t, metadata=md + extra))

        return await self._pool.call(send, mutating=mutating, what=f"Objects.{method}")

    # -- reads ----------------------------------------------------------------------

    async def get(self, kind: str | KindInfo, name: str, namespace: str = "") -> Any:
        request = api.GetRequest(kind=_kind_name(kind), namespace=namespace, name=name)
        return unwrap(await self._call("Get", request, mutating=False))

    async def list(
        self,
        kind: str | KindInfo,
        namespace: str = "",
        *,
        label_selector: str = "",
        field_selector: str = "",
        limit: int = 0,
        continue_token: str = "",
    ) -> ListResult:
        """Every matching object (following continue tokens), or one page when limit > 0."""
        items: list[Any] = []
        undecodable: list[str] = []
        token = continue_token
        while True:
            request = api.ListRequest(
                kind=_kind_name(kind),
                namespace=namespace,
                label_selector=label_selector,
                field_selector=field_selector,
                limit=limit,
                continue_token=token,
            )
            page: api.ListResponse = await self._call("List", request, mutating=False)
            items.extend(unwrap(item) for item in page.items)
            undecodable.extend(page.undecodable_keys)
            token = page.continue_token
            if limit > 0 or not token:
                return ListResult(items, page.resource_version, token, undecodable)

    async def list_pages(
        self,
        kind: str | KindInfo,
        namespace: str = "",
        *,
        label_selector: str = "",
        field_selector: str = "",
        page_size: int = 500,
    ) -> AsyncIterator[ListResult]:
        """Every matching object, a page (ListResult) at a time, all read at one revision.

        Each page's successor is asked for before the page is handed over, so
        what the caller does with a page (``mizzen get`` turning 10,000 pods
        into JSON) overlaps the store's reading of the next one. Pages share
        the first one's revision through their continue tokens: CompactedError
        if the store compacted it meanwhile (its history limit is 100,000
        events by default). Leaving the loop early cancels the request in flight.
        """
        if page_size <= 0:
            raise ValueError(f"page_size must be positive, not {page_size}")
        kind_name = _kind_name(kind)

        async def fetch(token: str) -> ListResult:
            request = api.ListRequest(
                kind=kind_name,
                namespace=namespace,
                label_selector=label_selector,
                field_selector=field_selector,
                limit=page_size,
                continue_token=token,
            )
            page: api.ListResponse = await self._call("List", request, mutating=False)
            return ListResult(
                [unwrap(item) for item in page.items],
                page.resource_version,
                page.continue_token,
                list(page.undecodable_keys),
            )

        pending: asyncio.Future[ListResult] | None = asyncio.ensure_future(fetch(""))
        try:
            while pending is not None:
                page = await pending
                pending = None
                if page.continue_token:
                    pending = asyncio.ensure_future(fetch(page.continue_token))
                    # Let it send its request before the caller takes the loop: one
                    # turn runs fetch up to the call, grpc.aio sends it from a task
                    # of its own in the next (a third turn to spare).
                    for _ in range(3):
                        await asyncio.sleep(0)
                yield page
        finally:
            if pending is not None:
                pending.cancel()
                if pending.done() and not pending.cancelled():
                    pending.exception()  # retrieved: not logged as never retrieved

    # -- writes ---------------------------------------------------------------------

    async def create(self, obj: Any) -> Any:
        request = api.CreateRequest(object=wrap(obj))
        return unwrap(await self._call("Create", request, mutating=True))

    async def update(self, obj: Any) -> Any:
        """Spec and metadata; obj.metadata.resource_version must be the one read."""
        request = api.UpdateRequest(object=wrap(obj))
        return unwrap(await self._call("Update", request, mutating=True))

    async def update_status(self, obj: Any) -> Any:
        request = api.UpdateRequest(object=wrap(obj))
        return unwrap(await self._call("UpdateStatus", request, mutating=True))

    async def delete(
        self,
        kind: str | KindInfo,
        name: str,
        namespace: str = "",
        *,
        grace_period_seconds: int | None = None,
        resource_version: str = "",
        propagation_policy: str = "",
    ) -> tuple[Any, bool]:
        """(the object as last stored, True when it is gone rather than pending).

        propagation_policy: "Background" (default), "Foreground" or "Orphan";
        see DeleteRequest in protos/objects_api.proto.
        """
        request = api.DeleteRequest(
            kind=_kind_name(kind),
            namespace=namespace,
            name=name,
            resource_version=resource_version,
            propagation_policy=propagation_policy,
        )
        if grace_period_seconds is not None:
            request.grace_period_seconds = grace_period_seconds
        response: api.DeleteResponse = await self._call("Delete", request, mutating=True)
        return unwrap(response.object), response.deleted

    # -- watch ----------------------------------------------------------------------

    async def watch(
        self,
        kind: str | KindInfo,
        namespace: str = "",
        *,
        label_selector: str = "",
        field_selector: str = "",
        resource_version: str = "",
        allow_bookmarks: bool = False,
        resume_timeout: float | None = None,
    ) -> AsyncIterator[tuple[str, Any]]:
        """(event type name, object) for every change after resource_version.

        A stream that breaks is reopened (on the next endpoint) from the last
        resource_version seen, so no event is lost or repeated. It gives up with
        UnavailableError after ``resume_timeout`` (default: the client timeout)
        seconds without a stream; a definite status is raised translated.
        """
        pool = self._pool
        budget = pool.timeout if resume_timeout is None else resume_timeout
        rv = resource_version
        given_up_at = pool.clock() + budget
        last = "no endpoint tried"
        while True:
            for ep in pool.read_order():
                if pool.clock() >= given_up_at:
                    raise UnavailableError(f"watch: no stream within {budget}s ({last})")
                conn = pool.connection(ep)
                if not await conn.ready(min(pool.connect_timeout, given_up_at - pool.clock())):
                    last = f"{ep}: not connected"
                    pool.mark_failed(ep)
                    continue
                request = api.WatchRequest(
                    kind=_kind_name(kind),
                    namespace=namespace,
                    label_selector=label_selector,
                    field_selector=field_selector,
                    resource_version=rv,
                    allow_bookmarks=allow_bookmarks,
                )
                stream = self._stub(conn).Watch(request)
                try:
                    async for event in stream:
                        given_up_at = pool.clock() + budget
                        obj = unwrap(event.object)
                        if obj.metadata.resource_version:
                            rv = obj.metadata.resource_version
                        yield api.WatchEvent.Type.Name(event.type), obj
                except grpc.aio.AioRpcError as err:
                    code, details = err.code(), err.details() or ""
                    if not retry_policy.stream_resumable(code) or code in DEFINITE:
                        raise translate(code, details) from None
                    last = f"{ep}: {code.name}: {details}"
                    pool.mark_failed(ep)
                    continue
                finally:
                    stream.cancel()
                last = f"{ep}: stream ended"
            await asyncio.sleep(0.1)
