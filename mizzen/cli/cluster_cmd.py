"""`mizzen cluster status`: store members, who leads Raft, who leads the controllers, nodes.

Every store member is asked for its own Maintenance.Status, so a member that
is down shows as unreachable instead of hiding behind the others. The
controller leader is the value of the election key (``CONTROLLERS_LEADER_KEY``);
its create revision is the fence every controller write carries.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from typing import Any

from mizzen.cli import tables
from mizzen.cli.config import resolve_client
from mizzen.cli.errors import CommandError
from mizzen.cli.member_cmd import add_member_parsers
from mizzen.cli.runner import client_options, error_message
from mizzen.client.errors import StoreClientError
from mizzen.client.objects import ObjectsClient
from mizzen.client.records import Member, MemberStatus
from mizzen.client.store_client import StoreClient
from mizzen.security.tls import ClientCredentials

CONTROLLERS_LEADER_KEY = b"/mizzen/leader/controllers"


def add_cluster_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = client_options()
    p = sub.add_parser("cluster", help="the cluster as a whole")
    cluster_sub = p.add_subparsers(dest="cluster_command", required=True)
    s = cluster_sub.add_parser("status", parents=[common], help="members, leaders and nodes")
    s.set_defaults(func=run_status, client_command=True)
    add_member_parsers(cluster_sub, common)


@dataclass(frozen=True)
class ClusterStatus:
    members: list[Member]
    statuses: dict[str, MemberStatus | str]  # client URL -> status or error text
    controllers_leader: tuple[str, int] | None  # (identity, fence revision)
    nodes: list[tuple[str, str]]  # (name, Ready condition: True/False/Unknown)


async def gather_status(
    endpoints: list[str], timeout: float, credentials: ClientCredentials | None = None
) -> ClusterStatus:
    async with StoreClient(endpoints, timeout=timeout, credentials=credentials) as store:
        members = await store.member_list()
        statuses: dict[str, MemberStatus | str] = {}

        async def one(url: str) -> None:
            try:
                statuses[url] = await store.status(url)
            except StoreClientError as err:
                statuses[url] = f"unreachable ({err})"

        urls = [m.client_urls[0] for m in members if m.client_urls]
        await asyncio.gather(*(one(u) for u in urls))
        record = await store.get(CONTROLLERS_LEADER_KEY)
        leader = None
        if record is not None:
            leader = (record.value.decode(errors="replace"), record.create_revision)
    async with ObjectsClient(endpoints, timeout=timeout, credentials=credentials) as objects:
        items = (await objects.list("nodes")).items
    nodes = [(n.metadata.name, _ready(n)) for n in items]
    return ClusterStatus(members, statuses, leader, nodes)


def _ready(node: Any) -> str:
    for c in node.status.conditions:
        if c.type == "Ready":
            return str(c.status)
    return "Unknown"


def render(status: ClusterStatus) -> str:
    header = ["MEMBER", "ID", "ENDPOINT", "ROLE", "TERM", "APPLIED", "LAG", "REVISION", "DB SIZE"]
    rows = [header]
    answered = [s for s in status.statuses.values() if isinstance(s, MemberStatus)]
    leader = next((s for s in answered if s.is_leader), None)
    for m in sorted(status.members, key=lambda m: m.name):
        url = m.client_urls[0] if m.client_urls else ""
        st = status.statuses.get(url, "no client URL")
        if isinstance(st, str):
            rows.append([m.name, f"{m.id:x}", url, st] + [""] * 5)
            continue
        role = "leader" if st.is_leader else ("follower" if st.leader else "no leader")
        lag = "?" if leader is None else str(max(0, leader.raft_index - st.raft_applied_index))
        rows.append(
            [
                m.name,
                f"{m.id:x}",
                url,
                role,
                str(st.raft_term),
                str(st.raft_applied_index),
                lag,
                str(st.revision),
                str(st.db_size),
            ]
        )
    out = tables.render(rows)
    if status.controllers_leader is None:
        out += "\nControllers: no leader\n"
    else:
        who, rev = status.controllers_leader
        out += f"\nControllers: leader {who} (fence revision {rev})\n"
    ready = sum(1 for _, r in status.nodes if r == "True")
    out += f"Nodes: {ready}/{len(status.nodes)} ready\n"
    if status.nodes:
        names = {"True": "Ready", "False": "NotReady"}
        node_rows = [["NODE", "STATUS"]]
        node_rows += [[n, names.get(r, "Unknown")] for n, r in sorted(status.nodes)]
        out += tables.render(node_rows)
    return out


def run_status(args: argparse.Namespace) -> int:
    cfg = resolve_client(args)
    endpoints = cfg.endpoints
    try:
        status = asyncio.run(gather_status(endpoints, args.request_timeout, cfg.credentials))
    except StoreClientError as err:
        raise CommandError(error_message(err, endpoints)) from None
    sys.stdout.write(render(status))
    return 0
