"""Facts about a pod that every layer asks the same way."""

from __future__ import annotations

from typing import Any

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
"""Phases a pod never leaves: its processes have ended for good."""


def has_ended(pod: Any) -> bool:
    """Whether the pod is in a terminal phase (Succeeded or Failed)."""
    return pod.status.phase in TERMINAL_PHASES
