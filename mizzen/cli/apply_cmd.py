"""`mizzen apply -f`: make the store hold what the manifests say, writing only what changed.

For each object: Get it; create it when missing; when its spec (for
ConfigMaps and Secrets: their data, binaryData, type and immutable), labels or
annotations differ from the stored object (compared after defaulting, as the
server would store it), Update it at the stored resource_version, carrying
over what the server and controllers own (uid, creation timestamp, status,
finalizers and owner references the manifest does not set); otherwise write
nothing. A conflict (someone wrote in between) rereads and tries again.
Prints ``<kind>/<name> created|configured|unchanged``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mizzen.api.defaults import apply_defaults
from mizzen.api.manifest import Manifest
from mizzen.client.errors import ConflictError, NotFoundError
from mizzen.client.objects import ObjectsClient

CONFLICT_ATTEMPTS = 3


def _copy(obj: Any) -> Any:
    out = type(obj)()
    out.CopyFrom(obj)
    return out


def _content(obj: Any) -> Any:
    """What a user's manifest sets besides metadata: the spec, or for kinds without
    one (ConfigMap, Secret) every top-level field but metadata and status."""
    if "spec" in obj.DESCRIPTOR.fields_by_name:
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


async def apply_all(
    client: ObjectsClient, manifests: list[Manifest], out: Callable[[str], None]
) -> None:
    for manifest in manifests:
        result = await apply_one(client, manifest)
        out(f"{manifest.kind.singular}/{manifest.message.metadata.name} {result}")  # type: ignore[attr-defined]
