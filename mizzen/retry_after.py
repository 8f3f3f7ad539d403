"""The ``retry-after`` trailer of a refused call: how long to wait before trying again.

A server that refuses a call for a limit it can predict (a rate limit, a write
quota, a full proposal queue) answers RESOURCE_EXHAUSTED and sends the number
of seconds (a decimal, e.g. ``0.25``) in trailing metadata under this key, and
says it in the message too. The SDK waits that long before it retries
(``mizzen.client.endpoints``) or puts it on the error (``retry_after``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

RETRY_AFTER = "retry-after"
MIN_SECONDS = 0.001


def seconds_text(seconds: float) -> str:
    """seconds as the trailer carries them: rounded up to the millisecond, at least 1 ms."""
    return f"{max(MIN_SECONDS, math.ceil(seconds * 1000) / 1000):.3f}"


def trailer(seconds: float) -> tuple[tuple[str, str], ...]:
    return ((RETRY_AFTER, seconds_text(seconds)),)


def parse(metadata: Iterable[Any] | None) -> float | None:
    """The retry-after seconds in gRPC metadata, or None when absent or not a number >= 0."""
    for item in metadata or ():
        key, value = item
        if key != RETRY_AFTER:
            continue
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            return None
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    return None
