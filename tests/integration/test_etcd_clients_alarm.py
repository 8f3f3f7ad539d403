"""aetcd (a third-party async etcd client from PyPI) lists, raises and disarms alarms.

The same test runs against etcd 3.4 and Mizzen (the ``pair`` fixture), so what
it expects is proven against etcd itself.

aetcd ships its own generated etcd protos, which collide with Mizzen's in
protobuf's default descriptor pool; it is imported with a pool of its own
(``aetcd_isolated``), as the lock and auth client tests do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import pytest
from aetcd_isolated import aetcd
from etcd_differential import Pair

pytestmark = [pytest.mark.compat, pytest.mark.timeout(120)]

STEP = 10.0  # seconds any one await may take
T = TypeVar("T")


async def step(pending: Awaitable[T]) -> T:
    return await asyncio.wait_for(pending, STEP)


async def alarm_session(host: str, port: str) -> dict[str, object]:
    out: dict[str, object] = {}
    client = aetcd.Client(host=host, port=int(port), timeout=int(STEP))
    await step(client.connect())
    try:
        me = (await step(client.status())).leader.id  # any member: alarms are cluster-wide
        out["me"] = me
        out["before"] = [[a.alarm_type, a.member_id] async for a in client.list_alarms()]
        raised = await step(client.create_alarm(me))
        out["raised"] = [[a.alarm_type, a.member_id] for a in raised]
        out["listed"] = [[a.alarm_type, a.member_id] async for a in client.list_alarms()]
        try:
            await step(client.put(b"/aetcd-alarm/k", b"v"))
            out["put"] = "ok"
        except aetcd.exceptions.ClientError as err:
            out["put"] = f"{type(err).__name__}: {err}"
        out["get"] = await step(client.get(b"/aetcd-alarm/k"))
        disarmed = await step(client.disarm_alarm(me))
        out["disarmed"] = [[a.alarm_type, a.member_id] for a in disarmed]
        out["after"] = [[a.alarm_type, a.member_id] async for a in client.list_alarms()]
        again = await step(client.disarm_alarm(me))
        out["disarm again"] = [[a.alarm_type, a.member_id] for a in again]
        await step(client.put(b"/aetcd-alarm/k", b"v"))
        out["put after"] = "ok"
    finally:
        await step(client.close())
    return out


@pytest.mark.parametrize("which", ["etcd", "mizzen"])
async def test_aetcd_lists_raises_and_disarms_alarms(pair: Pair, which: str) -> None:
    host, port = getattr(pair, which).endpoints()[0].rsplit(":", 1)
    seen = await alarm_session(host, port)
    me = seen["me"]
    assert seen["before"] == []
    assert seen["raised"] == [[1, me]]
    assert seen["listed"] == [[1, me]]
    assert seen["put"] == "ClientError: etcdserver: mvcc: database space exceeded"
    assert seen["get"] is None  # reads pass
    assert seen["disarmed"] == [[1, me]]
    assert seen["after"] == []
    assert seen["disarm again"] == []  # not raised: an empty list
    assert seen["put after"] == "ok"
