"""Claiming dependents by label selector, as Kubernetes' ControllerRefManager does.

A ReplicaSet owns pods and a Deployment owns ReplicaSets through the
controller owner reference, but which dependents it *should* own is decided
by its selector. ``claim`` reconciles the two, one update per object:

* a dependent controlled by the owner that still matches stays owned;
* one controlled by the owner that no longer matches is released (the
  reference removed) unless it is terminating;
* an orphan (no controller) that matches is adopted (a controller reference
  added) unless it or the owner is terminating; the stored object is
  returned in its place.

Each update carries the cached resource_version, so a concurrent change
fails with a conflict and becomes a ``TemporaryError`` (the key is retried
from fresher state). A dependent deleted meanwhile needs no release;
adopting one that is gone is a ``TemporaryError``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import structlog

from controllers.base import (
    ObjectsAPI,
    TemporaryError,
    controller_ref,
    is_terminating,
    owner_reference,
    queue_key,
)
from mizzen.api import selectors
from mizzen.client.errors import ConflictError, NotFoundError

log = structlog.get_logger(__name__)


def selector_of(owner: Any) -> selectors.LabelMatcher | None:
    """owner's ``spec.selector``; None for an empty or malformed one (selects nothing)."""
    try:
        matcher = selectors.from_label_selector(owner.spec.selector)
    except selectors.SelectorError:
        return None
    return None if matcher.empty() else matcher


def selects(owner: Any, obj: Any) -> bool:
    """Whether owner's selector matches obj's labels."""
    matcher = selector_of(owner)
    return matcher is not None and matcher.matches(obj.metadata.labels)


async def claim(client: ObjectsAPI, owner: Any, candidates: Iterable[Any]) -> list[Any]:
    """The candidates owner controls after adopting and releasing; see the module doc."""
    owned: list[Any] = []
    uid = owner.metadata.uid
    matcher = selector_of(owner)
    for obj in candidates:
        ref = controller_ref(obj)
        matches = matcher is not None and matcher.matches(obj.metadata.labels)
        if ref is not None and ref.uid == uid:
            if matches:
                owned.append(obj)
            elif not is_terminating(obj):
                await _release(client, owner, obj)
        elif ref is None and matches and not is_terminating(obj) and not is_terminating(owner):
            owned.append(await _adopt(client, owner, obj))
    return owned


async def _adopt(client: ObjectsAPI, owner: Any, obj: Any) -> Any:
    changed = type(obj)()
    changed.CopyFrom(obj)
    changed.metadata.owner_references.append(owner_reference(owner))
    try:
        stored = await client.update(changed)
    except (ConflictError, NotFoundError) as err:
        raise TemporaryError(f"adopting {obj.metadata.name}: {err}") from None
    log.info("adopted", owner=queue_key(owner), name=obj.metadata.name)
    return stored


async def _release(client: ObjectsAPI, owner: Any, obj: Any) -> None:
    changed = type(obj)()
    changed.CopyFrom(obj)
    refs = [r for r in changed.metadata.owner_references if r.uid != owner.metadata.uid]
    del changed.metadata.owner_references[:]
    changed.metadata.owner_references.extend(refs)
    try:
        await client.update(changed)
    except NotFoundError:
        return
    except ConflictError as err:
        raise TemporaryError(f"releasing {obj.metadata.name}: {err}") from None
    log.info("released", owner=queue_key(owner), name=obj.metadata.name)
