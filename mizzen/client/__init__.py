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

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# Names are imported on first use (PEP 562), so a command that needs only the
# errors does not pay for the informer, the watch machinery and structlog.
_LAZY = {
    "AlreadyExistsError": "mizzen.client.errors",
    "AmbiguousWriteError": "mizzen.client.errors",
    "CompactedError": "mizzen.client.errors",
    "Compare": "mizzen.client.ops",
    "ConflictError": "mizzen.client.errors",
    "DeleteResult": "mizzen.client.records",
    "DiscoveryError": "mizzen.client.services",
    "EventType": "mizzen.client.records",
    "FailedPreconditionError": "mizzen.client.errors",
    "FencedError": "mizzen.client.errors",
    "FutureRevisionError": "mizzen.client.errors",
    "Informer": "mizzen.client.informer",
    "InvalidArgumentError": "mizzen.client.errors",
    "KeepAlive": "mizzen.client.lease",
    "KeyValue": "mizzen.client.records",
    "LeaseExpiredError": "mizzen.client.errors",
    "LeaseInfo": "mizzen.client.records",
    "LeaseNotFoundError": "mizzen.client.errors",
    "ListResult": "mizzen.client.objects",
    "Member": "mizzen.client.records",
    "MemberStatus": "mizzen.client.records",
    "NotFoundError": "mizzen.client.errors",
    "ObjectsClient": "mizzen.client.objects",
    "Op": "mizzen.client.ops",
    "OpResult": "mizzen.client.records",
    "PermissionDeniedError": "mizzen.client.errors",
    "PutResult": "mizzen.client.records",
    "RangeResult": "mizzen.client.records",
    "ResourceExhaustedError": "mizzen.client.errors",
    "StoreClient": "mizzen.client.store_client",
    "StoreClientError": "mizzen.client.errors",
    "TxnResult": "mizzen.client.records",
    "UnavailableError": "mizzen.client.errors",
    "WatchBatch": "mizzen.client.records",
    "WatchEvent": "mizzen.client.records",
    "Watcher": "mizzen.client.watch",
    "resolve": "mizzen.client.services",
    "watch_endpoints": "mizzen.client.services",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


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
