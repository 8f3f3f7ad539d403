"""`mizzen apply -f`: make the store hold what the manifests say, writing only what changed.

For each object: Get it; create it when missing; when its spec, labels or
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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mizzen.api.defaults import apply_defaults
from mizzen.api.manifest import Manifest, Problem
from mizzen.cli.batch import WINDOW, Summary, run_in_order
from mizzen.client.errors import ConflictError, NotFoundError, StoreClientError
from mizzen.client.objects import ObjectsClient

CONFLICT_ATTEMPTS = 3


def _copy(obj: Any) -> Any:
    out = type(obj)()
    out.CopyFrom(obj)
    return out


def differs(desired: Any, stored: Any) -> bool:
    """Whether applying desired would change stored's spec, labels or annotations."""
    want = _copy(desired)
    want.metadata.namespace = stored.metadata.namespace
    apply_defaults(want)
    return (
        want.spec != stored.spec
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
    if hasattr(stored, "status"):
        new.status.CopyFrom(stored.status)
    return new


async def apply_one(client: ObjectsClient, manifest: Manifest) -> str:
    """Apply one loaded (and namespaced) object; "created", "configured" or "unchanged"."""
    desired: Any = manifest.message
    info, meta = manifest.kind, desired.metadata
    for attempt in range(CONFLICT_ATTEMPTS):
        try:
            stored = await client.get(info, meta.name, meta.namespace)
        except NotFoundError:
            await client.create(desired)
            return "created"
        if not differs(desired, stored):
            return "unchanged"
        try:
            await client.update(merged(desired, stored))
        except ConflictError:
            if attempt == CONFLICT_ATTEMPTS - 1:
                raise
            continue
        return "configured"
    raise AssertionError("unreachable")


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

    async def one(manifest: Manifest) -> str:
        result = await apply_one(client, manifest)
        return f"{manifest.kind.singular}/{identity(manifest)[2]} {result}"

    def failure(manifest: Manifest, error: StoreClientError) -> str:
        text = describe(error)
        if isinstance(error, ConflictError):
            text += " (kept changing while applying)"
        return where(manifest, text)

    return await run_in_order(
        manifests, one, key=identity, failure=failure, out=out, err=err, window=window
    )
