"""`mizzen describe KIND NAME` and `mizzen events`: objects with the Events about them.

Errors leave like every other client command's (``objects_cmd``): exit 1 and
one line after "mizzen: ", e.g. ``pods "web" not found``. Event selection is
done here, on the client: the server has no field selector on the involved
object. ``describe pod`` also reads each ConfigMap and Secret the pod refers
to (as the caller: a viewer sees "unknown (permission denied)" for Secrets) to
say whether each reference resolves.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from mizzen.api import kinds
from mizzen.api.config_refs import config_refs
from mizzen.cli import event_view, tables
from mizzen.cli.describe import Configs, describe
from mizzen.cli.errors import UsageError
from mizzen.cli.objects_cmd import lookup_kind, namespace_for
from mizzen.cli.runner import client_options, with_objects_client
from mizzen.client.errors import NotFoundError, PermissionDeniedError
from mizzen.client.objects import ObjectsClient

EVENTS = kinds.lookup("events")


def add_describe_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = client_options()

    p = sub.add_parser("describe", parents=[common], help="show an object and its events")
    p.add_argument("kind", metavar="KIND")
    p.add_argument("name", metavar="NAME")
    p.add_argument("-n", "--namespace", default=None)
    p.set_defaults(func=run_describe, client_command=True)

    p = sub.add_parser("events", parents=[common], help="list events, oldest first")
    p.add_argument("-n", "--namespace", default=None)
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("--for", dest="target", default=None, metavar="KIND/NAME")
    p.set_defaults(func=run_events, client_command=True)


def run_describe(args: argparse.Namespace) -> int:
    info = lookup_kind(args.kind)
    namespace = namespace_for(info, args.namespace)

    async def body(client: ObjectsClient) -> int:
        obj = await client.get(info, args.name, namespace)
        about = f"involvedObject.kind={info.kind},involvedObject.name={args.name}"
        events = (await client.list(EVENTS, namespace, field_selector=about)).items
        configs = await pod_configs(client, obj) if info.kind == "Pod" else None
        endpoints = await service_endpoints(client, obj) if info.kind == "Service" else None
        text = describe(obj, events, now=time.time(), configs=configs, endpoints=endpoints)
        sys.stdout.write(text)
        return 0

    return with_objects_client(args, body)


async def pod_configs(client: ObjectsClient, pod: Any) -> Configs:
    """Each ConfigMap and Secret pod refers to: the object, None when missing, or why it
    could not be read."""
    out: Configs = {}
    for ref in config_refs(pod.spec):
        if (ref.kind, ref.name) in out:
            continue
        try:
            out[(ref.kind, ref.name)] = await client.get(ref.kind, ref.name, pod.metadata.namespace)
        except NotFoundError:
            out[(ref.kind, ref.name)] = None
        except PermissionDeniedError:
            out[(ref.kind, ref.name)] = "permission denied"
    return out


async def service_endpoints(client: ObjectsClient, svc: Any) -> Any:
    """The Endpoints object of a Service, None when there is none."""
    try:
        return await client.get("endpoints", svc.metadata.name, svc.metadata.namespace)
    except NotFoundError:
        return None


def _target(text: str) -> tuple[str, str]:
    """(Kind, name) from ``--for pod/web`` (any spelling kinds.lookup accepts)."""
    kind, sep, name = text.partition("/")
    if not sep or not kind or not name:
        raise UsageError(f"events: --for wants KIND/NAME, not {text!r}")
    return lookup_kind(kind).kind, name


def event_selector(target: tuple[str, str] | None) -> str:
    """The server-side field selector for events about target (all events when None)."""
    if target is None:
        return ""
    kind, name = target
    return f"involvedObject.kind={kind},involvedObject.name={name}"


def run_events(args: argparse.Namespace) -> int:
    if args.all_namespaces and args.namespace:
        raise UsageError("events: give -n or -A, not both")
    target = _target(args.target) if args.target else None
    namespace = "" if args.all_namespaces else namespace_for(EVENTS, args.namespace)

    async def body(client: ObjectsClient) -> int:
        selector = event_selector(target)
        events = (await client.list(EVENTS, namespace, field_selector=selector)).items
        if not events:
            where = f" in {namespace} namespace" if namespace else ""
            print(f"No events found{where}.", file=sys.stderr)
            return 0
        rows = event_view.events_table(events, now=time.time(), with_namespace=args.all_namespaces)
        sys.stdout.write(tables.render(rows))
        return 0

    return with_objects_client(args, body)
