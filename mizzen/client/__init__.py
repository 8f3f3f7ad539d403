"""The Python client SDK of the Mizzen store (any etcd-v3-wire-compatible store).

    from mizzen.client import StoreClient, Compare, Op

    async with StoreClient(["127.0.0.1:2379", "127.0.0.1:22379"]) as c:
        rev, _ = await c.put("/a", b"1")
        ok, _, _ = await c.txn([Compare.mod_revision("/a") == rev], [Op.put("/a", b"2")])
        async for batch in c.watch("/", prefix=True, start_revision=rev):
            ...

Retry policy (details in ``mizzen.client.retry_policy``): every call runs under
one overall ``timeout``. Reads (Range, read-only Txn, Status, MemberList,
LeaseTimeToLive, LeaseLeases), watches and lease keep-alives are retried on the
next endpoint after any UNAVAILABLE / DEADLINE_EXCEEDED until the timeout.
Writes (Put, DeleteRange, Txn with a write, Compact, LeaseGrant, LeaseRevoke)
are retried only when the failure proves nothing was proposed — the channel
never connected, gRPC failed while picking a connection ("failed to connect",
"connection refused"), or the server refused up front ("no leader", "too many
requests"). Any other transport failure of a write raises
``AmbiguousWriteError``: the write may or may not have happened.

Service discovery (``resolve``, ``watch_endpoints``): ``mizzen.client.services``.

Writes go to the leader first, learned from Maintenance.Status (the endpoint
whose header.member_id equals StatusResponse.leader); on failure the client
fails over to the next endpoint and re-learns the leader.
"""

from mizzen.client.errors import (
    AlreadyExistsError,
    AmbiguousWriteError,
    CompactedError,
    ConflictError,
    FailedPreconditionError,
    FencedError,
    FutureRevisionError,
    InvalidArgumentError,
    LeaseExpiredError,
    LeaseNotFoundError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    StoreClientError,
    UnavailableError,
)
from mizzen.client.informer import Informer
from mizzen.client.lease import KeepAlive
from mizzen.client.objects import ListResult, ObjectsClient
from mizzen.client.ops import Compare, Op
from mizzen.client.records import (
    DeleteResult,
    EventType,
    KeyValue,
    LeaseInfo,
    Member,
    MemberStatus,
    OpResult,
    PutResult,
    RangeResult,
    TxnResult,
    WatchBatch,
    WatchEvent,
)
from mizzen.client.services import DiscoveryError, resolve, watch_endpoints
from mizzen.client.store_client import StoreClient
from mizzen.client.watch import Watcher

__all__ = [
    "AlreadyExistsError",
    "AmbiguousWriteError",
    "CompactedError",
    "Compare",
    "ConflictError",
    "DeleteResult",
    "DiscoveryError",
    "EventType",
    "FailedPreconditionError",
    "FencedError",
    "FutureRevisionError",
    "Informer",
    "InvalidArgumentError",
    "KeepAlive",
    "KeyValue",
    "LeaseExpiredError",
    "LeaseInfo",
    "LeaseNotFoundError",
    "ListResult",
    "Member",
    "MemberStatus",
    "NotFoundError",
    "ObjectsClient",
    "Op",
    "OpResult",
    "PermissionDeniedError",
    "PutResult",
    "RangeResult",
    "ResourceExhaustedError",
    "StoreClient",
    "StoreClientError",
    "TxnResult",
    "UnavailableError",
    "WatchBatch",
    "WatchEvent",
    "Watcher",
    "resolve",
    "watch_endpoints",
]
