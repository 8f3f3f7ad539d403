"""Which ConfigMaps and Secrets the pods bound to each node refer to, and which namespaces
each node has pods in: the node authorizer's index.

A node identity may read a ConfigMap or Secret only while a pod bound to it
(``spec.nodeName``) refers to it (``mizzen.api.config_refs``), as Kubernetes'
node authorizer allows, and Services and Endpoints only in namespaces where a
pod is bound to it. Deciding that by scanning every pod on each Get would
cost a decode per pod (10,000 pods: a good part of a second), so this index
keeps, per node, a count of references per (namespace, kind, name) and a
count of pods per namespace, and follows the state machine by revision:

* ``sync(read)`` brings it to the state machine's current revision: the events
  after the revision it was built at (the state's own watch history), or a
  rebuild from every pod when that history is gone (compacted, or a snapshot
  replaced the state). Only the copying of event or record references happens
  under the state's lock; decoding pods happens outside it. Events and records
  are immutable, so what was copied stays what it was.
* ``refers(node, namespace, kind, name)`` and ``has_pods(node, namespace)``
  answer from the index as synced.

The handler calls ``sync`` after its read barrier, so the answer is decided on
state at least as new as every write acknowledged before the request, never on
a lagging member's older copy. The cost of one sync is the writes since the
previous one (a prefix test each, a decode per pod write), or one rebuild.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from google.protobuf.message import DecodeError

from mizzen.api.config_refs import config_refs
from mizzen.keyrange import prefix_end
from protos import objects_pb2 as pb

from .state_machine import Event, Record, StateMachine

log = structlog.get_logger("store.config_index")

PODS = b"/registry/pods/"
Read = Callable[[Callable[[StateMachine], Any]], Any]
Target = tuple[str, str, str]  # (namespace, kind, name)
MAX_SYNC_ROUNDS = 5


@dataclass(frozen=True)
class _PodRefs:
    node: str
    namespace: str
    targets: frozenset[Target]


@dataclass(frozen=True)
class _Catch:
    """What sync copied under the lock: events after the index's revision, or every pod."""

    revision: int
    state: weakref.ref[StateMachine]
    events: list[Event] | None = None
    records: list[Record] | None = None


def pod_refs(value: bytes) -> _PodRefs | None:
    """The node a stored pod is bound to, its namespace and what it refers to; None if
    unbound or undecodable."""
    pod = pb.Pod()
    try:
        pod.ParseFromString(value)
    except DecodeError:
        return None
    node = pod.spec.node_name
    if not node:
        return None
    ns = pod.metadata.namespace
    targets = frozenset((ns, ref.kind, ref.name) for ref in config_refs(pod.spec))
    return _PodRefs(node, ns, targets)


class PodConfigIndex:
    def __init__(self) -> None:
        self.revision = 0
        self._state: weakref.ref[StateMachine] | None = None
        self._pods: dict[bytes, _PodRefs] = {}
        self._by_node: dict[str, Counter[Target]] = {}
        self._namespaces: dict[str, Counter[str]] = {}
        self.rebuilds = 0

    def refers(self, node: str, namespace: str, kind: str, name: str) -> bool:
        """Whether a pod bound to node refers to that object (as of the last sync)."""
        counts = self._by_node.get(node)
        return bool(counts and counts[(namespace, kind, name)] > 0)

    def has_pods(self, node: str, namespace: str) -> bool:
        """Whether a pod of namespace is bound to node (as of the last sync)."""
        counts = self._namespaces.get(node)
        return bool(counts and counts[namespace] > 0)

    def sync(self, read: Read) -> None:
        """Bring the index to the state machine's revision (read runs a function under its lock)."""
        for _ in range(MAX_SYNC_ROUNDS):
            catch = read(self._catch)
            if catch is None:
                return
            self._apply(catch)
        # the state kept moving faster than we applied: finish under the lock
        read(self._catch_up_locked)

    def _catch_up_locked(self, sm: StateMachine) -> None:
        catch = self._catch(sm)
        if catch is not None:
            self._apply(catch)

    # ------------------------------------------------------------ internals

    def _catch(self, sm: StateMachine) -> _Catch | None:
        """Under the lock: nothing (up to date), the events since, or every pod record."""
        same = self._state is not None and self._state() is sm
        if same and self.revision == sm.revision:
            return None
        ref = weakref.ref(sm)
        if same and sm.compacted <= self.revision < sm.revision:
            return _Catch(sm.revision, ref, events=list(sm.events_after(self.revision)))
        keys = sm._scan(PODS, prefix_end(PODS))  # the live keys, no copies
        return _Catch(sm.revision, ref, records=[r for k in keys if (r := sm.get(k)) is not None])

    def _apply(self, catch: _Catch) -> None:
        if catch.records is not None:
            self._pods.clear()
            self._by_node.clear()
            self._namespaces.clear()
            self.rebuilds += 1
            self._put_all((r.key, r.value) for r in catch.records)
            log.debug("config_index_rebuilt", revision=catch.revision, pods=len(self._pods))
        else:
            assert catch.events is not None
            for ev in catch.events:
                if not ev.key.startswith(PODS):
                    continue
                self._drop(ev.key)
                if ev.record is not None:
                    self._put_all([(ev.key, ev.record.value)])
        self.revision = catch.revision
        self._state = catch.state

    def _put_all(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        for key, value in items:
            refs = pod_refs(value)
            if refs is None:
                continue
            self._pods[key] = refs
            self._namespaces.setdefault(refs.node, Counter())[refs.namespace] += 1
            if refs.targets:
                self._by_node.setdefault(refs.node, Counter()).update(refs.targets)

    def _drop(self, key: bytes) -> None:
        refs = self._pods.pop(key, None)
        if refs is None:
            return
        namespaces = self._namespaces[refs.node]
        namespaces[refs.namespace] -= 1
        if namespaces[refs.namespace] <= 0:
            del namespaces[refs.namespace]
        if not namespaces:
            del self._namespaces[refs.node]
        if not refs.targets:
            return
        counts = self._by_node[refs.node]
        counts.subtract(refs.targets)
        for target in refs.targets:
            if counts[target] <= 0:
                del counts[target]
        if not counts:
            del self._by_node[refs.node]
