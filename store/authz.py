"""Who may do what on a store: the roles of docs/security.md.

* ``admin`` — everything, including the raw etcd-compatible KV, Watch, Lease,
  Cluster and Maintenance APIs.
* ``viewer`` — get, list and watch objects except Secrets; read the
  leader-election keys (``/mizzen/leader/``, for ``mizzen cluster status``).
* ``controller`` — every Objects call; the raw KV, Watch and Lease calls only
  on keys under ``/mizzen/leader/`` (leader election and the fence key).
* ``node`` (CN ``node:<name>``) — Kubernetes' NodeRestriction: create, read and
  update its own Node (never its spec: a node cannot uncordon or untaint
  itself) and the status of its Node; its own Lease in ``mizzen-node-lease``;
  read, list and watch only pods bound to it (list/watch must select
  ``spec.nodeName=<name>``); update the status of, and delete, pods bound to
  it, never any pod's spec; create and update Events it is the source of
  (an update: both the stored and the new Event); get, and watch one at a
  time (field selector ``metadata.name=<name>``), the ConfigMaps and Secrets
  that pods bound to it refer to (Kubernetes' node authorizer), nothing else
  of those kinds; get, list and watch Services and Endpoints in a namespace
  (given: never across namespaces) where a pod is bound to it, for the
  processes' service discovery; no write of either kind.
* ``store`` — nothing beyond what every identity may do.

Every authenticated identity may call Maintenance.Status and Cluster.MemberList
(clients find the leader with them) and server reflection. Only controllers
(and admins) may fence their writes (``mizzen-fence-*`` metadata).

Two places decide, both with the rules below as pure functions:

* ``StorePolicy.authorize`` — in the AuthInterceptor, before the handler:
  everything that depends only on the identity and the request (roles, a
  node's field selector, "a node may not create pods", names).
* ``check_stored`` — in the Objects handlers, on the stored object the call
  acts on: after the handler's barrier for a Get, and on the very record whose
  mod_revision guards the write's Txn for Update, UpdateStatus and Delete. The
  decision and the effect see the same version (if the object changes in
  between, the Txn fails with a conflict and a retry decides again), never a
  lagging member's older copy. ``check_fence`` and ``check_undecodable`` are
  the handlers' other two decisions; ``check_config`` decides a node's Get or
  Watch of a ConfigMap or Secret on the pods bound to it (store/config_index.py),
  after the handler's barrier, and again for every event of such a watch.

One file because these are the store's roles, one policy: the per-RPC rules
and the key-range checks for the raw etcd API are read together to answer
"what may this identity do", as docs/security.md describes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from google.protobuf.message import Message

from mizzen.api.kinds import KindInfo, UnknownKindError, kind_of, lookup
from mizzen.api.selectors import parse_field_selector
from mizzen.echo import echo
from mizzen.keyrange import prefix_end
from mizzen.security.server_auth import Denied, Identity
from protos import objects_api_pb2 as api
from protos import rpc_pb2

from .errors import Code, StoreError

LEADER_PREFIX = b"/mizzen/leader/"
ETCD_WATCH = "/etcdserverpb.Watch/Watch"
NODE_LEASE_NAMESPACE = "mizzen-node-lease"
OBJECTS = "/mizzen.v1.Objects/"
FENCING_ROLES = frozenset({"controller", "admin"})
FENCE_METADATA = "mizzen-fence-key/mizzen-fence-revision metadata"
EVERYONE = frozenset(
    {
        "/etcdserverpb.Maintenance/Status",
        "/etcdserverpb.Cluster/MemberList",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    }
)
CONTROLLER_LEASE = frozenset(
    {
        "/etcdserverpb.Lease/LeaseGrant",
        "/etcdserverpb.Lease/LeaseRevoke",
        "/etcdserverpb.Lease/LeaseKeepAlive",
        "/etcdserverpb.Lease/LeaseTimeToLive",
    }
)
KEY_METHODS = frozenset(
    {
        "/etcdserverpb.KV/Range",
        "/etcdserverpb.KV/Put",
        "/etcdserverpb.KV/DeleteRange",
        "/etcdserverpb.KV/Txn",
        "/etcdserverpb.Watch/Watch",
    }
)
# etcd's Lock and Election services: raw KV writes (and reads) on the name's prefix,
# authorized by the same rules (see lock_election_ranges).
LOCK_ELECTION_METHODS = frozenset(
    {
        "/v3lockpb.Lock/Lock",
        "/v3lockpb.Lock/Unlock",
        "/v3electionpb.Election/Campaign",
        "/v3electionpb.Election/Proclaim",
        "/v3electionpb.Election/Resign",
        "/v3electionpb.Election/Leader",
        "/v3electionpb.Election/Observe",
    }
)
KEY_METHODS = KEY_METHODS | LOCK_ELECTION_METHODS
WATCH_METHODS = frozenset(
    {
        "/etcdserverpb.Watch/Watch",
        "/mizzen.v1.Objects/Watch",
        "/v3electionpb.Election/Observe",  # a watch stream, counted against max_watches
    }
)
VERBS = {
    "Get": "get",
    "List": "list",
    "Watch": "watch",
    "Create": "create",
    "Update": "update",
    "UpdateStatus": "update status of",
    "Delete": "delete",
}
READ_VERBS = frozenset({"get", "list", "watch"})
CONFIG_KINDS = frozenset({"ConfigMap", "Secret"})
DISCOVERY_KINDS = frozenset({"Service", "Endpoints"})


class StorePolicy:
    """The AuthInterceptor's policy: the rules that need only the identity and the request."""

    def watch_delta(self, method: str, request: Any) -> int:
        """+1 per etcd watch create; a cancel counts nothing here: the watch is
        released by the answer that ends it (watch_answer), so cancels of ids that
        were never opened cannot lower the count below what is open."""
        if method != ETCD_WATCH:
            return 0
        return 1 if request.HasField("create_request") else 0

    def watch_answer(self, method: str, response: Any) -> tuple[str, int] | None:
        if method != ETCD_WATCH:
            return None
        watch_id, created, canceled = watch_response_head(response)
        if created:
            return ("refused" if canceled else "opened", watch_id)
        if canceled:
            return ("closed", watch_id)
        return None

    async def authorize(self, identity: Identity, method: str, request: Any) -> None:
        role = identity.role
        if role == "admin" or method in EVERYONE:
            return
        if method.startswith(OBJECTS):
            self._objects(identity, method[len(OBJECTS) :], request)
            return
        if role in ("viewer", "controller") and method in KEY_METHODS:
            for verb, key, end in key_ranges(method, request):
                if role == "viewer" and verb != "read":
                    raise Denied(f"{verb} {_show(key)}", "viewers may only read")
                if not within(key, end, LEADER_PREFIX):
                    raise Denied(
                        f"{verb} {_show(key, end)}",
                        f"the raw KV API is admin-only outside {LEADER_PREFIX.decode()}",
                    )
            return
        if role == "controller" and method in CONTROLLER_LEASE:
            return
        service, _, name = method.lstrip("/").partition("/")
        if method in KEY_METHODS:
            ranges = list(key_ranges(method, request))
            verb = f"{ranges[0][0]} {_show(*ranges[0][1:])}" if ranges else f"call {name}"
            raise Denied(verb, "the raw KV API is admin-only")
        raise Denied(f"call {service}.{name}", f"not allowed for role {role}")

    # ---------------------------------------------------------------- objects

    def _objects(self, identity: Identity, rpc: str, request: Any) -> None:
        verb = VERBS.get(rpc)
        if verb is None:
            raise Denied(f"call Objects.{rpc}", "unknown method")
        role = identity.role
        if role == "controller":
            return
        info, namespace, name = _target(request)
        what = f"{verb} {_resource(info, namespace, name)}"
        if role == "viewer":
            if verb not in READ_VERBS:
                raise Denied(what, "viewers may only get, list and watch")
            if info is not None and info.kind == "Secret":
                raise Denied(what, "viewers may not read Secrets")
            return
        node = identity.node
        if node is None:
            raise Denied(what, f"not allowed for role {role}")
        reason = _node_request_rule(node, rpc, request, info, namespace, name)
        if reason is not None:
            raise Denied(what, reason)


def _node_request_rule(
    node: str, rpc: str, request: Any, info: KindInfo | None, ns: str, name: str
) -> str | None:
    """None when node may send this request; else why not (NodeRestriction).

    What depends on the stored object (a Node's spec, which node a pod is bound
    to, an Event's stored source) is left to ``check_stored``.
    """
    kind = info.kind if info else ""
    if kind == "Node":
        if name != node:
            return f"a node may only touch its own Node ({node})"
        if rpc in ("Get", "Create", "Update", "UpdateStatus"):
            return None
        return f"a node may not {VERBS[rpc]} Nodes"
    if kind == "Lease":
        return _lease_rule(node, rpc, ns, name)
    if kind == "Pod":
        if rpc in ("List", "Watch"):
            if _selects_node(request.field_selector, node):
                return None
            return f"a node may only {VERBS[rpc]} pods with field selector spec.nodeName={node}"
        if rpc in ("Create", "Update"):
            return "a node may not create pods or change any pod's spec"
        return None  # Get, UpdateStatus, Delete: on the stored pod
    if kind == "Event" and rpc in ("Create", "Update"):
        return _event_source_rule(node, _unwrap(request))
    if info is not None and kind in CONFIG_KINDS:
        return _config_request_rule(node, rpc, request, info, ns)
    if info is not None and kind in DISCOVERY_KINDS:
        return _discovery_request_rule(rpc, info, request)
    return f"nodes may not {VERBS[rpc]} {info.plural if info else 'objects of this kind'}"


def _config_request_rule(node: str, rpc: str, request: Any, info: KindInfo, ns: str) -> str | None:
    """A node's request on ConfigMaps or Secrets: Get, or Watch of one object by name.

    Whether a pod bound to the node refers to the object is decided in the
    handler (``check_config``), on the state after its barrier.
    """
    if rpc == "Get":
        return None
    if rpc == "Watch":
        if ns and _selects_name(request.field_selector, info.kind):
            return None
        return (
            f"a node may only watch one of the {info.plural} its pods refer to: give the "
            "namespace and the field selector metadata.name=<name>"
        )
    return f"a node may only get and watch the {info.plural} its pods refer to"


def _discovery_request_rule(rpc: str, info: KindInfo, request: Any) -> str | None:
    """A node's request on Services or Endpoints: Get, List or Watch in one namespace.

    Whether a pod of that namespace is bound to the node is decided in the
    handler (``check_discovery``), on the state after its barrier.
    """
    if rpc not in ("Get", "List", "Watch"):
        return f"a node may only get, list and watch the {info.plural} of its pods' namespaces"
    if not getattr(request, "namespace", ""):
        return f"a node may only {VERBS[rpc]} {info.plural} in one namespace: give the namespace"
    return None


def _lease_rule(node: str, rpc: str, ns: str, name: str) -> str | None:
    if ns == NODE_LEASE_NAMESPACE and name == node and rpc in ("Get", "Create", "Update"):
        return None
    return f"a node may only get, create and update its own Lease {NODE_LEASE_NAMESPACE}/{node}"


def _event_source_rule(node: str, event: Any) -> str | None:
    if event is not None and event.spec.source.host == node:
        return None
    return _only_own_events(node)


def _only_own_events(node: str) -> str:
    return f"a node may only record Events whose source.host is {node}"


# ------------------------------------------------------ decided on stored state


def check_stored(identity: Identity, rpc: str, stored: Message, new: Message | None = None) -> None:
    """Raise Denied unless identity may do rpc to stored (new: what the request sends).

    Called by the Objects handlers with the stored object the call acts on (see
    the module docstring). Only node identities have rules here; every other
    role was decided wholly by ``StorePolicy.authorize``.
    """
    if identity.role != "node":
        return
    info = kind_of(stored)
    meta: Any = stored.metadata  # type: ignore[attr-defined]
    what = f"{VERBS.get(rpc, rpc)} {_resource(info, meta.namespace, meta.name)}"
    node = identity.node
    if node is None:
        raise Denied(what, "not allowed for role node")
    reason = stored_rule(node, rpc, stored, new)
    if reason is not None:
        raise Denied(what, reason)


def stored_rule(node: str, rpc: str, stored: Any, new: Any = None) -> str | None:
    """None when node may do rpc to stored (new: the object sent); else why not."""
    info = kind_of(stored)
    kind, meta, verb = info.kind, stored.metadata, VERBS.get(rpc, rpc)
    if kind == "Node":
        if meta.name != node:
            return f"a node may only touch its own Node ({node})"
        if rpc not in ("Get", "Update", "UpdateStatus"):
            return f"a node may not {verb} Nodes"
        if rpc == "Update" and (new is None or new.spec != stored.spec):
            return "a node may not change its Node's spec"
        return None
    if kind == "Pod":
        if rpc not in ("Get", "UpdateStatus", "Delete"):
            return "a node may not create pods or change any pod's spec"
        if stored.spec.node_name != node:
            return f"pod {meta.namespace}/{meta.name} is not bound to {node}"
        if rpc == "UpdateStatus" and (new is None or new.spec.node_name != node):
            return "a node may not rebind a pod"
        return None
    if kind == "Lease":
        return _lease_rule(node, rpc, meta.namespace, meta.name)
    if kind == "Event" and rpc == "Update":
        if stored.spec.source.host != node:
            host = stored.spec.source.host
            return f"it was recorded by {host!r}: {_only_own_events(node)}"
        return _event_source_rule(node, new)
    return f"nodes may not {verb} {info.plural}"


def config_rule(node: str, rpc: str, kind: str, ns: str, name: str, referred: bool) -> str | None:
    """None when node may do rpc to a ConfigMap or Secret; else why not.

    referred: whether a pod bound to node refers to it (store/config_index.py).
    """
    if rpc not in ("Get", "Watch"):
        return f"a node may only get and watch the {kind}s its pods refer to"
    if referred:
        return None
    return f"no pod bound to {node} refers to {kind} {ns}/{name}"


def check_config(
    identity: Identity,
    rpc: str,
    info: KindInfo,
    namespace: str,
    name: str,
    refers: Callable[[str, str, str, str], bool],
) -> None:
    """Raise Denied unless identity may do rpc (Get, Watch) to that ConfigMap or Secret.

    Only nodes have a rule here; refers(node, namespace, kind, name) answers from
    the handler's synced index.
    """
    if identity.role != "node" or info.kind not in CONFIG_KINDS:
        return
    what = f"{VERBS.get(rpc, rpc)} {_resource(info, namespace, name)}"
    node = identity.node
    if node is None:
        raise Denied(what, "not allowed for role node")
    referred = refers(node, namespace, info.kind, name)
    reason = config_rule(node, rpc, info.kind, namespace, name, referred)
    if reason is not None:
        raise Denied(what, reason)


def discovery_rule(node: str, rpc: str, plural: str, ns: str, has_pods: bool) -> str | None:
    """None when node may do rpc to Services or Endpoints of namespace ns; else why not.

    has_pods: whether a pod of ns is bound to node (store/config_index.py).
    """
    if rpc not in ("Get", "List", "Watch"):
        return f"a node may only get, list and watch the {plural} of its pods' namespaces"
    if has_pods:
        return None
    return f"no pod of namespace {ns} is bound to {node}"


def check_discovery(
    identity: Identity,
    rpc: str,
    info: KindInfo,
    namespace: str,
    name: str,
    has_pods: Callable[[str, str], bool],
) -> None:
    """Raise Denied unless identity may do rpc (Get, List, Watch) to Services or Endpoints
    of namespace.

    Only nodes have a rule here; has_pods(node, namespace) answers from the
    handler's synced index.
    """
    if identity.role != "node" or info.kind not in DISCOVERY_KINDS:
        return
    what = f"{VERBS.get(rpc, rpc)} {_resource(info, namespace, name)}"
    node = identity.node
    if node is None:
        raise Denied(what, "not allowed for role node")
    reason = discovery_rule(node, rpc, info.plural, namespace, has_pods(node, namespace))
    if reason is not None:
        raise Denied(what, reason)


def check_undecodable(
    identity: Identity, rpc: str, info: KindInfo, namespace: str, name: str
) -> None:
    """Raise Denied unless identity may act on a stored value that does not decode.

    Only roles whose rights do not depend on the object (admin, controller) may:
    for a node, whether the object is its own cannot be told.
    """
    if identity.role != "node":
        return
    raise Denied(
        f"{VERBS.get(rpc, rpc)} {_resource(info, namespace, name)}",
        "its stored value does not decode, so whether it is the node's own cannot be told",
    )


def check_fence(identity: Identity, rpc: str) -> None:
    """Raise Denied unless identity may fence a write (a fence is a probe of any key)."""
    if identity.role not in FENCING_ROLES:
        raise Denied(
            f"send {FENCE_METADATA} ({VERBS.get(rpc, rpc)})",
            "only controllers fence their writes",
        )


def refusal(identity: Identity, rpc: str, denied: Denied) -> StoreError:
    """A handler's denial: logged as the interceptor's are, PERMISSION_DENIED to the caller."""
    denied.log(identity, OBJECTS + rpc)
    return StoreError(Code.PERMISSION_DENIED, denied.message(identity))


# ------------------------------------------------------------------- helpers


def _unwrap(request: Any) -> Message | None:
    envelope = getattr(request, "object", None)
    if not isinstance(envelope, api.Object):
        return None
    which = envelope.WhichOneof("object")
    return getattr(envelope, which) if which else None


def _target(request: Any) -> tuple[KindInfo | None, str, str]:
    """(kind, namespace, name) a request is about; kind None when unknown (validation says so)."""
    obj = _unwrap(request)
    if obj is not None:
        try:
            info = kind_of(obj)
        except UnknownKindError:
            return None, "", ""
        meta = obj.metadata  # type: ignore[attr-defined]
        return info, meta.namespace or ("default" if info.namespaced else ""), meta.name
    try:
        info = lookup(getattr(request, "kind", ""))
    except UnknownKindError:
        return None, "", ""
    namespace = getattr(request, "namespace", "")
    return info, namespace, getattr(request, "name", "")


def _resource(info: KindInfo | None, namespace: str, name: str) -> str:
    plural = info.plural if info else "objects"
    return "/".join(echo(part) for part in (plural, namespace, name) if part)


def _selects_name(selector: str, kind: str) -> bool:
    try:
        matcher = parse_field_selector(selector, kind)
    except ValueError:
        return False
    return bool(matcher.value_of("metadata.name"))


def _selects_node(selector: str, node: str) -> bool:
    try:
        matcher = parse_field_selector(selector, "Pod")
    except ValueError:
        return False
    return matcher.value_of("spec.nodeName") == node


def watch_response_head(response: bytes | rpc_pb2.WatchResponse) -> tuple[int, bool, bool]:
    """(watch_id, created, canceled) of a WatchResponse, also as the bytes the watch
    hub sends, without decoding its events: protobuf writes fields in number order,
    so the scan stops at the first field after ``canceled`` (4)."""
    if not isinstance(response, bytes | bytearray | memoryview):
        return response.watch_id, response.created, response.canceled
    data = bytes(response)
    values = {2: 0, 3: 0, 4: 0}
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if number > 4:
            break
        if wire == 0:
            value, pos = _varint(data, pos)
            if number in values:
                values[number] = value
        elif wire == 2:
            length, pos = _varint(data, pos)
            pos += length
        else:  # no other wire type comes before field 5 of a WatchResponse
            break
    watch_id = values[2] - (1 << 64) if values[2] >= 1 << 63 else values[2]
    return watch_id, bool(values[3]), bool(values[4])


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def key_ranges(method: str, request: Any) -> Iterator[tuple[str, bytes, bytes]]:
    """(verb, key, range_end) of every key or range a KV/Watch request touches."""
    if method in LOCK_ELECTION_METHODS:
        yield from lock_election_ranges(method, request)
    elif method.endswith("/Range"):
        yield "read", request.key, request.range_end
    elif method.endswith("/Put"):
        yield "write", request.key, b""
    elif method.endswith("/DeleteRange"):
        yield "write", request.key, request.range_end
    elif method.endswith("/Txn"):
        yield from _txn_ranges(request)
    elif method.endswith("/Watch") and request.HasField("create_request"):
        yield "read", request.create_request.key, request.create_request.range_end


def _txn_ranges(txn: rpc_pb2.TxnRequest) -> Iterator[tuple[str, bytes, bytes]]:
    for cmp in txn.compare:
        yield "read", cmp.key, cmp.range_end
    ops: Iterable[rpc_pb2.RequestOp] = [*txn.success, *txn.failure]
    for op in ops:
        which = op.WhichOneof("request")
        if which == "request_range":
            yield "read", op.request_range.key, op.request_range.range_end
        elif which == "request_put":
            yield "write", op.request_put.key, b""
        elif which == "request_delete_range":
            yield "write", op.request_delete_range.key, op.request_delete_range.range_end
        elif which == "request_txn":
            yield from _txn_ranges(op.request_txn)


def within(key: bytes, range_end: bytes, prefix: bytes) -> bool:
    """Whether [key, range_end) (or the single key) lies entirely under prefix."""
    if not key.startswith(prefix):
        return False
    if not range_end:
        return True
    return range_end != b"\0" and range_end <= prefix_end(prefix)


def _show(key: bytes, range_end: bytes = b"") -> str:
    text = echo(key.decode("utf-8", "replace"))
    return f"{text}..{echo(range_end.decode('utf-8', 'replace'))}" if range_end else text


# ------------------------------------------- etcd users (store/etcd_auth_interceptor.py)


def lock_election_ranges(method: str, request: Any) -> Iterator[tuple[str, bytes, bytes]]:
    """(verb, key, range_end) a Lock or Election request needs, as etcd's own
    implementation of those services (clientv3 concurrency, run with the caller's
    token) reads and writes: keys ``<name>/<lease>`` under the prefix ``<name>/``.

    Lock and Campaign put a key under the prefix and range and watch the prefix
    (read and write on it); Unlock deletes its key; Proclaim and Resign compare
    and write the leader's key; Leader and Observe read the prefix.
    """
    name = method.rsplit("/", 1)[-1]
    if name in ("Lock", "Campaign"):
        prefix = request.name + b"/"
        yield "read", prefix, prefix_end(prefix)
        yield "write", prefix, prefix_end(prefix)
    elif name == "Unlock":
        yield "write", request.key, b""
    elif name in ("Proclaim", "Resign"):
        yield "read", request.leader.key, b""
        yield "write", request.leader.key, b""
    elif name in ("Leader", "Observe"):
        prefix = request.name + b"/"
        yield "read", prefix, prefix_end(prefix)
