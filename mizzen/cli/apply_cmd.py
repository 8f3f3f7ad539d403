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
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from mizzen.api.defaults import apply_defaults
from mizzen.api.kinds import kind_of
from mizzen.api.manifest import Manifest, Problem
from mizzen.cli.batch import WINDOW, Summary, run_in_order
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


def _copy(obj: Any) -> Any:
    out = type(obj)()
    out.CopyFrom(obj)
    return out


def _content(obj: Any) -> Any:
    """What a user's manifest sets besides metadata: the spec, or for kinds without
    one (ConfigMap, Secret) every top-level field but metadata and status."""
    if kind_of(obj).has_spec:
        return obj.spec
    out = _copy(obj)
    out.ClearField("metadata")
    if "status" in obj.DESCRIPTOR.fields_by_name:
        out.ClearField("status")
    return out


def differs(desired: Any, stored: Any) -> bool:
    """Whether applying desired would change stored's spec, labels or annotations."""
    want = _copy(desired)
    want.metadata.namespace = stored.metadata.namespace
    apply_defaults(want)  # a Secret's stringData is merged into its data here
    return (
        _content(want) != _content(stored)
        or dict(want.metadata.labels) != dict(stored.metadata.labels)
        or dict(want.metadata.annotations) != dict(stored.metadata.annotations)
    )


def merged(desired: Any, stored: Any) -> Any:
    """desired, ready to Update stored: its version, and the fields the server owns."""
    new = _copy(desired)
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
