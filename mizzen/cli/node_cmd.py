"""`mizzen cordon | uncordon | drain NODE`: take a node out of (or back into) service.

* cordon sets ``spec.unschedulable`` (the scheduler places no new pods there);
* uncordon clears it;
* drain cordons, then deletes every pod bound to the node (DaemonSet-managed
  pods are skipped and listed, as ``kubectl drain --ignore-daemonsets`` does:
  their controller would only recreate them there) and waits until those pods
  are gone or ``--timeout`` passes (exit 1, naming what is left).

Errors leave as one line through ``objects_cmd.error_message``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from typing import Any

from mizzen.api import kinds
from mizzen.cli.errors import CommandError
from mizzen.cli.runner import change_one, client_options, out, with_objects_client
from mizzen.client.errors import NotFoundError
from mizzen.client.objects import ObjectsClient

_POLL_INTERVAL = 0.5


def add_node_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = client_options()

    p = sub.add_parser("cordon", parents=[common], help="mark a node unschedulable")
    p.add_argument("node", metavar="NODE")
    p.set_defaults(func=run_cordon, client_command=True)

    p = sub.add_parser("uncordon", parents=[common], help="mark a node schedulable again")
    p.add_argument("node", metavar="NODE")
    p.set_defaults(func=run_uncordon, client_command=True)

    p = sub.add_parser(
        "drain",
        parents=[common],
        help="cordon a node and delete its pods (DaemonSet pods are left in place)",
    )
    p.add_argument("node", metavar="NODE")
    p.add_argument(
        "--grace-period",
        type=int,
        default=None,
        metavar="SECONDS",
        help="grace period for each pod (default: the pod's own)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long to wait for the pods to be gone (default 300)",
    )
    p.set_defaults(func=run_drain, client_command=True)


async def set_unschedulable(client: ObjectsClient, name: str, value: bool) -> bool:
    """Set spec.unschedulable (retrying conflicts); False when it already had that value."""

    def change(node: Any) -> bool:
        if node.spec.unschedulable == value:
            return False
        node.spec.unschedulable = value
        return True

    return await change_one(client, kinds.lookup("nodes"), name, "", change)


def _owned_by_daemonset(pod: Any) -> bool:
    return any(ref.controller and ref.kind == "DaemonSet" for ref in pod.metadata.owner_references)


def _pod_id(pod: Any) -> str:
    return f"{pod.metadata.namespace}/{pod.metadata.name}"


def run_cordon(args: argparse.Namespace) -> int:
    async def body(client: ObjectsClient) -> int:
        changed = await set_unschedulable(client, args.node, True)
        out(f"node/{args.node} {'cordoned' if changed else 'already cordoned'}")
        return 0

    return with_objects_client(args, body)


def run_uncordon(args: argparse.Namespace) -> int:
    async def body(client: ObjectsClient) -> int:
        changed = await set_unschedulable(client, args.node, False)
        out(f"node/{args.node} {'uncordoned' if changed else 'already uncordoned'}")
        return 0

    return with_objects_client(args, body)


def run_drain(args: argparse.Namespace) -> int:
    async def body(client: ObjectsClient) -> int:
        changed = await set_unschedulable(client, args.node, True)
        out(f"node/{args.node} {'cordoned' if changed else 'already cordoned'}")
        deadline = time.monotonic() + args.timeout
        listed = await client.list("pods", field_selector=f"spec.nodeName={args.node}")
        daemon = [p for p in listed.items if _owned_by_daemonset(p)]
        targets = [p for p in listed.items if not _owned_by_daemonset(p)]
        if daemon:
            names = ", ".join(_pod_id(p) for p in daemon)
            out(f"Warning: ignoring DaemonSet-managed pods: {names}")
        for pod in targets:
            with contextlib.suppress(NotFoundError):
                await client.delete(
                    "pods",
                    pod.metadata.name,
                    pod.metadata.namespace,
                    grace_period_seconds=args.grace_period,
                )
            out(f"evicting pod {_pod_id(pod)}")
        waiting = {(p.metadata.namespace, p.metadata.name, p.metadata.uid) for p in targets}
        while waiting:
            now = await client.list("pods", field_selector=f"spec.nodeName={args.node}")
            present = {(p.metadata.namespace, p.metadata.name, p.metadata.uid) for p in now.items}
            for ns, name, _ in sorted(waiting - present):
                out(f"pod {ns}/{name} evicted")
            waiting &= present
            if not waiting:
                break
            if time.monotonic() >= deadline:
                left = ", ".join(f"{ns}/{name}" for ns, name, _ in sorted(waiting))
                raise CommandError(
                    f"drain {args.node}: timed out after {args.timeout:g}s waiting for: {left}"
                )
            await asyncio.sleep(_POLL_INTERVAL)
        out(f"node/{args.node} drained")
        return 0

    return with_objects_client(args, body)
