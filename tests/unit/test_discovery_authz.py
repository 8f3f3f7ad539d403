"""The node authorizer for Services and Endpoints: a node reads them only in namespaces
where a pod is bound to it (the index, the request rule and the handler's rule)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from mizzen.api.kinds import lookup
from mizzen.security.server_auth import Denied, Identity
from protos import objects_api_pb2 as api
from protos import objects_pb2 as pb
from protos import rpc_pb2
from store.authz import StorePolicy, check_discovery, refusal
from store.config_index import PodConfigIndex
from store.state_machine import StateMachine

NODE_A = Identity("node:na", "node")
VIEWER = Identity("vera", "viewer")
CONTROLLER = Identity("controller", "controller")
OBJ = "/mizzen.v1.Objects/"
SERVICES, ENDPOINTS = lookup("services"), lookup("endpoints")


def _pod(name: str, node: str, ns: str = "d") -> pb.Pod:
    p = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace=ns))
    p.spec.processes.add(name="main", command=["/bin/true"])
    p.spec.node_name = node
    return p


def _put(sm: StateMachine, pod: pb.Pod) -> None:
    key = f"/registry/pods/{pod.metadata.namespace}/{pod.metadata.name}".encode()
    sm.apply(
        ("put", rpc_pb2.PutRequest(key=key, value=pod.SerializeToString()).SerializeToString())
    )


def _delete(sm: StateMachine, ns: str, name: str) -> None:
    req = rpc_pb2.DeleteRangeRequest(key=f"/registry/pods/{ns}/{name}".encode())
    sm.apply(("delete", req.SerializeToString()))


def _reader(sm: StateMachine) -> Callable[[Callable[[StateMachine], Any]], Any]:
    return lambda fn: fn(sm)


def test_the_index_knows_the_namespaces_of_each_nodes_pods() -> None:
    sm = StateMachine()
    index = PodConfigIndex()
    _put(sm, _pod("a1", "na"))  # no ConfigMap or Secret: counts all the same
    _put(sm, _pod("a2", "na"))
    _put(sm, _pod("b1", "nb", ns="e"))
    _put(sm, _pod("pending", ""))
    index.sync(_reader(sm))
    assert index.has_pods("na", "d")
    assert not index.has_pods("na", "e")
    assert index.has_pods("nb", "e")
    assert not index.has_pods("nb", "d")

    _delete(sm, "d", "a1")
    _put(sm, _pod("pending", "nb"))  # bound now
    index.sync(_reader(sm))
    assert index.has_pods("na", "d"), "a2 is still there"
    assert index.has_pods("nb", "d")
    _delete(sm, "d", "a2")
    _delete(sm, "e", "b1")
    _put(sm, _pod("b2", "nb", ns="e2"))
    index.sync(_reader(sm))
    assert not index.has_pods("na", "d")
    assert not index.has_pods("nb", "e") and index.has_pods("nb", "e2")
    assert index.rebuilds == 1

    restored = StateMachine()
    _put(restored, _pod("z", "na", ns="z"))
    index.sync(_reader(restored))
    assert index.rebuilds == 2
    assert index.has_pods("na", "z") and not index.has_pods("nb", "d")


POLICY = StorePolicy()

REQUEST_CASES: list[tuple[str, Identity, str, Any, str | None]] = [
    ("node get svc", NODE_A, "Get", api.GetRequest(kind="svc", namespace="d", name="db"), None),
    ("node list svc", NODE_A, "List", api.ListRequest(kind="services", namespace="d"), None),
    ("node watch ep", NODE_A, "Watch", api.WatchRequest(kind="endpoints", namespace="d"), None),
    (
        "node list all namespaces",
        NODE_A,
        "List",
        api.ListRequest(kind="services"),
        "in one namespace: give the namespace",
    ),
    (
        "node watch all namespaces",
        NODE_A,
        "Watch",
        api.WatchRequest(kind="ep"),
        "in one namespace: give the namespace",
    ),
    (
        "node create endpoints",
        NODE_A,
        "Create",
        api.CreateRequest(
            object=api.Object(endpoints=pb.Endpoints(metadata=pb.ObjectMeta(name="db")))
        ),
        "only get, list and watch the endpoints",
    ),
    (
        "node delete service",
        NODE_A,
        "Delete",
        api.DeleteRequest(kind="svc", namespace="d", name="db"),
        "only get, list and watch the services",
    ),
    ("viewer list svc", VIEWER, "List", api.ListRequest(kind="svc"), None),
    (
        "viewer create svc",
        VIEWER,
        "Create",
        api.CreateRequest(object=api.Object(service=pb.Service())),
        "viewers may only",
    ),
    ("controller writes ep", CONTROLLER, "Update", api.UpdateRequest(), None),
]


@pytest.mark.parametrize(
    ("case", "who", "rpc", "request_", "denied"), REQUEST_CASES, ids=[c[0] for c in REQUEST_CASES]
)
async def test_request_rules(
    case: str, who: Identity, rpc: str, request_: Any, denied: str | None
) -> None:
    if denied is None:
        await POLICY.authorize(who, OBJ + rpc, request_)
        return
    with pytest.raises(Denied) as err:
        await POLICY.authorize(who, OBJ + rpc, request_)
    assert denied in str(err.value), case


HAS_PODS = {("na", "d")}


def _has_pods(node: str, ns: str) -> bool:
    return (node, ns) in HAS_PODS


STORED_CASES: list[tuple[str, Identity, str, Any, str, str | None]] = [
    ("own namespace get", NODE_A, "Get", SERVICES, "d", None),
    ("own namespace list", NODE_A, "List", ENDPOINTS, "d", None),
    ("own namespace watch", NODE_A, "Watch", ENDPOINTS, "d", None),
    ("other namespace", NODE_A, "List", SERVICES, "e", "no pod of namespace e is bound to na"),
    ("other namespace get", NODE_A, "Get", ENDPOINTS, "e", "no pod of namespace e"),
    ("own namespace write", NODE_A, "Update", SERVICES, "d", "only get, list and watch"),
    ("viewer any", VIEWER, "List", SERVICES, "e", None),
    ("controller any", CONTROLLER, "Watch", ENDPOINTS, "e", None),
]


@pytest.mark.parametrize(
    ("case", "who", "rpc", "info", "ns", "denied"), STORED_CASES, ids=[c[0] for c in STORED_CASES]
)
def test_handler_rules(
    case: str, who: Identity, rpc: str, info: Any, ns: str, denied: str | None
) -> None:
    if denied is None:
        check_discovery(who, rpc, info, ns, "", _has_pods)
        return
    with pytest.raises(Denied) as err:
        check_discovery(who, rpc, info, ns, "", _has_pods)
    assert denied in str(err.value), case
    message = refusal(who, rpc, err.value).message
    assert message.startswith(f"mizzen: node:na (role node) may not {rpc.lower()} {info.plural}/")
