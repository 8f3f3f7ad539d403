"""Membership as stock etcdctl drives it, side by side with etcd 3.4 (etcd_differential.py).

etcd's MemberAdd carries no name: the member is listed with its id and peer URL
only (etcdctl prints it ``unstarted``) until it starts. Ids, ports and names
differ between the two clusters, so the trace records the *shape* of each
member (which fields it has) and the answers' status codes and messages.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from etcd_differential import Pair, Trace

from mizzen.testing.local_cluster import free_ports
from protos import rpc_pb2, rpc_pb2_grpc

pytestmark = [pytest.mark.compat, pytest.mark.timeout(120)]


def shape(members: Any) -> list[list[str]]:
    """Each member as the sorted names of the fields it has (proto3 omits empty ones)."""
    return sorted(sorted(f.name for f, _ in m.ListFields()) for m in members)


async def _add(cluster: rpc_pb2_grpc.ClusterStub, url: str) -> rpc_pb2.MemberAddResponse:
    """etcd refuses changes for 5 s after its members connect ("unhealthy cluster")."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return await cluster.MemberAdd(rpc_pb2.MemberAddRequest(peerURLs=[url]), timeout=20)
        except grpc.aio.AioRpcError as err:
            if "unhealthy cluster" not in (err.details() or "") or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def members_without_names(trace: Trace) -> None:
    cluster = rpc_pb2_grpc.ClusterStub(trace.channel)
    before = await cluster.MemberList(rpc_pb2.MemberListRequest(), timeout=10)
    trace.record("member list", shape(before.members))
    voter = before.members[0]
    try:  # before the add: etcd refuses any add while a member is unstarted
        await _add(cluster, voter.peerURLs[0])
    except grpc.aio.AioRpcError as err:
        trace.error("add a taken peer URL", err)
    port, other_port = free_ports(2)
    added = await _add(cluster, f"http://127.0.0.1:{port}")
    trace.record("added member", shape([added.member]))
    trace.record("members after the add", shape(added.members))
    listed = await cluster.MemberList(rpc_pb2.MemberListRequest(), timeout=10)
    trace.record("member list with the unstarted one", shape(listed.members))
    new_id = added.member.ID

    async def call(what: str, pending: Any) -> None:
        try:
            resp = await pending
        except grpc.aio.AioRpcError as err:
            trace.error(what, err)
            return
        fields = sorted(f.name for f, _ in resp.ListFields() if f.name != "header")
        trace.record(what, {"fields": fields, "members": shape(getattr(resp, "members", []))})

    await call(
        "update an unknown id",
        cluster.MemberUpdate(
            rpc_pb2.MemberUpdateRequest(ID=12345, peerURLs=["http://127.0.0.1:1"]), timeout=10
        ),
    )
    await call(
        "update to a taken peer URL",
        cluster.MemberUpdate(
            rpc_pb2.MemberUpdateRequest(ID=new_id, peerURLs=list(voter.peerURLs)), timeout=10
        ),
    )
    await call(
        "update the unstarted member's peer URL",
        cluster.MemberUpdate(
            rpc_pb2.MemberUpdateRequest(ID=new_id, peerURLs=[f"http://127.0.0.1:{other_port}"]),
            timeout=20,
        ),
    )
    await call(
        "promote a voting member",
        cluster.MemberPromote(rpc_pb2.MemberPromoteRequest(ID=voter.ID), timeout=10),
    )
    await call(
        "remove the unstarted member",
        cluster.MemberRemove(rpc_pb2.MemberRemoveRequest(ID=new_id), timeout=20),
    )


async def test_member_add_without_a_name_answers_as_etcd(pair: Pair) -> None:
    entries = dict(await pair.same(members_without_names))
    assert entries["added member"] == [["ID", "peerURLs"]]
    assert entries["promote a voting member"] == {
        "code": "FAILED_PRECONDITION",
        "details": "etcdserver: can only promote a learner member",
    }
