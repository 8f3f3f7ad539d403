"""Protobuf message helpers shared by the store, the controllers and the CLI."""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import Message

M = TypeVar("M", bound=Message)


def copy_message(msg: M) -> M:
    """A deep copy of ``msg`` (of the same type), to change without touching the original."""
    out = type(msg)()
    out.CopyFrom(msg)
    return out
