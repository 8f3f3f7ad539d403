"""Polling and process helpers shared by tests and benches that drive real daemons."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc

from mizzen.client import ConflictError, ObjectsClient


def wait_until(
    pred: Callable[[], bool],
    timeout: float,
    what: str,
    *,
    tolerate: tuple[type[BaseException], ...] = (grpc.RpcError,),
    interval: float = 0.1,
) -> None:
    """Poll pred() until true (``tolerate`` errors count as false); AssertionError at timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except tolerate:
            pass
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def modify(
    client: ObjectsClient,
    kind: str,
    name: str,
    ns: str,
    change: Callable[[Any], None],
    *,
    attempts: int = 50,
    pause: float = 0.02,
) -> None:
    """Read, change(obj), update; again on a conflict (status writers bump the version)."""
    for _ in range(attempts):
        obj = await client.get(kind, name, ns)
        change(obj)
        try:
            await client.update(obj)
            return
        except ConflictError:
            await asyncio.sleep(pause)
    raise AssertionError(f"{kind}/{name}: {attempts} update conflicts in a row")


def pid_alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
