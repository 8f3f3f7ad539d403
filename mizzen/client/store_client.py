"""StoreClient: the asyncio client of an etcd-v3-compatible store (Mizzen or etcd).

Every unary call runs under one overall deadline (``timeout``) through
``EndpointPool.call``; which failures are retried, and why writes are retried
only when nothing can have been proposed, is spelled out in ``retry_policy``.
Writes go to the leader first (learned from Maintenance.Status); reads stay on
one endpoint until it fails.

One file because it is the one client of the etcd-v3 API: each method is a
thin call through the same endpoint pool and retry policy.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Sequence
from types import TracebackType

from mizzen.client.endpoints import ConnectFn, Connection, EndpointPool, Metadata
from mizzen.client.errors import FailedPreconditionError, StoreClientError
from mizzen.client.lease import KeepAlive
from mizzen.client.ops import (
    Bytes,
    Compare,
    Op,
    SortOrder,
    SortTarget,
    delete_request,
    key_range,
    put_request,
    range_request,
    txn_mutates,
    txn_request,
)
from mizzen.client.records import (
    DeleteResult,
    KeyValue,
    LeaseInfo,
    Member,
    MemberStatus,
    OpResult,
    PutResult,
    RangeResult,
    TxnResult,
)
from mizzen.client.watch import Watcher
from mizzen.security.tls import ClientCredentials
from protos import rpc_pb2

MEMBER_NAME_METADATA = "mizzen-member-name"
"""gRPC metadata carrying the new member's name on MemberAdd (etcd's request has no name)."""


def _strip_scheme(endpoint: str) -> str:
    for scheme in ("http://", "https://", "grpc://"):
        if endpoint.startswith(scheme):
            return endpoint[len(scheme) :].rstrip("/")
    return endpoint


class StoreClient:
    """``async with StoreClient(["127.0.0.1:2379", ...]) as c: await c.put("k", b"v")``.

    ``timeout`` bounds each call including its retries; ``connect_timeout``
    bounds waiting for one endpoint's connection; a watch gives up with
    UnavailableError after ``watch_resume_timeout`` seconds without a stream.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 5.0,
        connect_timeout: float = 1.0,
        leader_ttl: float = 10.0,
        watch_resume_timeout: float = 30.0,
        connect: ConnectFn | None = None,
        clock: Callable[[], float] = time.monotonic,
        credentials: ClientCredentials | None = None,
    ) -> None:
        self._pool = EndpointPool(
            [_strip_scheme(e) for e in endpoints],
            timeout=timeout,
            connect_timeout=connect_timeout,
            leader_ttl=leader_ttl,
            connect=connect or Connection.opener(credentials),
            clock=clock,
        )
        self._watch_resume_timeout = watch_resume_timeout
        self._keepalives: weakref.WeakSet[KeepAlive] = weakref.WeakSet()

    async def __aenter__(self) -> StoreClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop every keep-alive started here and close the channels. Idempotent."""
        for ka in list(self._keepalives):
            await ka.aclose()
        await self._pool.close()

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self._pool.endpoints

    @property
    def leader_endpoint(self) -> str | None:
        """The endpoint writes go to first, when known."""
        return self._pool.leader

    @property
    def last_endpoint(self) -> str | None:
        """The endpoint that answered the last successful unary call."""
        return self._pool.last_endpoint

    # -- KV -------------------------------------------------------------------------

    async def range(
        self,
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
    ) -> RangeResult:
        """The general Range: a key, [key, range_end), or a prefix, with every RangeRequest
        option (at revision, limit, sort, keys/count only, revision filters)."""
        request = range_request(
            key,
            range_end,
            prefix=prefix,
            limit=limit,
            revision=revision,
            keys_only=keys_only,
            count_only=count_only,
            serializable=serializable,
            sort_order=sort_order,
            sort_target=sort_target,
            min_mod_revision=min_mod_revision,
            max_mod_revision=max_mod_revision,
            min_create_revision=min_create_revision,
            max_create_revision=max_create_revision,
        )

        async def send(conn: Connection, t: float, md: Metadata) -> rpc_pb2.RangeResponse:
            return await conn.kv.Range(request, timeout=t, metadata=md)

        response = await self._pool.call(
            send, mutating=False, require_leader=not serializable, what="range"
        )
        return RangeResult.from_proto(response)

    async def get(
        self, key: Bytes, *, revision: int = 0, serializable: bool = False
    ) -> KeyValue | None:
        result = await self.range(key, revision=revision, serializable=serializable)
        return result.kvs[0] if result.kvs else None

    async def get_prefix(
        self,
        prefix: Bytes,
        *,
        limit: int = 0,
        revision: int = 0,
        keys_only: bool = False,
        serializable: bool = False,
    ) -> tuple[list[KeyValue], int, bool]:
        """(records in key order, header revision, more beyond the limit)."""
        result = await self.range(
            prefix,
            prefix=True,
            limit=limit,
            revision=revision,
            keys_only=keys_only,
            serializable=serializable,
        )
        return list(result.kvs), result.revision, result.more

    async def put(
        self, key: Bytes, value: Bytes, *, lease: int = 0, prev_kv: bool = False
    ) -> tuple[int, KeyValue | None]:
        """(revision of the put, previous record if prev_kv and the key existed)."""
        request = put_request(key, value, lease=lease, prev_kv=prev_kv)

        async def send(conn: Connection, t: float, md: Metadata) -> rpc_pb2.PutResponse:
            return await conn.kv.Put(request, timeout=t, metadata=md)

        result = PutResult.from_proto(await self._pool.call(send, mutating=True, what="put"))
        return result.revision, result.prev_kv

    async def delete(
        self,
        key: Bytes,
        *,
        prefix: bool = False,
        range_end: Bytes | None = None,
        prev_kv: bool = False,
    ) -> tuple[int, list[KeyValue], int]:
        """(number deleted, previous records if prev_kv, revision)."""
        request = delete_request(key, prefix=prefix, range_end=range_end, prev_kv=prev_kv)

        async def send(conn: Connection, t: float, md: Metadata) -> rpc_pb2.DeleteRangeResponse:
            return await conn.kv.DeleteRange(request, timeout=t, metadata=md)

        result = DeleteResult.from_proto(await self._pool.call(send, mutating=True, what="delete"))
        return result.deleted, list(result.prev_kvs), result.revision

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op] = (),
        failure: Sequence[Op] = (),
    ) -> tuple[bool, list[OpResult], int]:
        """(compares all held, results of the branch that ran, revision).

        A txn whose branches only read is retried like a read.
        """
        request = txn_request(compares, success, failure)

        async def send(conn: Connection, t: float, md: Metadata) -> rpc_pb2.TxnResponse:
            return await conn.kv.Txn(request, timeout=t, metadata=md)

        response = await self._pool.call(send, mutating=txn_mutates(request), what="txn")
        result = TxnResult.from_proto(response)
        return result.succeeded, list(result.responses), result.revision

    async def compact(self, revision: int, *, physical: bool = False) -> int:
        """Compact history up to revision; the header revision of the answer."""
        request = rpc_pb2.CompactionRequest(revision=revision, physical=physical)

        async def send(conn: Connection, t: float, md: Metadata) -> rpc_pb2.CompactionResponse:
            return await conn.kv.Compact(request, timeout=t, metadata=md)

        response = await self._pool.call(send, mutating=True, what="compact")
        return int(response.header.revision)

    # -- Watch ----------------------------------------------------------------------

    def watch(
        self,
        key: Bytes,
        *,
        prefix: bool = False,
        range_end: Bytes | None = None,
        start_revision: int = 0,
        prev_kv: bool = False,
        progress_notify: bool = False,
    ) -> Watcher:
        """A resuming async iterator of WatchBatch from start_revision (0: from now)."""
        k, end = key_range(key, prefix=prefix, range_end=range_end)
        return Watcher(
            self._pool,
            k,
            end,
            start_revision=start_revision,
            prev_kv=prev_kv,
            progress_notify=progress_notify,
            resume_timeout=self._watch_resume_timeout,
        )

    # -- Lease ----------------------------------------------------------------------

    async def lease_grant(self, ttl: int, *, lease_id: int = 0) -> tuple[int, int]:
        """(lease id, granted TTL in seconds)."""
        request = rpc_pb2.LeaseGrantRequest(TTL=ttl, ID=lease_id)

        async def send(conn: Connection, t: float, md: Metadata) -> rpc_pb2.LeaseGrantResponse:
            return await conn.lease.LeaseGrant(request, timeout=t, metadata=md)

        response = await self._pool.call(send, mutating=True, what="lease_grant")
        if response.error:
            raise StoreClientError(f"lease grant refused: {response.error}")
        return int(response.ID), int(response.TTL)

    async def lease_revoke(self, lease_id: int) -> None:
        """Revoke the lease, deleting its keys; LeaseNotFoundError if it does not exist."""
        request = rpc_pb2.LeaseRevokeRequest(ID=lease_id)

        async def send(conn: Connection, t: float, md: Metadata) -> rpc_pb2.LeaseRevokeResponse:
            return await conn.lease.LeaseRevoke(request, timeout=t, metadata=md)

        await self._pool.call(send, mutating=True, what="lease_revoke")

    async def lease_time_to_live(self, lease_id: int, keys: bool = False) -> LeaseInfo:
        """Remaining TTL (-1 when the lease does not exist) and, with keys, its keys."""
        request = rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id, keys=keys)

        async def send(conn: Connection, t: float, md: Metadata) -> rpc_pb2.LeaseTimeToLiveResponse:
            return await conn.lease.LeaseTimeToLive(request, timeout=t, metadata=md)

        r = await self._pool.call(send, mutating=False, what="lease_time_to_live")
        return LeaseInfo(int(r.ID), int(r.TTL), int(r.grantedTTL), tuple(bytes(k) for k in r.keys))

    async def leases(self) -> list[int]:
        """Ids of every live lease."""

        async def send(conn: Connection, t: float, md: Metadata) -> rpc_pb2.LeaseLeasesResponse:
            return await conn.lease.LeaseLeases(
                rpc_pb2.LeaseLeasesRequest(), timeout=t, metadata=md
            )

        response = await self._pool.call(send, mutating=False, what="leases")
        return [int(s.ID) for s in response.leases]

    def keep_alive(self, lease_id: int) -> KeepAlive:
        """A KeepAlive for the lease; use ``async with`` (or start/aclose)."""
        ka = KeepAlive(self._pool, lease_id)
        self._keepalives.add(ka)
        return ka

    # -- Cluster and maintenance ----------------------------------------------------

    async def status(self, endpoint: str | None = None) -> MemberStatus:
        """Maintenance.Status of endpoint (any endpoint when None)."""
        pinned = None if endpoint is None else _strip_scheme(endpoint)

        async def send(conn: Connection, t: float, md: Metadata) -> MemberStatus:
            r = await conn.maintenance.Status(rpc_pb2.StatusRequest(), timeout=t, metadata=md)
            return MemberStatus.from_proto(conn.address, r)

        status = await self._pool.call(
            send, mutating=False, require_leader=False, endpoint=pinned, what="status"
        )
        self._pool.member_ids[status.endpoint] = status.member_id
        return status

    async def member_list(self) -> list[Member]:
        async def send(conn: Connection, t: float, md: Metadata) -> rpc_pb2.MemberListResponse:
            return await conn.cluster.MemberList(
                rpc_pb2.MemberListRequest(), timeout=t, metadata=md
            )

        response = await self._pool.call(
            send, mutating=False, require_leader=False, what="member_list"
        )
        return [Member.from_proto(m) for m in response.members]

    async def member_add(
        self, name: str, peer_url: str, timeout: float = 20.0
    ) -> tuple[Member, list[Member]]:
        """Cluster.MemberAdd: the new member (by name and Raft address) and the new list.

        etcd's request has no name field: it travels as gRPC metadata
        ``mizzen-member-name``. Start the new member afterwards with
        ``--initial-cluster-state existing``.
        """
        request = rpc_pb2.MemberAddRequest(peerURLs=[peer_url])

        async def send(conn: Connection, t: float, md: Metadata) -> rpc_pb2.MemberAddResponse:
            extra = (*md, (MEMBER_NAME_METADATA, name))
            return await conn.cluster.MemberAdd(request, timeout=t, metadata=extra)

        r = await self._pool.call(send, mutating=True, timeout=timeout, what="member_add")
        return Member.from_proto(r.member), [Member.from_proto(m) for m in r.members]

    async def member_remove(self, member_id: int, timeout: float = 20.0) -> list[Member]:
        """Cluster.MemberRemove; NotFoundError for an unknown id. Returns the new list."""
        request = rpc_pb2.MemberRemoveRequest(ID=member_id)

        async def send(conn: Connection, t: float, md: Metadata) -> rpc_pb2.MemberRemoveResponse:
            return await conn.cluster.MemberRemove(request, timeout=t, metadata=md)

        r = await self._pool.call(send, mutating=True, timeout=timeout, what="member_remove")
        return [Member.from_proto(m) for m in r.members]

    async def move_leader(self, target_id: int, timeout: float = 20.0) -> None:
        """Maintenance.MoveLeader on the current leader; returns once the target leads.

        Only the leader takes it: when the endpoint asked turns out not to lead
        (the leader was not known yet, or changed meanwhile) the leader is
        looked up again and asked, until ``timeout``.
        """
        request = rpc_pb2.MoveLeaderRequest(targetID=target_id)
        deadline = time.monotonic() + timeout

        async def send(conn: Connection, t: float, md: Metadata) -> rpc_pb2.MoveLeaderResponse:
            return await conn.maintenance.MoveLeader(request, timeout=t, metadata=md)

        while True:
            leader = await self.refresh_leader()
            left = max(deadline - time.monotonic(), 0.1)
            try:
                await self._pool.call(
                    send, mutating=True, endpoint=leader, timeout=left, what="move_leader"
                )
                return
            except FailedPreconditionError as err:
                if "not leader" not in err.details or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(0.2)

    async def snapshot(self) -> bytes:
        """Maintenance.Snapshot: the whole stream's blobs joined (a linearizable copy).

        Raises StoreClientError if the stream ends before ``remaining_bytes`` is 0.
        """

        async def send(conn: Connection, t: float, md: Metadata) -> bytes:
            parts: list[bytes] = []
            remaining = -1
            call = conn.maintenance.Snapshot(rpc_pb2.SnapshotRequest(), timeout=t, metadata=md)
            async for resp in call:
                parts.append(resp.blob)
                remaining = resp.remaining_bytes
            if remaining != 0:
                raise StoreClientError("snapshot stream ended early")
            return b"".join(parts)

        return await self._pool.call(send, mutating=False, require_leader=False, what="snapshot")

    async def refresh_leader(self) -> str | None:
        """Probe every endpoint's Status now; the leader's endpoint, None if none answers."""
        return await self._pool.refresh_leader(self._pool.connect_timeout)
