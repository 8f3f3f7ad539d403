"""`mizzen cluster member list|add|remove` and `mizzen cluster move-leader`.

Members are named by name or by hex id (as `member list` shows them). `add`
only tells the running cluster about the new member; it prints the flags to
start that member with, which then joins with ``--initial-cluster-state
existing`` and catches up from the leader.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TypeVar

from mizzen.cli import tables
from mizzen.cli.config import ClientConfig, resolve_client
from mizzen.cli.errors import CommandError, UsageError
from mizzen.cli.runner import with_store_client
from mizzen.client.records import Member
from mizzen.client.store_client import StoreClient

T = TypeVar("T")
CHANGE_TIMEOUT = 20.0  # a change waits for Raft to apply it; more than one request


def add_member_parsers(
    cluster_sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    p = cluster_sub.add_parser("member", help="list, add or remove store members")
    member_sub = p.add_subparsers(dest="member_command", required=True)
    ls = member_sub.add_parser("list", parents=[common], help="the store's members")
    ls.add_argument("-o", "--output", choices=["table", "json"], default="table")
    ls.set_defaults(func=run_list, client_command=True)
    add = member_sub.add_parser(
        "add", parents=[common], help="add a member; prints the flags to start it with"
    )
    add.add_argument("name", help="the new member's name (its `mizzen store --name`)")
    add.add_argument(
        "--peer-url", required=True, metavar="HOST:PORT", help="its Raft address (--listen-raft)"
    )
    add.set_defaults(func=run_add, client_command=True)
    rm = member_sub.add_parser("remove", parents=[common], help="remove a member (by name or id)")
    rm.add_argument("member", metavar="NAME|ID")
    rm.set_defaults(func=run_remove, client_command=True)
    mv = cluster_sub.add_parser(
        "move-leader", parents=[common], help="hand Raft leadership to a member (name or id)"
    )
    mv.add_argument("member", metavar="NAME|ID")
    mv.set_defaults(func=run_move_leader, client_command=True)


def _client(cfg: ClientConfig, timeout: float, endpoints: list[str] | None = None) -> StoreClient:
    return StoreClient(endpoints or cfg.endpoints, timeout=timeout, credentials=cfg.credentials)


def find_member(members: list[Member], ref: str) -> Member:
    """The member named ref, or whose hex id is ref; CommandError if none."""
    for m in members:
        if m.name == ref:
            return m
    try:
        wanted = int(ref.removeprefix("0x"), 16)
    except ValueError:
        wanted = None
    for m in members:
        if m.id == wanted:
            return m
    raise CommandError(
        f"no store member named or with id {ref!r} (see `mizzen cluster member list`)"
    )


def render_members(members: list[Member]) -> str:
    rows = [["NAME", "ID", "PEER ADDRESS", "CLIENT URLS"]]
    for m in sorted(members, key=lambda m: m.name):
        rows.append([m.name, f"{m.id:x}", m.peer_address, ",".join(m.client_urls) or "-"])
    return tables.render(rows)


def join_flags(name: str, members: list[Member]) -> str:
    """The `mizzen store` flags the new member must be started with."""
    new = next(m for m in members if m.name == name)
    initial = ",".join(f"{m.name}={m.peer_address}" for m in sorted(members, key=lambda m: m.name))
    return (
        f"--name {name} --listen-raft {new.peer_address} "
        f"--initial-cluster {initial} --initial-cluster-state existing"
    )


def run_list(args: argparse.Namespace) -> int:
    members = with_store_client(args, lambda store: store.member_list())
    if args.output == "json":
        out = [
            {"name": m.name, "id": f"{m.id:x}", "peerURLs": list(m.peer_urls),
             "clientURLs": list(m.client_urls)}
            for m in sorted(members, key=lambda m: m.name)
        ]  # fmt: skip
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        sys.stdout.write(render_members(members))
    return 0


def run_add(args: argparse.Namespace) -> int:
    if ":" not in args.peer_url:
        raise UsageError(f"--peer-url: expected host:port, got {args.peer_url!r}")
    added, members = with_store_client(
        args, lambda store: store.member_add(args.name, args.peer_url, timeout=CHANGE_TIMEOUT)
    )
    sys.stdout.write(
        f"Member {added.name} added to the cluster (ID {added.id:x}).\n"
        f"Start it on its host, with an empty --data-dir and its own --listen-client, as:\n\n"
        f"  mizzen store {join_flags(added.name, members)}\n"
    )
    return 0


def run_remove(args: argparse.Namespace) -> int:
    async def go(store: StoreClient) -> Member:
        target = find_member(await store.member_list(), args.member)
        await store.member_remove(target.id, timeout=CHANGE_TIMEOUT)
        return target

    removed = with_store_client(args, go)
    sys.stdout.write(
        f"Member {removed.name} (ID {removed.id:x}) removed from the cluster; "
        "stop its process and delete its data directory.\n"
    )
    return 0


def run_move_leader(args: argparse.Namespace) -> int:
    cfg = resolve_client(args)

    async def go(store: StoreClient) -> Member:
        members = await store.member_list()
        target = find_member(members, args.member)
        # The leader may not be among --endpoints: ask through every member's client URL
        # too; StoreClient.move_leader finds the leader among them (again if it changes).
        urls = [*cfg.endpoints, *(u for m in members for u in m.client_urls[:1])]
        urls = list(dict.fromkeys(u.removeprefix("http://").removeprefix("https://") for u in urls))
        async with _client(cfg, args.request_timeout, urls) as everyone:
            await everyone.move_leader(target.id, timeout=CHANGE_TIMEOUT)
        return target

    target = with_store_client(args, go)
    sys.stdout.write(f"Leadership moved to {target.name} (ID {target.id:x}).\n")
    return 0
