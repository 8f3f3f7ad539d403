"""aetcd (a third-party async etcd client from PyPI) lists, raises and disarms alarms.

The same test runs against etcd 3.4 and Mizzen (the ``pair`` fixture), so what
it expects is proven against etcd itself.

aetcd ships its own generated etcd protos (``auth.proto``, ``kv.proto``, ...) and
they collide with Mizzen's in protobuf's default descriptor pool (duplicate
symbol ``authpb.UserAddOptions`` / ``mvccpb.KeyValue``, in either import order).
This process already holds Mizzen's (the cluster fixtures import them), so the
client runs in a child Python that imports aetcd alone and prints what it saw.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from etcd_differential import Pair

pytestmark = [pytest.mark.compat, pytest.mark.timeout(120)]

CLIENT = r"""
import asyncio, json, sys
import aetcd

STEP = 10.0  # seconds any one await may take


async def step(aw):
    return await asyncio.wait_for(aw, STEP)


async def main(host, port):
    out = {}
    client = aetcd.Client(host=host, port=int(port), timeout=int(STEP))
    await step(client.connect())
    try:
        me = (await step(client.status())).leader.id  # any member: alarms are cluster-wide
        out["me"] = me
        out["before"] = [(a.alarm_type, a.member_id) async for a in client.list_alarms()]
        out["raised"] = [(a.alarm_type, a.member_id) for a in await step(client.create_alarm(me))]
        out["listed"] = [(a.alarm_type, a.member_id) async for a in client.list_alarms()]
        try:
            await step(client.put(b"/aetcd-alarm/k", b"v"))
            out["put"] = "ok"
        except aetcd.exceptions.ClientError as err:
            out["put"] = f"{type(err).__name__}: {err}"
        out["get"] = await step(client.get(b"/aetcd-alarm/k"))
        out["disarmed"] = [(a.alarm_type, a.member_id) for a in await step(client.disarm_alarm(me))]
        out["after"] = [(a.alarm_type, a.member_id) async for a in client.list_alarms()]
        again = await step(client.disarm_alarm(me))
        out["disarm again"] = [(a.alarm_type, a.member_id) for a in again]
        await step(client.put(b"/aetcd-alarm/k", b"v"))
        out["put after"] = "ok"
    finally:
        await step(client.close())
    print(json.dumps(out))


asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.parametrize("which", ["etcd", "mizzen"])
def test_aetcd_lists_raises_and_disarms_alarms(pair: Pair, which: str) -> None:
    host, port = getattr(pair, which).endpoints()[0].rsplit(":", 1)
    done = subprocess.run(
        [sys.executable, "-c", CLIENT, host, port], capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout)
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
