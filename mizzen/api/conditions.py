"""Status conditions (``pb.Condition``), as every kind carries them."""

from __future__ import annotations

from collections.abc import Iterable

from protos import objects_pb2 as pb


def find_condition(conditions: Iterable[pb.Condition], type_: str) -> pb.Condition | None:
    """The condition of type ``type_`` among ``conditions``, or None."""
    return next((c for c in conditions if c.type == type_), None)
