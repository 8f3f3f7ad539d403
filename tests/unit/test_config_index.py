"""The node authorizer's index: which ConfigMaps and Secrets the pods bound to each node
refer to, kept in step with a real state machine (events, compaction, a new state)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from protos import objects_pb2 as pb
from protos import rpc_pb2
from store.config_index import PodConfigIndex
from store.state_machine import StateMachine


def _pod(name: str, node: str, *secrets: str, config_map: str = "", ns: str = "d") -> pb.Pod:
    p = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace=ns))
    proc = p.spec.processes.add(name="main", command=["/bin/true"])
    for s in secrets:
        proc.env_from.add(secret_ref=pb.SecretEnvSource(name=s))
    if config_map:
        p.spec.volumes.add(name="conf", config_map=pb.ConfigMapVolumeSource(name=config_map))
    p.spec.node_name = node
    return p


def _put(sm: StateMachine, pod: pb.Pod) -> None:
    key = f"/registry/pods/{pod.metadata.namespace}/{pod.metadata.name}".encode()
    req = rpc_pb2.PutRequest(key=key, value=pod.SerializeToString())
    sm.apply(("put", req.SerializeToString()))


def _delete(sm: StateMachine, ns: str, name: str) -> None:
    req = rpc_pb2.DeleteRangeRequest(key=f"/registry/pods/{ns}/{name}".encode())
    sm.apply(("delete", req.SerializeToString()))


def _reader(sm: StateMachine) -> Callable[[Callable[[StateMachine], Any]], Any]:
    return lambda fn: fn(sm)


def test_the_index_follows_binds_edits_and_deletes_through_events() -> None:
    sm = StateMachine()
    index = PodConfigIndex()
    _put(sm, _pod("a1", "na", "sa", config_map="conf"))
    _put(sm, _pod("b1", "nb", "sb"))
    _put(sm, _pod("pending", "", "sp"))
    _put(sm, _pod("other-ns", "na", "sa", ns="e"))
    index.sync(_reader(sm))
    assert index.rebuilds == 1 and index.revision == sm.revision
    assert index.refers("na", "d", "Secret", "sa")
    assert index.refers("na", "d", "ConfigMap", "conf")
    assert index.refers("na", "e", "Secret", "sa")
    assert not index.refers("na", "d", "Secret", "sb")  # bound to nb
    assert not index.refers("na", "d", "ConfigMap", "sa")  # another kind
    assert not index.refers("na", "d", "Secret", "sp")  # pending pods give nothing
    assert not index.refers("nb", "d", "Secret", "sa")

    _put(sm, _pod("a2", "na", "sa"))  # a second pod refers to sa
    _put(sm, _pod("pending", "nb", "sp"))  # bound
    _put(sm, _pod("b1", "nb"))  # no longer refers to sb
    for _ in range(5):  # writes to other kinds are skipped
        req = rpc_pb2.PutRequest(key=b"/registry/secrets/d/sa", value=b"x")
        sm.apply(("put", req.SerializeToString()))
    index.sync(_reader(sm))
    assert index.rebuilds == 1, "followed the events, no rebuild"
    assert index.refers("nb", "d", "Secret", "sp")
    assert not index.refers("nb", "d", "Secret", "sb")

    _delete(sm, "d", "a1")
    index.sync(_reader(sm))
    assert index.refers("na", "d", "Secret", "sa")  # a2 still refers to it
    assert not index.refers("na", "d", "ConfigMap", "conf")
    _delete(sm, "d", "a2")
    _delete(sm, "e", "other-ns")
    index.sync(_reader(sm))
    assert not index.refers("na", "d", "Secret", "sa")
    assert index.rebuilds == 1


def test_a_compacted_history_or_a_new_state_rebuilds() -> None:
    sm = StateMachine(history_limit=3)
    index = PodConfigIndex()
    _put(sm, _pod("a1", "na", "s1"))
    index.sync(_reader(sm))
    for i in range(10):  # more writes than the history keeps
        _put(sm, _pod(f"x{i}", "nb", f"s{i}"))
    _put(sm, _pod("a1", "na", "s2"))
    assert sm.compacted > index.revision
    index.sync(_reader(sm))
    assert index.rebuilds == 2
    assert index.refers("na", "d", "Secret", "s2") and not index.refers("na", "d", "Secret", "s1")
    assert index.refers("nb", "d", "Secret", "s9")

    restored = StateMachine()  # e.g. a snapshot installed: another state object
    _put(restored, _pod("a1", "na", "s3"))
    index.sync(_reader(restored))
    assert index.rebuilds == 3
    assert index.refers("na", "d", "Secret", "s3") and not index.refers("nb", "d", "Secret", "s9")


def test_an_undecodable_pod_value_refers_to_nothing() -> None:
    sm = StateMachine()
    req = rpc_pb2.PutRequest(key=b"/registry/pods/d/broken", value=b"\xff\xff not a pod")
    sm.apply(("put", req.SerializeToString()))
    _put(sm, _pod("ok", "na", "s"))
    index = PodConfigIndex()
    index.sync(_reader(sm))
    assert index.refers("na", "d", "Secret", "s")
