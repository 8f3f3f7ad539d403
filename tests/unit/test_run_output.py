"""run's Output keeps count of what it showed even when a follow is cancelled mid-stream.

The pod ended while its output was followed: the follow is cancelled and ``rest()``
reads what was not shown yet. The count once lost the bytes skipped at the start of
the cancelled stream, so rest() printed them a second time (seen in CI as "hi\\nhi\\n").
"""

from __future__ import annotations

import asyncio
import types
from typing import Any

import pytest

from mizzen.cli import run_cmd
from protos import objects_pb2 as pb


async def test_a_cancelled_follow_keeps_the_count_of_what_was_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started = asyncio.Event()

    async def stream_logs(*args: Any, skip: int, written: Any, **kw: Any) -> None:
        written(4)  # four more bytes shown after the skipped ones
        started.set()
        await asyncio.Event().wait()  # following until cancelled

    monkeypatch.setattr(run_cmd, "stream_logs", stream_logs)
    pod = pb.Pod(metadata=pb.ObjectMeta(name="p", namespace="ns"))
    pod.spec.processes.add(name="main")
    client = types.SimpleNamespace(credentials=None)
    output = run_cmd.Output(client=client, pod=pod, timeout=5)  # type: ignore[arg-type]
    output.agent = ("node", "127.0.0.1:1")
    output.shown = 3  # what the attach showed of this instance
    task = asyncio.create_task(output._stream(follow=True))
    async with asyncio.timeout(5):
        await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert output.shown == 7
