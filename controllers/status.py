"""Writing a controller's computed status back to the store.

Every workload controller ends a reconcile the same way: it has computed the
status its object should show and writes it with ``update_status`` only if
it differs. The write is on a copy (cache objects are shared and never
mutated) carrying the cached resource_version, so a concurrent change makes
it fail with a conflict; that is a ``TemporaryError`` (the key is requeued
and the status computed again from fresher state). An object deleted
meanwhile needs no status: NotFound is ignored.
"""

from __future__ import annotations

from typing import Any

from controllers.base import ObjectsAPI, TemporaryError
from mizzen.client.errors import ConflictError, NotFoundError


async def write_status(client: ObjectsAPI, obj: Any, status: Any) -> bool:
    """Store status as obj's status unless it already is; whether a write was made."""
    if status == obj.status:
        return False
    changed = type(obj)()
    changed.CopyFrom(obj)
    changed.status.CopyFrom(status)
    try:
        await client.update_status(changed)
    except ConflictError as err:
        kind = type(obj).DESCRIPTOR.name
        raise TemporaryError(f"{kind} {obj.metadata.name} status: {err}") from None
    except NotFoundError:
        return False
    return True
