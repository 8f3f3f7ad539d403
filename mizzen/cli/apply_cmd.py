"""`mizzen apply -f`: make the store hold what the manifests say, writing only what changed.

For each object: Get it; create it when missing; when its spec (for
ConfigMaps and Secrets: their data, binaryData, type and immutable), labels or
annotations differ from the stored object (compared after defaulting, as the
server would store it), Update it at the stored resource_version, carrying
over what the server and controllers own (uid, creation timestamp, status,
finalizers and owner references the manifest does not set); otherwise write
nothing. A conflict (someone wrote in between) rereads and tries again.
Prints ``<kind>/<name> created|configured|unchanged``.

apply_all() does that for many objects at once (``mizzen.cli.batch``: at most
a window of them in flight, lines in input order, a failure reported with its
document and the rest still applied). There is nothing to put first: no kind
needs another object to exist before it can be created (there are no
namespace objects), and the same object twice waits for its first copy.

When PREFETCH_MIN or more objects of one kind go to one namespace, they are
read with one List of that namespace (a linearizable read, as a Get is)
instead of a Get each: 2,000 new pods then cost 2,000 writes, not 2,000 reads
and 2,000 writes. The decisions are the same, only read once for all; the
writes stay conditional, so what changed since the List is read again with a
Get: a conflict on Update, an object deleted since (not found on Update) or
created since (already exists on Create). The List is given up, and every
object read with a Get, when the namespace holds more than PREFETCH_FACTOR
times as many objects of that kind as the manifests name (at least a page),
or when the List is refused (e.g. no permission to list). A second copy of an
object in the input is read with a Get: the List predates the first copy's write.

``--wait`` (follow()): once everything applied, every applied object is
followed until it converged (``mizzen.cli.convergence`` says what that means
per kind), shown by ``mizzen.cli.progress_display``. It is driven by watches
(``mizzen.cli.watching``: informers started after the writes, so their first
list already holds them): each event judges every object again; the only
timers are the timeout, the end of a blocker's grace and of a pod's settle
time. It ends as soon as one object cannot converge: a Deployment past its
progress deadline, a Job Failed, a Pod Failed, or a fatal blocker
(CrashLoopBackOff, ConfigError, OOMKilled, PortInUse, Unschedulable) that
lasted longer than the grace (``--fail-grace``, 10s). A workload whose counts
say converged still waits while one of its pods crashed within the grace
(``Grace``), or is ready for less than ``--settle`` (1s) and has a process
without a readiness probe: a process that exits at once makes its pod ready
for a moment.

A ConfigMap or Secret is applied at once, but what it configures is not:
before writing anything, ``config_changes`` finds the Deployments and
DaemonSets whose pod template counts it for config rollouts
(``controllers.confighash``: not opted out, not a signal-reloaded volume) and
whose counted keys the apply changes, and notes which version of the object
they run (the ``mizzen.io/config-sources`` digest on the current ReplicaSet or
on the DaemonSet's pods). Each is then followed too, and converged only once
it runs another version on every pod it wants (``convergence.config_rolled``).

One file because it is one command: reading the manifests, comparing with the
stored objects and writing only what changed is one loop per object.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from controllers.confighash import content_digests, counted_refs, opted_out
from mizzen.api import kinds
from mizzen.api.defaults import apply_defaults
from mizzen.api.kinds import kind_of
from mizzen.api.manifest import Manifest, Problem
from mizzen.api.messages import copy_message
from mizzen.cli.batch import WINDOW, Summary, run_in_order
from mizzen.cli.convergence import (
    Blocker,
    Verdict,
    config_rolled,
    current_replicaset,
    judge,
    pods_of,
    settles_at,
    source_digest,
)
from mizzen.cli.durations import duration_arg
from mizzen.cli.errors import CommandError
from mizzen.cli.progress_display import Display, make_display
from mizzen.cli.watching import Watching
from mizzen.client.errors import (
    AlreadyExistsError,
    ConflictError,
    NotFoundError,
    StoreClientError,
    UnavailableError,
)
from mizzen.client.objects import ObjectsClient

CONFLICT_ATTEMPTS = 3
PREFETCH_MIN = 16
PREFETCH_FACTOR = 4
LIST_PAGE = 500

UNREAD: Any = object()
"""apply_one's ``stored`` when the object has not been read yet (None: read, absent)."""


def _content(obj: Any) -> Any:
    """What a user's manifest sets besides metadata: the spec, or for kinds without
    one (ConfigMap, Secret) every top-level field but metadata and status."""
    if kind_of(obj).has_spec:
        return obj.spec
    out = copy_message(obj)
    out.ClearField("metadata")
    if "status" in obj.DESCRIPTOR.fields_by_name:
        out.ClearField("status")
    return out


def differs(desired: Any, stored: Any) -> bool:
    """Whether applying desired would change stored's spec, labels or annotations."""
    want = copy_message(desired)
    want.metadata.namespace = stored.metadata.namespace
    apply_defaults(want)  # a Secret's stringData is merged into its data here
    return (
        _content(want) != _content(stored)
        or dict(want.metadata.labels) != dict(stored.metadata.labels)
        or dict(want.metadata.annotations) != dict(stored.metadata.annotations)
    )


def merged(desired: Any, stored: Any) -> Any:
    """desired, ready to Update stored: its version, and the fields the server owns."""
    new = copy_message(desired)
    meta, old = new.metadata, stored.metadata
    meta.namespace = old.namespace
    meta.resource_version = old.resource_version
    meta.uid = old.uid
    meta.creation_timestamp.CopyFrom(old.creation_timestamp)
    if not meta.finalizers:
        meta.finalizers.extend(old.finalizers)
    if not meta.owner_references:
        meta.owner_references.extend(old.owner_references)
    if "status" in stored.DESCRIPTOR.fields_by_name:
        new.status.CopyFrom(stored.status)
    return new


async def apply_one(client: ObjectsClient, manifest: Manifest, stored: Any = UNREAD) -> str:
    """Apply one loaded (and namespaced) object; "created", "configured" or "unchanged".

    ``stored`` is the object as a List read it (None: absent), or UNREAD to Get it.
    """
    desired: Any = manifest.message
    info, meta = manifest.kind, desired.metadata
    for attempt in range(CONFLICT_ATTEMPTS):
        fresh = stored is UNREAD
        if fresh:
            try:
                stored = await client.get(info, meta.name, meta.namespace)
            except NotFoundError:
                stored = None
        try:
            if stored is None:
                await client.create(desired)
                return "created"
            if not differs(desired, stored):
                return "unchanged"
            await client.update(merged(desired, stored))
            return "configured"
        except (ConflictError, NotFoundError, AlreadyExistsError) as err:
            # after a Get only a conflict is tried again; after the List, all three
            if (fresh and not isinstance(err, ConflictError)) or attempt == CONFLICT_ATTEMPTS - 1:
                raise
            stored = UNREAD
    raise AssertionError("unreachable")


async def prefetch(client: ObjectsClient, manifests: list[Manifest]) -> dict[Hashable, Any]:
    """identity -> the stored object (None: absent), for the objects read by a List.

    One List per (kind, namespace) that PREFETCH_MIN or more manifests name (see
    the module doc for when it gives up); objects not in the result are read
    with a Get. UnavailableError (the store cannot be reached) is raised.
    """
    groups: dict[tuple[str, str], set[str]] = {}
    kinds_by_name = {}
    for manifest in manifests:
        kind, namespace, name = identity(manifest)
        groups.setdefault((kind, namespace), set()).add(name)
        kinds_by_name[kind] = manifest.kind
    known: dict[Hashable, Any] = {}
    for (kind, namespace), names in groups.items():
        if len(names) < PREFETCH_MIN:
            continue
        most = max(PREFETCH_FACTOR * len(names), LIST_PAGE)
        found: dict[str, Any] = {}
        seen = 0
        try:
            async for page in client.list_pages(
                kinds_by_name[kind], namespace, page_size=LIST_PAGE
            ):
                seen += len(page.items) + len(page.undecodable_keys)
                if seen > most:
                    break
                found.update((o.metadata.name, o) for o in page.items if o.metadata.name in names)
        except UnavailableError:
            raise
        except StoreClientError:
            continue  # e.g. not allowed to list: a Get each
        if seen > most:
            continue
        known.update(((kind, namespace, name), found.get(name)) for name in names)
    return known


def identity(manifest: Manifest) -> tuple[str, str, str]:
    """The object a manifest names: (kind, namespace, name)."""
    meta: Any = manifest.message.metadata  # type: ignore[attr-defined]
    return manifest.kind.kind, meta.namespace, meta.name


def where(manifest: Manifest, message: str) -> str:
    """message prefixed with the manifest's source, document and object:
    ``pods.yaml: document 3 (Pod web): ...``, as manifest problems are shown."""
    kind, _, name = identity(manifest)
    return str(Problem(manifest.source, manifest.index, message, label=f"{kind} {name}"))


async def apply_all(
    client: ObjectsClient,
    manifests: list[Manifest],
    *,
    out: Callable[[str], None],
    err: Callable[[str], None],
    describe: Callable[[StoreClientError], str],
    window: int = WINDOW,
) -> Summary:
    """Apply every manifest, ``window`` at a time; a line per object in input order.

    describe() gives the text of a failure, to which where() adds the document.
    """

    try:
        known = await prefetch(client, manifests)
    except UnavailableError as exc:
        return Summary(len(manifests), 0, len(manifests), exc)

    async def one(manifest: Manifest) -> str:
        # the first copy of an object takes what the List read; a second one Gets
        result = await apply_one(client, manifest, known.pop(identity(manifest), UNREAD))
        return f"{manifest.kind.singular}/{identity(manifest)[2]} {result}"

    def failure(manifest: Manifest, error: StoreClientError) -> str:
        text = describe(error)
        if isinstance(error, ConflictError):
            text += " (kept changing while applying)"
        return where(manifest, text)

    return await run_in_order(
        manifests, one, key=identity, failure=failure, out=out, err=err, window=window
    )


# ------------------------------------------------------------------ apply --wait


@dataclass(frozen=True)
class ConfigChange:
    """An applied ConfigMap or Secret (``source``, ``Kind/name``) whose counted content
    changes for a consumer, and the digests of it the consumer ran before."""

    source: str
    before: frozenset[str]


@dataclass(frozen=True)
class Followed:
    """An object apply --wait follows (and the config changes it must roll out)."""

    kind: str
    namespace: str
    name: str
    config: tuple[ConfigChange, ...] = ()

    @property
    def label(self) -> str:
        return f"{kinds.lookup(self.kind).singular}/{self.name}"


Consumers = dict[tuple[str, str, str], tuple[ConfigChange, ...]]
"""(kind, namespace, name) of a Deployment or DaemonSet -> the changes it must roll out."""


def followed(manifests: list[Manifest], consumers: Consumers | None = None) -> list[Followed]:
    """Each applied object once, in input order, then each consumer of a changed
    ConfigMap or Secret that was not applied itself."""
    out: dict[tuple[str, str, str], Followed] = {}
    consumers = consumers or {}
    for manifest in manifests:
        kind, namespace, name = identity(manifest)
        key = (kind, namespace if manifest.kind.namespaced else "", name)
        if key not in out:
            out[key] = Followed(*key, consumers.get(key, ()))
    for key, changes in consumers.items():
        if key not in out:
            out[key] = Followed(*key, changes)
    return list(out.values())


def _counted(obj: Any, scope: frozenset[str] | None) -> Any:
    """What of obj a consumer's hash covers: per section, key -> digest (None: absent)."""
    if obj is None:
        return None
    return {
        section: {k: v for k, v in values.items() if scope is None or k in scope}
        for section, values in content_digests(obj).items()
    }


async def config_changes(client: ObjectsClient, manifests: list[Manifest]) -> Consumers:
    """The consumers whose rollout apply --wait must follow (module doc), read before
    the apply writes anything."""
    configs = [m for m in manifests if m.kind.kind in ("ConfigMap", "Secret")]
    if not configs:
        return {}
    found: dict[tuple[str, str, str], list[ConfigChange]] = {}
    workloads: dict[str, tuple[list[Any], list[Any], list[Any]]] = {}
    for manifest in configs:
        kind, namespace, name = identity(manifest)
        if namespace not in workloads:
            lists = [
                (await client.list(k, namespace)).items
                for k in ("Deployment", "DaemonSet", "ReplicaSet")
            ]
            workloads[namespace] = (lists[0], lists[1], lists[2])
        deployments, daemonsets, replicasets = workloads[namespace]
        if not deployments and not daemonsets:
            continue
        try:
            stored = await client.get(manifest.kind, name, namespace)
        except NotFoundError:
            stored = None
        source = f"{kind}/{name}"
        for workload in [*deployments, *daemonsets]:
            refs = counted_refs(workload.spec.template)
            if (kind, name) not in refs or opted_out(workload):
                continue
            scope = refs[(kind, name)]
            if _counted(stored, scope) == _counted(manifest.message, scope):
                continue
            if kind_of(workload).kind == "Deployment":
                rs = current_replicaset(workload, replicasets)
                carriers = [] if rs is None else [rs]
            else:
                carriers = await _pods_of_daemonset(client, workload)
            before = frozenset(
                d for d in (source_digest(c, source) for c in carriers) if d is not None
            )
            meta = workload.metadata
            key = (kind_of(workload).kind, meta.namespace, meta.name)
            found.setdefault(key, []).append(ConfigChange(source, before))
    return {key: tuple(changes) for key, changes in found.items()}


async def _pods_of_daemonset(client: ObjectsClient, ds: Any) -> list[Any]:
    pods = (await client.list("Pod", ds.metadata.namespace)).items
    return pods_of(ds, pods, [])


def _caches(targets: list[Followed]) -> set[tuple[str, str]]:
    """(kind, namespace) to watch: the followed kinds, and what judging them reads."""
    needs: set[tuple[str, str]] = set()
    for t in targets:
        needs.add((t.kind, t.namespace))
        if t.kind in ("Deployment", "DaemonSet", "ReplicaSet", "Job", "Service"):
            needs.add(("Pod", t.namespace))
        if t.kind == "Deployment":
            needs.add(("ReplicaSet", t.namespace))
        if t.kind == "Service":
            needs.add(("Endpoints", t.namespace))
    return needs


RESTARTING = ("CrashLoopBackOff", "OOMKilled")
SETTLING = ("Deployment", "DaemonSet", "ReplicaSet", "Pod")
"""Kinds whose pods must stay ready for the settle time (settles_at) to count."""


class Grace:
    """Fatal blockers over time: fail once one lasted longer than the grace, and call an
    object settled only once its pods stayed clear of them for the grace.

    Each (object, pod, reason) keeps when it was first and last seen. A failure
    needs the blocker present now and first seen at least the grace ago; a
    crash-looping process runs for a moment between two back-offs, so its
    first-seen time is kept while the blocker comes and goes. A record expires
    once its blocker was not seen for the grace (or its pod is gone). Until a
    crash (CrashLoopBackOff, OOMKilled) record expires, its object does not count
    as converged, even when its counts say so: a process that exits at once
    makes its pod ready for a moment.
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._seen: dict[tuple[str, str, str], tuple[float, float, str]] = {}

    def observe(
        self, label: str, verdict: Verdict, now: float
    ) -> tuple[Blocker | None, float | None]:
        """(a fatal blocker past its grace, else None; when the next one will be)."""
        wake: float | None = None
        for blocker in verdict.fatal:
            key = (label, blocker.pod, blocker.reason)
            first = self._seen.get(key, (now, now, ""))[0]
            self._seen[key] = (first, now, blocker.text)
            if now - first >= self.grace:
                return blocker, None
            wake = min(wake if wake is not None else math.inf, first + self.grace)
        return None, wake

    def unsettled(self, label: str, now: float) -> tuple[str, float] | None:
        """(the text of label's latest fatal blocker, when its record expires), if any."""
        latest: tuple[float, str] | None = None
        for key, (_, last, text) in list(self._seen.items()):
            if key[0] != label or key[2] not in RESTARTING:
                continue
            if now - last >= self.grace:
                del self._seen[key]
            elif latest is None or last > latest[0]:
                latest = (last, text)
        return None if latest is None else (latest[1], latest[0] + self.grace)

    def forget_except(self, pods: set[tuple[str, str]]) -> None:
        """Drop the records of pods that are gone ((label, pod) pairs still present)."""
        for key in [k for k in self._seen if (k[0], k[1]) not in pods]:
            del self._seen[key]


@dataclass(frozen=True)
class Outcome:
    ok: bool
    message: str


async def follow(
    client: ObjectsClient,
    targets: list[Followed],
    display: Display,
    *,
    timeout: float,
    grace: float,
    settle: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
) -> Outcome:
    """Follow targets until all converged, one cannot, or the timeout (watch-driven)."""
    deadline = clock() + timeout if timeout > 0 else None
    graces = Grace(grace)
    async with Watching(client, clock=clock) as w:
        for kind, namespace in sorted(_caches(targets)):
            w.watch(kind, namespace)
        try:
            await w.start(deadline)
        except TimeoutError:
            return Outcome(False, f"timed out after {_secs(timeout)} listing the objects to follow")
        try:
            while True:
                now = clock()
                rows: list[tuple[str, Verdict]] = []
                failure: str | None = None
                wake = deadline
                alive: set[tuple[str, str]] = set()
                for t in targets:
                    verdict, pods = _judge(w, t)
                    rows.append((t.label, verdict))
                    alive.update((t.label, pod.metadata.name) for pod in pods)
                    if verdict.state == "failed" and failure is None:
                        failure = f"{t.label}: {verdict.message}"
                        continue
                    blocker, when = graces.observe(t.label, verdict, now)
                    if blocker is not None and failure is None:
                        rows[-1] = (t.label, Verdict("failed", verdict.counts, blocker.text))
                        failure = f"{t.label}: {blocker.text} (for more than {_secs(graces.grace)})"
                    unsettled = graces.unsettled(t.label, now) if verdict.state == "done" else None
                    if unsettled is not None:
                        text, when = unsettled
                        rows[-1] = (t.label, Verdict("waiting", verdict.counts, f"was {text}"))
                    elif verdict.state == "done" and t.kind in SETTLING:
                        waits = [at for at in (settles_at(p, settle) for p in pods) if at]
                        due = max(waits, default=0.0) - wall()
                        if due > 0:
                            message = f"ready for less than {_secs(settle)}"
                            rows[-1] = (t.label, Verdict("waiting", verdict.counts, message))
                            when = now + due
                    if when is not None:
                        wake = when if wake is None else min(wake, when)
                graces.forget_except(alive)
                display.update(rows)
                if failure is not None:
                    return Outcome(False, failure)
                if all(v.state == "done" for _, v in rows):
                    return Outcome(True, f"{len(rows)} object(s) converged")
                if deadline is not None and now >= deadline:
                    waiting = [
                        f"{label} ({v.counts}{'; ' + v.message if v.message else ''})"
                        for label, v in rows
                        if v.state != "done"
                    ]
                    return Outcome(
                        False, f"timed out after {_secs(timeout)} waiting for {', '.join(waiting)}"
                    )
                await w.changed(until=wake)
        finally:
            display.close()


def _judge(w: Watching, t: Followed) -> tuple[Verdict, list[Any]]:
    """t's verdict and the pods it was judged with (a Pod: itself)."""
    obj = w.get(t.kind, t.namespace, t.name)
    if obj is None:
        return Verdict("failed", "", "deleted while waiting"), []
    pods: list[Any] = []
    endpoints = None
    if t.kind in ("Deployment", "DaemonSet", "ReplicaSet", "Job", "Service"):
        rs = w.list("ReplicaSet", t.namespace) if t.kind == "Deployment" else []
        pods = pods_of(obj, w.list("Pod", t.namespace), rs)
    if t.kind == "Service":
        endpoints = w.get("Endpoints", t.namespace, t.name)
    verdict = judge(obj, pods, endpoints)
    if verdict.state != "failed":
        rs = w.list("ReplicaSet", t.namespace) if t.kind == "Deployment" else []
        for change in t.config:
            waiting = config_rolled(obj, pods, rs, change.source, change.before)
            if waiting is not None:
                verdict = Verdict("waiting", verdict.counts, waiting, verdict.fatal)
                break
    return verdict, pods if t.kind != "Pod" else [obj]


def _secs(seconds: float) -> str:
    return f"{seconds:g}s"


DEFAULT_TIMEOUT = 300.0
DEFAULT_GRACE = 10.0
DEFAULT_SETTLE = 1.0


def add_wait_flags(p: argparse.ArgumentParser) -> None:
    """apply's --wait, --timeout, --fail-grace and --output."""
    p.add_argument(
        "--wait",
        action="store_true",
        help="follow every applied object until it converged (exit 1 as soon as one cannot)",
    )
    p.add_argument(
        "--timeout",
        type=duration_arg,
        default=DEFAULT_TIMEOUT,
        metavar="DURATION",
        help="with --wait: give up after this long (e.g. 90s, 5m; 0: never; default 5m)",
    )
    p.add_argument(
        "--fail-grace",
        type=duration_arg,
        default=DEFAULT_GRACE,
        metavar="DURATION",
        help="with --wait: how long a pod may be crash-looping, unschedulable, ... "
        "before the wait fails (default 10s)",
    )
    p.add_argument(
        "--settle",
        type=duration_arg,
        default=DEFAULT_SETTLE,
        metavar="DURATION",
        help="with --wait: how long a pod without a readiness probe must stay ready to "
        "count (a process that exits at once is ready for a moment; default 1s)",
    )
    p.add_argument(
        "--output",
        choices=["auto", "plain"],
        default="auto",
        help="with --wait: live lines in a terminal (auto), or a line per change (plain)",
    )


async def wait_for_applied(
    client: ObjectsClient,
    manifests: list[Manifest],
    args: argparse.Namespace,
    *,
    out: Callable[[str], None],
    consumers: Consumers | None = None,
) -> int:
    """apply --wait after everything applied: 0 when all converged, else a CommandError.

    consumers: config_changes() as read before the apply."""
    display = make_display(args.output, out)
    outcome = await follow(
        client,
        followed(manifests, consumers),
        display,
        timeout=args.timeout,
        grace=args.fail_grace,
        settle=args.settle,
    )
    if not outcome.ok:
        raise CommandError(outcome.message)
    out(outcome.message)
    return 0
