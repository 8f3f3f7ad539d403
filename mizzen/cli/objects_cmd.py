"""`mizzen apply | get | delete | api-resources | version`: the typed Objects API from a shell.

Every failure leaves through ``error_message`` as text for stderr and exit
code 1 (``main`` prints it after "mizzen: "), never a traceback. The text is
the server's own message where there is one, on one line:

* not found:       ``pods "web" not found``
* already exists:  ``deployments "web" already exists``
* conflict:        ``deployment/web: the object has been modified; ...``
* invalid:         ``Pod "Web_1" is invalid: metadata.name: ...; spec.x: ...``
                   (every invalid field path, "; "-separated, on that one line)
* unreachable:     ``cannot reach the store at 127.0.0.1:2379 (...)``
* unknown kind:    ``unknown kind 'foo'; known kinds: nodes, pods, ...``

A manifest error is the one multi-line case: the first problem follows
"mizzen: " and every further problem is on its own line indented by two spaces.

`apply` and `delete` work on many objects at once (``mizzen.cli.batch``): one
stdout line per object in input order, a failed object's line on stderr in its
place (``mizzen: pods.yaml: document 3 (Pod web): <error>`` for manifests,
``mizzen: <error>`` for names), every other object still done, and exit code 1
if any failed. A store that cannot be reached stops the run with one line
saying how many objects were not done.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from typing import Any

from mizzen import __version__
from mizzen.api import kinds
from mizzen.api.defaults import DEFAULT_NAMESPACE
from mizzen.api.kinds import KindInfo
from mizzen.api.manifest import (
    Manifest,
    ManifestError,
    dump_json,
    dump_yaml,
    json_line,
    json_list,
    load_paths,
)
from mizzen.cli import tables
from mizzen.cli.apply_cmd import (
    add_wait_flags,
    apply_all,
    config_changes,
    wait_for_applied,
    where,
)
from mizzen.cli.batch import WINDOW, Summary, run_in_order
from mizzen.cli.config import resolve_client
from mizzen.cli.errors import CommandError, UsageError
from mizzen.cli.runner import client_options, error_message, out, with_objects_client
from mizzen.cli.watch_cmd import watch_until_interrupted
from mizzen.client.errors import (
    StoreClientError,
    UnavailableError,
)
from mizzen.client.objects import ObjectsClient
from mizzen.client.store_client import StoreClient

LIST_PAGE = 500
"""Objects per List request of `get`: each page is turned into output while the
store reads the next (ObjectsClient.list_pages), as kubectl's --chunk-size 500."""


def _window(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _add_window(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-in-flight",
        type=_window,
        default=WINDOW,
        metavar="N",
        help=f"objects sent to the store at a time; output stays in input order "
        f"(default {WINDOW}; 1 does one after the other)",
    )


def add_objects_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = client_options()

    p = sub.add_parser("apply", parents=[common], help="create or update objects from manifests")
    p.add_argument("-f", "--filename", action="append", required=True, metavar="FILE|DIR|-")
    p.add_argument("-n", "--namespace", default=None)
    _add_window(p)
    add_wait_flags(p)
    p.set_defaults(func=run_apply, client_command=True)

    p = sub.add_parser("get", parents=[common], help="show objects")
    p.add_argument("kind", metavar="KIND")
    p.add_argument("name", metavar="NAME", nargs="?")
    p.add_argument("-n", "--namespace", default=None)
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("-l", "--selector", default="", help="label selector, e.g. app=web")
    p.add_argument("--field-selector", default="", help="e.g. spec.nodeName=n1")
    p.add_argument("-o", "--output", choices=["wide", "yaml", "json", "name"], default=None)
    p.add_argument("-w", "--watch", action="store_true", help="after the listing, print changes")
    p.add_argument("--watch-only", action="store_true", help="print changes, no listing first")
    p.add_argument(
        "--output-watch-events",
        action="store_true",
        help="with -w: show each change's type (ADDED, MODIFIED, DELETED)",
    )
    p.set_defaults(func=run_get, client_command=True)

    p = sub.add_parser("delete", parents=[common], help="delete objects")
    p.add_argument("kind", metavar="KIND", nargs="?")
    p.add_argument("names", metavar="NAME", nargs="*")
    p.add_argument("-f", "--filename", action="append", default=[], metavar="FILE|DIR|-")
    p.add_argument("-n", "--namespace", default=None)
    p.add_argument("--grace-period", type=int, default=None, metavar="SECONDS")
    p.add_argument(
        "--cascade",
        choices=["background", "foreground", "orphan"],
        default="background",
        help="dependents: deleted afterwards (background), first (foreground), or kept (orphan)",
    )
    _add_window(p)
    p.set_defaults(func=run_delete, client_command=True)

    p = sub.add_parser("api-resources", parents=[common], help="list the kinds of objects")
    p.set_defaults(func=run_api_resources, client_command=True)

    p = sub.add_parser("version", parents=[common], help="client version and store reachability")
    p.set_defaults(func=run_version, client_command=True)


# ------------------------------------------------------------------ plumbing


def lookup_kind(name: str) -> KindInfo:
    try:
        return kinds.lookup(name)
    except kinds.UnknownKindError as err:
        raise CommandError(error_message(err, [])) from None


def namespace_for(info: KindInfo, flag: str | None) -> str:
    return (flag or DEFAULT_NAMESPACE) if info.namespaced else ""


def _load(paths: list[str], namespace: str | None) -> list[Manifest]:
    """Manifests with namespaces filled in (-n, else default); a clash with -n is an error."""
    try:
        manifests = load_paths(paths)
    except ManifestError as err:
        raise CommandError(error_message(err, [])) from None
    for m in manifests:
        meta: Any = m.message.metadata  # type: ignore[attr-defined]
        if not m.kind.namespaced:
            continue
        if namespace and meta.namespace and meta.namespace != namespace:
            raise CommandError(
                f"{m.source}: {m.kind.singular}/{meta.name} is in namespace "
                f"{meta.namespace!r}, not {namespace!r} given by -n"
            )
        meta.namespace = meta.namespace or namespace or DEFAULT_NAMESPACE
    return manifests


def _err(line: str) -> None:
    print(f"mizzen: {line}", file=sys.stderr, flush=True)


def _exit_code(summary: Summary, endpoints: list[str], not_done: str) -> int:
    """0 if every object was done; 1 after the failures were shown; a CommandError
    when the store could not be reached (one line, with what was left undone)."""
    if summary.stopped is not None:
        raise CommandError(
            f"{error_message(summary.stopped, endpoints)}; "
            f"{summary.not_done} of {summary.total} objects {not_done}"
        )
    return 0 if summary.ok else 1


# ------------------------------------------------------------------ commands


def run_apply(args: argparse.Namespace) -> int:
    manifests = _load(args.filename, args.namespace)
    endpoints = resolve_client(args).endpoints

    async def body(client: ObjectsClient) -> int:
        consumers = await config_changes(client, manifests) if args.wait else None
        summary = await apply_all(
            client,
            manifests,
            out=out,
            err=_err,
            describe=lambda err: error_message(err, endpoints),
            window=args.max_in_flight,
        )
        code = _exit_code(summary, endpoints, "not applied")
        if code != 0 or not args.wait:
            return code
        return await wait_for_applied(client, manifests, args, out=out, consumers=consumers)

    return with_objects_client(args, body)


def run_get(args: argparse.Namespace) -> int:
    info = lookup_kind(args.kind)
    if args.name and (args.selector or args.field_selector or args.all_namespaces):
        raise UsageError("get: a NAME cannot be combined with -l, --field-selector or -A")
    everywhere = args.all_namespaces and info.namespaced
    namespace = "" if everywhere else namespace_for(info, args.namespace)

    if args.watch or args.watch_only:
        return with_objects_client(
            args, lambda client: watch_until_interrupted(client, info, namespace, args, everywhere)
        )

    async def body(client: ObjectsClient) -> int:
        if args.name:
            objects = [await client.get(info, args.name, namespace)]
            _print_objects(info, objects, args, everywhere, namespace)
            return 0
        objects = []
        json_lines: list[str] = []  # -o json: written while the next page is read
        async for page in client.list_pages(
            info,
            namespace,
            label_selector=args.selector,
            field_selector=args.field_selector,
            page_size=LIST_PAGE,
        ):
            objects.extend(page.items)
            if args.output == "json":
                json_lines.extend(json_line(obj) for obj in page.items)
            for key in page.undecodable_keys:
                print(
                    f"mizzen: warning: skipped {key}: its stored value does not decode as a "
                    f"{info.kind} (mizzen delete {info.singular} NAME removes it)",
                    file=sys.stderr,
                )
        if args.output == "json" and len(objects) != 1:
            sys.stdout.write(json_list(json_lines))
            return 0
        _print_objects(info, objects, args, everywhere, namespace)
        return 0

    return with_objects_client(args, body)


def _print_objects(
    info: KindInfo, objects: list[Any], args: argparse.Namespace, everywhere: bool, ns: str
) -> None:
    if args.output == "yaml":
        if objects:
            sys.stdout.write(dump_yaml(objects))
    elif args.output == "json":
        sys.stdout.write(dump_json(objects))
    elif args.output == "name":
        for obj in objects:
            out(f"{info.singular}/{obj.metadata.name}")
    elif not objects:
        where = f" in {ns} namespace" if ns else ""
        print(f"No resources found{where}.", file=sys.stderr)
    else:
        rows = tables.table(
            info, objects, now=time.time(), wide=args.output == "wide", with_namespace=everywhere
        )
        sys.stdout.write(tables.render(rows))


@dataclass(frozen=True)
class _Target:
    info: KindInfo
    name: str
    namespace: str
    # The manifest that named it (delete -f), for the failure line.
    manifest: Manifest | None = None


def run_delete(args: argparse.Namespace) -> int:
    targets: list[_Target] = []
    if args.filename:
        if args.kind or args.names:
            raise UsageError("delete: give either KIND NAME... or -f FILE, not both")
        for m in _load(args.filename, args.namespace):
            meta: Any = m.message.metadata  # type: ignore[attr-defined]
            targets.append(_Target(m.kind, meta.name, meta.namespace, m))
    else:
        if not args.kind or not args.names:
            raise UsageError("delete: expected KIND NAME... or -f FILE")
        info = lookup_kind(args.kind)
        ns = namespace_for(info, args.namespace)
        targets = [_Target(info, name, ns) for name in args.names]
    endpoints = resolve_client(args).endpoints

    def failure(target: _Target, err: StoreClientError) -> str:
        text = error_message(err, endpoints)
        return text if target.manifest is None else where(target.manifest, text)

    async def body(client: ObjectsClient) -> int:
        async def one(target: _Target) -> str:
            _, gone = await client.delete(
                target.info,
                target.name,
                target.namespace,
                grace_period_seconds=args.grace_period,
                propagation_policy=args.cascade.capitalize(),
            )
            return f"{target.info.singular}/{target.name} {'deleted' if gone else 'deleting'}"

        summary = await run_in_order(
            targets,
            one,
            key=lambda t: (t.info.kind, t.namespace, t.name),
            failure=failure,
            out=out,
            err=_err,
            window=args.max_in_flight,
        )
        return _exit_code(summary, endpoints, "not deleted")

    return with_objects_client(args, body)


def api_resources_rows() -> list[list[str]]:
    rows = [["NAME", "SHORTNAMES", "NAMESPACED", "KIND"]]
    for info in kinds.KINDS:
        namespaced = "true" if info.namespaced else "false"
        rows.append([info.plural, ",".join(info.short_names), namespaced, info.kind])
    return rows


def run_api_resources(args: argparse.Namespace) -> int:
    sys.stdout.write(tables.render(api_resources_rows()))
    return 0


def run_version(args: argparse.Namespace) -> int:
    cfg = resolve_client(args)
    endpoints = cfg.endpoints
    out(f"Client Version: mizzen {__version__}")

    async def probe() -> str:
        async with StoreClient(
            endpoints, timeout=args.request_timeout, credentials=cfg.credentials
        ) as client:
            status = await client.status()
            return f"Server: {status.endpoint} (store version {status.version or 'unknown'})"

    try:
        out(asyncio.run(probe()))
    except StoreClientError as err:
        raise CommandError(error_message(UnavailableError(str(err)), endpoints)) from None
    return 0
