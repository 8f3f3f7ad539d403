"""The dependencies controller: whether each pod's ``dependsOn`` is met, and cycles.

For every pod with ``spec.dependsOn`` (its own, or copied from its Deployment,
DaemonSet or Job) it writes the pod condition ``DependenciesReady``:

* ``True`` (reason ``DependenciesMet``) when every dependency is met — a
  Service whose Endpoints have at least one ready address, a Deployment whose
  condition ``Available`` is True, a Job whose condition ``Complete`` is True;
* ``False`` (reason ``DependenciesNotReady``) with a message naming each one
  that is not, and why (``service "db" has no ready endpoints; deployment
  "cache" does not exist``) — an unknown target is not met, never an error;
* ``False`` (reason ``DependencyCycle``) when it is not met and the pod's
  workload is in a dependency cycle; the message shows the cycle.

The node agent starts a pod's processes only once that condition is True.
Pods that finished or are being deleted are left alone. A pod whose
dependencies go away after its processes started keeps running (its condition
turns False and says why; docs/controllers.md).

A pod is immutable, so when its owner's dependencies change (a Deployment's
spec.dependsOn, written into its ReplicaSets' templates; a DaemonSet's; a
Job's) the pods made before keep theirs. Those that are still waiting — no
process ever started, condition not True — are deleted (Event
``DependenciesChanged``, with a resource_version precondition so a pod the
agent may be starting is never touched) and their owner makes new ones with
the new dependencies; pods that started are left alone.

Deployments, DaemonSets and Jobs with ``spec.dependsOn`` get the same
condition in their status, evaluated the same way (``describe`` shows what
they wait for), and ``DependencyCycle`` when they are in a cycle, with a
Warning Event ``DependencyCycle`` each time one enters a cycle.

**Cycles.** Per namespace, the controller builds the graph of workloads
(Deployments, DaemonSets, Jobs, ReplicaSets and Pods without a controller)
and what they wait for: a workload → each Service it depends on → every
workload whose pod template labels that Service selects; a workload → the
Deployment or Job it depends on. Only dependencies that can never be met
count: a Service is satisfiable when one of the workloads it selects is; a
workload when all it depends on is; a missing target, or a Service that
selects no workload, is not a cycle (it may appear; it is reported as not
ready). Workloads that can never start are those not satisfiable; among them,
those in a strongly connected component (or depending on themselves) are in a
cycle — the others merely wait on one. So ``api → Service db ← {db, db-backup}``
with ``db → Service api`` is no cycle as long as ``db-backup`` depends on
nothing: it can start, and then everything can. The graph is recomputed from
the caches when a spec that shapes it changes (workload created, deleted, its
dependsOn or template labels changed; a Service's selector), never on status
changes.

Nothing polls: every reconcile is driven by informer events — the pods
depending on a target are found through an index (``BY_DEPENDENCY``), and
a pod's key is queued when its dependency's readiness changes (an Endpoints'
ready addresses, a Deployment's ``Available``, a Job's ``Complete`` or
``Failed``). Status writes are fenced like every controller write; a conflict
requeues the key.

Queue keys: ``ns/name`` for pods (the primary kind: resynced), ``Kind:ns/name``
for Deployments, DaemonSets and Jobs, ``graph:ns`` for a namespace's graph.

One file because it is one controller: what a dependency's readiness means,
the cycle search over the dependency graph and the controller that writes
``DependenciesReady`` answer one question per pod, and the graph exists only
for it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from controllers.base import (
    BY_DEPENDENCY,
    Controller,
    ControllerContext,
    Result,
    TemporaryError,
    controller_ref,
    is_terminating,
    split_key,
)
from controllers.podutil import mark_condition
from mizzen.api import dependencies as deps
from mizzen.api.dependencies import CONDITION, CYCLE, MET, NOT_READY, SERVICE, Target
from mizzen.api.pods import has_ended
from mizzen.client.errors import ConflictError, NotFoundError
from protos import objects_pb2 as pb

if TYPE_CHECKING:
    from controllers.config import ManagerConfig

log = structlog.get_logger(__name__)

GRAPH = "graph:"
WORKLOAD_PLURALS = {"Deployment": "deployments", "DaemonSet": "daemonsets", "Job": "jobs"}
ARROW = " -> "

# ------------------------------------------------------------------ evaluation (pure)


def condition_of(obj: Any, type_: str) -> pb.Condition | None:
    for cond in obj.status.conditions:
        if cond.type == type_:
            return cond
    return None


def condition_true(obj: Any, type_: str) -> bool:
    cond = condition_of(obj, type_)
    return cond is not None and cond.status == "True"


def ready_addresses(endpoints: pb.Endpoints | None) -> int:
    """How many ready addresses an Endpoints object lists (0 for None)."""
    if endpoints is None:
        return 0
    return sum(len(subset.addresses) for subset in endpoints.subsets)


@dataclass(frozen=True)
class Targets:
    """What evaluation reads about targets in one namespace (from the caches)."""

    service: Callable[[str], pb.Service | None]
    endpoints: Callable[[str], pb.Endpoints | None]
    deployment: Callable[[str], pb.Deployment | None]
    job: Callable[[str], pb.Job | None]


def why_unmet(target: Target, seen: Targets) -> str | None:
    """None when target is met now, else why not (for a condition message)."""
    if target.kind == SERVICE:
        if seen.service(target.name) is None:
            return f"{target} does not exist"
        if ready_addresses(seen.endpoints(target.name)) == 0:
            return f"{target} has no ready endpoints"
        return None
    obj: Any = seen.deployment(target.name) if target.kind == "Deployment" else None
    if target.kind == "Job":
        obj = seen.job(target.name)
    if obj is None:
        return f"{target} does not exist"
    if condition_true(obj, target.condition):
        return None
    if target.kind == "Job" and condition_true(obj, "Failed"):
        return f"{target} failed"
    return f"{target} is not {target.condition}"


def unmet(depends_on: Iterable[pb.Dependency], seen: Targets) -> list[str]:
    """Why each unmet dependency is not met, in declaration order ([] when all are)."""
    out = []
    for target in deps.targets(depends_on):
        why = why_unmet(target, seen)
        if why is not None:
            out.append(why)
    return out


MAX_SHOWN = 12
"""Refs of a cycle shown in a message; a longer one is cut (its length is said)."""


@dataclass(frozen=True)
class Cycle:
    """A dependency cycle seen from one workload: its first refs and its length.

    ``head`` is the whole path (first == last) when it has at most MAX_SHOWN
    refs, else its first MAX_SHOWN - 1; ``length`` counts the refs of the whole
    path. Kept short so that a namespace-wide cycle costs no quadratic memory.
    """

    head: tuple[str, ...]
    length: int

    def text(self) -> str:
        """``Deployment/a -> Service/b -> Deployment/b -> Service/a -> Deployment/a``."""
        shown = ARROW.join(self.head)
        if self.length <= MAX_SHOWN:
            return shown
        return f"{shown}{ARROW}... ({self.length - MAX_SHOWN} more){ARROW}{self.head[0]}"


@dataclass(frozen=True)
class Verdict:
    """The DependenciesReady condition an object should carry."""

    status: str
    reason: str
    message: str


def verdict(missing: Sequence[str], cycle: Cycle | None, *, workload: bool = False) -> Verdict:
    """From the unmet dependencies and the cycle the object's workload is in (None: none).

    A pod whose dependencies are all met is ready even when its workload is in
    a cycle (its targets are there: it is not deadlocked now); a workload in a
    cycle is reported as such whatever its targets show now (if its pods all
    went, none could start again).
    """
    waiting = "; ".join(missing)
    if cycle and (missing or workload):
        message = f"dependency cycle: {cycle.text()}"
        return Verdict("False", CYCLE, f"{message}; {waiting}" if waiting else message)
    if not missing:
        return Verdict("True", MET, "")
    return Verdict("False", NOT_READY, waiting)


# ------------------------------------------------------------------ cycles (pure)


@dataclass(frozen=True)
class Node:
    """One workload in a namespace's dependency graph.

    ref is "Kind/name" (Deployment, DaemonSet, Job, ReplicaSet or Pod); labels
    are its pods' labels (the template's); needs are its dependencies.
    """

    ref: str
    labels: Mapping[str, str]
    needs: tuple[Target, ...]


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """A Service's selector (a non-empty equality map) against pod labels."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def find_cycles(
    nodes: Sequence[Node], services: Mapping[str, Mapping[str, str]]
) -> dict[str, Cycle]:
    """ref → a cycle through it (``Cycle``) for every workload in a cycle.

    services maps each Service's name to its selector. See the module doc for
    what counts (dependencies that can never be met).
    """
    by_ref = {n.ref: n for n in nodes}
    by_label: dict[tuple[str, str], set[str]] = {}
    for n in nodes:
        for pair in n.labels.items():
            by_label.setdefault(pair, set()).add(n.ref)
    members: dict[str, list[str]] = {}
    for name, selector in services.items():
        chosen: set[str] | None = None
        for pair in selector.items():
            refs = by_label.get(pair, set())
            chosen = set(refs) if chosen is None else chosen & refs
        members[name] = sorted(chosen or ())
    member_of: dict[str, list[str]] = {}
    for name, chosen_refs in members.items():
        for ref in chosen_refs:
            member_of.setdefault(ref, []).append(name)

    def trivially_met(t: Target) -> bool:
        """Missing targets and Services that select no workload are never a cycle."""
        if t.kind == SERVICE:
            return not members.get(t.name)
        return t.ref() not in by_ref

    # Which workloads can ever start (a Horn-clause propagation, linear in the graph).
    pending = {n.ref: 0 for n in nodes}
    waiters: dict[str, list[str]] = {}
    for n in nodes:
        for t in n.needs:
            if not trivially_met(t):
                pending[n.ref] += 1
                waiters.setdefault(t.ref(), []).append(n.ref)
    startable: set[str] = set()
    met_services: set[str] = set()
    ready = deque(ref for ref, count in pending.items() if count == 0)
    while ready:
        ref = ready.popleft()
        startable.add(ref)
        met = [ref] + [f"{SERVICE}/{s}" for s in member_of.get(ref, ()) if s not in met_services]
        met_services.update(member_of.get(ref, ()))
        for target in met:
            for waiter in waiters.pop(target, ()):
                pending[waiter] -= 1
                if pending[waiter] == 0:
                    ready.append(waiter)
    blocked = [n for n in nodes if n.ref not in startable]
    if not blocked:
        return {}

    def satisfiable(t: Target) -> bool:
        if trivially_met(t):
            return True
        if t.kind == SERVICE:
            return t.name in met_services
        return t.ref() in startable

    # the graph of what keeps them blocked: workload -> Service -> workload, workload -> workload
    edges: dict[str, list[str]] = {}
    for n in blocked:
        out: list[str] = []
        for t in n.needs:
            if satisfiable(t):
                continue
            out.append(t.ref())
            if t.kind == SERVICE:
                edges[t.ref()] = list(members[t.name])
        edges[n.ref] = out
    cyclic: dict[str, Cycle] = {}
    for component in _components(edges):
        if len(component) == 1:
            (only,) = component
            if only not in edges.get(only, ()):
                continue
        for ref in sorted(component):
            if ref in cyclic or ref not in by_ref:
                continue
            body = _shortest_cycle(ref, edges, component)[:-1]
            # the same cycle, seen from each workload on it
            size = len(body)
            for i, member in enumerate(body):
                if member in by_ref and member not in cyclic:
                    if size + 1 <= MAX_SHOWN:
                        head = (*body[i:], *body[:i], member)
                    else:
                        head = tuple(body[(i + j) % size] for j in range(MAX_SHOWN - 1))
                    cyclic[member] = Cycle(head, size + 1)
    return cyclic


def _components(edges: Mapping[str, Sequence[str]]) -> list[set[str]]:
    """Strongly connected components (Tarjan's, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[set[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            successors = edges.get(node, ())
            if i < len(successors):
                work.append((node, i + 1))
                nxt = successors[i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                out.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return out


def _shortest_cycle(
    start: str, edges: Mapping[str, Sequence[str]], component: set[str]
) -> tuple[str, ...]:
    """The shortest path start → ... → start inside component (breadth first)."""
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in edges.get(node, ()):
            if nxt not in component:
                continue
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return (*reversed(path), start)
            if nxt not in previous:
                previous[nxt] = node
                queue.append(nxt)
    return (start, start)  # pragma: no cover - a component with a cycle always has one


# ------------------------------------------------------------------ the controller


def _labels(obj: Any) -> Mapping[str, str]:
    if isinstance(obj, pb.Pod):
        return dict(obj.metadata.labels)
    return dict(obj.spec.template.metadata.labels)


@dataclass
class _Graph:
    cycles: dict[str, Cycle] = field(default_factory=dict)


class DependenciesController(Controller):
    """Writes DependenciesReady on pods and workloads; see the module doc."""

    name = "dependencies"
    workers = 8
    primary_kind = "Pod"

    def __init__(self, config: ManagerConfig | None = None) -> None:
        """config: the manager's factory signature; nothing in it applies here."""
        self._graphs: dict[str, _Graph] = {}
        self._dirty: set[str] = set()
        # what graph:<ns> last compared (the cycles the pods and workloads were told about)
        self._announced: dict[str, dict[str, Cycle]] = {}

    # -- handlers -------------------------------------------------------------------

    def setup(self, ctx: ControllerContext) -> None:
        self._ctx = ctx
        inf = ctx.informers
        self.pods = inf.get("Pod")
        self.replicasets = inf.get("ReplicaSet")
        self.deployments = inf.get("Deployment")
        self.daemonsets = inf.get("DaemonSet")
        self.jobs = inf.get("Job")
        self.services = inf.get("Service")
        self.endpoints = inf.get("Endpoints")
        self.pods.on_add(self._pod_added)
        self.pods.on_update(self._pod_updated)
        self.pods.on_delete(self._pod_deleted)
        self.replicasets.on_add(self._rs_changed)
        self.replicasets.on_update(self._rs_updated)
        self.replicasets.on_delete(self._rs_changed)
        for informer in (self.deployments, self.daemonsets, self.jobs):
            informer.on_add(self._workload_changed)
            informer.on_update(self._workload_updated)
            informer.on_delete(self._workload_changed)
        self.services.on_add(self._service_changed)
        self.services.on_update(self._service_updated)
        self.services.on_delete(self._service_changed)
        self.endpoints.on_add(self._endpoints_changed)
        self.endpoints.on_update(self._endpoints_updated)
        self.endpoints.on_delete(self._endpoints_changed)

    def _graph_changed(self, namespace: str) -> None:
        self._dirty.add(namespace)
        self.queue.add(GRAPH + namespace)

    def _dependents(self, namespace: str, target: Target) -> None:
        """Queue every pod and workload that depends on target."""
        value = deps.index_key(namespace, target)
        for pod in self.pods.by_index(BY_DEPENDENCY, value):
            self.enqueue(pod)
        for kind, informer in (
            ("Deployment", self.deployments),
            ("DaemonSet", self.daemonsets),
            ("Job", self.jobs),
        ):
            for obj in informer.by_index(BY_DEPENDENCY, value):
                self.queue.add(_workload_key(kind, obj))

    def _pod_added(self, pod: pb.Pod) -> None:
        if pod.spec.depends_on:
            self.enqueue(pod)
        if controller_ref(pod) is None:
            self._graph_changed(pod.metadata.namespace)

    def _pod_updated(self, old: pb.Pod, new: pb.Pod) -> None:
        if new.spec.depends_on:
            self.enqueue(new)
        owner = controller_ref(new)
        if owner != controller_ref(old) or (
            owner is None and (old.metadata.labels, _live(old)) != (new.metadata.labels, _live(new))
        ):
            self._graph_changed(new.metadata.namespace)

    def _pod_deleted(self, pod: pb.Pod) -> None:
        if controller_ref(pod) is None:
            self._graph_changed(pod.metadata.namespace)

    def _rs_changed(self, rs: pb.ReplicaSet) -> None:
        self._graph_changed(rs.metadata.namespace)

    def _rs_updated(self, old: pb.ReplicaSet, new: pb.ReplicaSet) -> None:
        if _shape(old) != _shape(new) or controller_ref(old) != controller_ref(new):
            self._graph_changed(new.metadata.namespace)
        self._owner_dependencies_changed(old, new)

    def _owner_dependencies_changed(self, old: Any, new: Any) -> None:
        """The dependencies an owner gives new pods changed: look at its waiting pods."""
        if list(deps.own_dependencies(old)) != list(deps.own_dependencies(new)):
            for pod in self.pods.by_owner(new.metadata.uid):
                self.enqueue(pod)

    def _workload_changed(self, obj: Any) -> None:
        kind = type(obj).DESCRIPTOR.name
        namespace = obj.metadata.namespace
        self._graph_changed(namespace)
        self.queue.add(_workload_key(kind, obj))
        if kind in deps.DEFAULT_CONDITION:
            self._dependents(namespace, Target(kind, obj.metadata.name))

    def _workload_updated(self, old: Any, new: Any) -> None:
        kind = type(new).DESCRIPTOR.name
        namespace = new.metadata.namespace
        if _shape(old) != _shape(new):
            self._graph_changed(namespace)
        if new.spec.depends_on or condition_of(new, CONDITION) is not None:
            self.queue.add(_workload_key(kind, new))
        if kind in deps.DEFAULT_CONDITION and _readiness(old) != _readiness(new):
            self._dependents(namespace, Target(kind, new.metadata.name))
        if kind != "Deployment":  # a Deployment's pods follow its ReplicaSets
            self._owner_dependencies_changed(old, new)

    def _service_changed(self, svc: pb.Service) -> None:
        self._graph_changed(svc.metadata.namespace)
        self._dependents(svc.metadata.namespace, Target(SERVICE, svc.metadata.name))

    def _service_updated(self, old: pb.Service, new: pb.Service) -> None:
        if old.spec.selector != new.spec.selector:
            self._graph_changed(new.metadata.namespace)

    def _endpoints_changed(self, ep: pb.Endpoints) -> None:
        self._dependents(ep.metadata.namespace, Target(SERVICE, ep.metadata.name))

    def _endpoints_updated(self, old: pb.Endpoints, new: pb.Endpoints) -> None:
        if (ready_addresses(old) > 0) != (ready_addresses(new) > 0):
            self._dependents(new.metadata.namespace, Target(SERVICE, new.metadata.name))

    # -- reconcile ------------------------------------------------------------------

    async def reconcile(self, key: str) -> Result:
        if key.startswith(GRAPH):
            self._announce(key[len(GRAPH) :])
            return Result()
        kind, sep, rest = key.partition(":")
        if sep:
            await self._reconcile_workload(kind, rest)
            return Result()
        await self._reconcile_pod(key)
        return Result()

    def _targets(self, namespace: str) -> Targets:
        return Targets(
            service=lambda name: self.services.get(namespace, name),
            endpoints=lambda name: self.endpoints.get(namespace, name),
            deployment=lambda name: self.deployments.get(namespace, name),
            job=lambda name: self.jobs.get(namespace, name),
        )

    async def _reconcile_pod(self, key: str) -> None:
        pod: pb.Pod | None = self.pods.get_key(key)
        if pod is None or not pod.spec.depends_on or not _live(pod):
            return
        current = self._owner_dependencies(pod)
        if (
            current is not None
            and list(current) != list(pod.spec.depends_on)
            and not_started(pod)
            and not condition_true(pod, CONDITION)
        ):
            await self._replace(pod)
            return
        namespace = pod.metadata.namespace
        missing = unmet(pod.spec.depends_on, self._targets(namespace))
        cycle = self.cycles(namespace).get(self.node_of(pod))
        want = verdict(missing, cycle)
        await self._write_condition(pod, want)

    def _owner_dependencies(self, pod: pb.Pod) -> Sequence[pb.Dependency] | None:
        """What the pod's owner (ReplicaSet, DaemonSet, Job) gives new pods now; None: no owner."""
        ref = controller_ref(pod)
        informer = {
            "ReplicaSet": self.replicasets,
            "DaemonSet": self.daemonsets,
            "Job": self.jobs,
        }.get(ref.kind if ref is not None else "")
        if ref is None or informer is None:
            return None
        owner = informer.get(pod.metadata.namespace, ref.name)
        if owner is None or owner.metadata.uid != ref.uid:
            return None
        return deps.own_dependencies(owner)

    async def _replace(self, pod: pb.Pod) -> None:
        """Delete a pod that waits for dependencies its owner no longer gives (it makes anew).

        Only while its condition is not True in the version read (the agent starts
        nothing before), and only that version (resource_version precondition).
        """
        meta = pod.metadata
        try:
            await self.ctx.client.delete(
                "Pod", meta.name, meta.namespace, resource_version=meta.resource_version
            )
        except ConflictError as err:
            raise TemporaryError(f"pod {meta.name} changed: {err}") from None
        except NotFoundError:
            return
        ref = controller_ref(pod)
        owner = f"{ref.kind} {ref.name}" if ref is not None else "its owner"
        self.ctx.events.record(
            pod,
            "Normal",
            "DependenciesChanged",
            f"Deleted: it waited for dependencies that {owner} no longer gives its pods; "
            "a new pod replaces it",
        )
        log.info("waiting_pod_replaced", pod=f"{meta.namespace}/{meta.name}", owner=owner)

    async def _reconcile_workload(self, kind: str, key: str) -> None:
        plural = WORKLOAD_PLURALS.get(kind)
        if plural is None:
            return
        namespace, name = split_key(key)
        obj = self.ctx.informers.get(plural).get(namespace, name)
        if obj is None or is_terminating(obj):
            return
        if not obj.spec.depends_on:
            if condition_of(obj, CONDITION) is not None:
                await self._write_status(obj, _without_condition(obj.status, CONDITION))
            return
        missing = unmet(obj.spec.depends_on, self._targets(namespace))
        cycle = self.cycles(namespace).get(f"{kind}/{name}")
        want = verdict(missing, cycle, workload=True)
        before = condition_of(obj, CONDITION)
        written = await self._write_condition(obj, want)
        if written and cycle and not _reported(before, cycle):
            message = f"dependency cycle: {cycle.text()}"
            self.ctx.events.record(obj, "Warning", CYCLE, message)
            log.warning("dependency_cycle", object=f"{kind}/{namespace}/{name}", cycle=cycle.text())

    async def _write_condition(self, obj: Any, want: Verdict) -> bool:
        """Set DependenciesReady on obj's status; whether a write was made."""
        status = type(obj.status)()
        status.CopyFrom(obj.status)
        changed = mark_condition(
            status.conditions, CONDITION, want.status, want.reason, want.message, self.ctx.clock()
        )
        if not changed:
            return False
        return await self._write_status(obj, status)

    async def _write_status(self, obj: Any, status: Any) -> bool:
        out = type(obj)()
        out.CopyFrom(obj)
        out.status.CopyFrom(status)
        try:
            await self.ctx.client.update_status(out)
        except ConflictError as err:
            kind = type(obj).DESCRIPTOR.name
            raise TemporaryError(f"{kind} {obj.metadata.name} status: {err}") from None
        except NotFoundError:
            return False
        return True

    # -- the graph ------------------------------------------------------------------

    def node_of(self, pod: pb.Pod) -> str:
        """The graph node (workload ref) a pod belongs to."""
        ref = controller_ref(pod)
        if ref is None:
            return f"Pod/{pod.metadata.name}"
        if ref.kind == "ReplicaSet":
            rs = self.replicasets.get(pod.metadata.namespace, ref.name)
            owner = controller_ref(rs) if rs is not None else None
            if owner is not None and owner.kind == "Deployment":
                return f"Deployment/{owner.name}"
        return f"{ref.kind}/{ref.name}"

    def nodes(self, namespace: str) -> list[Node]:
        """Every workload of namespace as a graph node (see the module doc)."""
        out: list[Node] = []
        for kind, informer in (
            ("Deployment", self.deployments),
            ("DaemonSet", self.daemonsets),
            ("Job", self.jobs),
        ):
            for obj in informer.in_namespace(namespace):
                out.append(_node(kind, obj))
        for rs in self.replicasets.orphans(namespace):
            out.append(_node("ReplicaSet", rs))
        for pod in self.pods.orphans(namespace):
            if _live(pod):
                out.append(_node("Pod", pod))
        return out

    def cycles(self, namespace: str) -> dict[str, Cycle]:
        """The namespace's cycles (find_cycles), recomputed from the caches when dirty."""
        graph = self._graphs.get(namespace)
        if graph is None or namespace in self._dirty:
            self._dirty.discard(namespace)
            services = {
                s.metadata.name: dict(s.spec.selector)
                for s in self.services.in_namespace(namespace)
            }
            graph = self._graphs[namespace] = _Graph(find_cycles(self.nodes(namespace), services))
        return graph.cycles

    def _announce(self, namespace: str) -> None:
        """Queue the workloads and pods whose cycle changed since the last announcement."""
        now = self.cycles(namespace)
        before = self._announced.get(namespace, {})
        changed = {ref for ref in set(now) | set(before) if now.get(ref) != before.get(ref)}
        if now:
            self._announced[namespace] = dict(now)
        else:
            self._announced.pop(namespace, None)
            if not self._has_objects(namespace):
                self._graphs.pop(namespace, None)
        if not changed:
            return
        for ref in changed:
            kind, _, name = ref.partition("/")
            if kind in WORKLOAD_PLURALS:
                self.queue.add(f"{kind}:{namespace}/{name}")
            elif kind in ("ReplicaSet", "Pod") and ref in now:
                self._report_bare(kind, namespace, name, now[ref])
        for pod in self.pods.in_namespace(namespace):
            if pod.spec.depends_on and self.node_of(pod) in changed:
                self.enqueue(pod)

    def _has_objects(self, namespace: str) -> bool:
        return any(
            informer.in_namespace(namespace)
            for informer in (self.deployments, self.daemonsets, self.jobs, self.replicasets)
        ) or bool(self.pods.orphans(namespace))

    def _report_bare(self, kind: str, namespace: str, name: str, cycle: Cycle) -> None:
        """A bare ReplicaSet or Pod entered a cycle: a Warning Event (no workload status)."""
        informer = self.replicasets if kind == "ReplicaSet" else self.pods
        obj = informer.get(namespace, name)
        if obj is not None:
            message = f"dependency cycle: {cycle.text()}"
            self.ctx.events.record(obj, "Warning", CYCLE, message)


def not_started(pod: pb.Pod) -> bool:
    """No process of the pod has run (or been tried) yet, as its status says."""
    if pod.status.phase not in ("", "Pending"):
        return False
    for ps in pod.status.process_statuses:
        if ps.restart_count or ps.HasField("last_state") or not ps.state.HasField("waiting"):
            return False
        if ps.state.waiting.reason != deps.NOT_READY:
            return False
    return True


def _live(pod: pb.Pod) -> bool:
    """Neither finished nor being deleted."""
    return not is_terminating(pod) and not has_ended(pod)


def _reported(before: pb.Condition | None, cycle: Cycle) -> bool:
    """Whether a condition already reported this cycle (its Event was recorded then)."""
    if before is None or before.reason != CYCLE:
        return False
    return before.message.startswith(f"dependency cycle: {cycle.text()}")


def _workload_key(kind: str, obj: Any) -> str:
    return f"{kind}:{obj.metadata.namespace}/{obj.metadata.name}"


def _node(kind: str, obj: Any) -> Node:
    return Node(
        f"{kind}/{obj.metadata.name}",
        _labels(obj),
        tuple(deps.targets(deps.own_dependencies(obj))),
    )


def _shape(obj: Any) -> tuple[Any, ...]:
    """What of a workload shapes the graph: its pods' labels and its dependencies."""
    return (_labels(obj), [str(t) for t in deps.targets(deps.own_dependencies(obj))])


def _readiness(obj: Any) -> tuple[bool, bool, bool]:
    """What dependents of a Deployment or Job look at."""
    return (
        condition_true(obj, "Available"),
        condition_true(obj, "Complete"),
        condition_true(obj, "Failed"),
    )


def _without_condition(status: Any, type_: str) -> Any:
    out = type(status)()
    out.CopyFrom(status)
    kept = [c for c in out.conditions if c.type != type_]
    del out.conditions[:]
    out.conditions.extend(kept)
    return out


def dependencies_controller_from_config(config: ManagerConfig) -> DependenciesController:
    """The manager's factory."""
    return DependenciesController(config)
