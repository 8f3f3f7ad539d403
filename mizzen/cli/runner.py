"""The one way a client command talks to the store: its flags, its client, its errors.

Every client command takes the same flags (``client_options``), runs its body
against an ``ObjectsClient`` (``with_objects_client``) or, for the raw KV and
cluster calls, a ``StoreClient`` (``with_store_client``), and ends with one
readable line for any error the store or a manifest gave (``error_message``,
raised as ``CommandError``; ``mizzen.cli.main`` prints it and exits 1).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from mizzen.api import kinds
from mizzen.api.problems import ManifestError
from mizzen.cli.config import add_credential_flags, resolve_client
from mizzen.cli.errors import CommandError, UsageError, tls_hint
from mizzen.client.errors import (
    AmbiguousWriteError,
    ConflictError,
    StoreClientError,
    UnavailableError,
)
from mizzen.client.objects import ObjectsClient
from mizzen.client.store_client import StoreClient

T = TypeVar("T")

UPDATE_ATTEMPTS = 5
"""Read-change-Update rounds ``change_one`` tries before giving up on conflicts."""

HANDLED = (StoreClientError, ManifestError, kinds.UnknownKindError)
"""The errors a command's body may let through: each becomes one line."""


def client_options() -> argparse.ArgumentParser:
    """The flags every client command takes (a parent parser)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--endpoints",
        default=None,
        help="store endpoints host:port,... (default: $MIZZEN_ENDPOINTS, "
        "~/.mizzen/config, 127.0.0.1:2379)",
    )
    common.add_argument(
        "--request-timeout",
        type=float,
        default=5.0,
        help="seconds each request may take, retries included (default 5)",
    )
    add_credential_flags(common)
    return common


def error_message(err: BaseException, endpoints: list[str]) -> str:
    """The text shown after "mizzen: " for an error a command ended with."""
    if isinstance(err, ManifestError):
        first, *rest = [str(problem) for problem in err.problems] or [str(err)]
        return "\n".join([first, *(f"  {line}" for line in rest)])
    if isinstance(err, UnavailableError):
        return f"cannot reach the store at {','.join(endpoints)} ({err}){tls_hint(err)}"
    if isinstance(err, AmbiguousWriteError):
        return str(err)
    if isinstance(err, StoreClientError):
        return (err.details or str(err)).removeprefix("mizzen: ")
    if isinstance(err, kinds.UnknownKindError):
        return str(err.args[0]) if err.args else str(err)
    return str(err)


def with_objects_client(
    args: argparse.Namespace, body: Callable[[ObjectsClient], Awaitable[T]]
) -> T:
    """``body(client)`` with the Objects client the command's flags describe."""
    cfg = resolve_client(args)

    async def run() -> T:
        async with ObjectsClient(
            cfg.endpoints, timeout=args.request_timeout, credentials=cfg.credentials
        ) as client:
            return await body(client)

    try:
        return asyncio.run(run())
    except HANDLED as err:
        raise CommandError(error_message(err, cfg.endpoints)) from None


def with_store_client(args: argparse.Namespace, body: Callable[[StoreClient], Awaitable[T]]) -> T:
    """``body(store)`` with the KV/cluster client the command's flags describe."""
    cfg = resolve_client(args)

    async def run() -> T:
        async with StoreClient(
            cfg.endpoints, timeout=args.request_timeout, credentials=cfg.credentials
        ) as store:
            return await body(store)

    try:
        return asyncio.run(run())
    except HANDLED as err:
        raise CommandError(error_message(err, cfg.endpoints)) from None


def kind_and_name(
    words: list[str], allowed: tuple[str, ...] | None = None
) -> tuple[kinds.KindInfo, str]:
    """The object a command names as KIND/NAME or KIND NAME (kubectl's two shapes);
    ``allowed``: the kinds the command works on (None: any)."""
    if len(words) == 1 and "/" in words[0]:
        kind, _, name = words[0].partition("/")
    elif len(words) == 2 and "/" not in words[0]:
        kind, name = words
    else:
        raise UsageError(f"expected KIND/NAME or KIND NAME, got {' '.join(words)!r}")
    try:
        info = kinds.lookup(kind)
    except kinds.UnknownKindError as err:
        raise CommandError(error_message(err, [])) from None
    if allowed is not None and (info.kind not in allowed or not name):
        raise UsageError(f"{kind!r}: expected one of {', '.join(a.lower() for a in allowed)}")
    if not name:
        raise UsageError("expected KIND/NAME with a name")
    return info, name


async def change_one(
    client: ObjectsClient,
    info: kinds.KindInfo,
    name: str,
    namespace: str,
    change: Callable[[Any], bool],
) -> bool:
    """Read, change and Update one object, retrying on conflicts; whether it changed."""
    for _ in range(UPDATE_ATTEMPTS):
        obj = await client.get(info, name, namespace)
        if not change(obj):
            return False
        try:
            await client.update(obj)
        except ConflictError:
            continue
        return True
    raise CommandError(f"{info.singular}/{name} kept changing; try again")


def out(line: str) -> None:
    """One line of a command's output, flushed (pipes see it at once)."""
    print(line, flush=True)
