"""`mizzen rollout status|history|undo` for Deployments, and `mizzen scale`.

Rollback is a spec change: ``undo`` copies the pod template of an older
ReplicaSet (the previous revision, or ``--to-revision N``) into the
Deployment, and the Deployment controller rolls it out as a new revision.
Errors leave as one readable line (``CommandError``), exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mizzen.api import kinds
from mizzen.api.defaults import DEFAULT_NAMESPACE
from mizzen.cli.config import add_credential_flags, resolve_client
from mizzen.cli.errors import CommandError, UsageError
from mizzen.cli.objects_cmd import error_message
from mizzen.client.errors import ConflictError, StoreClientError
from mizzen.client.objects import ObjectsClient
from protos import objects_pb2 as pb

HASH_LABEL = "pod-template-hash"
REVISION_ANNOTATION = "deployment.mizzen.io/revision"
SCALABLE = ("Deployment", "ReplicaSet")
UPDATE_ATTEMPTS = 5


def add_rollout_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--endpoints", default=None, help="store endpoints host:port,...")
    common.add_argument("--request-timeout", type=float, default=5.0)
    add_credential_flags(common)
    common.add_argument("-n", "--namespace", default=None)

    rollout = sub.add_parser("rollout", help="manage the rollout of a deployment")
    rsub = rollout.add_subparsers(dest="rollout_command", required=True)

    p = rsub.add_parser("status", parents=[common], help="wait for a rollout to finish")
    p.add_argument("target", nargs="+", metavar="deployment/NAME")
    p.add_argument("--timeout", type=float, default=0.0, help="seconds; 0 waits forever")
    p.add_argument("--watch", default="true", choices=["true", "false"], help="keep watching")
    p.set_defaults(func=run_status, client_command=True)

    p = rsub.add_parser("history", parents=[common], help="list the revisions of a deployment")
    p.add_argument("target", nargs="+", metavar="deployment/NAME")
    p.set_defaults(func=run_history, client_command=True)

    p = rsub.add_parser("undo", parents=[common], help="roll back to an earlier revision")
    p.add_argument("target", nargs="+", metavar="deployment/NAME")
    p.add_argument("--to-revision", type=int, default=0, help="default: the previous one")
    p.set_defaults(func=run_undo, client_command=True)

    p = sub.add_parser("scale", parents=[common], help="set the replicas of a workload")
    p.add_argument("target", nargs="+", metavar="KIND/NAME")
    p.add_argument("--replicas", type=int, required=True)
    p.set_defaults(func=run_scale, client_command=True)


# ------------------------------------------------------------------ plumbing


def _target(words: list[str], allowed: tuple[str, ...]) -> tuple[kinds.KindInfo, str]:
    """KIND/NAME or KIND NAME."""
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
    if info.kind not in allowed or not name:
        raise UsageError(f"{kind!r}: expected one of {', '.join(a.lower() for a in allowed)}")
    return info, name


def _run(args: argparse.Namespace, body: Callable[[ObjectsClient], Awaitable[int]]) -> int:
    cfg = resolve_client(args)
    endpoints = cfg.endpoints

    async def run() -> int:
        async with ObjectsClient(
            endpoints, timeout=args.request_timeout, credentials=cfg.credentials
        ) as client:
            return await body(client)

    try:
        return asyncio.run(run())
    except StoreClientError as err:
        raise CommandError(error_message(err, endpoints)) from None


def _out(line: str) -> None:
    print(line, flush=True)


def revision_of(obj: Any) -> int:
    value = obj.metadata.annotations.get(REVISION_ANNOTATION, "")
    return int(value) if value.isdigit() else 0


async def owned_replicasets(client: ObjectsClient, d: pb.Deployment) -> list[pb.ReplicaSet]:
    """ReplicaSets controlled by d, by revision."""
    listed = await client.list("replicasets", d.metadata.namespace)
    owned = [
        rs
        for rs in listed.items
        if any(r.controller and r.uid == d.metadata.uid for r in rs.metadata.owner_references)
    ]
    return sorted(owned, key=revision_of)


# ------------------------------------------------------------------ rollout status


def rollout_state(d: pb.Deployment) -> tuple[bool, str]:
    """(done, message) as kubectl rollout status words it."""
    name = d.metadata.name
    want = d.spec.replicas
    st = d.status
    if d.metadata.generation > st.observed_generation:
        return False, f'Waiting for deployment "{name}" spec update to be observed...'
    if st.updated_replicas < want:
        return False, (
            f'Waiting for deployment "{name}" rollout to finish: '
            f"{st.updated_replicas} out of {want} new replicas have been updated..."
        )
    if st.replicas > st.updated_replicas:
        return False, (
            f'Waiting for deployment "{name}" rollout to finish: '
            f"{st.replicas - st.updated_replicas} old replicas are pending termination..."
        )
    if st.available_replicas < st.updated_replicas:
        return False, (
            f'Waiting for deployment "{name}" rollout to finish: '
            f"{st.available_replicas} of {st.updated_replicas} updated replicas are available..."
        )
    return True, f'deployment "{name}" successfully rolled out'


def run_status(args: argparse.Namespace) -> int:
    _, name = _target(args.target, ("Deployment",))
    ns = args.namespace or DEFAULT_NAMESPACE

    async def body(client: ObjectsClient) -> int:
        deadline = time.monotonic() + args.timeout if args.timeout > 0 else None
        last = ""
        while True:
            d = await client.get("deployments", name, ns)
            done, message = rollout_state(d)
            if message != last:
                _out(message)
                last = message
            if done:
                return 0
            if args.watch == "false":
                return 1
            if deadline is not None and time.monotonic() >= deadline:
                raise CommandError(f'timed out waiting for deployment "{name}" to roll out')
            await asyncio.sleep(0.25)

    return _run(args, body)


# ------------------------------------------------------------------ history / undo


def run_history(args: argparse.Namespace) -> int:
    _, name = _target(args.target, ("Deployment",))
    ns = args.namespace or DEFAULT_NAMESPACE

    async def body(client: ObjectsClient) -> int:
        d = await client.get("deployments", name, ns)
        rows = [("REVISION", "REPLICASET", "REPLICAS", "CURRENT")]
        current = revision_of(d)
        for rs in await owned_replicasets(client, d):
            rev = revision_of(rs)
            mark = "*" if rev == current else ""
            rows.append((str(rev), rs.metadata.name, str(rs.spec.replicas), mark))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        _out(f'deployment "{name}"')
        for row in rows:
            _out("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        return 0

    return _run(args, body)


def run_undo(args: argparse.Namespace) -> int:
    _, name = _target(args.target, ("Deployment",))
    ns = args.namespace or DEFAULT_NAMESPACE

    async def body(client: ObjectsClient) -> int:
        for _ in range(UPDATE_ATTEMPTS):
            d = await client.get("deployments", name, ns)
            history = await owned_replicasets(client, d)
            target = _undo_target(d, history, args.to_revision)
            template = pb.PodTemplateSpec()
            template.CopyFrom(target.spec.template)
            template.metadata.labels.pop(HASH_LABEL, None)
            if template == d.spec.template:
                _out(
                    f"deployment.mizzen/{name} skipped rollback "
                    f"(current template already matches revision {revision_of(target)})"
                )
                return 0
            d.spec.template.CopyFrom(template)
            try:
                await client.update(d)
            except ConflictError:
                continue
            _out(f"deployment.mizzen/{name} rolled back to revision {revision_of(target)}")
            return 0
        raise CommandError(f"deployment/{name} kept changing; try again")

    return _run(args, body)


def _undo_target(d: pb.Deployment, history: list[pb.ReplicaSet], to: int) -> pb.ReplicaSet:
    if to:
        for rs in history:
            if revision_of(rs) == to:
                return rs
        raise CommandError(
            f'unable to find specified revision {to} in history of "{d.metadata.name}"'
        )
    current = revision_of(d)
    older = [rs for rs in history if 0 < revision_of(rs) < current] if current else history[:-1]
    if not older:
        raise CommandError(f'no rollout history found for deployment "{d.metadata.name}"')
    return older[-1]


# ------------------------------------------------------------------ scale


def run_scale(args: argparse.Namespace) -> int:
    info, name = _target(args.target, SCALABLE)
    if args.replicas < 0:
        raise UsageError("--replicas must not be negative")
    ns = args.namespace or DEFAULT_NAMESPACE

    async def body(client: ObjectsClient) -> int:
        for _ in range(UPDATE_ATTEMPTS):
            obj = await client.get(info, name, ns)
            obj.spec.replicas = args.replicas
            try:
                await client.update(obj)
            except ConflictError:
                continue
            _out(f"{info.singular}.mizzen/{name} scaled")
            return 0
        raise CommandError(f"{info.singular}/{name} kept changing; try again")

    return _run(args, body)


__all__ = ["add_rollout_parsers", "rollout_state"]
